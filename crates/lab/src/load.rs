//! The open-loop generator.
//!
//! Request `i` is *meant* to leave at `start + i / rate`, whatever happened to the ones before
//! it. A dispatcher releases each request at its intended time onto a queue that a fixed set
//! of keep-alive connections drain; a request's latency runs from its intended time to the
//! end of its response. When the server stalls, requests pile up in the queue and every one of
//! them records the wait — which is what a user arriving at that moment would have seen. A
//! closed-loop tool (each connection sending its next request only after the last answer)
//! would instead send fewer requests during the stall and report a handful of slow ones.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper::header::{HeaderName, HeaderValue};
use hyper::{Method, header};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::sync::{Mutex, mpsc};
use tokio::time::Instant;

use crate::report::{MAX_MICROS, Report, histogram};

/// Why a run could not start or finish.
#[derive(Debug, thiserror::Error)]
pub enum LabError {
    /// The target is not an `http://host:port` URL this tool can load.
    #[error("invalid target `{url}`: {reason}")]
    Target { url: String, reason: String },
    /// The target does not accept connections.
    #[error("cannot connect to {addr}")]
    Unreachable {
        addr: SocketAddr,
        source: std::io::Error,
    },
    /// A setting of the run is out of range.
    #[error("invalid `{setting}`: {reason}")]
    Spec {
        setting: &'static str,
        reason: String,
    },
    /// The target cannot serve the workload asked for.
    #[error("the target cannot serve the `{workload}` workload: {reason}")]
    Workload {
        workload: &'static str,
        reason: String,
    },
    /// A single request (for discovery) failed.
    #[error("{request} failed: {reason}")]
    Request { request: String, reason: String },
}

/// Sends one request on a fresh connection and returns its status and body: for discovering
/// what to load, not for measuring.
pub async fn fetch(target: &Target, request: Request) -> Result<(u16, Bytes), LabError> {
    let label = format!("{} {}", request.method, request.path);
    let failed = |reason: String| LabError::Request {
        request: label.clone(),
        reason,
    };
    let mut sender = None;
    let (status, body) = tokio::time::timeout(
        Duration::from_secs(30),
        exchange(target, &mut sender, request),
    )
    .await
    .map_err(|_| failed("no answer within 30 s".into()))?
    .map_err(|e| failed(e.to_string()))?;
    Ok((status, body))
}

/// Where requests go: an `http://` origin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub addr: SocketAddr,
    /// The `Host` header: `host:port` as written in the URL.
    pub authority: String,
}

impl Target {
    /// Parses `http://host:port` (a trailing `/` is allowed) and resolves the host.
    pub async fn parse(url: &str) -> Result<Self, LabError> {
        let invalid = |reason: &str| LabError::Target {
            url: url.to_owned(),
            reason: reason.to_owned(),
        };
        let authority = url
            .strip_prefix("http://")
            .ok_or_else(|| invalid("expected http://host:port (https is not supported)"))?
            .trim_end_matches('/');
        if authority.is_empty() || authority.contains('/') {
            return Err(invalid(
                "expected an origin such as http://127.0.0.1:8080, without a path",
            ));
        }
        let with_port = if authority.contains(':') {
            authority.to_owned()
        } else {
            format!("{authority}:80")
        };
        let addr = tokio::net::lookup_host(&with_port)
            .await
            .map_err(|e| invalid(&format!("cannot resolve the host: {e}")))?
            .next()
            .ok_or_else(|| invalid("the host resolves to no address"))?;
        Ok(Self {
            addr,
            authority: authority.to_owned(),
        })
    }

    /// Fails unless the target accepts a TCP connection.
    pub async fn check_reachable(&self) -> Result<(), LabError> {
        TcpStream::connect(self.addr)
            .await
            .map(drop)
            .map_err(|source| LabError::Unreachable {
                addr: self.addr,
                source,
            })
    }
}

/// One request to send.
#[derive(Debug, Clone)]
pub struct Request {
    pub method: Method,
    /// Path and query, e.g. `/products/42`.
    pub path: String,
    pub headers: Vec<(HeaderName, HeaderValue)>,
    pub body: Bytes,
}

impl Request {
    /// A `GET` of `path`.
    pub fn get(path: impl Into<String>) -> Self {
        Self {
            method: Method::GET,
            path: path.into(),
            headers: Vec::new(),
            body: Bytes::new(),
        }
    }

    /// A `POST` of a JSON body.
    pub fn post_json(path: impl Into<String>, json: impl Into<Bytes>) -> Self {
        Self {
            method: Method::POST,
            path: path.into(),
            headers: vec![(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            )],
            body: json.into(),
        }
    }
}

/// What to send next. Called at each request's intended send time, on one task.
pub trait Workload: Send {
    fn next(&mut self) -> Request;
}

impl<F: FnMut() -> Request + Send> Workload for F {
    fn next(&mut self) -> Request {
        self()
    }
}

impl Workload for Box<dyn Workload> {
    fn next(&mut self) -> Request {
        (**self).next()
    }
}

/// How hard and how long to load.
#[derive(Debug, Clone)]
pub struct LoadSpec {
    /// Requests per second, scheduled at fixed intervals.
    pub rate: f64,
    /// The measured part of the run.
    pub duration: Duration,
    /// Sent before the measured part, not recorded.
    pub warmup: Duration,
    /// Keep-alive connections that share the queue.
    pub connections: usize,
    /// The longest a request may take; past it, it counts as a transport error.
    pub timeout: Duration,
}

impl LoadSpec {
    /// Fails naming the first setting out of range.
    pub fn validate(&self) -> Result<(), LabError> {
        let spec = |setting, reason: String| Err(LabError::Spec { setting, reason });
        if !(self.rate.is_finite() && self.rate > 0.0) {
            return spec(
                "rate",
                format!("expected requests per second above 0, found {}", self.rate),
            );
        }
        if self.duration.is_zero() {
            return spec("duration", "must be above zero, e.g. 30s".into());
        }
        if self.connections == 0 || self.connections > 10_000 {
            return spec(
                "connections",
                format!("expected 1 to 10000, found {}", self.connections),
            );
        }
        if self.timeout.is_zero() {
            return spec("timeout", "must be above zero, e.g. 10s".into());
        }
        Ok(())
    }
}

/// A request released onto the queue at its intended time.
struct Job {
    request: Request,
    intended: Instant,
    measured: bool,
}

/// What one connection measured.
struct Tally {
    latency: hdrhistogram::Histogram<u64>,
    statuses: BTreeMap<u16, u64>,
    transport_errors: u64,
}

/// Loads `target` as `spec` says with requests from `workload`, and reports.
pub async fn run(
    target: &Target,
    spec: &LoadSpec,
    mut workload: impl Workload + 'static,
) -> Result<Report, LabError> {
    spec.validate()?;
    target.check_reachable().await?;
    let (queue, jobs) = mpsc::unbounded_channel::<Job>();
    let jobs = Arc::new(Mutex::new(jobs));
    let connections: Vec<_> = (0..spec.connections)
        .map(|_| tokio::spawn(connection(target.clone(), jobs.clone(), spec.timeout)))
        .collect();

    let start = Instant::now();
    let measure_from = start + spec.warmup;
    let end = measure_from + spec.duration;
    let interval = Duration::from_secs_f64(1.0 / spec.rate);
    let mut sent: u64 = 0;
    loop {
        let now = Instant::now();
        // Release every request whose time has come (several per wake-up at high rates).
        loop {
            let intended = start + interval.mul_f64(sent as f64);
            if intended >= end || intended > now {
                break;
            }
            let job = Job {
                request: workload.next(),
                intended,
                measured: intended >= measure_from,
            };
            if queue.send(job).is_err() {
                break;
            }
            sent += 1;
        }
        let next = start + interval.mul_f64(sent as f64);
        if next >= end {
            break;
        }
        tokio::time::sleep_until(next).await;
    }
    drop(queue);

    let mut latency = histogram();
    let mut statuses = BTreeMap::new();
    let mut transport_errors = 0;
    for connection in connections {
        let tally = connection.await.expect("a connection task does not panic");
        latency
            .add(&tally.latency)
            .expect("histograms of the same bounds add");
        for (status, n) in tally.statuses {
            *statuses.entry(status).or_insert(0) += n;
        }
        transport_errors += tally.transport_errors;
    }
    Ok(Report {
        requested_rate: spec.rate,
        measured: spec.duration,
        latency,
        statuses,
        transport_errors,
    })
}

/// One keep-alive connection draining the shared queue; reconnects after a failure.
async fn connection(
    target: Target,
    jobs: Arc<Mutex<mpsc::UnboundedReceiver<Job>>>,
    timeout: Duration,
) -> Tally {
    let mut tally = Tally {
        latency: histogram(),
        statuses: BTreeMap::new(),
        transport_errors: 0,
    };
    let mut sender: Option<SendRequest<Full<Bytes>>> = None;
    loop {
        let Some(job) = jobs.lock().await.recv().await else {
            return tally;
        };
        let outcome =
            tokio::time::timeout(timeout, exchange(&target, &mut sender, job.request)).await;
        let elapsed = job.intended.elapsed();
        match outcome {
            Ok(Ok((status, _))) => {
                if job.measured {
                    let micros = u64::try_from(elapsed.as_micros()).unwrap_or(MAX_MICROS);
                    tally.latency.saturating_record(micros.clamp(1, MAX_MICROS));
                    *tally.statuses.entry(status).or_insert(0) += 1;
                }
            }
            Ok(Err(_)) | Err(_) => {
                // A broken or timed-out connection cannot be reused.
                sender = None;
                if job.measured {
                    tally.transport_errors += 1;
                }
            }
        }
    }
}

/// Sends `request` on the connection, opening it first if needed; returns the status and
/// body once the whole body has arrived.
async fn exchange(
    target: &Target,
    sender: &mut Option<SendRequest<Full<Bytes>>>,
    request: Request,
) -> Result<(u16, Bytes), Box<dyn std::error::Error + Send + Sync>> {
    if sender.as_ref().is_none_or(SendRequest::is_closed) {
        let stream = TcpStream::connect(target.addr).await?;
        stream.set_nodelay(true)?;
        let (fresh, connection) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        *sender = Some(fresh);
    }
    let sender = sender.as_mut().expect("connected above");
    sender.ready().await?;
    let mut builder = hyper::Request::builder()
        .method(request.method)
        .uri(request.path)
        .header(header::HOST, &target.authority);
    for (name, value) in request.headers {
        builder = builder.header(name, value);
    }
    let response = sender
        .send_request(builder.body(Full::new(request.body))?)
        .await?;
    let status = response.status().as_u16();
    let body = response.into_body().collect().await?.to_bytes();
    Ok((status, body))
}
