//! `ticket`: asks the node to issue a room ticket (`POST /v1/apps/{app}/rooms/{room}/tickets`)
//! with the app secret as bearer. Unlike stream tokens, tickets cannot be minted offline: the
//! issuing node keeps their single use.

use serde_json::{Value, json};

use super::{Output, pretty};
use crate::cli::TicketArgs;
use crate::client::{Client, segment};
use crate::error::CtlError;

pub async fn run(client: &Client, args: &TicketArgs, json: bool) -> Result<Output, CtlError> {
    let node = client.to(client.base(), Some(args.secret.clone()))?;
    let path = format!(
        "/v1/apps/{}/rooms/{}/tickets",
        segment("app id", &args.app)?,
        segment("room id", &args.room)?
    );
    let mut body = json!({ "direction": args.direction, "ttl": args.ttl });
    if let Some(user) = &args.user {
        body["user"] = json!(user);
    }
    let v = node.post_json(&path, &body).await?;
    if json {
        return Ok(Output::ok(pretty(&v)));
    }
    let token = v
        .get("access_token")
        .and_then(Value::as_str)
        .ok_or_else(|| CtlError::BadAnswer {
            path: path.clone(),
            reason: format!("no access_token in {v}"),
        })?;
    Ok(Output::ok(format!("{}\n", crate::render::clean(token))))
}
