//! Bazaar's measuring instrument.
//!
//! # Layout
//!
//! * [`load`] — the open-loop generator: requests are scheduled at a fixed arrival rate and
//!   each one's latency is measured from the moment it was *meant* to be sent, so a server
//!   that stalls cannot hide the queue it causes (the coordinated-omission error of
//!   closed-loop tools). Keep-alive HTTP/1.1 connections over hyper; latencies in HDR
//!   histograms.
//! * [`baseline`] — a bare hyper server answering a fixed body, started in-process so any
//!   figure can be reported beside it as a ratio measured in the same run.
//! * [`report`] — the measured figures and their percentiles.
//!
//! Workload mixes, saturation search, plots and the `bazaar lab` command build on these.

pub mod baseline;
pub mod load;
pub mod report;

pub use baseline::Baseline;
pub use load::{LabError, LoadSpec, Request, Target, Workload, run};
pub use report::Report;
