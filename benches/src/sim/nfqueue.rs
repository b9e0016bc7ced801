//! The delay process's shell: packets the "internet" namespace's iptables send to an NFQUEUE
//! are held on a [`DelayLine`] for their region pair's delay, then accepted. This kernel has no
//! `netem`, so delay is done in user space. Bounded: the kernel queue (`--queue-max`) drops
//! when full, and so does the line.

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use nfq::{Queue, Verdict};

use super::delay::{DelayLine, Matrix, Plan};

/// Only the IPv4 header is read; the packet itself goes back unmodified.
const COPY_RANGE: u16 = 64;
/// Packets read per turn before releasing due ones, so a burst cannot starve the releases.
const BURST: usize = 1024;
/// Sleep when nothing is due sooner: the delay's resolution.
const TICK: Duration = Duration::from_micros(500);

pub struct DelayConfig {
    pub queue: u16,
    pub matrix: Matrix,
    pub plan: Plan,
    /// Packets held at most (kernel queue and delay line alike).
    pub capacity: usize,
    /// Exit after this long.
    pub lifetime: Duration,
}

/// Netlink errors in a row after which the queue is taken for broken.
const MAX_ERRORS_IN_A_ROW: u32 = 10_000;

/// Counters printed at exit.
#[derive(Debug, Default)]
pub struct DelayStats {
    pub delayed: u64,
    pub passed: u64,
    pub dropped: u64,
    /// Verdicts the kernel refused: mostly packets it had already dropped itself because their
    /// interface went down (a cut), which it answers with ENOENT.
    pub refused: u64,
}

pub fn run(cfg: &DelayConfig) -> anyhow::Result<DelayStats> {
    let mut q = Queue::open().context("opening a netfilter queue socket (root needed)")?;
    q.bind(cfg.queue)
        .with_context(|| format!("binding NFQUEUE {}", cfg.queue))?;
    q.set_copy_range(cfg.queue, COPY_RANGE)
        .context("setting the copy range")?;
    let max = u32::try_from(cfg.capacity).unwrap_or(u32::MAX);
    q.set_queue_max_len(cfg.queue, max)
        .context("setting the kernel queue length")?;
    q.set_nonblocking(true);
    let mut line = DelayLine::new(cfg.capacity);
    let mut stats = DelayStats::default();
    let end = Instant::now() + cfg.lifetime;
    eprintln!(
        "trackmesh-sim delay: queue {} ready, {} regions, lifetime {:?}",
        cfg.queue,
        cfg.matrix.regions(),
        cfg.lifetime
    );
    let mut in_a_row = 0u32;
    while Instant::now() < end {
        for _ in 0..BURST {
            let mut msg = match q.recv() {
                Ok(m) => {
                    in_a_row = 0;
                    m
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                // The kernel's answer to a verdict it could not apply (see `refused`).
                Err(e) => {
                    stats.refused += 1;
                    in_a_row += 1;
                    if in_a_row >= MAX_ERRORS_IN_A_ROW {
                        bail!(
                            "reading NFQUEUE {}: {in_a_row} errors in a row, last: {e}",
                            cfg.queue
                        );
                    }
                    continue;
                }
            };
            let delay = cfg.plan.packet_delay(&cfg.matrix, msg.get_payload());
            if delay.is_zero() {
                stats.passed += 1;
                msg.set_verdict(Verdict::Accept);
                q.verdict(msg).context("accepting a packet")?;
            } else if let Err(mut msg) = line.push(Instant::now(), delay, msg) {
                msg.set_verdict(Verdict::Drop);
                q.verdict(msg).context("dropping a packet")?;
            } else {
                stats.delayed += 1;
            }
        }
        let now = Instant::now();
        while let Some(mut msg) = line.pop_due(now) {
            msg.set_verdict(Verdict::Accept);
            q.verdict(msg).context("releasing a packet")?;
        }
        let nap = line.next_due().map_or(TICK, |d| {
            d.saturating_duration_since(Instant::now()).min(TICK)
        });
        std::thread::sleep(nap);
    }
    // Whatever is still held goes on; the queue is unbound when `q` drops.
    while let Some(mut msg) = line.pop_due(Instant::now() + Duration::from_secs(3600)) {
        msg.set_verdict(Verdict::Accept);
        let _ = q.verdict(msg);
    }
    stats.dropped = line.dropped;
    Ok(stats)
}
