//! DataChannel tests in the in-memory world: establish, publish, subscribe, messages in order,
//! `canReply`, `waitForAck`, the bounds and the Calls errors.

use std::time::Duration;

use str0m::change::SdpOffer;
use str0m::channel::{ChannelConfig, ChannelId};

use super::*;
use crate::testing::{APP, World};

/// `establish` on a new session of client `c`, answered like a browser does.
fn establish(w: &mut World, c: usize) -> String {
    let sid = w.session();
    let est = w
        .engine
        .datachannels_establish(APP, &sid, w.now)
        .expect("establish");
    let offer = est.offer.expect("an SFU offer");
    assert_eq!(offer.kind, SdpKind::Offer);
    assert!(offer.sdp.contains("m=application"), "{}", offer.sdp);
    let offer = SdpOffer::from_sdp_string(&offer.sdp).expect("offer sdp");
    let answer = w.clients[c]
        .rtc()
        .sdp_api()
        .accept_offer(offer)
        .expect("client answers");
    w.engine
        .renegotiate(APP, &sid, answer.to_sdp_string().as_str().into(), w.now)
        .expect("renegotiate");
    sid
}

fn local(name: &str) -> DataChannelItem {
    DataChannelItem {
        location: Some(Location::Local),
        name: Some(name.into()),
        ..DataChannelItem::default()
    }
}

fn remote(publisher: &str, name: &str) -> DataChannelItem {
    DataChannelItem {
        location: Some(Location::Remote),
        session_id: Some(publisher.into()),
        name: Some(name.into()),
        ..DataChannelItem::default()
    }
}

/// Asks for one channel and opens it on the client with the id the engine gave.
fn open(w: &mut World, c: usize, sid: &str, item: DataChannelItem) -> ChannelId {
    let name = item.name.clone().unwrap_or_default();
    let res = w
        .engine
        .datachannels_new(APP, sid, vec![item], w.now)
        .expect("datachannels/new");
    assert_eq!(res.len(), 1);
    assert_eq!(res[0].error, None);
    let id = res[0].id.expect("an id");
    w.clients[c]
        .rtc()
        .direct_api()
        .create_data_channel(ChannelConfig {
            label: name,
            negotiated: Some(id),
            ..ChannelConfig::default()
        })
}

fn send(w: &mut World, c: usize, chan: ChannelId, msg: &[u8]) {
    let ok = w.clients[c]
        .rtc()
        .channel(chan)
        .expect("channel open on the client")
        .write(true, msg)
        .expect("write");
    assert!(ok, "the client's SCTP buffer took the message");
    w.pump_client(c);
}

fn received(w: &mut World, c: usize, chan: ChannelId) -> Vec<Vec<u8>> {
    w.clients[c]
        .core
        .take_channel_messages()
        .into_iter()
        .filter(|(id, _)| *id == chan)
        .map(|(_, d)| d)
        .collect()
}

/// A publisher (client 0) with channel "chat" and `subs` subscribers, all connected and open.
fn chat_world(subs: &[DataChannelItem]) -> (World, String, ChannelId, Vec<(String, ChannelId)>) {
    let mut w = World::new(Duration::from_secs(30));
    let p = w.client();
    let psid = establish(&mut w, p);
    let pchan = open(&mut w, p, &psid, local("chat"));
    let mut out = Vec::new();
    for item in subs {
        let c = w.client();
        let sid = establish(&mut w, c);
        let mut item = item.clone();
        item.session_id = Some(psid.clone());
        let chan = open(&mut w, c, &sid, item);
        out.push((sid, chan));
    }
    let all: Vec<usize> = (0..w.clients.len()).collect();
    w.connect(&all);
    w.run(Duration::from_millis(500));
    (w, psid, pchan, out)
}

#[test]
fn messages_reach_every_subscriber_in_order_and_are_listed() {
    let (mut w, psid, pchan, subs) = chat_world(&[remote("", "chat"), remote("", "chat")]);
    let n = 50u32;
    for i in 0..n {
        send(&mut w, 0, pchan, &i.to_be_bytes());
    }
    w.run(Duration::from_millis(300));
    let want: Vec<Vec<u8>> = (0..n).map(|i| i.to_be_bytes().to_vec()).collect();
    for (i, (_, chan)) in subs.iter().enumerate() {
        assert_eq!(received(&mut w, i + 1, *chan), want, "subscriber {i}");
    }
    assert_eq!(w.engine.stats().channels.messages_out, 2 * u64::from(n));
    let listed = w.engine.session_datachannels(APP, &subs[0].0).expect("get");
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].status, "active");
    assert_eq!(listed[0].session_id.as_deref(), Some(psid.as_str()));
    assert_eq!(listed[0].id, 1);
}

#[test]
fn only_the_can_reply_subscriber_reaches_the_publisher() {
    let replier = DataChannelItem {
        can_reply: true,
        ..remote("", "chat")
    };
    let (mut w, psid, pchan, subs) = chat_world(&[replier.clone(), remote("", "chat")]);
    send(&mut w, 1, subs[0].1, b"from the replier");
    send(&mut w, 2, subs[1].1, b"from the other");
    w.run(Duration::from_millis(300));
    assert_eq!(
        received(&mut w, 0, pchan),
        vec![b"from the replier".to_vec()]
    );
    assert_eq!(w.engine.stats().channels.dropped_no_reply, 1);
    // A second replier is refused: at most one per publisher channel.
    let c = w.client();
    let sid = establish(&mut w, c);
    let res = w
        .engine
        .datachannels_new(
            APP,
            &sid,
            vec![DataChannelItem {
                session_id: Some(psid),
                ..replier
            }],
            w.now,
        )
        .expect("new");
    assert!(matches!(res[0].error, Some(TrackError::InvalidParams(_))));
}

/// A subscription ends with the channel it subscribed to: a later channel of the same name is
/// a new one, which the old subscriber neither writes into nor holds `canReply` of.
#[test]
fn a_subscription_ends_with_its_publishers_channel() {
    let replier = DataChannelItem {
        can_reply: true,
        ..remote("", "chat")
    };
    let (mut w, psid, _, subs) = chat_world(std::slice::from_ref(&replier));
    w.engine
        .datachannels_close(APP, &psid, vec![1], w.now)
        .expect("close");
    w.run(Duration::from_millis(300));
    assert!(
        w.clients[1].rtc().channel(subs[0].1).is_none(),
        "the subscriber's channel closed"
    );
    // The publisher opens "chat" again.
    let pchan = open(&mut w, 0, &psid, local("chat"));
    w.run(Duration::from_millis(300));
    let listed = w.engine.session_datachannels(APP, &subs[0].0).expect("get");
    assert_eq!(listed[0].status, "inactive", "the old subscription ended");
    // A new subscriber may reply: the old one holds nothing.
    let c = w.client();
    let sid = establish(&mut w, c);
    let chan = open(
        &mut w,
        c,
        &sid,
        DataChannelItem {
            session_id: Some(psid.clone()),
            ..replier
        },
    );
    w.connect(&[c]);
    w.run(Duration::from_millis(500));
    send(&mut w, c, chan, b"from the new replier");
    w.run(Duration::from_millis(300));
    assert_eq!(
        received(&mut w, 0, pchan),
        vec![b"from the new replier".to_vec()]
    );
}

#[test]
fn wait_for_ack_swallows_the_first_message_and_holds_until_it() {
    let acking = DataChannelItem {
        wait_for_ack: true,
        can_reply: true,
        ..remote("", "chat")
    };
    let (mut w, _, pchan, subs) = chat_world(&[acking]);
    send(&mut w, 0, pchan, b"before the ack");
    w.run(Duration::from_millis(200));
    assert!(received(&mut w, 1, subs[0].1).is_empty());
    send(&mut w, 1, subs[0].1, b"ack");
    w.run(Duration::from_millis(200));
    assert!(
        received(&mut w, 0, pchan).is_empty(),
        "the ack is swallowed"
    );
    send(&mut w, 0, pchan, b"after the ack");
    send(&mut w, 1, subs[0].1, b"a reply");
    w.run(Duration::from_millis(200));
    assert_eq!(
        received(&mut w, 1, subs[0].1),
        vec![b"after the ack".to_vec()]
    );
    assert_eq!(received(&mut w, 0, pchan), vec![b"a reply".to_vec()]);
    assert_eq!(w.engine.stats().channels.dropped_unacked, 1);
}

#[test]
fn messages_over_the_size_bound_are_dropped_and_counted() {
    let (mut w, _, pchan, subs) = chat_world(&[remote("", "chat")]);
    send(
        &mut w,
        0,
        pchan,
        &vec![7u8; datachannels::MAX_MESSAGE_BYTES],
    );
    send(
        &mut w,
        0,
        pchan,
        &vec![8u8; datachannels::MAX_MESSAGE_BYTES + 1],
    );
    w.run(Duration::from_millis(500));
    let got = received(&mut w, 1, subs[0].1);
    assert_eq!(got.len(), 1, "only the message within the bound");
    assert_eq!(got[0].len(), datachannels::MAX_MESSAGE_BYTES);
    assert_eq!(w.engine.stats().channels.dropped_too_big, 1);
}

#[test]
fn calls_errors_repeated_not_found_and_close() {
    let mut w = World::new(Duration::from_secs(30));
    let c = w.client();
    let sid = establish(&mut w, c);
    assert!(
        w.engine.datachannels_establish(APP, &sid, w.now).is_err(),
        "establish twice"
    );
    let res = w
        .engine
        .datachannels_new(
            APP,
            &sid,
            vec![local("a"), local("a"), remote(&sid, "nope")],
            w.now,
        )
        .expect("new");
    assert_eq!(res[0].id, Some(1));
    assert!(matches!(
        res[1].error,
        Some(TrackError::AlreadyPublished(_))
    ));
    assert_eq!(res[2].error, Some(TrackError::NotFound));
    let closed = w
        .engine
        .datachannels_close(APP, &sid, vec![1, 1, 9], w.now)
        .expect("close");
    assert_eq!(closed[0].error, None);
    assert!(matches!(closed[1].error, Some(TrackError::Close(_))));
    assert!(matches!(closed[2].error, Some(TrackError::Close(_))));
    let listed = w.engine.session_datachannels(APP, &sid).expect("get");
    assert_eq!(listed[0].status, "inactive");
    let again = w
        .engine
        .datachannels_new(APP, &sid, vec![local("a")], w.now)
        .expect("new");
    assert_eq!(again[0].id, Some(2), "ids are not reused");
}

#[test]
fn new_before_establish_is_refused() {
    let mut w = World::new(Duration::from_secs(30));
    let sid = w.session();
    let err = w
        .engine
        .datachannels_new(APP, &sid, vec![local("a")], w.now)
        .expect_err("refused");
    assert!(matches!(err, OpError::InvalidParams(_)));
}

fn relay_outputs(w: &mut World) -> Vec<RelayOut> {
    std::iter::from_fn(|| w.engine.poll_relay()).collect()
}

#[test]
fn relay_downstreams_get_messages_and_end_with_the_channel() {
    let (mut w, psid, pchan, _) = chat_world(&[]);
    let publisher = crate::ids::SessionId::parse(&psid).expect("id");
    assert!(
        w.engine
            .relay_channel_subscribe("other-app", publisher, "chat", 7)
            .is_err(),
        "another app's channel is not served"
    );
    assert!(
        w.engine
            .relay_channel_subscribe(APP, publisher, "nope", 7)
            .is_err()
    );
    w.engine
        .relay_channel_subscribe(APP, publisher, "chat", 7)
        .expect("served");
    send(&mut w, 0, pchan, b"to the other node");
    w.run(Duration::from_millis(100));
    let outs = relay_outputs(&mut w);
    assert!(
        matches!(outs.as_slice(), [RelayOut::ChannelMessage { down: 7, binary: true, data }] if &data[..] == b"to the other node"),
        "{outs:?}"
    );
    w.engine
        .datachannels_close(APP, &psid, vec![1], w.now)
        .expect("close");
    let outs = relay_outputs(&mut w);
    assert!(
        matches!(outs.as_slice(), [RelayOut::ChannelEnded { down: 7 }]),
        "{outs:?}"
    );
}

/// Channel "chat" of a publisher on another node (its tag is not this engine's), received
/// here over relay upstream 42, and a connected local subscriber of it: (world, publisher,
/// subscriber's client, its session, its channel).
fn relayed_chat() -> (World, SessionId, usize, String, ChannelId) {
    let mut w = World::new(Duration::from_secs(30));
    let remote = crate::ids::SessionId::new(crate::ids::NodeTag(0x0bad_cafe));
    w.engine.add_relay_channel(remote, "chat", 42);
    let c = w.client();
    let sid = establish(&mut w, c);
    let chan = open(&mut w, c, &sid, remote_item(&remote.to_string()));
    w.connect(&[c]);
    w.run(Duration::from_millis(500));
    (w, remote, c, sid, chan)
}

#[test]
fn a_relayed_channel_feeds_local_subscribers_and_is_released_by_the_last() {
    let (mut w, remote, c, sid, chan) = relayed_chat();
    w.engine.relay_channel_message(42, false, b"from afar");
    w.run(Duration::from_millis(100));
    assert_eq!(received(&mut w, c, chan), vec![b"from afar".to_vec()]);
    w.engine
        .datachannels_close(APP, &sid, vec![1], w.now)
        .expect("close");
    let outs = relay_outputs(&mut w);
    assert!(
        matches!(outs.as_slice(), [RelayOut::ChannelUnused { up: 42 }]),
        "{outs:?}"
    );
    assert!(!w.engine.has_relay_channel(remote, "chat"));
}

#[test]
fn a_relayed_channels_end_closes_its_local_subscriptions() {
    let (mut w, _, c, sid, chan) = relayed_chat();
    w.engine.end_relay_channel(42);
    w.run(Duration::from_millis(300));
    assert!(
        w.clients[c].rtc().channel(chan).is_none(),
        "closed here too"
    );
    let listed = w.engine.session_datachannels(APP, &sid).expect("get");
    assert_eq!(listed[0].status, "inactive");
}

fn remote_item(publisher: &str) -> DataChannelItem {
    remote(publisher, "chat")
}

/// The publisher's node is the `canReply` authority: one node's claim is granted, another's
/// refused while it holds it, a local subscriber is refused too, replies from a node without
/// the grant are dropped, and a release (or the stream's end) frees it.
#[test]
fn can_reply_is_granted_to_one_node_and_refused_to_others() {
    let (mut w, psid, pchan, _) = chat_world(&[]);
    let publisher = crate::ids::SessionId::parse(&psid).expect("id");
    for down in [7, 8] {
        w.engine
            .relay_channel_subscribe(APP, publisher, "chat", down)
            .expect("served");
    }
    assert_eq!(w.engine.relay_channel_claim(7, 1, true), Some(true));
    assert_eq!(
        w.engine.relay_channel_claim(7, 1, true),
        Some(true),
        "idempotent"
    );
    assert_eq!(w.engine.relay_channel_claim(8, 2, true), Some(false));
    // A subscriber on the publisher's node is refused while node 7 holds it.
    let c = w.client();
    let sid = establish(&mut w, c);
    let mut item = remote(&psid, "chat");
    item.can_reply = true;
    let res = w
        .engine
        .datachannels_new(APP, &sid, vec![item.clone()], w.now)
        .expect("new");
    assert!(
        matches!(res[0].error, Some(TrackError::InvalidParams(_))),
        "{res:?}"
    );
    // A reply from the node without the grant is dropped; the holder's arrives.
    w.engine.relay_channel_reply(8, true, b"from 8");
    w.engine.relay_channel_reply(7, true, b"from 7");
    w.run(Duration::from_millis(200));
    assert_eq!(received(&mut w, 0, pchan), vec![b"from 7".to_vec()]);
    assert_eq!(w.engine.stats().channels.dropped_no_reply, 1);
    // A stale release (another sequence) changes nothing; the right one frees the grant.
    assert_eq!(w.engine.relay_channel_claim(7, 99, false), None);
    assert_eq!(w.engine.relay_channel_claim(8, 3, true), Some(false));
    assert_eq!(w.engine.relay_channel_claim(7, 1, false), None);
    assert_eq!(w.engine.relay_channel_claim(8, 3, true), Some(true));
    // The holder's stream ends: the grant goes with it, and the local subscriber may take it.
    w.engine.relay_channel_unsubscribe(8);
    let res = w
        .engine
        .datachannels_new(APP, &sid, vec![item], w.now)
        .expect("new");
    assert_eq!(res[0].error, None, "{res:?}");
    assert_eq!(w.engine.relay_channel_claim(7, 4, true), Some(false));
}

/// A subscribing node needs the grant for a relayed channel, and gives it back when its
/// `canReply` subscriber leaves.
#[test]
fn a_relayed_channel_needs_the_grant_and_gives_it_back() {
    let mut w = World::new(Duration::from_secs(30));
    let remote = crate::ids::SessionId::new(crate::ids::NodeTag(0x0bad_cafe));
    w.engine.add_relay_channel(remote, "chat", 42);
    let c = w.client();
    let sid = establish(&mut w, c);
    let mut item = remote_item(&remote.to_string());
    item.can_reply = true;
    let res = w
        .engine
        .datachannels_new(APP, &sid, vec![item.clone()], w.now)
        .expect("new");
    assert!(
        matches!(res[0].error, Some(TrackError::InvalidParams(_))),
        "no grant from the publisher's node: {res:?}"
    );
    // The stream opened for the failed item alone is released.
    let outs = relay_outputs(&mut w);
    assert!(
        matches!(outs.as_slice(), [RelayOut::ChannelUnused { up: 42 }]),
        "{outs:?}"
    );
    assert_eq!(w.engine.channel_reply_grant(remote, "chat"), None);
    w.engine.add_relay_channel(remote, "chat", 42);
    assert_eq!(
        w.engine.channel_reply_grant(remote, "chat"),
        Some((42, false))
    );
    assert!(w.engine.set_channel_reply_grant(42, 5));
    let res = w
        .engine
        .datachannels_new(APP, &sid, vec![item], w.now)
        .expect("new");
    assert_eq!(res[0].error, None, "{res:?}");
    let id = res[0].id.expect("id");
    let _ = relay_outputs(&mut w);
    // Revoked: the grant goes back to the publisher's node with its sequence.
    let mut revoke = DataChannelItem {
        id: Some(id),
        ..DataChannelItem::default()
    };
    revoke.can_reply = false;
    w.engine
        .datachannels_update(APP, &sid, vec![revoke])
        .expect("update");
    let outs = relay_outputs(&mut w);
    assert!(
        matches!(
            outs.as_slice(),
            [RelayOut::ChannelReleaseReply { up: 42, seq: 5 }]
        ),
        "{outs:?}"
    );
    assert_eq!(
        w.engine.channel_reply_grant(remote, "chat"),
        Some((42, false))
    );
}

#[test]
fn a_channel_the_client_closes_itself_ends_its_relay_downstreams() {
    let (mut w, psid, pchan, _) = chat_world(&[]);
    let publisher = crate::ids::SessionId::parse(&psid).expect("id");
    w.engine
        .relay_channel_subscribe(APP, publisher, "chat", 7)
        .expect("served");
    // Not `datachannels/close`: the browser's `dc.close()`.
    w.clients[0].rtc().direct_api().close_data_channel(pchan);
    let mut outs = Vec::new();
    for _ in 0..20 {
        w.run(Duration::from_millis(50));
        outs.extend(relay_outputs(&mut w));
        if !outs.is_empty() {
            break;
        }
    }
    assert!(
        matches!(outs.as_slice(), [RelayOut::ChannelEnded { down: 7 }]),
        "{outs:?}"
    );
    let listed = w.engine.session_datachannels(APP, &psid).expect("get");
    assert!(listed.iter().all(|c| c.status != "active"), "{listed:?}");
}
