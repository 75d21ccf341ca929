//! Saturation search: the highest arrival rate a target sustains with its p99 under a bound.
//!
//! Rates grow geometrically from `start_rate` until a step fails, then a bisection between the
//! last rate that passed and the first that failed narrows the answer. A step passes when the
//! target answers at least 95% of the rate asked, fewer than 1% of requests fail, and the p99
//! (measured open-loop, from intended send times) is within the bound. Optionally, a last run
//! at half the rate found shows the latency a target has with headroom — the figure to quote
//! beside its saturation rate.

use std::time::Duration;

use crate::load::{LabError, LoadSpec, Progress, Stop, Target, Workload, run_observed};
use crate::report::{MAX_ERROR_SHARE, Report};

/// How to search.
#[derive(Debug, Clone)]
pub struct SaturateSpec {
    /// The first rate tried, requests per second.
    pub start_rate: f64,
    /// Never try above this.
    pub max_rate: f64,
    /// Each step's rate is the previous one's times this, until a step fails.
    pub growth: f64,
    /// Bisection steps after the first failure.
    pub refinements: u32,
    /// The measured part of each step.
    pub step: Duration,
    pub warmup: Duration,
    pub connections: usize,
    /// The p99 a passing step stays within.
    pub p99_bound: Duration,
    /// After the search, measure once more at half the rate found.
    pub at_half: bool,
}

/// One step of the search.
#[derive(Debug, Clone)]
pub struct Step {
    pub rate: f64,
    pub report: Report,
    pub passed: bool,
}

/// What the search found.
#[derive(Debug, Clone)]
pub struct Saturation {
    pub steps: Vec<Step>,
    /// The highest rate that passed; `None` if even `start_rate` failed.
    pub rate: Option<f64>,
    /// The run at half of `rate`, if asked for and a rate was found.
    pub at_half: Option<Report>,
    /// Stopped early (Ctrl-C): `rate` is the best found before.
    pub interrupted: bool,
}

impl SaturateSpec {
    /// Fails naming the first setting out of range.
    pub fn validate(&self) -> Result<(), LabError> {
        let invalid = |setting, reason: String| Err(LabError::Spec { setting, reason });
        if !(self.start_rate > 0.0 && self.start_rate.is_finite()) {
            return invalid(
                "start-rate",
                format!("expected above 0, found {}", self.start_rate),
            );
        }
        if !(self.max_rate >= self.start_rate && self.max_rate.is_finite()) {
            return invalid(
                "max-rate",
                format!(
                    "expected at least start-rate ({}), found {}",
                    self.start_rate, self.max_rate
                ),
            );
        }
        if !(self.growth > 1.0 && self.growth.is_finite()) {
            return invalid("growth", format!("expected above 1, found {}", self.growth));
        }
        if self.p99_bound.is_zero() {
            return invalid("p99", "must be above zero, e.g. 10ms".into());
        }
        Ok(())
    }

    fn load(&self, rate: f64) -> LoadSpec {
        LoadSpec {
            rate,
            duration: self.step,
            warmup: self.warmup,
            connections: self.connections,
            timeout: Duration::from_secs(30).max(self.p99_bound * 10),
        }
    }

    /// Whether a step at `rate` that measured `report` passes.
    pub fn passes(&self, rate: f64, report: &Report) -> bool {
        self.keeps_up(rate, report) && Self::few_errors(report)
    }

    /// The rate and latency half of [`SaturateSpec::passes`].
    fn keeps_up(&self, rate: f64, report: &Report) -> bool {
        report.achieved_rate() >= rate * 0.95 && report.percentile(99.0) <= self.p99_bound
    }

    fn few_errors(report: &Report) -> bool {
        let requests = report.all.answered() + report.all.transport_errors;
        (report.errors() as f64) < (requests as f64 * MAX_ERROR_SHARE).max(1.0)
    }

    /// Why a step at `rate` failed, or `None` if it passed: what the progress lines say.
    pub fn failure(&self, rate: f64, report: &Report) -> Option<String> {
        let mut reasons = Vec::new();
        if report.achieved_rate() < rate * 0.95 {
            reasons.push(format!(
                "answered {:.0}/s, under 95% of the rate",
                report.achieved_rate()
            ));
        }
        if report.percentile(99.0) > self.p99_bound {
            reasons.push(format!(
                "p99 {:.2} ms over the bound",
                report.percentile(99.0).as_secs_f64() * 1000.0
            ));
        }
        if !Self::few_errors(report) {
            reasons.push(format!(
                "{:.1}% errors ({})",
                report.all.error_share() * 100.0,
                report.all.error_breakdown()
            ));
        }
        (!reasons.is_empty()).then(|| reasons.join("; "))
    }
}

impl Saturation {
    /// Why this search is not a valid measurement, or `None` if it is one. A saturation rate
    /// is where latency or throughput breaks; a step that kept up yet failed on errors alone
    /// (a rate limit answering 429, a target answering 500 quickly) means the search found
    /// where errors start instead, and the run at half the rate must itself be valid.
    pub fn invalid(&self, spec: &SaturateSpec) -> Option<String> {
        for step in &self.steps {
            if !step.passed && spec.keeps_up(step.rate, &step.report) {
                return Some(format!(
                    "the step at {:.0} req/s kept up but failed on errors alone: {:.1}% of                      interactions failed ({}), so the search measured errors, not saturation",
                    step.rate,
                    step.report.all.error_share() * 100.0,
                    step.report.all.error_breakdown()
                ));
            }
        }
        let half = self.at_half.as_ref()?;
        half.invalid()
            .map(|reason| format!("the run at half the rate found: {reason}"))
    }
}

/// Searches `target`'s saturation rate with workloads from `workload` (one per run), calling
/// `on_step` after each step and `on_progress` once a second; stops early when `stop` is asked.
pub async fn saturate(
    target: &Target,
    spec: &SaturateSpec,
    mut workload: impl FnMut() -> Box<dyn Workload>,
    mut on_step: impl FnMut(&Step),
    mut on_progress: impl FnMut(&Progress),
    stop: &Stop,
) -> Result<Saturation, LabError> {
    spec.validate()?;
    let mut found = Saturation {
        steps: Vec::new(),
        rate: None,
        at_half: None,
        interrupted: false,
    };
    // `None` when the step was stopped before its end: it neither passed nor failed.
    let mut step = async |rate: f64, found: &mut Saturation| -> Result<Option<bool>, LabError> {
        let report =
            run_observed(target, &spec.load(rate), workload(), &mut on_progress, stop).await?;
        if report.interrupted {
            found.interrupted = true;
            return Ok(None);
        }
        let passed = spec.passes(rate, &report);
        let step = Step {
            rate,
            report,
            passed,
        };
        on_step(&step);
        found.steps.push(step);
        if passed {
            found.rate = Some(found.rate.map_or(rate, |best: f64| best.max(rate)));
        }
        Ok(Some(passed))
    };
    let mut rate = spec.start_rate;
    let failed_at = loop {
        match step(rate, &mut found).await? {
            None => return Ok(found),
            Some(true) if rate >= spec.max_rate => break None,
            Some(true) => rate = (rate * spec.growth).min(spec.max_rate),
            Some(false) => break Some(rate),
        }
    };
    if let (Some(mut low), Some(mut high)) = (found.rate, failed_at) {
        for _ in 0..spec.refinements {
            let middle = (low + high) / 2.0;
            match step(middle, &mut found).await? {
                None => return Ok(found),
                Some(true) => low = middle,
                Some(false) => high = middle,
            }
        }
    }
    if let (true, Some(best)) = (spec.at_half, found.rate) {
        let report = run_observed(
            target,
            &spec.load(best / 2.0),
            workload(),
            on_progress,
            stop,
        )
        .await?;
        found.interrupted = report.interrupted;
        found.at_half = Some(report);
    }
    Ok(found)
}
