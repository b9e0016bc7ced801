//! The sealed gossip envelope, the first thing every gossip datagram meets: arbitrary bytes
//! opened by a member must never panic and never open; a message this fuzzer seals opens once,
//! to itself, and is refused as a replay the second time and once any byte is changed.
#![no_main]

use std::sync::{Mutex, OnceLock};

use libfuzzer_sys::fuzz_target;
use trackmesh_node::cluster::gossip_seal::{Seal, SealKey};

struct Pair {
    sender: Seal,
    receiver: Seal,
}

fn pair() -> &'static Mutex<Pair> {
    static PAIR: OnceLock<Mutex<Pair>> = OnceLock::new();
    PAIR.get_or_init(|| {
        let key = || SealKey::derive("fuzz-cluster-secret").expect("key");
        Mutex::new(Pair {
            sender: Seal::new(key(), None, 1),
            receiver: Seal::new(key(), None, 2),
        })
    })
}

fuzz_target!(|data: &[u8]| {
    let mut p = pair().lock().unwrap_or_else(|e| e.into_inner());
    // Whatever arrives from outside does not open.
    let mut raw = data.to_vec();
    assert!(p.receiver.open(&mut raw).is_err(), "random bytes opened");

    // A real sealed message: opens once, to itself; a replay and a flipped byte do not.
    let mut sealed = Vec::new();
    if p.sender.seal(data, &mut sealed).is_err() {
        return;
    }
    for datagram in sealed {
        let mut once = datagram.clone();
        let opened = p.receiver.open(&mut once).map(<[u8]>::to_vec);
        assert_eq!(
            opened.as_deref(),
            Ok(data),
            "a sealed message opens to itself"
        );
        let mut again = datagram.clone();
        assert!(p.receiver.open(&mut again).is_err(), "a replay opened");
        if let (Some(&first), false) = (data.first(), datagram.is_empty()) {
            let mut flipped = datagram.clone();
            let i = usize::from(first) % flipped.len();
            flipped[i] ^= 0x01;
            assert!(
                p.receiver.open(&mut flipped).is_err(),
                "a changed byte opened"
            );
        }
    }
});
