//! The load generator's client: the test client ([`trackmesh_tests::Peer`], the test kit's
//! str0m client plus the Calls flows) driven by one tokio task per client, so hundreds fit in
//! one process. Publishers send the test kit's synthetic Opus/VP8 frames; subscribers record
//! per track frames, keyframes, sequence gaps (lost frames), broken video frames (a decoder
//! model), one-way latency and first-frame times ([`ClientStats`]).
//!
//! What the scenarios add: a pull that fails unless every item got a mid, and a close that
//! fails on an error code.

use std::time::Duration;

use anyhow::{Context, bail};
pub use trackmesh_testkit::client::{
    ClientConfig, ClientStats, RawSample, RxWindow, TrackRx, TrackTx,
};
use trackmesh_tests::api::CallsClient;
pub use trackmesh_tests::peer::PushedTrack as Pushed;

/// A load client: [`Client::start`] spawns its task.
pub type Client = trackmesh_tests::Peer;

/// `not_found_track_error` items of a pull are retried for this long (in a cluster the owner
/// may learn a track a little after its publisher starts), every [`NOT_FOUND_STEP`].
const NOT_FOUND_RETRY: Duration = Duration::from_secs(5);
const NOT_FOUND_STEP: Duration = Duration::from_millis(100);

/// A pulled track: the mid the SFU gave it.
#[derive(Clone, Debug)]
pub struct Pulled {
    pub session_id: String,
    pub track_name: String,
    pub mid: String,
}

/// Subscribe to `remote` (sessionId, trackName), answering the SFU's offers; items answered
/// `not_found_track_error` are retried for a few seconds. Fails unless every item got a mid.
pub async fn pull(
    client: &Client,
    api: &CallsClient,
    session_id: &str,
    remote: &[(String, String)],
) -> anyhow::Result<Vec<Pulled>> {
    let resp = client
        .pull_retrying(api, session_id, remote, NOT_FOUND_RETRY, NOT_FOUND_STEP)
        .await?;
    let mut pulled = Vec::with_capacity(resp.tracks.len());
    for item in resp.tracks {
        let name = item.track_name.clone().unwrap_or_default();
        match (&item.error_code, item.mid.as_deref()) {
            (Some(code), _) => bail!("pull of {name}: {code}: {:?}", item.error_description),
            (None, Some(mid)) if !mid.is_empty() => pulled.push(Pulled {
                session_id: item.session_id.clone().unwrap_or_default(),
                track_name: name,
                mid: mid.to_string(),
            }),
            (None, _) => bail!("pull item without a mid: {item:?}"),
        }
    }
    Ok(pulled)
}

/// `PUT tracks/close` with force (no SDP) for these mids.
pub async fn close(
    client: &Client,
    api: &CallsClient,
    session_id: &str,
    mids: &[String],
) -> anyhow::Result<()> {
    let resp = client
        .close_force(api, session_id, mids)
        .await
        .with_context(|| format!("{}: tracks/close", client.name()))?;
    if let Some(code) = resp.error_code {
        bail!("tracks/close: {code}: {:?}", resp.error_description);
    }
    Ok(())
}
