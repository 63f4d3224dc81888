//! `conclave bench`: named workloads (sequential appends, N in flight, failover, catch-up,
//! verification, scale) run against a local Conclave group of real processes, and the same
//! workloads against a local etcd cluster for a side-by-side comparison.
//!
//! Layout: `workload` (names and the closed-loop runner), `group` + `conclave` (the Conclave
//! side), `etcd` + `http` + `vs_etcd` (the etcd side), `verify`, `stats`, `cpu`, `run` (the
//! order of things), `report` (the table), `plot` (latency against throughput, SVG).

pub mod conclave;
pub mod cpu;
pub mod error;
pub mod etcd;
pub mod group;
pub mod http;
pub mod plot;
pub mod report;
pub mod run;
pub mod stats;
pub mod verify;
pub mod vs_etcd;
pub mod workload;

pub use error::BenchError;
