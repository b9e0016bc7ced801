//! Datagrams into the engine's receive path (STUN, DTLS, RTP, RTCP), in memory on a simulated
//! clock: whatever arrives, from whichever address, must never panic the engine.
//!
//! The engine holds one session negotiated with a real client's offer. Input: records of
//! `[flags][len: u16 BE][datagram]`. Flags: bits 0-1 pick the source address; bit 2 rewrites a
//! STUN message for this session (its random ufrag in USERNAME, a valid MESSAGE-INTEGRITY and
//! FINGERPRINT), so mutated binding requests get past the ICE checks; bits 3-6 advance the clock
//! by that many times 20 ms; bit 7 runs the timers.
#![no_main]

#[path = "../common.rs"]
mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use aws_lc_rs::hmac;
use libfuzzer_sys::fuzz_target;

use common::{APP, OFFER, settle, with_engine};
use trackmesh_node::engine::Engine;

/// Most datagrams per input, so one input stays quick.
const MAX_DATAGRAMS: usize = 64;

const SOURCES: [&str; 4] = [
    "127.0.0.1:40000",
    "127.0.0.1:40001",
    "127.0.0.2:40000",
    "[::1]:40000",
];

const STUN_MAGIC: [u8; 4] = [0x21, 0x12, 0xa4, 0x42];
const CRC32: crc::Crc<u32> = crc::Crc::<u32>::new(&crc::CRC_32_ISO_HDLC);

/// The value of the first `a=<attr>:` line.
fn sdp_attr<'a>(sdp: &'a str, attr: &str) -> Option<&'a str> {
    sdp.lines()
        .find_map(|l| l.strip_prefix("a=")?.strip_prefix(attr)?.strip_prefix(':'))
        .map(str::trim)
}

fn push_attr(out: &mut Vec<u8>, typ: u16, value: &[u8]) {
    out.extend_from_slice(&typ.to_be_bytes());
    out.extend_from_slice(&(value.len() as u16).to_be_bytes());
    out.extend_from_slice(value);
    while !out.len().is_multiple_of(4) {
        out.push(0);
    }
}

fn set_len(out: &mut [u8], len: usize) {
    out[2..4].copy_from_slice(&(len as u16).to_be_bytes());
}

/// Rebuilds a STUN message as this session's client would have sent it; None if not STUN.
fn fix_stun(buf: &[u8], ufrag: &str, key: &hmac::Key) -> Option<Vec<u8>> {
    if buf.len() < 20 || buf[0] > 1 || buf[4..8] != STUN_MAGIC {
        return None;
    }
    let mut out = buf[..20].to_vec();
    let mut rest = &buf[20..];
    while rest.len() >= 4 && out.len() < 1200 {
        let typ = u16::from_be_bytes([rest[0], rest[1]]);
        let len = usize::from(u16::from_be_bytes([rest[2], rest[3]]));
        let value = rest.get(4..4 + len)?;
        rest = rest.get(4 + ((len + 3) & !3)..).unwrap_or_default();
        match typ {
            // USERNAME is "<our ufrag>:<client ufrag>".
            0x0006 => {
                let client = value
                    .iter()
                    .position(|&b| b == b':')
                    .map_or(&b":"[..], |i| &value[i..]);
                let mut v = ufrag.as_bytes().to_vec();
                v.extend_from_slice(client);
                push_attr(&mut out, typ, &v);
            }
            // MESSAGE-INTEGRITY: the header's length counts up to and including it.
            0x0008 => {
                let len = out.len() - 20 + 24;
                set_len(&mut out, len);
                let tag = hmac::sign(key, &out);
                push_attr(&mut out, typ, tag.as_ref());
            }
            // FINGERPRINT: likewise, CRC-32 XOR "STUN".
            0x8028 => {
                let len = out.len() - 20 + 8;
                set_len(&mut out, len);
                let crc = CRC32.checksum(&out) ^ 0x5354_554e;
                push_attr(&mut out, typ, &crc.to_be_bytes());
            }
            _ => push_attr(&mut out, typ, value),
        }
    }
    let len = out.len() - 20;
    set_len(&mut out, len);
    Some(out)
}

fuzz_target!(|data: &[u8]| with_engine(|e, now| datagrams(e, now, data)));

fn datagrams(e: &mut Engine, mut now: Instant, data: &[u8]) {
    let Ok((_, Some(answer))) = e.create_session(APP, Some(OFFER.into()), now) else {
        panic!("the engine accepts the fixture offer");
    };
    let (Some(ufrag), Some(pwd)) = (
        sdp_attr(&answer.sdp, "ice-ufrag"),
        sdp_attr(&answer.sdp, "ice-pwd"),
    ) else {
        panic!("the answer carries ICE credentials");
    };
    let key = hmac::Key::new(hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, pwd.as_bytes());
    let sources: Vec<SocketAddr> = SOURCES
        .iter()
        .map(|s| s.parse().expect("address"))
        .collect();
    let mut rest = data;
    let mut count = 0;
    while let [flags, hi, lo, tail @ ..] = rest {
        count += 1;
        if count > MAX_DATAGRAMS {
            break;
        }
        let len = usize::from(u16::from_be_bytes([*hi, *lo])).min(tail.len());
        let (datagram, tail) = tail.split_at(len);
        rest = tail;
        let source = sources[usize::from(flags & 3)];
        now += Duration::from_millis(20 * u64::from((flags >> 3) & 0xf));
        let fixed = if flags & 4 != 0 {
            fix_stun(datagram, ufrag, &key)
        } else {
            None
        };
        e.handle_datagram(now, source, fixed.as_deref().unwrap_or(datagram));
        if flags & 0x80 != 0 {
            settle(e, now);
        } else {
            while e.poll_transmit().is_some() {}
        }
    }
    settle(e, now + Duration::from_secs(5));
}
