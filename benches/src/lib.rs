//! trackmesh benchmarks: the `trackmesh-load` load generator as a library (`load`), used by the
//! `trackmesh-load` binary and by the CI correctness tests in `tests/load.rs`, and the charts of
//! its reports (`plot`, the `trackmesh-plot` binary).

pub mod load;
pub mod plot;
