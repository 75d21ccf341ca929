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
//! * [`mix`] — TPC-W's browsing, shopping and ordering mixes: shoppers signed up before the
//!   load, then product pages, listings, carts and checkouts in the mix's proportions.
//! * [`plot`] — SVG charts: percentiles over time, or latency against throughput.
//! * [`report`] — the measured figures, their percentiles, and their Markdown and JSON forms.
//! * [`saturate`] — the highest rate a target sustains with its p99 under a bound: geometric
//!   steps up to the first failure, then bisection.
//! * [`workload`] — what to send: Bazaar's product, listing and GraphQL workloads (product ids
//!   discovered from the target, popularity drawn from a Zipf distribution), or any path or
//!   GraphQL query, so other systems can be measured the same way.
//!
//! `bazaar lab` is the command line over these.

pub mod baseline;
pub mod load;
pub mod mix;
pub mod plot;
pub mod report;
pub mod saturate;
pub mod workload;

pub use baseline::Baseline;
pub use load::{
    Interaction, LabError, LoadSpec, Progress, Request, Session, Stop, Stopper, Target, Workload,
    fetch, parse_header, run, run_observed,
};
pub use report::{Figures, MAX_ERROR_SHARE, Report, Second};
pub use saturate::{SaturateSpec, Saturation, Step, saturate};
