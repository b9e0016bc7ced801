//! `sessions [--node NODE]`: `GET /admin/sessions[?node=ID]`, and `session ID`:
//! `GET /admin/sessions/{sessionId}`.

use super::{Output, partial, pretty};
use crate::client::{Client, encode, segment};
use crate::error::CtlError;
use crate::model::{SessionInfo, Sessions, decode};
use crate::render::{Table, key_values, text, yes_no};

pub async fn list(client: &Client, on: Option<&str>, json: bool) -> Result<Output, CtlError> {
    let path = match on {
        None => "/admin/sessions".to_string(),
        Some(n) => format!("/admin/sessions?node={}", encode(n)),
    };
    let v = client.admin_get(&path).await?;
    let sessions: Sessions = decode(&path, &v)?;
    Ok(partial(
        if json { pretty(&v) } else { table(&sessions) },
        &sessions.unanswered,
        "sessions",
    ))
}

pub async fn one(client: &Client, id: &str, json: bool) -> Result<Output, CtlError> {
    let path = format!("/admin/sessions/{}", segment("session id", id)?);
    let v = client.admin_get(&path).await?;
    let session: SessionInfo = decode(&path, &v)?;
    Ok(Output::ok(if json { pretty(&v) } else { detail(&session) }))
}

/// (pushed, pulled, active) track counts of a session.
fn counts(s: &SessionInfo) -> (usize, usize, usize) {
    let pushed = s.tracks.iter().filter(|t| t.location == "local").count();
    let pulled = s.tracks.iter().filter(|t| t.location == "remote").count();
    let active = s.tracks.iter().filter(|t| t.status == "active").count();
    (pushed, pulled, active)
}

pub fn table(s: &Sessions) -> String {
    let mut t = Table::new(&[
        "NODE",
        "SESSION",
        "APP",
        "CONNECTED",
        "PUSHED",
        "PULLED",
        "ACTIVE",
    ]);
    let mut sessions: Vec<&SessionInfo> = s.sessions.iter().collect();
    sessions.sort_by(|a, b| (&a.node, &a.session_id).cmp(&(&b.node, &b.session_id)));
    for session in sessions {
        let (pushed, pulled, active) = counts(session);
        t.row([
            text(&session.node),
            text(&session.session_id),
            text(&session.app),
            yes_no(session.connected),
            pushed.to_string(),
            pulled.to_string(),
            active.to_string(),
        ]);
    }
    let mut out = t.render();
    out.push_str(&format!("{} sessions\n", s.sessions.len()));
    out
}

pub fn detail(s: &SessionInfo) -> String {
    let mut out = key_values(&[
        ("session", text(&s.session_id)),
        ("node", text(&s.node)),
        ("app", text(&s.app)),
        ("connected", yes_no(s.connected)),
    ]);
    out.push('\n');
    let mut t = Table::new(&["MID", "LOCATION", "TRACK", "FROM SESSION", "STATUS"]);
    for track in &s.tracks {
        t.row([
            text(&track.mid),
            text(&track.location),
            text(&track.track_name),
            text(track.session_id.as_deref().unwrap_or("")),
            text(&track.status),
        ]);
    }
    out.push_str(&t.render());
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::SessionTrack;

    fn track(
        location: &str,
        mid: &str,
        name: &str,
        from: Option<&str>,
        status: &str,
    ) -> SessionTrack {
        SessionTrack {
            location: location.into(),
            mid: mid.into(),
            track_name: name.into(),
            session_id: from.map(str::to_string),
            status: status.into(),
        }
    }

    fn sample() -> SessionInfo {
        SessionInfo {
            node: "b".into(),
            session_id: "bbbb0000s2".into(),
            app: "demo".into(),
            connected: true,
            tracks: vec![
                track("local", "0", "cam", None, "active"),
                track("remote", "1", "mic", Some("aaaa0000s1"), "inactive"),
            ],
        }
    }

    #[test]
    fn renders_the_session_list() {
        let s = Sessions {
            sessions: vec![
                sample(),
                SessionInfo {
                    node: "a".into(),
                    session_id: "aaaa0000s1".into(),
                    app: "demo".into(),
                    connected: false,
                    tracks: vec![],
                },
            ],
            unanswered: vec![],
        };
        assert_eq!(
            table(&s),
            "NODE  SESSION     APP   CONNECTED  PUSHED  PULLED  ACTIVE\n\
             a     aaaa0000s1  demo  no         0       0       0\n\
             b     bbbb0000s2  demo  yes        1       1       1\n\
             2 sessions\n"
        );
    }

    #[test]
    fn renders_one_session() {
        assert_eq!(
            detail(&sample()),
            "session    bbbb0000s2\n\
             node       b\n\
             app        demo\n\
             connected  yes\n\
             \n\
             MID  LOCATION  TRACK  FROM SESSION  STATUS\n\
             0    local     cam    -             active\n\
             1    remote    mic    aaaa0000s1    inactive\n"
        );
    }
}
