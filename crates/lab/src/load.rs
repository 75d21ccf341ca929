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
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper::header::{HeaderName, HeaderValue};
use hyper::{Method, header};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::sync::{Mutex, mpsc, watch};
use tokio::time::Instant;

use crate::report::{Figures, Report, Second};

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

/// Where requests go: an `http://` origin, and headers sent with every request to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub addr: SocketAddr,
    /// The `Host` header: `host:port` as written in the URL.
    pub authority: String,
    /// Sent on every request (discovery included), after the request's own headers; a
    /// request that sets a header of the same name keeps its own (a shopper's session beats
    /// a `--header 'Authorization: …'` meant for the plain workloads).
    pub headers: Vec<(HeaderName, HeaderValue)>,
}

/// Parses a `--header` argument, `Name: value`, as curl writes it.
pub fn parse_header(text: &str) -> Result<(HeaderName, HeaderValue), LabError> {
    let invalid = |reason: String| LabError::Spec {
        setting: "header",
        reason,
    };
    let (name, value) = text
        .split_once(':')
        .ok_or_else(|| invalid(format!("expected `Name: value`, found `{text}`")))?;
    let name = HeaderName::from_bytes(name.trim().as_bytes())
        .map_err(|_| invalid(format!("`{}` is not a valid header name", name.trim())))?;
    if name == header::HOST || name == header::CONTENT_LENGTH {
        return Err(invalid(format!(
            "`{name}` is set by the generator (from --target and each body), not by --header"
        )));
    }
    let value = HeaderValue::from_str(value.trim()).map_err(|_| {
        invalid(format!(
            "the value of `{name}` holds characters a header cannot"
        ))
    })?;
    Ok((name, value))
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
            headers: Vec::new(),
        })
    }

    /// The same target, sending `headers` with every request.
    #[must_use]
    pub fn with_headers(mut self, headers: Vec<(HeaderName, HeaderValue)>) -> Self {
        self.headers = headers;
        self
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

    /// The same request with one more header.
    #[must_use]
    pub fn with_header(mut self, name: HeaderName, value: HeaderValue) -> Self {
        self.headers.push((name, value));
        self
    }
}

/// What a user does at one arrival: usually one request, sometimes a short sequence sent in
/// order on one connection (add to cart, then check out). Its latency runs from its intended
/// time to the end of its last response; it stops at the first 4xx/5xx, which is its outcome.
#[derive(Debug, Clone)]
pub struct Interaction {
    /// What it is, for the report's breakdown: `product`, `buy`.
    pub kind: &'static str,
    pub requests: Vec<Request>,
    /// Interactions holding the same session run one at a time, like one person's clicks:
    /// the second waits (and its wait counts in its latency) until the first has finished.
    pub session: Option<Session>,
}

/// One user's turn-taking: see [`Interaction::session`].
pub type Session = Arc<Mutex<()>>;

impl Interaction {
    /// One request.
    pub fn one(kind: &'static str, request: Request) -> Self {
        Self::sequence(kind, vec![request])
    }

    /// Requests sent in order.
    pub fn sequence(kind: &'static str, requests: Vec<Request>) -> Self {
        Self {
            kind,
            requests,
            session: None,
        }
    }

    /// The same interaction, taking its turn in `session`.
    #[must_use]
    pub fn in_session(mut self, session: Session) -> Self {
        self.session = Some(session);
        self
    }
}

impl From<Request> for Interaction {
    fn from(request: Request) -> Self {
        Self::one("request", request)
    }
}

/// What to send next. Called at each arrival's intended time, on one task.
pub trait Workload: Send {
    fn next(&mut self) -> Interaction;
}

impl<F, I> Workload for F
where
    F: FnMut() -> I + Send,
    I: Into<Interaction>,
{
    fn next(&mut self) -> Interaction {
        self().into()
    }
}

impl Workload for Box<dyn Workload> {
    fn next(&mut self) -> Interaction {
        (**self).next()
    }
}

/// How hard and how long to load.
#[derive(Debug, Clone)]
pub struct LoadSpec {
    /// Arrivals per second, scheduled at fixed intervals.
    pub rate: f64,
    /// The measured part of the run.
    pub duration: Duration,
    /// Sent before the measured part, not recorded.
    pub warmup: Duration,
    /// Keep-alive connections that share the queue.
    pub connections: usize,
    /// The longest an interaction may take; past it, it counts as a transport error.
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

/// Asks a run (or a saturation search) to stop early: it sends nothing more, lets what is in
/// flight finish, and reports what it measured.
#[derive(Debug, Clone)]
pub struct Stop(watch::Receiver<bool>);

/// The side of a [`Stop`] that asks.
#[derive(Debug)]
pub struct Stopper(watch::Sender<bool>);

impl Stop {
    /// A stop and the handle that triggers it.
    pub fn new() -> (Stopper, Self) {
        let (sender, receiver) = watch::channel(false);
        (Stopper(sender), Self(receiver))
    }

    /// A stop nobody can trigger.
    pub fn never() -> Self {
        Self::new().1
    }

    pub fn is_requested(&self) -> bool {
        *self.0.borrow()
    }

    /// Resolves once a stop is asked for; never, if it cannot be.
    pub async fn requested(&mut self) {
        if self.0.wait_for(|stop| *stop).await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

impl Stopper {
    pub fn stop(&self) {
        self.0.send_replace(true);
    }
}

/// How the run is going, once a second: what a person watching needs.
#[derive(Debug, Clone)]
pub struct Progress {
    /// Since the first arrival (warm-up included).
    pub elapsed: Duration,
    /// Warm-up plus the measured duration.
    pub total: Duration,
    pub warming_up: bool,
    /// Interactions finished per second over the last interval.
    pub rate: f64,
    /// The p99 of the last interval's measured interactions, if any finished.
    pub p99: Option<Duration>,
    /// Measured interactions that failed so far.
    pub errors: u64,
    /// Interactions released but not yet finished: grows when the target falls behind.
    pub backlog: u64,
}

/// An interaction released onto the queue at its intended time.
struct Job {
    interaction: Interaction,
    intended: Instant,
    measured: bool,
}

/// How one interaction ended.
#[derive(Debug)]
pub(crate) enum Outcome {
    /// Its last response had this (2xx or 3xx) status.
    Answered(u16),
    /// A response with a 4xx/5xx status ended it; its body says why.
    Rejected(u16, Bytes),
    /// No response: refused, reset or timed out.
    NoResponse,
}

/// What finished since the last tick. Connections record into it; the ticker swaps it out
/// once a second, folds it into the totals and reports progress.
struct Interval {
    all: Figures,
    kinds: BTreeMap<&'static str, Figures>,
    /// Every finished interaction, warm-up included (for the live rate).
    finished: u64,
}

impl Interval {
    fn new() -> Self {
        Self {
            all: Figures::new(),
            kinds: BTreeMap::new(),
            finished: 0,
        }
    }
}

/// State shared by the dispatcher, the connections and the ticker.
struct Shared {
    interval: std::sync::Mutex<Interval>,
    released: AtomicU64,
    done: AtomicU64,
}

impl Shared {
    fn record(&self, job: &Job, outcome: Outcome) {
        let latency = job.intended.elapsed();
        let mut interval = self
            .interval
            .lock()
            .expect("the interval lock is not poisoned");
        interval.finished += 1;
        if job.measured {
            interval
                .kinds
                .entry(job.interaction.kind)
                .or_insert_with(Figures::new)
                .record(latency, &outcome);
            interval.all.record(latency, &outcome);
        }
    }

    /// Arrivals released but not yet finished.
    fn backlog(&self) -> u64 {
        let released = self.released.load(Ordering::Relaxed);
        released.saturating_sub(self.done.load(Ordering::Relaxed))
    }

    fn take(&self) -> Interval {
        let mut interval = self
            .interval
            .lock()
            .expect("the interval lock is not poisoned");
        std::mem::replace(&mut *interval, Interval::new())
    }
}

/// Loads `target` as `spec` says with interactions from `workload`, and reports.
pub async fn run(
    target: &Target,
    spec: &LoadSpec,
    workload: impl Workload + 'static,
) -> Result<Report, LabError> {
    run_observed(target, spec, workload, |_| {}, &Stop::never()).await
}

/// [`run`], calling `on_progress` once a second and stopping early (reporting what it
/// measured so far) when `stop` is asked.
pub async fn run_observed(
    target: &Target,
    spec: &LoadSpec,
    workload: impl Workload + 'static,
    mut on_progress: impl FnMut(&Progress),
    stop: &Stop,
) -> Result<Report, LabError> {
    spec.validate()?;
    target.check_reachable().await?;
    let (queue, jobs) = mpsc::unbounded_channel::<Job>();
    let jobs = Arc::new(Mutex::new(jobs));
    let shared = Arc::new(Shared {
        interval: std::sync::Mutex::new(Interval::new()),
        released: AtomicU64::new(0),
        done: AtomicU64::new(0),
    });
    let connections: Vec<_> = (0..spec.connections)
        .map(|_| {
            tokio::spawn(connection(
                target.clone(),
                jobs.clone(),
                shared.clone(),
                spec.timeout,
                stop.clone(),
            ))
        })
        .collect();

    let start = Instant::now();
    let measure_from = start + spec.warmup;
    let end = measure_from + spec.duration;
    let dispatcher = tokio::spawn(dispatch(
        workload,
        queue,
        Schedule {
            start,
            measure_from,
            end,
            rate: spec.rate,
        },
        shared.clone(),
        stop.clone(),
    ));
    let mut finished = std::pin::pin!(async move {
        let stopped_at = dispatcher.await.expect("the dispatcher does not panic");
        for connection in connections {
            connection.await.expect("a connection task does not panic");
        }
        stopped_at
    });

    let mut totals = Totals::new();
    let mut ticker = tokio::time::interval_at(start + TICK, TICK);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_tick = start;
    let measuring_for = |now: Instant| {
        now.checked_duration_since(measure_from)
            .filter(|into| !into.is_zero())
    };
    let stopped_at = loop {
        tokio::select! {
            stopped_at = &mut finished => break stopped_at,
            _ = ticker.tick() => {
                let now = Instant::now();
                let interval = shared.take();
                let measuring_for = measuring_for(now);
                totals.fold(&interval, measuring_for);
                let seconds = (now - last_tick).as_secs_f64().max(f64::MIN_POSITIVE);
                last_tick = now;
                on_progress(&Progress {
                    elapsed: now - start,
                    total: end - start,
                    warming_up: measuring_for.is_none(),
                    rate: interval.finished as f64 / seconds,
                    p99: (interval.all.answered() > 0).then(|| interval.all.percentile(99.0)),
                    errors: totals.all.errors(),
                    backlog: shared.backlog(),
                });
            }
        }
    };
    totals.fold(&shared.take(), measuring_for(Instant::now()));
    let measured_until = stopped_at.map_or(end, |at| at.min(end));
    Ok(Report {
        requested_rate: spec.rate,
        measured: measured_until.saturating_duration_since(measure_from),
        all: totals.all,
        kinds: totals.kinds,
        timeline: totals.timeline,
        interrupted: stopped_at.is_some(),
    })
}

/// How often progress is reported and the timeline sampled.
const TICK: Duration = Duration::from_secs(1);

/// When arrivals are due.
struct Schedule {
    start: Instant,
    measure_from: Instant,
    end: Instant,
    rate: f64,
}

impl Schedule {
    /// Arrival `i`'s intended time: `start + i / rate`, computed whole rather than as `i`
    /// rounded intervals (1/75 s rounded to the nanosecond, times 75, falls short of a second
    /// and would let a 76th arrival into it).
    fn at(&self, i: u64) -> Instant {
        self.start + Duration::from_secs_f64(i as f64 / self.rate)
    }
}

/// Releases each arrival at its intended time; returns when it stopped early, if it did.
async fn dispatch(
    mut workload: impl Workload,
    queue: mpsc::UnboundedSender<Job>,
    schedule: Schedule,
    shared: Arc<Shared>,
    mut stop: Stop,
) -> Option<Instant> {
    let mut sent: u64 = 0;
    loop {
        let now = Instant::now();
        // Release every arrival whose time has come (several per wake-up at high rates).
        loop {
            let intended = schedule.at(sent);
            if intended >= schedule.end || intended > now {
                break;
            }
            let job = Job {
                interaction: workload.next(),
                intended,
                measured: intended >= schedule.measure_from,
            };
            if queue.send(job).is_err() {
                return None;
            }
            sent += 1;
            shared.released.fetch_add(1, Ordering::Relaxed);
        }
        let next = schedule.at(sent);
        if next >= schedule.end {
            return None;
        }
        tokio::select! {
            () = tokio::time::sleep_until(next) => {}
            () = stop.requested() => return Some(Instant::now()),
        }
    }
}

/// The run's figures so far.
struct Totals {
    all: Figures,
    kinds: BTreeMap<&'static str, Figures>,
    timeline: Vec<Second>,
}

impl Totals {
    fn new() -> Self {
        Self {
            all: Figures::new(),
            kinds: BTreeMap::new(),
            timeline: Vec::new(),
        }
    }

    /// Adds an interval; `measuring_for` (time into the measured part at its end, `None`
    /// during warm-up) places it on the timeline.
    fn fold(&mut self, interval: &Interval, measuring_for: Option<Duration>) {
        if let Some(at) = measuring_for {
            self.timeline.push(Second::of(at, &interval.all));
        }
        self.all.add(&interval.all);
        for (kind, figures) in &interval.kinds {
            self.kinds
                .entry(kind)
                .or_insert_with(Figures::new)
                .add(figures);
        }
    }
}

/// One keep-alive connection draining the shared queue; reconnects after a failure. Once a
/// stop is asked, it drops what is still queued unsent.
async fn connection(
    target: Target,
    jobs: Arc<Mutex<mpsc::UnboundedReceiver<Job>>>,
    shared: Arc<Shared>,
    timeout: Duration,
    stop: Stop,
) {
    let mut sender: Option<SendRequest<Full<Bytes>>> = None;
    loop {
        let Some(mut job) = jobs.lock().await.recv().await else {
            return;
        };
        if stop.is_requested() {
            shared.done.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        let requests = std::mem::take(&mut job.interaction.requests);
        let session = job.interaction.session.take();
        let outcome = tokio::time::timeout(timeout, async {
            let _turn = match &session {
                Some(session) => Some(session.lock().await),
                None => None,
            };
            let mut last = Outcome::NoResponse;
            for request in requests {
                match exchange(&target, &mut sender, request).await {
                    Ok((status, _)) if status < 400 => last = Outcome::Answered(status),
                    Ok((status, body)) => return Outcome::Rejected(status, body),
                    Err(_) => return Outcome::NoResponse,
                }
            }
            last
        })
        .await
        .unwrap_or(Outcome::NoResponse);
        if matches!(outcome, Outcome::NoResponse) {
            // A broken or timed-out connection cannot be reused.
            sender = None;
        }
        shared.record(&job, outcome);
        shared.done.fetch_add(1, Ordering::Relaxed);
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
    for (name, value) in &target.headers {
        if !request.headers.iter().any(|(own, _)| own == name) {
            builder = builder.header(name, value);
        }
    }
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
