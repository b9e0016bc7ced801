//! `tracks`: `GET /admin/tracks`.

use super::{Output, partial, pretty};
use crate::client::Client;
use crate::error::CtlError;
use crate::model::{Publication, Tracks, decode};
use crate::render::{Table, count, list, text};

const PATH: &str = "/admin/tracks";

pub async fn run(client: &Client, json: bool) -> Result<Output, CtlError> {
    let v = client.admin_get(PATH).await?;
    let tracks: Tracks = decode(PATH, &v)?;
    Ok(partial(
        if json { pretty(&v) } else { table(&tracks) },
        &tracks.unanswered,
        "tracks",
    ))
}

pub fn table(t: &Tracks) -> String {
    let mut table = Table::new(&[
        "NODE",
        "SESSION",
        "TRACK",
        "KIND",
        "SUBSCRIBERS",
        "RELAYED TO",
    ]);
    let mut tracks: Vec<&Publication> = t.tracks.iter().collect();
    tracks.sort_by(|a, b| {
        (&a.node, &a.session_id, &a.track_name).cmp(&(&b.node, &b.session_id, &b.track_name))
    });
    for p in tracks {
        table.row([
            text(&p.node),
            text(&p.session_id),
            text(&p.track_name),
            text(&p.kind),
            count(p.subscribers),
            list(&p.relayed_to),
        ]);
    }
    let mut out = table.render();
    out.push_str(&format!("{} tracks\n", t.tracks.len()));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_publications() {
        let t = Tracks {
            tracks: vec![
                Publication {
                    node: "a".into(),
                    session_id: "aaaa0000s1".into(),
                    track_name: "pub-video".into(),
                    kind: "video".into(),
                    subscribers: Some(0),
                    relayed_to: vec!["b".into(), "c".into()],
                },
                Publication {
                    node: "a".into(),
                    session_id: "aaaa0000s1".into(),
                    track_name: "pub-audio".into(),
                    kind: "audio".into(),
                    subscribers: Some(2),
                    relayed_to: vec![],
                },
            ],
            unanswered: vec![],
        };
        assert_eq!(
            table(&t),
            "NODE  SESSION     TRACK      KIND   SUBSCRIBERS  RELAYED TO\n\
             a     aaaa0000s1  pub-audio  audio  2            -\n\
             a     aaaa0000s1  pub-video  video  0            b,c\n\
             2 tracks\n"
        );
        assert_eq!(
            table(&Tracks::default()),
            "NODE  SESSION  TRACK  KIND  SUBSCRIBERS  RELAYED TO\n0 tracks\n"
        );
    }
}
