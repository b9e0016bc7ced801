//! Inputs and polls: datagrams and timers in, datagrams out. Every input ends with the touched
//! session's `Rtc` drained (str0m's rule) and the work it produced done.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use str0m::bwe::BweKind;
use str0m::media::{KeyframeRequest, Mid};
use str0m::net::{Protocol, Receive, Transmit};
use str0m::rtp::RtpPacket;
use str0m::{Event, IceConnectionState, Input, Output};

use super::demux::Route;
use super::{Engine, HOUSEKEEPING_INTERVAL, MAX_TRANSMIT_QUEUE};
use crate::ids::SessionId;

fn is_rtp(buf: &[u8]) -> bool {
    buf.first().is_some_and(|b| (128..=191).contains(b))
}

/// Work produced while draining one `Rtc`, processed after the drain so two sessions are never
/// borrowed at once.
// Boxing the packet would allocate once per forwarded packet; the queue is drained at once
// anyway.
#[allow(clippy::large_enum_variant)]
pub(super) enum Work {
    Media(SessionId, RtpPacket),
    KeyframeRequest(SessionId, KeyframeRequest),
    /// A publisher's stream (a simulcast layer) paused or resumed: (mid, rid, paused).
    StreamPaused(SessionId, Mid, Option<str0m::media::Rid>, bool),
    Connected(SessionId),
    /// A subscriber's egress bandwidth estimate, bits/s (str0m BWE, sessions with it on).
    Estimate(SessionId, u64),
    /// The client closed its DTLS transport (close_notify).
    TransportClosed(SessionId),
    ChannelData(SessionId, str0m::channel::ChannelData),
    /// The client closed one of its DataChannels.
    ChannelClosed(SessionId, str0m::channel::ChannelId),
}

impl Engine {
    /// Feeds one received UDP datagram. Unroutable or malformed datagrams are counted and
    /// dropped.
    pub fn handle_datagram(&mut self, now: Instant, source: SocketAddr, buf: &[u8]) {
        self.receive(now, Protocol::Udp, source, buf);
    }

    /// Feeds one RFC 4571 frame received on an ICE-TCP connection from `source` (the shell has
    /// taken off the length prefix). Counted and routed as a datagram.
    pub fn handle_tcp_frame(&mut self, now: Instant, source: SocketAddr, buf: &[u8]) {
        self.receive(now, Protocol::Tcp, source, buf);
    }

    fn receive(&mut self, now: Instant, proto: Protocol, source: SocketAddr, buf: &[u8]) {
        self.stats.datagrams_in += 1;
        self.stats.bytes_in += buf.len() as u64;
        if is_rtp(buf) {
            self.stats.rtp_in += 1;
        }
        let Some(route) = self.demux.route(source, buf) else {
            self.stats.datagrams_unrouted += 1;
            return;
        };
        let sid = route.session();
        let Ok(contents) = buf.try_into() else {
            self.stats.datagrams_unrouted += 1;
            return;
        };
        // A cascade's outgoing session is reached only through its own socket.
        let Some(s) = self
            .sessions
            .get_mut(&sid)
            .filter(|s| s.outgoing_local.is_none())
        else {
            self.stats.datagrams_unrouted += 1;
            return;
        };
        let input = Input::Receive(
            now,
            Receive {
                proto,
                source,
                destination: self.cfg.receive_destination(source),
                contents,
            },
        );
        let span = Arc::clone(&s.span);
        let _entered = span.enter();
        if matches!(route, Route::Ufrag(_)) && !s.rtc.accepts(&input) {
            self.stats.datagrams_unrouted += 1;
            return;
        }
        if let Err(e) = s.rtc.handle_input(input) {
            tracing::debug!(session = %sid, error = %e, "datagram rejected");
        }
        s.last_recv = Some(now);
        if matches!(route, Route::Ufrag(_)) {
            self.demux.learn(sid, source);
        }
        self.drain(sid, now);
        self.process_work(now);
    }

    /// Feeds one datagram received on a cascade's own socket (`local`): it belongs to the
    /// outgoing session bound there, whatever its source (str0m checks it).
    pub fn handle_outgoing_datagram(
        &mut self,
        now: Instant,
        local: SocketAddr,
        source: SocketAddr,
        buf: &[u8],
    ) {
        self.stats.datagrams_in += 1;
        self.stats.bytes_in += buf.len() as u64;
        if is_rtp(buf) {
            self.stats.rtp_in += 1;
        }
        let Some(sid) = self.outgoing.get(&local).copied() else {
            self.stats.datagrams_unrouted += 1;
            return;
        };
        let (Ok(contents), Some(s)) = (buf.try_into(), self.sessions.get_mut(&sid)) else {
            self.stats.datagrams_unrouted += 1;
            return;
        };
        let input = Input::Receive(
            now,
            Receive {
                proto: Protocol::Udp,
                source,
                destination: local,
                contents,
            },
        );
        let span = Arc::clone(&s.span);
        let _entered = span.enter();
        if let Err(e) = s.rtc.handle_input(input) {
            tracing::debug!(session = %sid, error = %e, "datagram rejected");
        }
        s.last_recv = Some(now);
        self.drain(sid, now);
        self.process_work(now);
    }

    /// Next datagram of a cascade's outgoing session, to send from the socket bound to its
    /// `source`.
    pub fn poll_outgoing_transmit(&mut self) -> Option<Transmit> {
        if self.outgoing_transmits.is_empty()
            && let Some(at) = self.media_written_at
        {
            self.flush_written_media(at);
        }
        let t = self.outgoing_transmits.pop_front()?;
        self.stats.datagrams_out += 1;
        self.stats.bytes_out += t.contents.len() as u64;
        if is_rtp(&t.contents) {
            self.stats.rtp_out += 1;
        }
        Some(t)
    }

    /// Advances every timer that is due.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.flush_written_media(now);
        // At most as many timer runs as there were timers: a session whose `Rtc` asks to run
        // again at once (str0m's BWE pacer can, with `now` unchanged) runs again on the next
        // call, which the shell makes at once, rather than spinning here on a frozen `now`.
        for _ in 0..self.timers.len() {
            let Some(&(at, sid)) = self.timers.first() else {
                break;
            };
            if at > now {
                break;
            }
            self.timers.remove(&(at, sid));
            if let Some(s) = self.sessions.get_mut(&sid) {
                self.stats.session_timeouts += 1;
                if let Err(e) = s.rtc.handle_input(Input::Timeout(now)) {
                    tracing::debug!(session = %sid, error = %e, "timeout failed");
                }
                self.drain(sid, now);
            }
        }
        if now >= self.next_housekeeping {
            self.next_housekeeping = now + HOUSEKEEPING_INTERVAL;
            self.housekeeping(now);
        }
        self.process_work(now);
    }

    /// When [`Engine::handle_timeout`] must be called next.
    pub fn poll_timeout(&self) -> Instant {
        let next = match self.timers.first() {
            Some(&(at, _)) => at.min(self.next_housekeeping),
            None => self.next_housekeeping,
        };
        // Written packets wait for the next call: at once.
        self.media_written_at.map_or(next, |at| at.min(next))
    }

    /// Next datagram to send; the shell drains it after every input.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        if self.transmits.is_empty()
            && let Some(at) = self.media_written_at
        {
            self.flush_written_media(at);
        }
        // Once the batch is all written: a keyframe's packets went out to every viewer in
        // chunks of `FLUSH_AFTER_PACKETS`, so each viewer's frame would be complete only when
        // the last chunk of all leaves. Each viewer's datagrams together again (in their order)
        // let the first viewers' frames complete first, as one offloaded send each.
        if self.transmits_interleaved && self.media_written.is_empty() {
            self.transmits_interleaved = false;
            group_by_destination(&mut self.transmits);
        }
        let t = self.transmits.pop_front()?;
        self.stats.datagrams_out += 1;
        self.stats.bytes_out += t.contents.len() as u64;
        if is_rtp(&t.contents) {
            self.stats.rtp_out += 1;
        }
        Some(t)
    }

    /// Drains one session's `Rtc` until it reports its next timeout (str0m's rule after every
    /// mutation). Events that touch other sessions become [`Work`].
    pub(super) fn drain(&mut self, sid: SessionId, now: Instant) {
        let Some(s) = self.sessions.get_mut(&sid) else {
            return;
        };
        let span = Arc::clone(&s.span);
        let _entered = span.enter();
        // Bounded: str0m ends every drain with a timeout; the cap only guards against a bug.
        for _ in 0..100_000 {
            match s.rtc.poll_output() {
                Ok(Output::Timeout(at)) => {
                    // str0m may report a timeout in the past; never schedule before `now`.
                    let at = at.max(now);
                    // Usually unchanged after a forwarded frame: skip two tree updates then.
                    if at != s.timeout || !self.timers.contains(&(at, sid)) {
                        self.timers.remove(&(s.timeout, sid));
                        s.timeout = at;
                        self.timers.insert((at, sid));
                    }
                    return;
                }
                Ok(Output::Transmit(t)) => {
                    let queue = if s.outgoing_local.is_some() {
                        &mut self.outgoing_transmits
                    } else {
                        &mut self.transmits
                    };
                    if queue.len() < MAX_TRANSMIT_QUEUE {
                        queue.push_back(t);
                    } else {
                        self.stats.datagrams_dropped += 1;
                    }
                }
                Ok(Output::Event(event)) => match event {
                    // RTP mode: str0m keeps one received packet until the next poll, so every
                    // datagram is drained before the next is fed.
                    Event::RtpPacket(p) => self.work.push_back(Work::Media(sid, p)),
                    Event::StreamPaused(p) => self
                        .work
                        .push_back(Work::StreamPaused(sid, p.mid, p.rid, p.paused)),
                    Event::EgressBitrateEstimate(BweKind::Twcc { estimate, .. }) => {
                        self.work.push_back(Work::Estimate(sid, estimate.as_u64()))
                    }
                    Event::KeyframeRequest(req) => {
                        self.stats.keyframe_requests_received += 1;
                        self.work.push_back(Work::KeyframeRequest(sid, req))
                    }
                    // str0m reports cumulative NACK counts per mid every stats interval.
                    Event::MediaIngressStats(st) => {
                        s.media_counts
                            .insert((st.mid, false), (st.packets, st.bytes));
                        self.stats.nacks_sent +=
                            nack_delta(&mut s.nacks_seen, st.mid, false, st.nacks)
                    }
                    Event::MediaEgressStats(st) => {
                        s.media_counts
                            .insert((st.mid, true), (st.packets, st.bytes));
                        super::repair_window::fit_to_rtt(
                            &mut s.rtc,
                            &mut s.repair_window,
                            st.mid,
                            st.rtt,
                        );
                        self.stats.nacks_received +=
                            nack_delta(&mut s.nacks_seen, st.mid, true, st.nacks)
                    }
                    Event::Closed => {
                        tracing::info!(session = %sid, "the client closed its transport");
                        self.work.push_back(Work::TransportClosed(sid));
                    }
                    Event::ChannelData(d) => self.work.push_back(Work::ChannelData(sid, d)),
                    Event::ChannelOpen(chan, _) => {
                        if let Some(e) = s.channels.by_chan_mut(chan) {
                            e.open = true;
                        }
                    }
                    Event::ChannelClose(chan) => {
                        if let Some(e) = s.channels.by_chan_mut(chan) {
                            e.open = false;
                            // Closed by the client (not by `datachannels/close`, which marks
                            // it first): what it leaves behind goes too.
                            if !std::mem::replace(&mut e.closed, true) {
                                self.work.push_back(Work::ChannelClosed(sid, chan));
                            }
                        }
                    }
                    Event::Connected => {
                        s.transport_lost = None;
                        s.renewed = false;
                        s.state = s.state.on_connected();
                        tracing::info!(session = %sid, "connected");
                        self.work.push_back(Work::Connected(sid));
                    }
                    Event::IceConnectionStateChange(state) => {
                        tracing::debug!(session = %sid, ?state, "ice state");
                        match state {
                            IceConnectionState::Disconnected => s.state = s.state.on_ice(false),
                            IceConnectionState::Connected | IceConnectionState::Completed => {
                                s.state = s.state.on_ice(true)
                            }
                            _ => {}
                        }
                    }
                    _ => {}
                },
                Err(e) => {
                    tracing::warn!(session = %sid, error = %e, "session failed; closing");
                    s.rtc.disconnect();
                    return;
                }
            }
        }
    }

    pub(super) fn process_work(&mut self, now: Instant) {
        // Draining the sessions DataChannel messages were written to may bring more work (a
        // subscriber's own messages); a few rounds, then whatever is left waits for the next.
        for _ in 0..8 {
            self.process_work_items(now);
            if !self.drain_written_channels(now) {
                return;
            }
        }
        // Never reached in practice (a drain after writes brings no new input); a session
        // written to is still never left undrained.
        self.drain_written_channels(now);
    }

    fn process_work_items(&mut self, now: Instant) {
        // Each item is handled once; items only come from packets and API calls, so this ends.
        while let Some(item) = self.work.pop_front() {
            match item {
                Work::Media(sid, data) => self.forward_media(sid, data, now),
                Work::KeyframeRequest(sid, req) => {
                    self.subscriber_wants_keyframe(sid, req.mid, now)
                }
                Work::StreamPaused(sid, mid, rid, paused) => {
                    self.stream_paused(sid, mid, rid, paused)
                }
                Work::Connected(sid) => self.request_keyframes_for(sid, now),
                Work::Estimate(sid, bps) => self.bandwidth_estimate(sid, bps, now),
                Work::TransportClosed(sid) => self.transport_closed(sid, now),
                Work::ChannelData(sid, d) => self.channel_message(sid, d),
                Work::ChannelClosed(sid, chan) => self.channel_closed_by_client(sid, chan),
            }
        }
    }
}

/// Reorders `q` so each destination's datagrams are together, in the order each destination
/// first appears; one destination's datagrams keep their order.
fn group_by_destination(q: &mut VecDeque<Transmit>) {
    let mut slot: HashMap<(Protocol, SocketAddr), usize> = HashMap::new();
    let mut groups: Vec<Vec<Transmit>> = Vec::new();
    for t in q.drain(..) {
        let i = *slot.entry((t.proto, t.destination)).or_insert_with(|| {
            groups.push(Vec::new());
            groups.len() - 1
        });
        if let Some(g) = groups.get_mut(i) {
            g.push(t);
        }
    }
    q.extend(groups.into_iter().flatten());
}

/// The NACKs since the last report for `(mid, egress)`, remembering the new cumulative count.
/// A count that went down (a mid reused for a new stream) starts again from it.
fn nack_delta(seen: &mut HashMap<(Mid, bool), u64>, mid: Mid, egress: bool, total: u64) -> u64 {
    let last = seen.insert((mid, egress), total).unwrap_or(0);
    total.checked_sub(last).unwrap_or(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grouping_puts_each_destinations_datagrams_together_in_their_order() {
        let addr = |p: u16| SocketAddr::from(([127, 0, 0, 1], p));
        let t = |to: u16, n: u8| Transmit {
            proto: Protocol::Udp,
            source: addr(1),
            destination: addr(to),
            contents: vec![n].into(),
        };
        let mut q: VecDeque<Transmit> = [t(2, 1), t(3, 1), t(2, 2), t(4, 1), t(3, 2), t(2, 3)]
            .into_iter()
            .collect();
        group_by_destination(&mut q);
        let order: Vec<(u16, u8)> = q
            .iter()
            .map(|t| (t.destination.port(), t.contents[0]))
            .collect();
        assert_eq!(order, [(2, 1), (2, 2), (2, 3), (3, 1), (3, 2), (4, 1)]);
        let mut empty = VecDeque::new();
        group_by_destination(&mut empty);
        assert!(empty.is_empty());
    }

    #[test]
    fn nack_counts_are_summed_from_cumulative_reports() {
        let mut seen = HashMap::new();
        let mid = Mid::from("1");
        assert_eq!(nack_delta(&mut seen, mid, true, 3), 3);
        assert_eq!(nack_delta(&mut seen, mid, true, 5), 2);
        assert_eq!(
            nack_delta(&mut seen, mid, false, 4),
            4,
            "ingress counts apart"
        );
        assert_eq!(nack_delta(&mut seen, mid, true, 1), 1, "a restarted count");
    }
}
