//! `drain NODE` / `undrain NODE`: `POST /admin/drain/{nodeId}` / `POST /admin/undrain/{nodeId}`.

use super::{Output, pretty};
use crate::client::{Client, segment};
use crate::error::CtlError;
use crate::model::{Drained, decode};

pub async fn run(client: &Client, node: &str, drain: bool, json: bool) -> Result<Output, CtlError> {
    let verb = if drain { "drain" } else { "undrain" };
    let path = format!("/admin/{verb}/{}", segment("node id", node)?);
    let v = client.admin_post(&path).await?;
    let answer: Drained = decode(&path, &v)?;
    let stdout = if json {
        pretty(&v)
    } else {
        render(node, &answer)
    };
    // The node must confirm the state asked for.
    Ok(match answer.draining {
        Some(d) if d == drain => Output::ok(stdout),
        other => Output::negative(
            stdout,
            format!("{path} answered draining={other:?}, expected {drain}"),
        ),
    })
}

pub fn render(asked: &str, d: &Drained) -> String {
    let node = if d.node_id.is_empty() {
        asked
    } else {
        &d.node_id
    };
    match d.draining {
        Some(true) => format!(
            "node {node} is draining: it takes no new sessions, existing ones keep working\n"
        ),
        Some(false) => format!("node {node} is not draining: it takes new sessions\n"),
        None => format!("node {node}: draining state unknown\n"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_the_new_state() {
        let d = Drained {
            node_id: "b".into(),
            draining: Some(true),
        };
        assert!(render("x", &d).starts_with("node b is draining"));
        let d = Drained {
            node_id: String::new(),
            draining: Some(false),
        };
        assert_eq!(
            render("c", &d),
            "node c is not draining: it takes new sessions\n"
        );
    }
}
