//! `health`: `GET /healthz` and `GET /readyz` of the node given by `--node` (no token).
//! Exit 0 when ready, 1 when not ready (e.g. draining), 2 when the node cannot be reached.

use reqwest::Method;
use serde_json::{Value, json};

use super::{Output, pretty};
use crate::client::{Answer, Client};
use crate::error::{CtlError, exit};
use crate::render::{key_values, yes_no};

pub async fn run(client: &Client, as_json: bool) -> Result<Output, CtlError> {
    let probed = async {
        let healthz = client.request(Method::GET, "/healthz", false).await?;
        let readyz = client.request(Method::GET, "/readyz", false).await?;
        Ok::<_, CtlError>((healthz, readyz))
    }
    .await;
    let (healthz, readyz) = match probed {
        Ok(p) => p,
        Err(e @ CtlError::Unreachable { .. }) => {
            return Ok(Output {
                stdout: String::new(),
                stderr: e.to_string(),
                code: exit::USAGE,
            });
        }
        Err(e) => return Err(e),
    };
    let ready = healthz.status == 200 && readyz.status == 200;
    let stdout = if as_json {
        pretty(&json!({
            "node": client.base(),
            "healthz": probe_json(&healthz),
            "readyz": probe_json(&readyz),
            "ready": ready,
        }))
    } else {
        render(client.base(), &healthz, &readyz, ready)
    };
    Ok(if ready {
        Output::ok(stdout)
    } else {
        let why = if healthz.status != 200 {
            format!("healthz: {}", summary(&healthz))
        } else {
            summary(&readyz)
        };
        Output::negative(stdout, format!("{} is not ready: {why}", client.base()))
    })
}

fn probe_json(a: &Answer) -> Value {
    json!({ "status": a.status, "body": a.body })
}

/// `200`, `503 temporarily_unavailable_error: draining`, ...
pub fn summary(a: &Answer) -> String {
    let detail = match (a.error_code(), a.error_description()) {
        (Some(c), Some(d)) => format!("{c}: {d}"),
        (Some(c), None) => c,
        (None, Some(d)) => d,
        (None, None) => String::new(),
    };
    if detail.is_empty() {
        a.status.to_string()
    } else {
        format!("{} {detail}", a.status)
    }
}

pub fn render(node: &str, healthz: &Answer, readyz: &Answer, ready: bool) -> String {
    key_values(&[
        ("node", node.to_string()),
        ("healthz", summary(healthz)),
        ("readyz", summary(readyz)),
        ("ready", yes_no(ready)),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(status: u16, body: Value) -> Answer {
        Answer {
            status,
            raw: body.to_string(),
            body,
        }
    }

    #[test]
    fn renders_a_draining_node() {
        let h = answer(200, json!({"status": "ok"}));
        let r = answer(
            503,
            json!({"errorCode": "temporarily_unavailable_error", "errorDescription": "draining"}),
        );
        assert_eq!(
            render("http://127.0.0.1:7710", &h, &r, false),
            "node     http://127.0.0.1:7710\n\
             healthz  200\n\
             readyz   503 temporarily_unavailable_error: draining\n\
             ready    no\n"
        );
        assert_eq!(summary(&answer(200, json!({"ready": true}))), "200");
    }
}
