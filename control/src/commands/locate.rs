//! `locate SESSION_ID/TRACK_NAME`: `GET /admin/locate/{sessionId}/{trackName}`.

use super::{Output, pretty};
use crate::cli::TrackRef;
use crate::client::{Client, segment};
use crate::error::CtlError;
use crate::model::{Located, decode};
use crate::render::{NONE, key_values, list, text};

pub async fn run(client: &Client, track: &TrackRef, json: bool) -> Result<Output, CtlError> {
    let path = format!(
        "/admin/locate/{}/{}",
        segment("session id", &track.session_id)?,
        segment("track name", &track.track_name)?
    );
    let v = client.admin_get(&path).await?;
    let located: Located = decode(&path, &v)?;
    let stdout = if json { pretty(&v) } else { render(&located) };
    Ok(match located.owner {
        Some(_) => Output::ok(stdout),
        None => Output::negative(
            stdout,
            format!(
                "no live node owns {}/{}",
                track.session_id, track.track_name
            ),
        ),
    })
}

pub fn render(l: &Located) -> String {
    let hubs: Vec<String> = l
        .hubs
        .iter()
        .map(|h| format!("{} ({})", text(&h.node), text(&h.region)))
        .collect();
    key_values(&[
        ("track", format!("{}/{}", l.session_id, l.track_name)),
        ("owner", l.owner.as_deref().map_or(NONE.into(), text)),
        (
            "hubs",
            if hubs.is_empty() {
                NONE.into()
            } else {
                hubs.join(", ")
            },
        ),
        ("subscribing nodes", list(&l.subscribing_nodes)),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Hub;

    #[test]
    fn renders_owner_hubs_and_subscribers() {
        let l = Located {
            session_id: "aaaa0000s1".into(),
            track_name: "pub-video".into(),
            owner: Some("a".into()),
            hubs: vec![Hub {
                region: "us".into(),
                node: "c".into(),
            }],
            subscribing_nodes: vec!["b".into(), "c".into()],
        };
        assert_eq!(
            render(&l),
            "track              aaaa0000s1/pub-video\n\
             owner              a\n\
             hubs               c (us)\n\
             subscribing nodes  b,c\n"
        );
        let nobody = Located {
            owner: None,
            ..Located::default()
        };
        assert!(render(&nobody).contains("owner              -\n"));
    }
}
