//! Connection slots: a cap in total and per client, and a small reserve for health checks.
//!
//! A connection within both caps gets a slot and is served normally. One beyond a cap goes to the
//! reserve ("triage"): the node reads the first bytes of its request line and serves it only if it
//! asks for `/healthz`, `/readyz` or `/metrics`, so probes and scrapes still work while the API is
//! full. Everything else gets a fast 503. The reserve is small and bounded; when it is full, the
//! connection that has waited longest without sending a probe request is refused to make room, so
//! idle or slow connections cannot hold the reserve against a probe.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::oneshot;

/// Whom a per-client cap counts: an IPv4 address, or an IPv6 /64 (one subscriber usually holds a
/// whole /64, so counting single IPv6 addresses would not cap anything).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ClientKey {
    V4(u32),
    V6Prefix(u64),
}

impl ClientKey {
    pub fn of(ip: IpAddr) -> ClientKey {
        match ip.to_canonical() {
            IpAddr::V4(v4) => ClientKey::V4(u32::from(v4)),
            IpAddr::V6(v6) => ClientKey::V6Prefix((u128::from(v6) >> 64) as u64),
        }
    }
}

/// Open connections per client, at most `max` each, given back when a connection ends (the
/// ICE-TCP and TURN-over-TCP listeners; the HTTP listener counts in [`Slots`]).
#[derive(Clone)]
pub struct ClientCounts {
    max: usize,
    open: Arc<Mutex<HashMap<ClientKey, usize>>>,
}

impl ClientCounts {
    pub fn new(max: usize) -> ClientCounts {
        ClientCounts {
            max,
            open: Arc::default(),
        }
    }

    /// Takes a place for `client`; false when it has `max` already.
    pub fn take(&self, client: ClientKey) -> bool {
        let mut map = self.open.lock().unwrap_or_else(|e| e.into_inner());
        let n = map.entry(client).or_insert(0);
        if *n >= self.max {
            return false;
        }
        *n += 1;
        true
    }

    /// Gives back a place [`ClientCounts::take`] gave.
    pub fn give_back(&self, client: ClientKey) {
        let mut map = self.open.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = map.get_mut(&client) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                map.remove(&client);
            }
        }
    }
}

/// Why a connection could not have a normal slot: the `reason` of its refusal, if refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Full {
    /// `--http-max-connections` reached.
    Total,
    /// `--http-max-connections-per-ip` reached for this client.
    PerClient,
}

impl Full {
    pub fn reason(self) -> &'static str {
        match self {
            Full::Total => "conn_limit",
            Full::PerClient => "conn_limit_ip",
        }
    }
}

pub enum Admit {
    /// A normal slot, released when the guard drops.
    Slot(SlotGuard),
    /// Over a cap, but in the reserve: may be served if it is a probe. `evicted` fires when a
    /// newer connection needs the place.
    Triage {
        guard: TriageGuard,
        evicted: oneshot::Receiver<()>,
        full: Full,
    },
    /// Over a cap and no reserve: refuse now.
    Refuse(Full),
}

pub struct Slots {
    max_total: usize,
    max_per_client: usize,
    reserve: usize,
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    total: usize,
    per_client: HashMap<ClientKey, usize>,
    /// Reserve connections still waiting for their request line, oldest first.
    triage: VecDeque<(u64, oneshot::Sender<()>)>,
    /// Reserve connections being served as probes.
    probes: usize,
    next_id: u64,
}

impl Slots {
    pub fn new(max_total: usize, max_per_client: usize, reserve: usize) -> Arc<Slots> {
        Arc::new(Slots {
            max_total,
            max_per_client,
            reserve,
            inner: Mutex::new(Inner::default()),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn admit(self: &Arc<Self>, ip: IpAddr) -> Admit {
        let key = ClientKey::of(ip);
        let mut inner = self.lock();
        let mine = inner.per_client.get(&key).copied().unwrap_or(0);
        let full = if inner.total >= self.max_total {
            Full::Total
        } else if mine >= self.max_per_client {
            Full::PerClient
        } else {
            inner.total += 1;
            *inner.per_client.entry(key).or_insert(0) += 1;
            return Admit::Slot(SlotGuard {
                slots: self.clone(),
                key,
            });
        };
        if self.reserve == 0 {
            return Admit::Refuse(full);
        }
        if inner.triage.len() + inner.probes >= self.reserve {
            match inner.triage.pop_front() {
                // The receiver may be gone already (its connection is ending): fine either way.
                Some((_, oldest)) => drop(oldest.send(())),
                None => return Admit::Refuse(full),
            }
        }
        let id = inner.next_id;
        inner.next_id = inner.next_id.wrapping_add(1);
        let (tx, evicted) = oneshot::channel();
        inner.triage.push_back((id, tx));
        Admit::Triage {
            guard: TriageGuard {
                slots: self.clone(),
                id,
                probe: false,
            },
            evicted,
            full,
        }
    }

    /// Open connections with a normal slot.
    pub fn open(&self) -> usize {
        self.lock().total
    }
}

/// A normal connection slot.
pub struct SlotGuard {
    slots: Arc<Slots>,
    key: ClientKey,
}

impl Drop for SlotGuard {
    fn drop(&mut self) {
        let mut inner = self.slots.lock();
        inner.total = inner.total.saturating_sub(1);
        if let Some(n) = inner.per_client.get_mut(&self.key) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                inner.per_client.remove(&self.key);
            }
        }
    }
}

/// A place in the reserve.
pub struct TriageGuard {
    slots: Arc<Slots>,
    id: u64,
    probe: bool,
}

impl TriageGuard {
    /// The connection asked for a probe path: it stops being evictable. False when it was
    /// evicted in the meantime.
    pub fn become_probe(&mut self) -> bool {
        let mut inner = self.slots.lock();
        let Some(i) = inner.triage.iter().position(|(id, _)| *id == self.id) else {
            return false;
        };
        inner.triage.remove(i);
        inner.probes += 1;
        self.probe = true;
        true
    }
}

impl Drop for TriageGuard {
    fn drop(&mut self) {
        let mut inner = self.slots.lock();
        if self.probe {
            inner.probes = inner.probes.saturating_sub(1);
        } else if let Some(i) = inner.triage.iter().position(|(id, _)| *id == self.id) {
            inner.triage.remove(i);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    #[test]
    fn caps_in_total_and_per_client() {
        let slots = Slots::new(3, 2, 0);
        let a1 = slots.admit(ip("10.0.0.1"));
        let a2 = slots.admit(ip("10.0.0.1"));
        assert!(matches!(a1, Admit::Slot(_)) && matches!(a2, Admit::Slot(_)));
        assert!(matches!(
            slots.admit(ip("10.0.0.1")),
            Admit::Refuse(Full::PerClient)
        ));
        let b = slots.admit(ip("10.0.0.2"));
        assert!(matches!(b, Admit::Slot(_)));
        assert!(matches!(
            slots.admit(ip("10.0.0.3")),
            Admit::Refuse(Full::Total)
        ));
        drop(a1);
        assert!(matches!(slots.admit(ip("10.0.0.1")), Admit::Slot(_)));
        assert_eq!(
            slots.open(),
            2,
            "the slot taken just now was dropped with its guard"
        );
    }

    #[test]
    fn ipv6_counts_per_64_and_mapped_v4_as_v4() {
        let slots = Slots::new(10, 1, 0);
        let _a = slots.admit(ip("2001:db8:1:2::1"));
        assert!(matches!(
            slots.admit(ip("2001:db8:1:2::ffff")),
            Admit::Refuse(Full::PerClient)
        ));
        assert!(matches!(slots.admit(ip("2001:db8:1:3::1")), Admit::Slot(_)));
        let _v4 = slots.admit(ip("192.0.2.7"));
        assert!(matches!(
            slots.admit(ip("::ffff:192.0.2.7")),
            Admit::Refuse(Full::PerClient)
        ));
    }

    #[test]
    fn reserve_evicts_the_oldest_waiting_but_never_a_probe() {
        let slots = Slots::new(1, 1, 2);
        let _main = slots.admit(ip("10.0.0.1"));
        let Admit::Triage {
            guard: mut probe,
            evicted: mut probe_evicted,
            ..
        } = slots.admit(ip("10.0.0.1"))
        else {
            panic!("expected the reserve")
        };
        assert!(probe.become_probe());
        let Admit::Triage {
            guard: _first_guard,
            evicted: mut first,
            ..
        } = slots.admit(ip("10.0.0.2"))
        else {
            panic!("expected the reserve")
        };
        assert!(first.try_recv().is_err(), "not evicted yet");
        let Admit::Triage {
            guard: second,
            evicted: mut second_evicted,
            full,
        } = slots.admit(ip("10.0.0.2"))
        else {
            panic!("expected the reserve")
        };
        assert_eq!(full, Full::Total);
        assert!(first.try_recv().is_ok(), "the oldest waiting one made room");
        assert!(
            probe_evicted.try_recv().is_err(),
            "a connection being served as a probe is not evicted"
        );
        drop(second);
        assert!(second_evicted.try_recv().is_err());
        drop(probe);
        // Both reserve places are free again.
        let Admit::Triage {
            guard: _third_guard,
            evicted: mut third,
            ..
        } = slots.admit(ip("10.0.0.3"))
        else {
            panic!("expected the reserve")
        };
        let fourth = slots.admit(ip("10.0.0.3"));
        assert!(matches!(fourth, Admit::Triage { .. }));
        assert!(third.try_recv().is_err(), "room for both without eviction");
    }

    #[test]
    fn reserve_of_probes_only_refuses() {
        let slots = Slots::new(5, 1, 1);
        let _main = slots.admit(ip("10.0.0.1"));
        let Admit::Triage { mut guard, .. } = slots.admit(ip("10.0.0.1")) else {
            panic!("expected the reserve")
        };
        assert!(guard.become_probe());
        assert!(matches!(
            slots.admit(ip("10.0.0.1")),
            Admit::Refuse(Full::PerClient)
        ));
    }
}
