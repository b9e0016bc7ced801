//! The node binary's configuration layers, as an operator meets them: a flag beats its
//! `TRACKMESH_*` variable, which beats the `--config` file, which beats the default.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use trackmesh_tests::node::{free_udp_addr, node_binary, parse_ready_fields};

#[test]
fn flag_beats_env_beats_file() {
    let dir = std::env::temp_dir().join(format!("tm-layers-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let file = dir.join("node.toml");
    let gossip = free_udp_addr().expect("a free UDP port");
    std::fs::write(
        &file,
        format!(
            "http = \"127.0.0.1:0\"\nmedia = \"127.0.0.1:0\"\nrelay = \"127.0.0.1:0\"\n\
             gossip = \"{gossip}\"\nregion = \"from-file\"\nnode-id = \"from-file\"\n\
             app = [\"fileapp:s\"]\n"
        ),
    )
    .expect("write config");

    let mut child = Command::new(node_binary())
        .args(["--config"])
        .arg(&file)
        .args(["--node-id", "from-flag"])
        .env("TRACKMESH_NODE_ID", "from-env")
        .env("TRACKMESH_REGION", "from-env")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("starting the node binary (cargo build -p trackmesh-node --bins)");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().take(100) {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut ready = None;
    while let Ok(line) = rx.recv_timeout(Duration::from_secs(20)) {
        if let Some(fields) = parse_ready_fields(&line) {
            ready = Some(fields);
            break;
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    let _ = std::fs::remove_dir_all(&dir);

    let ready = ready.expect("the node printed its ready line");
    let field = |k: &str| ready.get(k).map(String::as_str);
    assert_eq!(
        field("node"),
        Some("from-flag"),
        "a flag beats env and file"
    );
    assert_eq!(field("region"), Some("from-env"), "env beats the file");
    let gossip = gossip.to_string();
    assert_eq!(
        field("gossip"),
        Some(gossip.as_str()),
        "the file beats the default"
    );
}

/// A node that cannot start says why once, on one line, and exits with failure.
#[test]
fn a_fatal_error_is_one_line() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("a port to take");
    let http = taken.local_addr().expect("addr").to_string();
    let gossip = free_udp_addr().expect("a free UDP port").to_string();
    let out = Command::new(node_binary())
        .args([
            "--http",
            &http,
            "--media",
            "127.0.0.1:0",
            "--relay",
            "127.0.0.1:0",
            // An app of its own: no development app is kept in the user's data directory.
            "--app",
            "fatal:secret",
        ])
        .args(["--gossip", &gossip])
        .stdin(Stdio::null())
        .output()
        .expect("running the node binary");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    let fatal: Vec<&str> = err
        .lines()
        .filter(|l| l.contains("binding the HTTP listener"))
        .collect();
    assert_eq!(fatal.len(), 1, "{err}");
    assert!(fatal[0].starts_with("trackmesh: "), "{err}");
}

/// Logs written to a file or a pipe carry no colour codes.
#[test]
fn logs_to_a_file_have_no_ansi_codes() {
    // A process node's stderr goes to a file.
    let node = trackmesh_tests::TestNode::start_process(&[]).expect("node");
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !node.log().contains("serving") {
        assert!(
            std::time::Instant::now() < deadline,
            "no serving line: {}",
            node.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let log = node.log();
    assert!(!log.contains('\x1b'), "ANSI codes in a log file: {log}");
}

/// Starts the node binary with `args` (and `env`), waits (bounded) for its ready line, stops it,
/// and returns the `development app` line printed before it, if any.
fn dev_app_line(args: &[&str], env: &[(&str, &std::path::Path)]) -> Option<String> {
    let gossip = free_udp_addr().expect("a free UDP port").to_string();
    let mut cmd = Command::new(node_binary());
    cmd.args([
        "--http",
        "127.0.0.1:0",
        "--media",
        "127.0.0.1:0",
        "--relay",
        "127.0.0.1:0",
        "--gossip",
        &gossip,
    ])
    .args(args)
    .stdin(Stdio::null())
    .stdout(Stdio::piped())
    .stderr(Stdio::null());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("starting the node binary");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().take(100) {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut dev = None;
    let mut ready = None;
    while let Ok(line) = rx.recv_timeout(Duration::from_secs(20)) {
        if line.starts_with("development app ") {
            dev = Some(line);
        } else if let Some(fields) = parse_ready_fields(&line) {
            ready = Some(fields);
            break;
        }
    }
    // What a client sees: the printed app opens the API.
    let status = match (&dev, &ready) {
        (Some(line), Some(fields)) => {
            let (id, secret) = id_and_secret(line);
            Some(sessions_new_status(&fields["http"], &id, &secret))
        }
        _ => None,
    };
    let _ = child.kill();
    let _ = child.wait();
    assert!(ready.is_some(), "the node printed its ready line");
    if let Some(status) = status {
        assert_eq!(
            status, "HTTP/1.1 201 Created",
            "sessions/new with the printed app"
        );
    }
    dev
}

/// The status line of `POST sessions/new` for app `id` with bearer `secret` at `http`.
fn sessions_new_status(http: &str, id: &str, secret: &str) -> String {
    use std::io::{Read, Write};
    let mut conn = std::net::TcpStream::connect(http).expect("connect to the node");
    conn.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("read timeout");
    write!(
        conn,
        "POST /v1/apps/{id}/sessions/new HTTP/1.1\r\nHost: node\r\nAuthorization: Bearer {secret}\r\n\
         Content-Length: 0\r\nConnection: close\r\n\r\n"
    )
    .expect("send");
    let mut answer = String::new();
    let _ = conn.take(64 * 1024).read_to_string(&mut answer);
    answer.lines().next().unwrap_or_default().to_string()
}

/// `id=` and `secret=` of a `development app` line.
fn id_and_secret(line: &str) -> (String, String) {
    let field = |k: &str| {
        line.split_whitespace()
            .find_map(|f| f.strip_prefix(k))
            .unwrap_or_else(|| panic!("no {k} in {line:?}"))
            .to_string()
    };
    (field("id="), field("secret="))
}

fn temp_dir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("tm-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

/// Without `--app` the node keeps its development app: a restart prints the same id and secret
/// (and they open the API), `--new-dev-app` makes a new one, and the file is the owner's only.
#[test]
fn the_development_app_survives_a_restart() {
    let dir = temp_dir("state");
    let state = dir.to_str().expect("a UTF-8 temp path");
    let first = dev_app_line(&["--state-dir", state], &[]).expect("a development app line");
    let file = dir.join("dev-app.json");
    assert!(first.contains(&file.display().to_string()), "{first}");
    let again = dev_app_line(&["--state-dir", state], &[]).expect("a development app line");
    assert_eq!(
        id_and_secret(&first),
        id_and_secret(&again),
        "{first} / {again}"
    );
    assert!(again.contains("reused"), "{again}");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&file)
            .expect("the state file")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{file:?}");
    }

    let renewed = dev_app_line(&["--state-dir", state, "--new-dev-app"], &[])
        .expect("a development app line");
    assert_ne!(id_and_secret(&first), id_and_secret(&renewed));
    let after = dev_app_line(&["--state-dir", state], &[]).expect("a development app line");
    assert_eq!(id_and_secret(&renewed), id_and_secret(&after));

    // With an app given, nothing is printed, and the kept app is left alone.
    assert!(dev_app_line(&["--state-dir", state, "--app", "a:b"], &[]).is_none());
    let last = dev_app_line(&["--state-dir", state], &[]).expect("a development app line");
    assert_eq!(id_and_secret(&after), id_and_secret(&last));
    let _ = std::fs::remove_dir_all(&dir);
}

/// The default state directory is under XDG_DATA_HOME.
#[test]
fn the_development_app_is_kept_under_xdg_data_home_by_default() {
    let dir = temp_dir("xdg");
    let line = dev_app_line(&[], &[("XDG_DATA_HOME", &dir)]).expect("a development app line");
    let file = dir.join("trackmesh").join("dev-app.json");
    assert!(file.exists(), "{line}");
    assert!(line.contains(&file.display().to_string()), "{line}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// A state file that does not hold an app stops the node with one line naming the file and the
/// way out, rather than silently replacing the app every client holds.
#[test]
fn a_corrupt_development_app_file_is_one_clear_error() {
    let dir = temp_dir("corrupt");
    std::fs::create_dir_all(&dir).expect("dir");
    let file = dir.join("dev-app.json");
    std::fs::write(&file, "{ not json").expect("write");
    let gossip = free_udp_addr().expect("a free UDP port").to_string();
    let out = Command::new(node_binary())
        .args(["--http", "127.0.0.1:0", "--media", "127.0.0.1:0"])
        .args(["--relay", "127.0.0.1:0", "--gossip", &gossip])
        .arg("--state-dir")
        .arg(&dir)
        .stdin(Stdio::null())
        .output()
        .expect("running the node binary");
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = err
        .lines()
        .filter(|l| l.starts_with("trackmesh: "))
        .collect();
    assert_eq!(lines.len(), 1, "{err}");
    assert!(lines[0].contains(&file.display().to_string()), "{err}");
    assert!(lines[0].contains("--new-dev-app"), "{err}");
    assert_eq!(
        std::fs::read_to_string(&file).expect("file"),
        "{ not json",
        "left alone"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
