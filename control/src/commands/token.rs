//! `token`: mints a stream token (a JWT signed with the app secret) with the same code the node
//! uses, so no node is needed; with `--node URL` the node mints it (`POST /v1/apps/{app}/tokens`).

use serde_json::{Value, json};

use super::{Output, pretty};
use crate::cli::TokenArgs;
use crate::client::{Client, segment};
use crate::error::CtlError;

pub async fn run(client: &Client, args: &TokenArgs, json: bool) -> Result<Output, CtlError> {
    let (token, expires_at) = match &args.node {
        None => mint_here(args)?,
        Some(node) => mint_by(&client.to(node, Some(args.secret.clone()))?, args).await?,
    };
    Ok(Output::ok(if json {
        pretty(&json!({ "token": token, "expiresAt": expires_at }))
    } else {
        format!("{token}\n")
    }))
}

/// `(token, expiresAt)` minted in this process.
fn mint_here(args: &TokenArgs) -> Result<(String, String), CtlError> {
    let minted = trackmesh_tokens::mint(
        args.secret.as_bytes(),
        &args.app,
        &args.stream,
        args.mode,
        args.ttl,
        trackmesh_tokens::unix_now(),
    )
    .map_err(|e| CtlError::Negative(format!("cannot mint the token: {e}")))?;
    Ok((minted.token, trackmesh_tokens::rfc3339(minted.claims.exp)))
}

/// `(token, expiresAt)` from the node behind `client` (whose bearer is the app secret).
async fn mint_by(client: &Client, args: &TokenArgs) -> Result<(String, String), CtlError> {
    let path = format!("/v1/apps/{}/tokens", segment("app id", &args.app)?);
    let body = json!({
        "stream": args.stream,
        "mode": args.mode,
        "ttlSeconds": args.ttl.as_secs(),
    });
    let v = client.post_json(&path, &body).await?;
    let field = |key: &str| {
        v.get(key)
            .and_then(Value::as_str)
            .map(str::to_string)
            .ok_or_else(|| CtlError::BadAnswer {
                path: path.clone(),
                reason: format!("no {key} in {v}"),
            })
    };
    Ok((field("token")?, field("expiresAt")?))
}
