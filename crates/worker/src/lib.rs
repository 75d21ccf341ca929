//! Background work as [`Worker`]s: the view flusher, the order sweeper, the limiter's pruner,
//! the node-id lease, and every later job (relays, consumers, schedulers).
//!
//! A worker is a name and one pass of work repeated on an interval. [`Workers`] runs each in
//! its own task, which looks at the stop signal only *between* passes: a pass that has begun
//! — a flush holding the views it took out of a buffer — always runs to its end, instead of
//! being aborted and losing what it held. After its last pass a worker `drain`s (a final
//! flush, a lease given back). [`Workers::stop`] gives all of that a deadline; a worker that
//! overruns it is abandoned and named in the log, never silently.
//!
//! Each worker reports `bazaar_worker_runs_total`, `bazaar_worker_errors_total` and
//! `bazaar_worker_last_success_timestamp_seconds` (labelled `worker`), and its state on a
//! [`WorkerBoard`] that `/readyz` shows.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use bazaar_telemetry::Metrics;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::{Instant, MissedTickBehavior};

/// What a failed pass reports; it is logged and counted, and the next pass runs as usual.
pub type WorkError = Box<dyn std::error::Error + Send + Sync>;

/// One background job.
#[async_trait]
pub trait Worker: Send + Sync + std::fmt::Debug + 'static {
    /// A stable name for logs, metrics and `/readyz` (`view-flusher`).
    fn name(&self) -> &'static str;

    /// The time from the start of one pass to the start of the next.
    fn interval(&self) -> Duration;

    /// Whether the first pass runs at once; otherwise it runs one interval after start.
    fn runs_at_start(&self) -> bool {
        false
    }

    /// One pass of work. It is never cancelled by a stop: the stop waits for it.
    async fn run_once(&self) -> Result<(), WorkError>;

    /// Runs once after the last pass, at stop: what must happen before the process exits
    /// (the last flush). Bounded by the stop's deadline like the pass before it.
    async fn drain(&self) -> Result<(), WorkError> {
        Ok(())
    }
}

/// Where a worker is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WorkerState {
    /// Waiting for its next pass.
    Idle,
    /// In a pass.
    Running,
    /// Finishing its last pass and draining, after a stop.
    Draining,
    /// Stopped, drained.
    Stopped,
}

impl WorkerState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Idle => "idle",
            Self::Running => "running",
            Self::Draining => "draining",
            Self::Stopped => "stopped",
        }
    }
}

/// A worker's record as `/readyz` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerStatus {
    pub name: &'static str,
    pub state: WorkerState,
    pub runs: u64,
    pub errors: u64,
    /// When the last pass that succeeded ended, in milliseconds since the Unix epoch.
    pub last_success_ms: Option<i64>,
    /// The error of the last pass, if it failed.
    pub last_error: Option<String>,
}

/// Every worker's status, shared between the workers and whoever reports them.
#[derive(Debug, Clone, Default)]
pub struct WorkerBoard {
    /// A `std` mutex: held only to copy a few fields, never across an `.await`.
    statuses: Arc<Mutex<BTreeMap<&'static str, WorkerStatus>>>,
}

impl WorkerBoard {
    /// Every worker's status, by name.
    pub fn statuses(&self) -> Vec<WorkerStatus> {
        self.lock().values().cloned().collect()
    }

    fn lock(&self) -> MutexGuard<'_, BTreeMap<&'static str, WorkerStatus>> {
        self.statuses.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn update(&self, name: &'static str, change: impl FnOnce(&mut WorkerStatus)) {
        let mut statuses = self.lock();
        let status = statuses.entry(name).or_insert_with(|| WorkerStatus {
            name,
            state: WorkerState::Idle,
            runs: 0,
            errors: 0,
            last_success_ms: None,
            last_error: None,
        });
        change(status);
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct WorkerLabels {
    worker: &'static str,
}

#[derive(Debug, Clone)]
struct WorkerMetrics {
    runs: Family<WorkerLabels, Counter>,
    errors: Family<WorkerLabels, Counter>,
    last_success: Family<WorkerLabels, Gauge>,
}

impl WorkerMetrics {
    fn register(metrics: &Metrics) -> Self {
        let this = Self {
            runs: Family::default(),
            errors: Family::default(),
            last_success: Family::default(),
        };
        let mut registry = metrics.registry();
        registry.register(
            "worker_runs",
            "Passes of background work, by worker",
            this.runs.clone(),
        );
        registry.register(
            "worker_errors",
            "Passes of background work that failed, by worker",
            this.errors.clone(),
        );
        registry.register(
            "worker_last_success_timestamp_seconds",
            "When a worker's last successful pass ended (Unix time)",
            this.last_success.clone(),
        );
        this
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// Runs workers until [`Workers::stop`].
#[derive(Debug)]
pub struct Workers {
    board: WorkerBoard,
    metrics: WorkerMetrics,
    stop: watch::Sender<bool>,
    tasks: Vec<(&'static str, JoinHandle<()>)>,
}

impl Workers {
    pub fn new(metrics: &Metrics) -> Self {
        Self {
            board: WorkerBoard::default(),
            metrics: WorkerMetrics::register(metrics),
            stop: watch::channel(false).0,
            tasks: Vec::new(),
        }
    }

    /// The board the workers report to.
    pub fn board(&self) -> WorkerBoard {
        self.board.clone()
    }

    /// Starts `worker`'s loop.
    pub fn spawn(&mut self, worker: Arc<dyn Worker>) {
        let name = worker.name();
        self.board.update(name, |_| {});
        let run = Run {
            worker,
            board: self.board.clone(),
            metrics: self.metrics.clone(),
        };
        let stop = self.stop.subscribe();
        self.tasks.push((name, tokio::spawn(run.run(stop))));
    }

    /// Tells every worker to stop after its current pass, and waits up to `deadline` for
    /// each to finish that pass and drain. Returns the names of those that did not in time
    /// (they are abandoned).
    pub async fn stop(self, deadline: Duration) -> Vec<&'static str> {
        let _ = self.stop.send(true);
        let until = Instant::now() + deadline;
        let mut overran = Vec::new();
        for (name, mut task) in self.tasks {
            if tokio::time::timeout_at(until, &mut task).await.is_err() {
                tracing::error!(
                    worker = name,
                    deadline_ms = deadline.as_millis() as u64,
                    "worker did not finish its pass and drain before the deadline; abandoning it"
                );
                task.abort();
                overran.push(name);
            }
        }
        overran
    }
}

/// One worker's loop.
struct Run {
    worker: Arc<dyn Worker>,
    board: WorkerBoard,
    metrics: WorkerMetrics,
}

impl Run {
    async fn run(self, mut stop: watch::Receiver<bool>) {
        let name = self.worker.name();
        let interval = self.worker.interval();
        let first = if self.worker.runs_at_start() {
            Instant::now()
        } else {
            Instant::now() + interval
        };
        let mut every = tokio::time::interval_at(first, interval);
        every.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                biased;
                _ = stop.wait_for(|stopped| *stopped) => break,
                _ = every.tick() => {}
            }
            // From here the pass runs to its end whatever the stop signal says.
            self.board.update(name, |s| s.state = WorkerState::Running);
            let result = self.worker.run_once().await;
            self.record(result, WorkerState::Idle);
        }
        self.board.update(name, |s| s.state = WorkerState::Draining);
        let drained = self.worker.drain().await;
        self.record(drained, WorkerState::Stopped);
    }

    fn record(&self, result: Result<(), WorkError>, then: WorkerState) {
        let name = self.worker.name();
        let labels = WorkerLabels { worker: name };
        self.metrics.runs.get_or_create(&labels).inc();
        let now = now_ms();
        match &result {
            Ok(()) => {
                self.metrics
                    .last_success
                    .get_or_create(&labels)
                    .set(now / 1000);
            }
            Err(error) => {
                self.metrics.errors.get_or_create(&labels).inc();
                tracing::warn!(worker = name, %error, "a pass of background work failed; retrying next interval");
            }
        }
        self.board.update(name, |s| {
            s.state = then;
            s.runs += 1;
            match result {
                Ok(()) => {
                    s.last_success_ms = Some(now);
                    s.last_error = None;
                }
                Err(error) => {
                    s.errors += 1;
                    s.last_error = Some(error.to_string());
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU64, Ordering};

    use super::*;

    /// Takes items out of a buffer at the start of a pass and stores them at its end, as the
    /// view flusher does: aborting it between the two would lose what it took.
    #[derive(Debug, Default)]
    struct Mover {
        buffered: AtomicU64,
        stored: AtomicU64,
        passes: AtomicU64,
        fail_every_other: bool,
    }

    #[async_trait]
    impl Worker for Mover {
        fn name(&self) -> &'static str {
            "mover"
        }
        fn interval(&self) -> Duration {
            Duration::from_millis(10)
        }
        async fn run_once(&self) -> Result<(), WorkError> {
            let pass = self.passes.fetch_add(1, Ordering::SeqCst);
            let taken = self.buffered.swap(0, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(50)).await;
            self.stored.fetch_add(taken, Ordering::SeqCst);
            if self.fail_every_other && pass % 2 == 1 {
                return Err("odd pass".into());
            }
            Ok(())
        }
        async fn drain(&self) -> Result<(), WorkError> {
            let taken = self.buffered.swap(0, Ordering::SeqCst);
            self.stored.fetch_add(taken, Ordering::SeqCst);
            Ok(())
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_stop_during_a_pass_waits_for_it_and_then_drains() {
        let mut workers = Workers::new(&Metrics::new());
        let mover = Arc::new(Mover::default());
        mover.buffered.store(7, Ordering::SeqCst);
        workers.spawn(mover.clone());
        // The first pass starts at 10 ms and holds the 7 items until 60 ms.
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(
            mover.buffered.load(Ordering::SeqCst),
            0,
            "the pass took them"
        );
        assert_eq!(mover.stored.load(Ordering::SeqCst), 0, "and holds them");
        mover.buffered.store(5, Ordering::SeqCst);
        let overran = workers.stop(Duration::from_secs(1)).await;
        assert!(overran.is_empty());
        assert_eq!(
            mover.stored.load(Ordering::SeqCst),
            12,
            "the pass in flight finished and the drain stored the rest"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_worker_past_the_deadline_is_named() {
        let mut workers = Workers::new(&Metrics::new());
        let mover = Arc::new(Mover::default());
        workers.spawn(mover.clone());
        tokio::time::sleep(Duration::from_millis(20)).await;
        let overran = workers.stop(Duration::from_millis(5)).await;
        assert_eq!(overran, vec!["mover"]);
    }

    #[tokio::test(start_paused = true)]
    async fn the_board_counts_runs_errors_and_the_last_success() {
        let metrics = Metrics::new();
        let mut workers = Workers::new(&metrics);
        let board = workers.board();
        let mover = Arc::new(Mover {
            fail_every_other: true,
            ..Mover::default()
        });
        workers.spawn(mover);
        // Passes start every 60 ms (50 ms of work, the 10 ms tick delayed behind it).
        tokio::time::sleep(Duration::from_millis(145)).await;
        let [status] = &board.statuses()[..] else {
            panic!("one worker")
        };
        assert_eq!((status.runs, status.errors), (2, 1), "{status:?}");
        assert_eq!(status.last_error.as_deref(), Some("odd pass"));
        assert_eq!(status.state, WorkerState::Running);
        workers.stop(Duration::from_secs(1)).await;
        let [status] = &board.statuses()[..] else {
            panic!("one worker")
        };
        assert_eq!(status.state, WorkerState::Stopped);
        assert!(status.last_success_ms.is_some());
        let text = metrics.render();
        assert!(
            text.contains("bazaar_worker_errors_total{worker=\"mover\"} 1"),
            "{text}"
        );
    }
}
