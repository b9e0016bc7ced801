//! A client of the world: the test kit's client core (`trackmesh_testkit::client::Core`), the
//! one the integration tests' thread driver and the load generator's tokio driver run, here
//! driven by the world with in-memory datagrams on its simulated clock. It owns its counters,
//! so counting a frame takes no lock.

use std::net::SocketAddr;
use std::time::Instant;

use str0m::Rtc;
use trackmesh_testkit::client::{ClientStats, Core};

/// A str0m client in the world, and what it has received.
pub struct Client {
    /// The client core, for tests to negotiate and write media with through its `Rtc`.
    pub core: Core<ClientStats>,
    /// Its address in the world, which the engine sees as the datagrams' source.
    pub addr: SocketAddr,
}

impl Client {
    pub(super) fn new(addr: SocketAddr, now: Instant) -> Client {
        Client {
            core: Core::in_memory(addr, now).expect("a loopback host candidate"),
            addr,
        }
    }

    /// The client's PeerConnection.
    pub fn rtc(&mut self) -> &mut Rtc {
        self.core.rtc()
    }

    /// Everything the client counted (the same counters as the integration tests' clients).
    pub fn stats(&self) -> &ClientStats {
        self.core.stats()
    }

    /// str0m reported ICE and DTLS up with the SFU.
    pub fn connected(&self) -> bool {
        self.stats().connected
    }

    /// Frames received on `mid`.
    pub fn frames(&self, mid: &str) -> u64 {
        self.stats().rx_frames(mid)
    }

    /// Keyframes received on `mid`.
    pub fn keyframes(&self, mid: &str) -> u64 {
        self.stats().rx_keyframes(mid)
    }

    /// Whether the first frame received on `mid` was a keyframe; `None` before a frame.
    pub fn first_is_keyframe(&self, mid: &str) -> Option<bool> {
        self.stats().rx_first_is_keyframe(mid)
    }

    /// Keyframe requests the SFU sent this client as a publisher, on all its mids.
    pub fn keyframe_requests(&self) -> u64 {
        self.stats().total_keyframe_requests()
    }
}
