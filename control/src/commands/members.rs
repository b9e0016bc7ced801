//! `members`: `GET /admin/cluster`.

use super::{Output, pretty};
use crate::client::Client;
use crate::error::CtlError;
use crate::model::{ClusterView, Member, decode};
use crate::render::{Table, count, text};

const PATH: &str = "/admin/cluster";

pub async fn run(client: &Client, json: bool) -> Result<Output, CtlError> {
    let v = client.admin_get(PATH).await?;
    let view: ClusterView = decode(PATH, &v)?;
    Ok(duplicates(
        if json { pretty(&v) } else { table(&view) },
        &view,
    ))
}

/// The list as it is, but a node id that several live nodes run under is a mistake to fix
/// (only the newest run is used): named on stderr, exit 1.
fn duplicates(stdout: String, view: &ClusterView) -> Output {
    if view.duplicate_node_ids.is_empty() {
        return Output::ok(stdout);
    }
    Output::negative(
        stdout,
        format!(
            "more than one live node runs under the node id {}: give each node its own --node-id",
            view.duplicate_node_ids.join(", ")
        ),
    )
}

/// `live`, `draining` (live and draining) or `dead`.
pub fn state(m: &Member) -> &'static str {
    match (m.live, m.draining) {
        (false, _) => "dead",
        (true, true) => "draining",
        (true, false) => "live",
    }
}

/// One row per member, the answering node marked with `*`.
pub fn table(view: &ClusterView) -> String {
    let mut t = Table::new(&[
        "NODE", "TAG", "REGION", "STATE", "SESSIONS", "TRACKS", "RELAYS", "VERSION", "API",
    ]);
    let mut members: Vec<&Member> = view.members.iter().collect();
    members.sort_by(|a, b| (&a.region, &a.node_id).cmp(&(&b.region, &b.node_id)));
    for m in members {
        let name = if m.node_id == view.self_id {
            format!("{}*", m.node_id)
        } else {
            m.node_id.clone()
        };
        t.row([
            name,
            text(&m.tag),
            text(&m.region),
            state(m).to_string(),
            count(m.sessions),
            count(m.tracks),
            count(m.relays),
            text(&m.version),
            text(&m.api),
        ]);
    }
    let mut out = t.render();
    out.push_str(&format!(
        "{} members, {} live; * = the node answering\n",
        view.members.len(),
        view.members.iter().filter(|m| m.live).count()
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(id: &str, region: &str, live: bool, draining: bool) -> Member {
        Member {
            node_id: id.into(),
            tag: format!("{id}{id}{id}{id}0000")[..8].to_string(),
            region: region.into(),
            api: format!("http://{id}:7700"),
            relay: String::new(),
            live,
            draining,
            sessions: Some(1),
            tracks: None,
            relays: Some(0),
            version: "0.1.0".into(),
        }
    }

    #[test]
    fn renders_members_sorted_by_region_and_marks_self() {
        let view = ClusterView {
            self_id: "b".into(),
            members: vec![
                member("c", "us", false, false),
                member("b", "eu", true, true),
                member("a", "eu", true, false),
            ],
            duplicate_node_ids: vec![],
        };
        assert_eq!(
            table(&view),
            "NODE  TAG       REGION  STATE     SESSIONS  TRACKS  RELAYS  VERSION  API\n\
             a     aaaa0000  eu      live      1         -       0       0.1.0    http://a:7700\n\
             b*    bbbb0000  eu      draining  1         -       0       0.1.0    http://b:7700\n\
             c     cccc0000  us      dead      1         -       0       0.1.0    http://c:7700\n\
             3 members, 2 live; * = the node answering\n"
        );
    }

    #[test]
    fn a_duplicated_node_id_is_named_and_exits_negative() {
        let mut view = ClusterView {
            self_id: "a".into(),
            members: vec![member("a", "eu", true, false)],
            duplicate_node_ids: vec![],
        };
        assert_eq!(duplicates("t".into(), &view), Output::ok("t".into()));
        view.duplicate_node_ids = vec!["a".into()];
        let out = duplicates("t".into(), &view);
        assert_eq!(
            (out.stdout.as_str(), out.code),
            ("t", crate::error::exit::NEGATIVE)
        );
        assert!(out.stderr.contains("node id a:"), "{}", out.stderr);
    }
}
