//! The development app, kept across restarts: without `--app`, the binary keeps the app it
//! generates in `dev-app.json` under `--state-dir`, so open demo tabs and scripts go on working
//! after a restart. Used by `main.rs` only; [`crate::config::Config`] itself stays free of I/O.
//!
//! - The file is written to a temporary file first (mode 0600), then linked into place, so a
//!   reader never sees half a file and two nodes starting at once end up with the same app.
//! - A file that exists but cannot be read or does not hold an app is a fatal error naming the
//!   file: silently making a new app would break every client that holds the old one without
//!   saying why. `--new-dev-app` replaces it.
//! - A state directory that cannot be created or written is not fatal: the app is then made for
//!   this run only, with a warning, as before there was a state file.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};

use crate::config::App;

/// The file's name in the state directory.
pub const FILE_NAME: &str = "dev-app.json";
/// Larger files are not ours: refused before parsing.
const MAX_FILE_BYTES: u64 = 4096;

/// What the file holds.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Stored {
    id: String,
    secret: String,
}

/// Where the development app came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kept {
    /// Read back from the file, as an earlier run left it.
    Reused(PathBuf),
    /// Made now and written to the file.
    Created(PathBuf),
    /// Made now and not kept: the state directory could not be written (the reason).
    NotKept(String),
}

/// The state directory when `--state-dir` is not given: `$XDG_DATA_HOME/trackmesh`, else
/// `$HOME/.local/share/trackmesh` (the XDG default, also used on macOS). None without either.
pub fn default_state_dir() -> Option<PathBuf> {
    let absolute = |v: std::ffi::OsString| Some(PathBuf::from(v)).filter(|p| p.is_absolute());
    if let Some(dir) = std::env::var_os("XDG_DATA_HOME").and_then(absolute) {
        return Some(dir.join("trackmesh"));
    }
    std::env::var_os("HOME")
        .and_then(absolute)
        .map(|home| home.join(".local/share/trackmesh"))
}

/// The development app kept in `dir` (None: no state directory known), made with `generate`
/// when there is none yet or `renew` is set. Errors only when a file exists and cannot be used.
pub fn load_or_create(
    dir: Option<&Path>,
    renew: bool,
    generate: impl FnOnce() -> App,
) -> anyhow::Result<(App, Kept)> {
    let Some(dir) = dir else {
        let why = "no --state-dir given and neither XDG_DATA_HOME nor HOME is set".to_string();
        return Ok((generate(), Kept::NotKept(why)));
    };
    let path = dir.join(FILE_NAME);
    if !renew && let Some(app) = read(&path)? {
        return Ok((app, Kept::Reused(path)));
    }
    let app = generate();
    match write(dir, &path, &app, renew) {
        Ok(Written::Ours) => Ok((app, Kept::Created(path))),
        // Another node starting at the same moment was first: use its app, as a restart would.
        Ok(Written::Theirs) => match read(&path)? {
            Some(theirs) => Ok((theirs, Kept::Reused(path))),
            None => bail!("{} vanished while it was being created", path.display()),
        },
        Err(e) => Ok((app, Kept::NotKept(format!("{e:#}")))),
    }
}

/// The app in `path`; None when there is no file.
fn read(path: &Path) -> anyhow::Result<Option<App>> {
    let fix = "fix or delete it, or start with --new-dev-app to replace it";
    let file = match std::fs::File::open(path) {
        Ok(f) => f,
        // No file (or no directory to hold one): none kept yet.
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::NotADirectory
            ) =>
        {
            return Ok(None);
        }
        Err(e) => bail!(
            "cannot read the development app in {}: {e} ({fix})",
            path.display()
        ),
    };
    let mut text = String::new();
    file.take(MAX_FILE_BYTES + 1)
        .read_to_string(&mut text)
        .with_context(|| {
            format!(
                "cannot read the development app in {} ({fix})",
                path.display()
            )
        })?;
    if text.len() as u64 > MAX_FILE_BYTES {
        bail!(
            "{} is over {MAX_FILE_BYTES} bytes: not a development app file ({fix})",
            path.display()
        );
    }
    let stored: Stored = serde_json::from_str(&text).map_err(|e| {
        anyhow::anyhow!(
            "{} does not hold a development app: {e} ({fix})",
            path.display()
        )
    })?;
    let app = format!("{}:{}", stored.id, stored.secret)
        .parse::<App>()
        .map_err(|e| {
            anyhow::anyhow!(
                "{} holds a bad development app: {e} ({fix})",
                path.display()
            )
        })?;
    Ok(Some(app))
}

enum Written {
    /// The file now holds our app.
    Ours,
    /// A file appeared meanwhile (and `replace` was not asked for): it was left alone.
    Theirs,
}

/// Writes `app` to `path` atomically with mode 0600: a temporary file, then a link (which
/// refuses to overwrite) or, with `replace`, a rename.
fn write(dir: &Path, path: &Path, app: &App, replace: bool) -> anyhow::Result<Written> {
    create_private_dir(dir)
        .with_context(|| format!("cannot create the state directory {}", dir.display()))?;
    let tmp = dir.join(format!(
        ".{FILE_NAME}.{}.{}",
        std::process::id(),
        crate::ids::random_hex(4)
    ));
    let result = write_new(&tmp, app).and_then(|()| {
        if replace {
            std::fs::rename(&tmp, path).map(|()| Written::Ours)
        } else {
            match std::fs::hard_link(&tmp, path) {
                Ok(()) => Ok(Written::Ours),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(Written::Theirs),
                Err(e) => Err(e),
            }
        }
    });
    // Gone already after a rename; a leftover otherwise.
    let _ = std::fs::remove_file(&tmp);
    result.with_context(|| format!("cannot write {}", path.display()))
}

fn write_new(tmp: &Path, app: &App) -> std::io::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(tmp)?;
    let stored = Stored {
        id: app.id.clone(),
        secret: app.secret.clone(),
    };
    let mut text = serde_json::to_string_pretty(&stored).map_err(std::io::Error::other)?;
    text.push('\n');
    file.write_all(text.as_bytes())?;
    file.sync_all()
}

fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "tm-dev-app-{name}-{}-{}",
            std::process::id(),
            crate::ids::random_hex(4)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    fn app(id: &str) -> App {
        App {
            id: id.into(),
            secret: format!("{id}-secret"),
        }
    }

    #[test]
    fn made_once_then_reused_and_renewed_on_request() {
        let dir = temp_dir("reuse").join("nested");
        let (first, kept) = load_or_create(Some(&dir), false, || app("one")).expect("created");
        assert_eq!(first, app("one"));
        assert_eq!(kept, Kept::Created(dir.join(FILE_NAME)));
        let (again, kept) = load_or_create(Some(&dir), false, || app("two")).expect("reused");
        assert_eq!(again, app("one"), "a restart keeps the app");
        assert_eq!(kept, Kept::Reused(dir.join(FILE_NAME)));
        let (renewed, kept) = load_or_create(Some(&dir), true, || app("three")).expect("renewed");
        assert_eq!(renewed, app("three"));
        assert_eq!(kept, Kept::Created(dir.join(FILE_NAME)));
        let (after, _) = load_or_create(Some(&dir), false, || app("four")).expect("reused");
        assert_eq!(after, app("three"));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.join(FILE_NAME))
                .expect("file")
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600, "only the owner reads the secret");
        }
        let leftovers: Vec<_> = std::fs::read_dir(&dir)
            .expect("dir")
            .filter_map(Result::ok)
            .map(|e| e.file_name())
            .collect();
        assert_eq!(leftovers, [FILE_NAME], "no temporary files left behind");
        let _ = std::fs::remove_dir_all(dir.parent().expect("parent"));
    }

    #[test]
    fn a_corrupt_file_is_an_error_naming_it_and_the_way_out() {
        let dir = temp_dir("corrupt");
        std::fs::create_dir_all(&dir).expect("dir");
        for bad in [
            "not json",
            r#"{"id":"a b","secret":"s"}"#,
            r#"{"id":"a","secret":""}"#,
            r#"{"id":"a"}"#,
        ] {
            std::fs::write(dir.join(FILE_NAME), bad).expect("write");
            let err = load_or_create(Some(&dir), false, || app("new"))
                .expect_err("a corrupt file is refused");
            let text = format!("{err:#}");
            assert!(text.contains(FILE_NAME), "{text}");
            assert!(text.contains("--new-dev-app"), "{text}");
            assert!(!text.contains('\n'), "one line: {text}");
        }
        std::fs::write(dir.join(FILE_NAME), vec![b' '; 10_000]).expect("write");
        assert!(load_or_create(Some(&dir), false, || app("new")).is_err());
        let (renewed, _) =
            load_or_create(Some(&dir), true, || app("new")).expect("--new-dev-app replaces it");
        assert_eq!(renewed, app("new"));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn an_unwritable_state_dir_makes_an_app_for_this_run() {
        let dir = temp_dir("unwritable");
        // A file where the directory should be: it cannot be created.
        std::fs::write(&dir, "a file").expect("write");
        let (made, kept) =
            load_or_create(Some(&dir.join("sub")), false, || app("run")).expect("not fatal");
        assert_eq!(made, app("run"));
        assert!(matches!(kept, Kept::NotKept(_)), "{kept:?}");
        let (_, kept) = load_or_create(None, false, || app("run")).expect("not fatal");
        assert!(matches!(kept, Kept::NotKept(_)), "{kept:?}");
        let _ = std::fs::remove_file(&dir);
    }
}
