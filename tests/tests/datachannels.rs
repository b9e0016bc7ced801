//! DataChannels through a real node over HTTP and UDP: the Calls `datachannels/*` flow with the
//! str0m client (establish, renegotiate, new with the returned ids), messages in order to every
//! subscriber, `GET session`, and the Calls errors.

use std::time::Duration;

use reqwest::Method;
use serde_json::{Value, json};
use str0m::channel::{ChannelConfig, ChannelId};
use trackmesh_tests::{CallsClient, Peer, TestNode};

const TIMEOUT: Duration = Duration::from_secs(10);
const POLL: Duration = Duration::from_millis(50);

/// A new session whose peer answered `establish`'s offer and connected.
async fn established(api: &CallsClient, name: &str) -> (Peer, String) {
    let peer = Peer::new(name).expect("peer");
    let sid = api.sessions_new().await.expect("session").session_id;
    let (status, body) = api
        .raw(
            Method::POST,
            &format!("sessions/{sid}/datachannels/establish"),
            Some(
                json!({"dataChannel": {"location": "remote", "dataChannelName": "server-events"}}),
            ),
        )
        .await
        .expect("establish");
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["requiresImmediateRenegotiation"], true);
    assert_eq!(body["dataChannel"]["id"], 0);
    assert_eq!(body["sessionDescription"]["type"], "offer");
    let offer = body["sessionDescription"]["sdp"].as_str().expect("sdp");
    assert!(offer.contains("m=application"));
    let answer = peer.accept_offer(offer).await.expect("peer answers");
    // As a Calls client does: the reserved channel on the id the API gave.
    peer.run(|c| {
        Ok(c.rtc().direct_api().create_data_channel(ChannelConfig {
            label: "server-events".into(),
            negotiated: Some(0),
            ..ChannelConfig::default()
        }))
    })
    .await
    .expect("server-events");
    api.renegotiate(&sid, &answer).await.expect("renegotiate");
    peer.wait_connected(TIMEOUT).await.expect("connects");
    (peer, sid)
}

/// `datachannels/new` with one item; opens the channel on the peer with the returned id.
async fn open(api: &CallsClient, peer: &Peer, sid: &str, item: Value) -> ChannelId {
    let (status, body) = api
        .raw(
            Method::POST,
            &format!("sessions/{sid}/datachannels/new"),
            Some(json!({ "dataChannels": [item] })),
        )
        .await
        .expect("new");
    assert_eq!(status, 200, "{body}");
    let d = &body["dataChannels"][0];
    assert!(d.get("errorCode").is_none(), "{body}");
    let id = u16::try_from(d["id"].as_u64().expect("an id")).expect("a u16 id");
    let name = d["dataChannelName"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let chan = peer
        .run(move |c| {
            Ok(c.rtc().direct_api().create_data_channel(ChannelConfig {
                label: name,
                negotiated: Some(id),
                ..ChannelConfig::default()
            }))
        })
        .await
        .expect("create channel");
    for _ in 0..(TIMEOUT.as_millis() / POLL.as_millis()) {
        if peer
            .run(move |c| Ok(c.rtc().channel(chan).is_some()))
            .await
            .expect("poll")
        {
            return chan;
        }
        tokio::time::sleep(POLL).await;
    }
    panic!("channel {id} did not open");
}

async fn send(peer: &Peer, chan: ChannelId, msg: Vec<u8>) {
    let ok = peer
        .run(move |c| {
            let mut ch = c
                .rtc()
                .channel(chan)
                .ok_or_else(|| anyhow::anyhow!("closed"))?;
            Ok(ch.write(true, &msg)?)
        })
        .await
        .expect("write");
    assert!(ok, "the peer's SCTP buffer took the message");
}

/// Collects messages on `chan` until `n` arrived or the timeout.
async fn receive(peer: &Peer, chan: ChannelId, n: usize) -> Vec<Vec<u8>> {
    let mut got = Vec::new();
    for _ in 0..(TIMEOUT.as_millis() / POLL.as_millis()) {
        let msgs = peer
            .run(|c| Ok(c.take_channel_messages()))
            .await
            .expect("take");
        got.extend(
            msgs.into_iter()
                .filter(|(id, _)| *id == chan)
                .map(|(_, d)| d),
        );
        if got.len() >= n {
            break;
        }
        tokio::time::sleep(POLL).await;
    }
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_flow_in_order_to_every_subscriber_and_back_from_the_replier() {
    let node = TestNode::start(&[]).expect("node");
    let api = node.client();
    let (publisher, psid) = established(&api, "pub").await;
    let pchan = open(
        &api,
        &publisher,
        &psid,
        json!({"location": "local", "dataChannelName": "chat"}),
    )
    .await;
    let mut subs = Vec::new();
    for (i, can_reply) in [true, false].into_iter().enumerate() {
        let (peer, sid) = established(&api, &format!("sub{i}")).await;
        let chan = open(
            &api,
            &peer,
            &sid,
            json!({"location": "remote", "sessionId": psid, "dataChannelName": "chat", "canReply": can_reply}),
        )
        .await;
        subs.push((peer, sid, chan));
    }
    let n = 100u32;
    for i in 0..n {
        send(&publisher, pchan, i.to_be_bytes().to_vec()).await;
    }
    let want: Vec<Vec<u8>> = (0..n).map(|i| i.to_be_bytes().to_vec()).collect();
    for (peer, _, chan) in &subs {
        assert_eq!(receive(peer, *chan, n as usize).await, want, "in order");
    }
    send(&subs[1].0, subs[1].2, b"not allowed".to_vec()).await;
    send(&subs[0].0, subs[0].2, b"reply".to_vec()).await;
    let replies = receive(&publisher, pchan, 1).await;
    assert_eq!(
        replies,
        vec![b"reply".to_vec()],
        "only the canReply subscriber"
    );

    let (status, state) = api
        .raw(Method::GET, &format!("sessions/{}", subs[0].1), None)
        .await
        .expect("get");
    assert_eq!(status, 200);
    let dc = &state["dataChannels"][0];
    assert_eq!(dc["location"], "remote");
    assert_eq!(dc["sessionId"], psid.as_str());
    assert_eq!(dc["dataChannelName"], "chat");
    assert_eq!(dc["status"], "active");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_errors_for_datachannels() {
    let node = TestNode::start(&[]).expect("node");
    let api = node.client();
    let (peer, sid) = established(&api, "p").await;
    let chan = open(
        &api,
        &peer,
        &sid,
        json!({"location": "local", "dataChannelName": "x"}),
    )
    .await;
    send(&peer, chan, b"no subscriber: nothing to do".to_vec()).await;
    let (status, body) = api
        .raw(
            Method::POST,
            &format!("sessions/{sid}/datachannels/new"),
            Some(json!({"dataChannels": [
                {"location": "local", "dataChannelName": "x"},
                {"location": "remote", "sessionId": sid, "dataChannelName": "missing"},
            ]})),
        )
        .await
        .expect("new");
    assert_eq!(status, 200);
    assert_eq!(
        body["dataChannels"][0]["errorCode"],
        "repeated_local_track_error"
    );
    assert_eq!(
        body["dataChannels"][1]["errorCode"],
        "not_found_track_error"
    );
    let (status, body) = api
        .raw(
            Method::PUT,
            &format!("sessions/{sid}/datachannels/close"),
            Some(json!({"dataChannels": [{"id": 1}, {"id": 42}]})),
        )
        .await
        .expect("close");
    assert_eq!(status, 200);
    assert!(body["dataChannels"][0].get("errorCode").is_none(), "{body}");
    assert_eq!(body["dataChannels"][1]["errorCode"], "close_track_error");
    let (status, _) = api
        .raw(
            Method::POST,
            &format!("sessions/{sid}/datachannels/establish"),
            None,
        )
        .await
        .expect("establish again");
    assert_eq!(status, 406, "establish is called once");
}
