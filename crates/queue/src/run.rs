//! The retry runner: handling deliveries above the [`Subscription`] trait, with exponential
//! backoff and full jitter, giving up into the dead-letter queue.
//!
//! A queue implementation only stores, leases and redelivers; whether a failure is worth
//! retrying, how long to wait and when to give up is decided here, once, for every backend.
//!
//! # Backoff
//!
//! After the `n`-th failed attempt the message is nacked with a delay drawn uniformly from
//! `[0, min(max_delay, base_delay · 2^(n-1))]` — *full* jitter: consumers that failed together
//! (a dependency went down) spread their retries over the whole window instead of returning
//! in a herd. The un-jittered exponential schedule comes from `backon`; its own jitter adds
//! up to one more delay on top (`[d, 2d)`), which is not full jitter and overshoots
//! `max_delay`, so it is not used.

use std::collections::HashMap;
use std::time::Duration;

use async_trait::async_trait;
use backon::{BackoffBuilder, ExponentialBuilder};
use rand::{Rng, RngExt};

use crate::{Delivery, QueueError, Subscription};

/// When to retry a failed delivery and when to give up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Deliveries before giving up; keep it equal to the group's
    /// [`GroupSpec::max_attempts`](crate::GroupSpec::max_attempts).
    pub max_attempts: u32,
    /// The ceiling of the delay after the first attempt.
    pub base_delay: Duration,
    /// No delay is longer.
    pub max_delay: Duration,
}

impl RetryPolicy {
    /// The longest delay after attempt `attempt` (1-based; 0 counts as 1):
    /// `min(max_delay, base_delay · 2^(attempt-1))`.
    pub fn ceiling(&self, attempt: u32) -> Duration {
        let attempt = attempt.max(1);
        if self.base_delay.is_zero() || self.max_delay.is_zero() {
            return Duration::ZERO;
        }
        let mut schedule = ExponentialBuilder::new()
            .with_min_delay(self.base_delay)
            .with_max_delay(self.max_delay)
            .with_factor(2.0)
            .without_max_times()
            .build();
        let mut delay = self.base_delay;
        // The schedule doubles until it reaches max_delay and stays there: at most ~100 steps
        // from a nanosecond to Duration::MAX, whatever the attempt.
        for _ in 0..attempt {
            match schedule.next() {
                Some(next) => delay = next,
                None => break,
            }
            if delay >= self.max_delay {
                break;
            }
        }
        // backon multiplies in f32 seconds, a few nanoseconds off the exact product, and
        // starts at base_delay even above max_delay: the exact integer bound keeps the promise.
        let exact = 2_u32
            .checked_pow(attempt - 1)
            .and_then(|factor| self.base_delay.checked_mul(factor))
            .unwrap_or(Duration::MAX);
        delay.min(exact).min(self.max_delay)
    }

    /// The delay before retrying after attempt `attempt`: uniform in `[0, ceiling(attempt)]`.
    pub fn delay(&self, attempt: u32) -> Duration {
        self.delay_with(attempt, &mut rand::rng())
    }

    /// [`delay`](Self::delay) drawing from `rng`.
    pub fn delay_with<R: Rng + ?Sized>(&self, attempt: u32, rng: &mut R) -> Duration {
        let ceiling = u64::try_from(self.ceiling(attempt).as_nanos()).unwrap_or(u64::MAX);
        Duration::from_nanos(rng.random_range(0..=ceiling))
    }
}

/// Why a handler did not finish a delivery.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HandlerError {
    /// Worth trying again later (a dependency is down, a conflict).
    #[error("{0}")]
    Retry(String),
    /// Never going to work (a malformed payload): dead-letter it now.
    #[error("{0}")]
    Permanent(String),
}

/// Handles the deliveries of one consumer group. At-least-once: a handler sees a message
/// again after a crash or a lost lease, so its effect must be idempotent.
#[async_trait]
pub trait Handler: Send + Sync + std::fmt::Debug {
    async fn handle(&self, delivery: &Delivery) -> Result<(), HandlerError>;
}

/// What one [`process`] pass did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PassReport {
    /// Deliveries received.
    pub received: usize,
    /// Handled and acknowledged.
    pub acked: usize,
    /// Nacked to be retried after a backoff.
    pub retried: usize,
    /// Given up on: a permanent error, or a failure on the last attempt.
    pub dead_lettered: usize,
    /// Received deliveries with `attempt > 1`.
    pub redeliveries: usize,
    /// Settlements refused because the lease had run out and the message had gone to another
    /// receiver (or was settled already): not an error, that receiver now owns it.
    pub lease_lost: usize,
}

impl PassReport {
    fn add(&mut self, other: &PassReport) {
        self.received += other.received;
        self.acked += other.acked;
        self.retried += other.retried;
        self.dead_lettered += other.dead_lettered;
        self.redeliveries += other.redeliveries;
        self.lease_lost += other.lease_lost;
    }
}

/// One pass: receives up to `max` deliveries (waiting up to `wait` for the first), handles
/// each and settles it — ack on success; on [`HandlerError::Retry`] a nack with
/// [`RetryPolicy::delay`] unless it was the last attempt; dead letter on
/// [`HandlerError::Permanent`] or a failure on the last attempt.
///
/// Deliveries of one key are handled strictly in order, one after another; once one of them
/// is nacked, the key's later deliveries in the batch are nacked with the same delay without
/// being handled, so they cannot overtake it. Different keys are handled concurrently within
/// the calling task (interleaved at their await points).
///
/// A settlement refused with [`QueueError::LeaseLost`] is counted, not fatal. Any other error
/// settling is returned after the rest of the batch is done (its message will be delivered
/// again when its lease ends); an error receiving is returned at once.
pub async fn process(
    sub: &dyn Subscription,
    handler: &dyn Handler,
    policy: &RetryPolicy,
    max: usize,
    wait: Duration,
) -> Result<PassReport, QueueError> {
    let batch = sub.receive(max, wait).await?;
    let mut report = PassReport {
        received: batch.len(),
        redeliveries: batch.iter().filter(|d| d.attempt > 1).count(),
        ..PassReport::default()
    };
    let mut lanes: Vec<Vec<&Delivery>> = Vec::new();
    let mut lane_of: HashMap<&str, usize> = HashMap::new();
    for delivery in &batch {
        let lane = *lane_of
            .entry(delivery.message.key.as_str())
            .or_insert_with(|| {
                lanes.push(Vec::new());
                lanes.len() - 1
            });
        lanes[lane].push(delivery);
    }
    let outcomes = futures::future::join_all(
        lanes
            .iter()
            .map(|lane| run_lane(sub, handler, policy, lane)),
    )
    .await;
    let mut first_error = None;
    for (lane_report, error) in outcomes {
        report.add(&lane_report);
        if first_error.is_none() {
            first_error = error;
        }
    }
    match first_error {
        Some(error) => Err(error),
        None => Ok(report),
    }
}

/// How a delivery was settled.
#[derive(Debug, Clone, Copy)]
enum Settled {
    Acked,
    Retried,
    DeadLettered,
}

/// Handles one key's deliveries in order.
async fn run_lane(
    sub: &dyn Subscription,
    handler: &dyn Handler,
    policy: &RetryPolicy,
    lane: &[&Delivery],
) -> (PassReport, Option<QueueError>) {
    let mut report = PassReport::default();
    let mut first_error = None;
    // Set once a delivery of this key is nacked: the rest wait as long.
    let mut held: Option<Duration> = None;
    for delivery in lane {
        let (settled, result) = match held {
            Some(delay) => (Settled::Retried, sub.nack(delivery, delay).await),
            None => match handler.handle(delivery).await {
                Ok(()) => (Settled::Acked, sub.ack(delivery).await),
                Err(HandlerError::Permanent(error)) => {
                    tracing::warn!(id = %delivery.message.id, attempt = delivery.attempt, %error, "permanent failure; dead-lettered");
                    (
                        Settled::DeadLettered,
                        sub.dead_letter(delivery, &error).await,
                    )
                }
                Err(HandlerError::Retry(error)) if delivery.attempt >= policy.max_attempts => {
                    tracing::warn!(id = %delivery.message.id, attempt = delivery.attempt, %error, "last attempt failed; dead-lettered");
                    (
                        Settled::DeadLettered,
                        sub.dead_letter(delivery, &error).await,
                    )
                }
                Err(HandlerError::Retry(error)) => {
                    let delay = policy.delay(delivery.attempt);
                    tracing::debug!(id = %delivery.message.id, attempt = delivery.attempt, %error, ?delay, "failed; retrying");
                    held = Some(delay);
                    (Settled::Retried, sub.nack(delivery, delay).await)
                }
            },
        };
        match result {
            Ok(()) => match settled {
                Settled::Acked => report.acked += 1,
                Settled::Retried => report.retried += 1,
                Settled::DeadLettered => report.dead_lettered += 1,
            },
            Err(QueueError::LeaseLost) => {
                tracing::debug!(id = %delivery.message.id, attempt = delivery.attempt, "lease lost before settling");
                report.lease_lost += 1;
            }
            Err(error) => {
                tracing::warn!(id = %delivery.message.id, %error, "settling a delivery failed");
                if first_error.is_none() {
                    first_error = Some(error);
                }
            }
        }
    }
    (report, first_error)
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;
    use std::time::SystemTime;

    use bytes::Bytes;
    use proptest::prelude::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;
    use tokio::time::Instant;

    use super::*;
    use crate::{Message, Receipt};

    /// `min(max, base · 2^(n-1))` in u128 nanoseconds, independently of the implementation.
    fn exact_ceiling(base: Duration, max: Duration, attempt: u32) -> Duration {
        let shift = attempt.max(1) - 1;
        let nanos = if shift >= 100 {
            u128::MAX
        } else {
            base.as_nanos().saturating_mul(1_u128 << shift)
        };
        let nanos = nanos.min(max.as_nanos());
        Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
    }

    proptest! {
        #[test]
        fn the_ceiling_is_the_capped_exponential(
            base_ms in 0_u64..5_000,
            max_ms in 0_u64..120_000,
            attempt in 0_u32..200,
        ) {
            let policy = RetryPolicy {
                max_attempts: 10,
                base_delay: Duration::from_millis(base_ms),
                max_delay: Duration::from_millis(max_ms),
            };
            let exact = exact_ceiling(policy.base_delay, policy.max_delay, attempt);
            let ceiling = policy.ceiling(attempt);
            prop_assert!(ceiling <= exact, "ceiling {ceiling:?} above {exact:?}");
            // backon's f32 arithmetic may land a hair below the exact product, never far.
            prop_assert!(
                exact - ceiling <= exact / 10_000,
                "ceiling {ceiling:?} far below {exact:?}"
            );
            prop_assert!(ceiling <= policy.max_delay);
            let mut rng = StdRng::seed_from_u64(u64::from(attempt) ^ base_ms ^ (max_ms << 20));
            for _ in 0..64 {
                let delay = policy.delay_with(attempt, &mut rng);
                prop_assert!(delay <= ceiling, "delay {delay:?} above the ceiling {ceiling:?}");
                prop_assert!(delay <= policy.max_delay);
            }
        }
    }

    #[test]
    fn the_jitter_is_full_jitter() {
        // Full jitter spreads over the whole [0, ceiling]; "equal" jitter (backon's, or
        // ceiling/2 + rand) would never come near zero.
        let policy = RetryPolicy {
            max_attempts: 10,
            base_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(10),
        };
        let ceiling = policy.ceiling(4);
        assert_eq!(ceiling, Duration::from_millis(800));
        let mut rng = StdRng::seed_from_u64(7);
        let draws: Vec<Duration> = (0..2_000).map(|_| policy.delay_with(4, &mut rng)).collect();
        let low = draws.iter().filter(|d| **d < ceiling / 10).count();
        let high = draws.iter().filter(|d| **d > ceiling * 9 / 10).count();
        assert!(low > 100, "only {low} of 2000 draws in the lowest tenth");
        assert!(high > 100, "only {high} of 2000 draws in the highest tenth");
        assert!(draws.iter().all(|d| *d <= ceiling));
    }

    #[test]
    fn the_ceiling_of_large_attempts_is_max_delay() {
        let policy = RetryPolicy {
            max_attempts: 10,
            base_delay: Duration::from_millis(250),
            max_delay: Duration::from_secs(30),
        };
        assert_eq!(policy.ceiling(1), Duration::from_millis(250));
        assert_eq!(policy.ceiling(0), Duration::from_millis(250));
        assert_eq!(policy.ceiling(2), Duration::from_millis(500));
        assert_eq!(policy.ceiling(u32::MAX), Duration::from_secs(30));
        let above = RetryPolicy {
            base_delay: Duration::from_secs(60),
            ..policy
        };
        assert_eq!(above.ceiling(1), Duration::from_secs(30));
    }

    /// An in-memory subscription on tokio's clock: a nacked delivery comes back exactly
    /// `delay` later, so with paused time the gaps between deliveries are the runner's delays.
    #[derive(Debug, Default)]
    struct Mock {
        state: Mutex<MockState>,
    }

    #[derive(Debug, Default)]
    struct MockState {
        next_receipt: u64,
        /// (due, delivery) waiting to be received.
        ready: Vec<(Instant, Delivery)>,
        /// Receipts leased now.
        leased: Vec<String>,
        acked: Vec<String>,
        nacks: Vec<(u32, Duration)>,
        dead: Vec<(String, u32, String)>,
        /// Acks answer LeaseLost.
        lose_leases: bool,
    }

    fn message(id: &str, key: &str) -> Message {
        Message {
            id: id.to_owned(),
            key: key.to_owned(),
            topic: "test".to_owned(),
            payload: Bytes::from_static(b"{}"),
            delay: None,
        }
    }

    impl Mock {
        fn push(&self, message: Message, attempt: u32) {
            let mut state = self.state.lock().unwrap();
            state.next_receipt += 1;
            let receipt = Receipt(state.next_receipt.to_string());
            state.ready.push((
                Instant::now(),
                Delivery {
                    message,
                    attempt,
                    published_at: SystemTime::now(),
                    receipt,
                },
            ));
        }

        fn settle(&self, delivery: &Delivery) -> Result<(), QueueError> {
            let mut state = self.state.lock().unwrap();
            let Some(at) = state.leased.iter().position(|r| *r == delivery.receipt.0) else {
                return Err(QueueError::LeaseLost);
            };
            state.leased.remove(at);
            Ok(())
        }
    }

    #[async_trait]
    impl Subscription for Mock {
        async fn receive(&self, max: usize, wait: Duration) -> Result<Vec<Delivery>, QueueError> {
            let deadline = Instant::now() + wait;
            loop {
                let next_due = {
                    let mut state = self.state.lock().unwrap();
                    let now = Instant::now();
                    let mut out = Vec::new();
                    let mut i = 0;
                    while i < state.ready.len() && out.len() < max {
                        if state.ready[i].0 <= now {
                            let (_, delivery) = state.ready.remove(i);
                            state.leased.push(delivery.receipt.0.clone());
                            out.push(delivery);
                        } else {
                            i += 1;
                        }
                    }
                    if !out.is_empty() {
                        return Ok(out);
                    }
                    state.ready.iter().map(|(due, _)| *due).min()
                };
                match next_due {
                    Some(due) if due <= deadline => tokio::time::sleep_until(due).await,
                    _ => {
                        tokio::time::sleep_until(deadline).await;
                        return Ok(Vec::new());
                    }
                }
            }
        }

        async fn ack(&self, delivery: &Delivery) -> Result<(), QueueError> {
            if self.state.lock().unwrap().lose_leases {
                return Err(QueueError::LeaseLost);
            }
            self.settle(delivery)?;
            let mut state = self.state.lock().unwrap();
            state.acked.push(delivery.message.id.clone());
            Ok(())
        }

        async fn nack(&self, delivery: &Delivery, delay: Duration) -> Result<(), QueueError> {
            self.settle(delivery)?;
            let mut state = self.state.lock().unwrap();
            state.nacks.push((delivery.attempt, delay));
            state.next_receipt += 1;
            let receipt = Receipt(state.next_receipt.to_string());
            let mut again = delivery.clone();
            again.attempt += 1;
            again.receipt = receipt;
            state.ready.push((Instant::now() + delay, again));
            Ok(())
        }

        async fn dead_letter(&self, delivery: &Delivery, error: &str) -> Result<(), QueueError> {
            self.settle(delivery)?;
            let mut state = self.state.lock().unwrap();
            state.dead.push((
                delivery.message.id.clone(),
                delivery.attempt,
                error.to_owned(),
            ));
            Ok(())
        }
    }

    /// Fails every delivery the same way, recording when (tokio's clock) and what it saw.
    #[derive(Debug)]
    struct Failing {
        error: HandlerError,
        seen: Mutex<Vec<(Instant, String, u32)>>,
    }

    impl Failing {
        fn new(error: HandlerError) -> Self {
            Self {
                error,
                seen: Mutex::new(Vec::new()),
            }
        }
    }

    #[async_trait]
    impl Handler for Failing {
        async fn handle(&self, delivery: &Delivery) -> Result<(), HandlerError> {
            self.seen.lock().unwrap().push((
                Instant::now(),
                delivery.message.id.clone(),
                delivery.attempt,
            ));
            Err(self.error.clone())
        }
    }

    fn paused_runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .unwrap()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn the_runner_waits_between_nothing_and_the_ceiling(
            base_ms in 1_u64..2_000,
            max_ms in 1_u64..20_000,
            max_attempts in 1_u32..9,
        ) {
            let policy = RetryPolicy {
                max_attempts,
                base_delay: Duration::from_millis(base_ms),
                max_delay: Duration::from_millis(max_ms),
            };
            let mock = Mock::default();
            let handler = Failing::new(HandlerError::Retry("down".to_owned()));
            let mut total = PassReport::default();
            paused_runtime().block_on(async {
                mock.push(message("m", "k"), 1);
                while mock.state.lock().unwrap().dead.is_empty() {
                    let report = process(&mock, &handler, &policy, 10, Duration::from_secs(3600))
                        .await
                        .unwrap();
                    total.add(&report);
                }
            });
            let seen = handler.seen.lock().unwrap();
            let state = mock.state.lock().unwrap();
            prop_assert_eq!(seen.len(), max_attempts as usize);
            let n = max_attempts as usize;
            prop_assert_eq!(total, PassReport {
                received: n,
                acked: 0,
                retried: n - 1,
                dead_lettered: 1,
                redeliveries: n - 1,
                lease_lost: 0,
            });
            prop_assert_eq!(&state.dead, &vec![("m".to_owned(), max_attempts, "down".to_owned())]);
            prop_assert_eq!(state.nacks.len(), n - 1);
            for (i, pair) in seen.windows(2).enumerate() {
                let attempt = u32::try_from(i + 1).unwrap();
                prop_assert_eq!(pair[0].2, attempt);
                prop_assert_eq!(pair[1].2, attempt + 1);
                let waited = pair[1].0 - pair[0].0;
                let ceiling = policy.ceiling(attempt);
                let (nacked_attempt, nack_delay) = state.nacks[i];
                prop_assert_eq!(nacked_attempt, attempt);
                prop_assert!(nack_delay <= ceiling, "nack delay {nack_delay:?} above {ceiling:?}");
                prop_assert!(nack_delay <= policy.max_delay);
                // Paused time: the redelivery comes exactly when the nack's delay ends
                // (tokio's timer has millisecond granularity).
                prop_assert!(waited >= nack_delay, "waited {waited:?} < nack {nack_delay:?}");
                prop_assert!(
                    waited <= ceiling + Duration::from_millis(1),
                    "waited {waited:?} after attempt {attempt}, ceiling {ceiling:?}"
                );
            }
        }
    }

    #[derive(Debug)]
    struct Scripted {
        /// Outcome per message id; absent means Ok.
        outcomes: HashMap<String, HandlerError>,
        seen: Mutex<Vec<String>>,
    }

    #[async_trait]
    impl Handler for Scripted {
        async fn handle(&self, delivery: &Delivery) -> Result<(), HandlerError> {
            self.seen.lock().unwrap().push(delivery.message.id.clone());
            // A yield, so that concurrently handled keys interleave.
            tokio::task::yield_now().await;
            match self.outcomes.get(&delivery.message.id) {
                Some(error) => Err(error.clone()),
                None => Ok(()),
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_pass_settles_each_outcome_and_holds_a_retried_keys_rest() {
        let mock = Mock::default();
        for (id, key) in [
            ("a1", "a"),
            ("b1", "b"),
            ("a2", "a"),
            ("c1", "c"),
            ("b2", "b"),
        ] {
            mock.push(message(id, key), 1);
        }
        mock.push(message("d1", "d"), 3);
        let handler = Scripted {
            outcomes: HashMap::from([
                ("a1".to_owned(), HandlerError::Retry("busy".to_owned())),
                (
                    "c1".to_owned(),
                    HandlerError::Permanent("malformed".to_owned()),
                ),
                (
                    "d1".to_owned(),
                    HandlerError::Retry("still busy".to_owned()),
                ),
            ]),
            seen: Mutex::new(Vec::new()),
        };
        let policy = RetryPolicy {
            max_attempts: 3,
            base_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(1),
        };
        let report = process(&mock, &handler, &policy, 10, Duration::from_secs(1))
            .await
            .unwrap();
        assert_eq!(
            report,
            PassReport {
                received: 6,
                acked: 2,
                // a1 failed, a2 held behind it unhandled.
                retried: 2,
                // c1 permanently, d1 on its last attempt.
                dead_lettered: 2,
                redeliveries: 1,
                lease_lost: 0,
            }
        );
        let seen = handler.seen.lock().unwrap().clone();
        assert!(!seen.contains(&"a2".to_owned()), "a2 overtook a1: {seen:?}");
        let b1 = seen.iter().position(|id| id == "b1").unwrap();
        let b2 = seen.iter().position(|id| id == "b2").unwrap();
        assert!(b1 < b2, "b2 before b1: {seen:?}");
        let state = mock.state.lock().unwrap();
        assert_eq!(state.acked, vec!["b1".to_owned(), "b2".to_owned()]);
        let mut dead = state.dead.clone();
        dead.sort();
        assert_eq!(
            dead,
            vec![
                ("c1".to_owned(), 1, "malformed".to_owned()),
                ("d1".to_owned(), 3, "still busy".to_owned()),
            ]
        );
        // a2 waits exactly as long as a1.
        assert_eq!(state.nacks.len(), 2);
        assert_eq!(state.nacks[0].1, state.nacks[1].1);
        assert!(state.nacks[0].1 <= Duration::from_millis(100));
        assert!(state.leased.is_empty(), "unsettled: {:?}", state.leased);
    }

    #[tokio::test(start_paused = true)]
    async fn a_lost_lease_is_counted_not_fatal() {
        let mock = Mock::default();
        mock.push(message("a", "a"), 1);
        mock.push(message("b", "b"), 1);
        mock.state.lock().unwrap().lose_leases = true;
        let handler = Scripted {
            outcomes: HashMap::new(),
            seen: Mutex::new(Vec::new()),
        };
        let policy = RetryPolicy {
            max_attempts: 3,
            base_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(1),
        };
        let report = process(&mock, &handler, &policy, 10, Duration::from_secs(1))
            .await
            .unwrap();
        assert_eq!(report.received, 2);
        assert_eq!(report.lease_lost, 2);
        assert_eq!(report.acked, 0);
    }

    #[tokio::test(start_paused = true)]
    async fn an_empty_pass_waits_and_reports_nothing() {
        let mock = Mock::default();
        let handler = Failing::new(HandlerError::Retry("x".to_owned()));
        let policy = RetryPolicy {
            max_attempts: 3,
            base_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(1),
        };
        let start = Instant::now();
        let report = process(&mock, &handler, &policy, 10, Duration::from_secs(2))
            .await
            .unwrap();
        assert_eq!(report, PassReport::default());
        assert_eq!(start.elapsed(), Duration::from_secs(2));
        assert!(handler.seen.lock().unwrap().is_empty());
    }
}
