//! API request bodies: arbitrary bytes decoded as every Calls request type, as the handlers do,
//! must never panic; a session description that decodes re-encodes to the same value.
#![no_main]

use libfuzzer_sys::fuzz_target;
use trackmesh_node::api::wire::{
    CloseRequest, NewSessionRequest, RenegotiateRequest, SessionDescription, TrackObject,
    TracksRequest, UpdateRequest,
};

/// Decodes like `api::guard::decode` and renders the error as the API would.
fn decode<T: serde::de::DeserializeOwned>(data: &[u8]) -> Option<T> {
    match serde_json::from_slice(data) {
        Ok(v) => Some(v),
        Err(e) => {
            let _ = format!("JSON body validation error: {e}");
            None
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let _ = decode::<NewSessionRequest>(data);
    let _ = decode::<RenegotiateRequest>(data);
    let _ = decode::<UpdateRequest>(data);
    let _ = decode::<CloseRequest>(data);
    if let Some(tracks) = decode::<Vec<TrackObject>>(data) {
        // `simulcast.preferredRid` is checked after decoding.
        for t in tracks {
            let _ = t.simulcast.map(|s| s.to_prefs());
        }
    }
    if let Some(req) = decode::<TracksRequest>(data) {
        let _ = req.tracks.map(|t| t.len());
    }
    if let Some(d) = decode::<SessionDescription>(data) {
        let bytes = serde_json::to_vec(&d).expect("a decoded description re-encodes");
        let again: SessionDescription =
            serde_json::from_slice(&bytes).expect("a re-encoded description decodes");
        assert_eq!((again.kind, again.sdp), (d.kind, d.sdp));
    }
});
