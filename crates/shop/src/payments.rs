//! Taking payment: the [`PaymentProvider`] boundary and the simulated provider `serve` uses.
//!
//! Every call names the order it is for; the order id is the provider's idempotency key, so
//! asking again after a timeout or a crash can never charge twice, and
//! [`PaymentProvider::status`] tells what happened to an order's payment when the answer was
//! lost.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use bazaar_store::{Money, OrderId};
use rand::RngExt;

/// Why a payment call did not succeed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PaymentError {
    /// The card was refused; nothing was charged.
    #[error("the payment was declined: {0}")]
    Declined(String),
    /// No answer in time: the call may or may not have taken effect; ask `status`.
    #[error("the payment provider did not answer in time")]
    Timeout,
    /// The provider could not be reached or failed.
    #[error("the payment provider failed: {0}")]
    Unavailable(String),
}

/// What the provider holds for an order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PaymentStatus {
    /// Nothing: never authorised, or voided.
    None,
    /// Authorised (funds held), not captured.
    Authorized { reference: String },
    /// Captured: the buyer paid.
    Captured { reference: String },
    /// Captured, then refunded.
    Refunded { reference: String },
}

/// A payment service.
#[async_trait]
pub trait PaymentProvider: Send + Sync + std::fmt::Debug {
    /// Holds `amount` for `order`; returns the provider's reference.
    async fn authorize(&self, order: OrderId, amount: Money) -> Result<String, PaymentError>;

    /// Takes the authorised amount.
    async fn capture(&self, order: OrderId) -> Result<(), PaymentError>;

    /// Releases an authorisation that was not captured.
    async fn void(&self, order: OrderId) -> Result<(), PaymentError>;

    /// Gives a captured payment back.
    async fn refund(&self, order: OrderId) -> Result<(), PaymentError>;

    /// What the provider holds for `order`.
    async fn status(&self, order: OrderId) -> Result<PaymentStatus, PaymentError>;
}

/// How the simulated provider misbehaves.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct SimulatedSettings {
    /// Added to every call.
    pub latency: Duration,
    /// Share of authorisations declined, 0.0 to 1.0.
    pub decline_rate: f64,
    /// Share of authorisations and captures that time out, 0.0 to 1.0. A timed-out call takes
    /// effect half of the time, as a real one might.
    pub timeout_rate: f64,
}

/// An in-memory provider with configurable latency, declines and timeouts. Its ledger lives
/// in the process: after a crash it knows of no payment, as if every authorisation had been
/// voided (a real provider keeps its ledger; recovery asks it the same question).
#[derive(Debug, Default)]
pub struct SimulatedProvider {
    settings: SimulatedSettings,
    ledger: Mutex<HashMap<OrderId, PaymentStatus>>,
    /// Captures that took effect since start: the charges a buyer would see, which tests
    /// count against orders.
    captures: AtomicU64,
}

impl SimulatedProvider {
    pub fn new(settings: SimulatedSettings) -> Self {
        Self {
            settings,
            ledger: Mutex::default(),
            captures: AtomicU64::new(0),
        }
    }

    /// How many captures took effect since start (each order is captured at most once).
    pub fn captures(&self) -> u64 {
        self.captures.load(Ordering::Relaxed)
    }

    fn ledger(&self) -> std::sync::MutexGuard<'_, HashMap<OrderId, PaymentStatus>> {
        self.ledger
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    async fn delay(&self) {
        if !self.settings.latency.is_zero() {
            tokio::time::sleep(self.settings.latency).await;
        }
    }

    fn roll(rate: f64) -> bool {
        rate > 0.0 && rand::rng().random_bool(rate.clamp(0.0, 1.0))
    }

    /// `Some(took_effect)` when this call is to time out: half the time it took effect anyway.
    fn timeout(&self) -> Option<bool> {
        Self::roll(self.settings.timeout_rate).then(|| rand::rng().random_bool(0.5))
    }
}

#[async_trait]
impl PaymentProvider for SimulatedProvider {
    async fn authorize(&self, order: OrderId, amount: Money) -> Result<String, PaymentError> {
        self.delay().await;
        let reference = format!("sim_{order}");
        if let Some(status) = self.ledger().get(&order) {
            return match status {
                PaymentStatus::Authorized { reference } | PaymentStatus::Captured { reference } => {
                    Ok(reference.clone())
                }
                _ => Err(PaymentError::Declined(
                    "this order's payment was already closed".into(),
                )),
            };
        }
        if Self::roll(self.settings.decline_rate) {
            return Err(PaymentError::Declined(format!(
                "card declined for {} {}",
                amount.amount, amount.currency
            )));
        }
        let timed_out = self.timeout();
        if timed_out.is_none_or(|took_effect| took_effect) {
            self.ledger().insert(
                order,
                PaymentStatus::Authorized {
                    reference: reference.clone(),
                },
            );
        }
        match timed_out {
            Some(_) => Err(PaymentError::Timeout),
            None => Ok(reference),
        }
    }

    async fn capture(&self, order: OrderId) -> Result<(), PaymentError> {
        self.delay().await;
        let timed_out = self.timeout();
        let mut ledger = self.ledger();
        let reference = match ledger.get(&order) {
            Some(PaymentStatus::Authorized { reference }) => reference.clone(),
            Some(PaymentStatus::Captured { .. }) => return Ok(()),
            _ => {
                return Err(PaymentError::Declined(
                    "nothing authorised to capture".into(),
                ));
            }
        };
        if timed_out.is_none_or(|took_effect| took_effect) {
            ledger.insert(order, PaymentStatus::Captured { reference });
            self.captures.fetch_add(1, Ordering::Relaxed);
        }
        match timed_out {
            Some(_) => Err(PaymentError::Timeout),
            None => Ok(()),
        }
    }

    async fn void(&self, order: OrderId) -> Result<(), PaymentError> {
        self.delay().await;
        let mut ledger = self.ledger();
        if let Some(PaymentStatus::Authorized { .. }) = ledger.get(&order) {
            ledger.remove(&order);
        }
        Ok(())
    }

    async fn refund(&self, order: OrderId) -> Result<(), PaymentError> {
        self.delay().await;
        let mut ledger = self.ledger();
        match ledger.get(&order) {
            Some(PaymentStatus::Captured { reference }) => {
                let reference = reference.clone();
                ledger.insert(order, PaymentStatus::Refunded { reference });
                Ok(())
            }
            Some(PaymentStatus::Refunded { .. }) => Ok(()),
            _ => Err(PaymentError::Declined("nothing captured to refund".into())),
        }
    }

    async fn status(&self, order: OrderId) -> Result<PaymentStatus, PaymentError> {
        self.delay().await;
        Ok(self
            .ledger()
            .get(&order)
            .cloned()
            .unwrap_or(PaymentStatus::None))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn authorise_capture_refund_and_status_agree() {
        let provider = SimulatedProvider::default();
        let order = OrderId::new(7);
        assert_eq!(provider.status(order).await.unwrap(), PaymentStatus::None);
        let reference = provider.authorize(order, Money::usd(500)).await.unwrap();
        // Asking again for the same order does not authorise twice.
        assert_eq!(
            provider.authorize(order, Money::usd(500)).await.unwrap(),
            reference
        );
        provider.capture(order).await.unwrap();
        assert_eq!(
            provider.status(order).await.unwrap(),
            PaymentStatus::Captured {
                reference: reference.clone()
            }
        );
        provider.refund(order).await.unwrap();
        assert_eq!(
            provider.status(order).await.unwrap(),
            PaymentStatus::Refunded { reference }
        );
    }

    #[tokio::test]
    async fn declines_and_timeouts_happen_at_their_rates() {
        let provider = SimulatedProvider::new(SimulatedSettings {
            decline_rate: 0.3,
            timeout_rate: 0.0,
            ..SimulatedSettings::default()
        });
        let mut declined = 0;
        for raw in 1..=2_000 {
            if let Err(PaymentError::Declined(_)) =
                provider.authorize(OrderId::new(raw), Money::usd(1)).await
            {
                declined += 1;
            }
        }
        // 600 expected; a 5-sigma band is ±102.
        assert!(
            (498..=702).contains(&declined),
            "{declined} of 2,000 declined"
        );
        let always = SimulatedProvider::new(SimulatedSettings {
            timeout_rate: 1.0,
            ..SimulatedSettings::default()
        });
        assert_eq!(
            always.authorize(OrderId::new(1), Money::usd(1)).await,
            Err(PaymentError::Timeout)
        );
    }
}
