//! DataChannels through a real node over HTTP and UDP: the Calls `datachannels/*` flow with the
//! str0m client (establish, renegotiate, new with the returned ids), messages in order to every
//! subscriber, `GET session`, and the Calls errors.

use std::time::Duration;

use reqwest::Method;
use serde_json::{Value, json};
use str0m::channel::{ChannelConfig, ChannelId};
use trackmesh_tests::{CallsClient, Cluster, Peer, TestNode};

const TIMEOUT: Duration = Duration::from_secs(10);
const POLL: Duration = Duration::from_millis(50);
/// A message sent only to see whether a channel delivers; [`receive`] leaves it out.
const PROBE: &[u8] = b"probe";

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

/// Collects messages on `chan` until `n` arrived or [`TIMEOUT`].
async fn receive(peer: &Peer, chan: ChannelId, n: usize) -> Vec<Vec<u8>> {
    receive_for(peer, chan, n, TIMEOUT).await
}

/// Collects messages on `chan` until `n` arrived or `timeout`.
async fn receive_for(peer: &Peer, chan: ChannelId, n: usize, timeout: Duration) -> Vec<Vec<u8>> {
    let mut got = Vec::new();
    for _ in 0..=(timeout.as_millis() / POLL.as_millis()) {
        let msgs = peer
            .run(|c| Ok(c.take_channel_messages()))
            .await
            .expect("take");
        got.extend(
            msgs.into_iter()
                .filter(|(id, d)| *id == chan && d.as_slice() != PROBE)
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

/// A publisher on node a; subscribers on a and on c (across the relay), one of them on c with
/// `canReply` and `waitForAck`: every message arrives in order on both nodes, the reply crosses
/// back, the ack is swallowed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_cross_the_relay_in_order_and_replies_come_back() {
    let cl = Cluster::start(&[("a", "r1"), ("b", "r1"), ("c", "r1")])
        .await
        .expect("cluster");
    let (api_a, api_c) = (cl.client("a"), cl.client("c"));
    let (publisher, psid) = established(&api_a, "pub").await;
    let pchan = open(
        &api_a,
        &publisher,
        &psid,
        json!({"location": "local", "dataChannelName": "chat"}),
    )
    .await;
    let (sub_a, sid_a) = established(&api_a, "sub-a").await;
    let chan_a = open(
        &api_a,
        &sub_a,
        &sid_a,
        json!({"location": "remote", "sessionId": psid, "dataChannelName": "chat"}),
    )
    .await;
    let (sub_c, sid_c) = established(&api_c, "sub-c").await;
    let chan_c = open(
        &api_c,
        &sub_c,
        &sid_c,
        json!({"location": "remote", "sessionId": psid, "dataChannelName": "chat",
               "canReply": true, "waitForAck": true}),
    )
    .await;
    // The gate: the first message of the waitForAck subscriber opens it and is not forwarded.
    send(&sub_c, chan_c, b"ack".to_vec()).await;
    // Its arrival at a cannot be observed; a message that made it through shows the gate open.
    let mut opened = false;
    for _ in 0..(TIMEOUT.as_millis() / POLL.as_millis()) {
        send(&publisher, pchan, PROBE.to_vec()).await;
        let probed = sub_c
            .run(|c| Ok(c.take_channel_messages()))
            .await
            .expect("take");
        if probed
            .iter()
            .any(|(id, d)| *id == chan_c && d.as_slice() == PROBE)
        {
            opened = true;
            break;
        }
        tokio::time::sleep(POLL).await;
    }
    assert!(opened, "the subscriber on c gets messages after its ack");
    let n = 200u32;
    for i in 0..n {
        send(&publisher, pchan, i.to_be_bytes().to_vec()).await;
    }
    let want: Vec<Vec<u8>> = (0..n).map(|i| i.to_be_bytes().to_vec()).collect();
    let on_a = receive(&sub_a, chan_a, n as usize).await;
    assert_eq!(on_a, want, "subscriber on a, in order");
    let on_c = receive(&sub_c, chan_c, n as usize).await;
    assert_eq!(on_c, want, "subscriber on c across the relay, in order");
    send(&sub_c, chan_c, b"reply from c".to_vec()).await;
    let replies: Vec<Vec<u8>> = receive(&publisher, pchan, 1).await;
    assert_eq!(
        replies,
        vec![b"reply from c".to_vec()],
        "the ack was swallowed, the reply crossed"
    );
}

/// Writes messages `0..n` (4-byte sequence, padded to `size`) as fast as the publisher's SCTP
/// buffer takes them while the subscriber reads; returns what the subscriber got. Bounded by
/// `rounds` write/read rounds.
async fn burst(
    publisher: &Peer,
    pchan: ChannelId,
    sub: &Peer,
    schan: ChannelId,
    n: u32,
    size: usize,
) -> Vec<u32> {
    let (mut sent, mut got) = (0u32, Vec::new());
    let rounds = (2 * TIMEOUT.as_millis() / 5) as usize;
    for _ in 0..rounds {
        if sent < n {
            sent = publisher
                .run(move |c| {
                    let mut ch = c
                        .rtc()
                        .channel(pchan)
                        .ok_or_else(|| anyhow::anyhow!("closed"))?;
                    let mut k = sent;
                    while k < n {
                        let mut msg = vec![0u8; size];
                        msg[..4].copy_from_slice(&k.to_be_bytes());
                        if !ch.write(true, &msg)? {
                            break;
                        }
                        k += 1;
                    }
                    Ok(k)
                })
                .await
                .expect("write");
        }
        let msgs = sub
            .run(|c| Ok(c.take_channel_messages()))
            .await
            .expect("take");
        got.extend(
            msgs.into_iter()
                .filter(|(id, d)| *id == schan && d.len() == size)
                .map(|(_, d)| u32::from_be_bytes([d[0], d[1], d[2], d[3]])),
        );
        if got.len() >= n as usize {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    got
}

/// A burst written as fast as the publisher's SCTP takes it, across one relay hop, arrives
/// complete and in order on a reliable, ordered channel whose subscriber reads: no bound of
/// the node or the relay drops what an ordinary burst puts in flight.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_across_the_relay_arrives_complete_when_the_subscriber_reads() {
    let cl = Cluster::start(&[("a", "r1"), ("b", "r1")])
        .await
        .expect("cluster");
    let (api_a, api_b) = (cl.client("a"), cl.client("b"));
    let (publisher, psid) = established(&api_a, "pub").await;
    let pchan = open(
        &api_a,
        &publisher,
        &psid,
        json!({"location": "local", "dataChannelName": "bulk"}),
    )
    .await;
    let (sub, sid) = established(&api_b, "sub-b").await;
    let schan = open(
        &api_b,
        &sub,
        &sid,
        json!({"location": "remote", "sessionId": psid, "dataChannelName": "bulk"}),
    )
    .await;
    // 4,000 × 256 B is 1 MB, eight times what str0m's default SCTP buffer holds.
    let n = 4000u32;
    let got = burst(&publisher, pchan, &sub, schan, n, 256).await;
    let want: Vec<u32> = (0..n).collect();
    assert_eq!(got.len(), want.len(), "every message of the burst arrived");
    assert_eq!(got, want, "in order");
}

/// `canReply` is one subscriber per publisher channel across the cluster: a subscriber on b
/// holds it, one on c is refused (`invalid_params`), and c gets it once b's closes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn can_reply_is_granted_once_across_nodes() {
    let cl = Cluster::start(&[("a", "r1"), ("b", "r1"), ("c", "r1")])
        .await
        .expect("cluster");
    let (api_a, api_b, api_c) = (cl.client("a"), cl.client("b"), cl.client("c"));
    let (publisher, psid) = established(&api_a, "pub").await;
    let pchan = open(
        &api_a,
        &publisher,
        &psid,
        json!({"location": "local", "dataChannelName": "chat"}),
    )
    .await;
    let (sub_b, sid_b) = established(&api_b, "sub-b").await;
    let chan_b = open(
        &api_b,
        &sub_b,
        &sid_b,
        json!({"location": "remote", "sessionId": psid, "dataChannelName": "chat", "canReply": true}),
    )
    .await;
    let (sub_c, sid_c) = established(&api_c, "sub-c").await;
    let (status, body) = api_c
        .raw(
            Method::POST,
            &format!("sessions/{sid_c}/datachannels/new"),
            Some(
                json!({"dataChannels": [{"location": "remote", "sessionId": psid,
                "dataChannelName": "chat", "canReply": true}]}),
            ),
        )
        .await
        .expect("new on c");
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["dataChannels"][0]["errorCode"], "invalid_params",
        "a second canReply subscriber, on another node: {body}"
    );
    // The publisher's own node refuses it too.
    let (sub_a, sid_a) = established(&api_a, "sub-a").await;
    let (_, body) = api_a
        .raw(
            Method::POST,
            &format!("sessions/{sid_a}/datachannels/new"),
            Some(
                json!({"dataChannels": [{"location": "remote", "sessionId": psid,
                "dataChannelName": "chat", "canReply": true}]}),
            ),
        )
        .await
        .expect("new on a");
    assert_eq!(
        body["dataChannels"][0]["errorCode"], "invalid_params",
        "{body}"
    );
    drop(sub_a);
    send(&sub_b, chan_b, b"reply from b".to_vec()).await;
    assert_eq!(
        receive(&publisher, pchan, 1).await,
        vec![b"reply from b".to_vec()],
        "the holder's reply crosses back"
    );
    // b's subscriber leaves: its node gives the grant back and c's subscriber may take it.
    let (status, _) = api_b
        .raw(
            Method::PUT,
            &format!("sessions/{sid_b}/datachannels/close"),
            Some(json!({"dataChannels": [{"id": 1}]})),
        )
        .await
        .expect("close on b");
    assert_eq!(status, 200);
    let mut granted = None;
    for _ in 0..(TIMEOUT.as_millis() / POLL.as_millis()) {
        let (_, body) = api_c
            .raw(
                Method::POST,
                &format!("sessions/{sid_c}/datachannels/new"),
                Some(
                    json!({"dataChannels": [{"location": "remote", "sessionId": psid,
                    "dataChannelName": "chat", "canReply": true}]}),
                ),
            )
            .await
            .expect("new on c again");
        if body["dataChannels"][0].get("errorCode").is_none() {
            granted = body["dataChannels"][0]["id"].as_u64();
            break;
        }
        tokio::time::sleep(POLL).await;
    }
    let id = u16::try_from(granted.expect("c's subscriber gets canReply once b's left"))
        .expect("u16 id");
    let chan_c = sub_c
        .run(move |c| {
            Ok(c.rtc().direct_api().create_data_channel(ChannelConfig {
                label: "chat".into(),
                negotiated: Some(id),
                ..ChannelConfig::default()
            }))
        })
        .await
        .expect("create channel");
    // Replies from c arrive once its channel is open; retry the send until one does.
    let mut replied = false;
    for _ in 0..(TIMEOUT.as_millis() / POLL.as_millis()) {
        let open = sub_c
            .run(move |c| Ok(c.rtc().channel(chan_c).is_some()))
            .await
            .expect("poll");
        if open {
            send(&sub_c, chan_c, b"reply from c".to_vec()).await;
            replied = receive_for(&publisher, pchan, 1, Duration::from_secs(2))
                .await
                .contains(&b"reply from c".to_vec());
            break;
        }
        tokio::time::sleep(POLL).await;
    }
    assert!(replied, "the new holder's reply reaches the publisher");
}

/// The older Calls flow: a `server-events` DataChannel in the offer to `sessions/new` sets up
/// SCTP, and `datachannels/new` then works without `establish`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_events_in_the_sessions_new_offer_works_like_establish() {
    let node = TestNode::start(&[]).expect("node");
    let api = node.client();
    let mut peers = Vec::new();
    for name in ["pub", "sub"] {
        let peer = Peer::new(name).expect("peer");
        let (_, offer) = peer
            .run(|c| c.create_channel_offer("server-events"))
            .await
            .expect("offer");
        let created = api
            .sessions_new_with_offer(&offer)
            .await
            .expect("sessions/new");
        let answer = created
            .session_description
            .as_ref()
            .map(|d| d.sdp.clone())
            .expect("an answer");
        assert!(answer.contains("m=application"), "{answer}");
        peer.accept_answer(&answer).await.expect("answer accepted");
        peer.wait_connected(TIMEOUT).await.expect("connects");
        peers.push((peer, created.session_id));
    }
    let (publisher, psid) = &peers[0];
    let (sub, ssid) = &peers[1];
    let pchan = open(
        &api,
        publisher,
        psid,
        json!({"location": "local", "dataChannelName": "chat"}),
    )
    .await;
    let schan = open(
        &api,
        sub,
        ssid,
        json!({"location": "remote", "sessionId": psid, "dataChannelName": "chat"}),
    )
    .await;
    for i in 0..10u32 {
        send(publisher, pchan, i.to_be_bytes().to_vec()).await;
    }
    let want: Vec<Vec<u8>> = (0..10u32).map(|i| i.to_be_bytes().to_vec()).collect();
    assert_eq!(receive(sub, schan, 10).await, want);
}
