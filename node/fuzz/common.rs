//! What the node fuzz targets share: one in-memory engine on a simulated clock.
//!
//! The engine lives for the whole process, as in the node: creating one generates its DTLS
//! certificate, which cost more than the rest of an input. Every input gets its own minute of
//! simulated time (the demux target uses at most 25 s of it) and its sessions are closed at the
//! end of that minute, so what one input leaves behind is tombstones of closed sessions only.

use std::net::SocketAddr;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use trackmesh_node::engine::{Engine, EngineConfig};
use trackmesh_node::ids::NodeTag;

pub const APP: &str = "app";
pub const SFU: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 7701);

/// A real str0m client's audio + video send offer (written by the seed generator, see SECURITY.md).
pub const OFFER: &str = include_str!("fixtures/offer.sdp");

struct Shared {
    engine: Engine,
    now: Instant,
}

static SHARED: OnceLock<Mutex<Shared>> = OnceLock::new();

/// Runs one input on the shared engine, then closes every session it left.
pub fn with_engine<R>(f: impl FnOnce(&mut Engine, Instant) -> R) -> R {
    let mut shared = SHARED
        .get_or_init(|| {
            let now = Instant::now();
            Mutex::new(Shared {
                engine: engine(now),
                now,
            })
        })
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    shared.now += Duration::from_secs(60);
    let now = shared.now;
    let r = f(&mut shared.engine, now);
    let end = now + Duration::from_secs(50);
    for s in shared.engine.admin_sessions() {
        shared
            .engine
            .close_session(s.session_id, end, "fuzz input done");
    }
    settle(&mut shared.engine, end);
    assert_eq!(shared.engine.session_count(), 0);
    assert_eq!(shared.engine.publication_count(), 0);
    r
}

fn engine(now: Instant) -> Engine {
    Engine::new(
        EngineConfig {
            worker: 0,
            node_tag: NodeTag(0xabcd0123),
            local_addr: SFU,
            candidate_addr: SFU,
            more_candidates: Vec::new(),
            media_tcp: false,
            track_timeout: Duration::from_secs(30),
            reconnect_grace: Duration::from_secs(30),
            unconnected_expiry: Duration::from_secs(120),
            max_sessions: 16,
            bandwidth_estimation: false,
        },
        now,
    )
}

/// Lets the engine run its timers and empties its queues, as the runtime shell does.
pub fn settle(engine: &mut Engine, now: Instant) {
    engine.handle_timeout(now);
    for _ in 0..100_000 {
        if engine.poll_transmit().is_none() {
            break;
        }
    }
    for _ in 0..100_000 {
        if engine.poll_relay().is_none() {
            break;
        }
    }
}
