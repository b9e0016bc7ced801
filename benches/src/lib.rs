//! trackmesh benchmarks: the `trackmesh-load` load generator as a library (`load`), used by the
//! `trackmesh-load` binary and by the CI correctness tests in `tests/load.rs`, the charts of
//! its reports (`plot`, the `trackmesh-plot` binary), and the multi-region test bed's delay
//! process and scenario driver (`sim`, the `trackmesh-sim` binary; `deploy/sim/run.sh`).

pub mod load;
pub mod plot;
pub mod sim;
