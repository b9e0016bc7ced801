//! `status [NODE]`: `GET /admin/status` (the node asked) or `/admin/status/{nodeId}`.

use super::{Output, pretty};
use crate::client::{Client, segment};
use crate::error::CtlError;
use crate::model::{Status, decode};
use crate::render::{count, duration, key_values, text, yes_no};

pub async fn run(client: &Client, node: Option<&str>, json: bool) -> Result<Output, CtlError> {
    let path = match node {
        None => "/admin/status".to_string(),
        Some(n) => format!("/admin/status/{}", segment("node id", n)?),
    };
    let v = client.admin_get(&path).await?;
    let status: Status = decode(&path, &v)?;
    Ok(Output::ok(if json { pretty(&v) } else { render(&status) }))
}

pub fn render(s: &Status) -> String {
    key_values(&[
        ("node", text(&s.node_id)),
        ("tag", text(&s.tag)),
        ("region", text(&s.region)),
        ("version", text(&s.version)),
        ("uptime", s.uptime_secs.map_or_else(|| "-".into(), duration)),
        ("draining", yes_no(s.draining)),
        ("sessions", count(s.sessions)),
        ("published tracks", count(s.published_tracks)),
        ("subscribed tracks", count(s.subscribed_tracks)),
        ("relay links", count(s.relay_links)),
        ("api", text(&s.api)),
        ("media", text(&s.media)),
        ("relay", text(&s.relay)),
        ("gossip", text(&s.gossip)),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_key_values() {
        let s = Status {
            node_id: "a".into(),
            tag: "0badcafe".into(),
            region: "eu".into(),
            version: "0.1.0".into(),
            uptime_secs: Some(3_725),
            draining: true,
            sessions: Some(2),
            published_tracks: Some(4),
            subscribed_tracks: Some(0),
            relay_links: None,
            api: "http://127.0.0.1:7700".into(),
            media: "127.0.0.1:7701".into(),
            relay: "127.0.0.1:7703".into(),
            gossip: String::new(),
        };
        assert_eq!(
            render(&s),
            "node               a\n\
             tag                0badcafe\n\
             region             eu\n\
             version            0.1.0\n\
             uptime             1h 2m\n\
             draining           yes\n\
             sessions           2\n\
             published tracks   4\n\
             subscribed tracks  0\n\
             relay links        -\n\
             api                http://127.0.0.1:7700\n\
             media              127.0.0.1:7701\n\
             relay              127.0.0.1:7703\n\
             gossip             -\n"
        );
    }
}
