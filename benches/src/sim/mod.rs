//! The multi-region test bed (`deploy/sim/run.sh`, `deploy/sim/README.md`): network namespaces
//! made by the script, and the `trackmesh-sim` binary's two roles in them.
//!
//! - [`delay`]: a no-I/O delay line (bounded, ordered by release time) and the region-pair
//!   delay matrix; [`nfqueue`] is its thin shell over NFQUEUE, run in the "internet" namespace.
//! - [`topology`]: the namespaces, addresses and links the script made, as it hands them over.
//! - [`figures`]: pure computations of the report (track crossings per link, stalls).
//! - [`scenario`]: the driver, run in the clients' namespace: nodes, clients, the measured
//!   window, the report; [`cut`]: the node and region cuts and the recovery from them;
//!   [`netctl`]: the links it cuts and the iptables counters it reads.

pub mod cut;
pub mod delay;
pub mod figures;
pub mod netctl;
pub mod nfqueue;
pub mod scenario;
pub mod topology;
