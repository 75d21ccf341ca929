//! What a run measured.

use std::collections::BTreeMap;
use std::time::Duration;

use hdrhistogram::Histogram;

use crate::load::Outcome;

/// The most latency a histogram records exactly: a minute, in microseconds.
const MAX_MICROS: u64 = 60_000_000;

/// A latency histogram in microseconds, 3 significant figures.
fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_MICROS, 3).expect("valid histogram bounds")
}

/// Latencies and outcomes of a set of interactions.
#[derive(Debug, Clone)]
pub struct Figures {
    /// From intended send time to the end of the last response, in microseconds.
    pub latency: Histogram<u64>,
    /// Interactions answered, by the status that ended them.
    pub statuses: BTreeMap<u16, u64>,
    /// Interactions that got no response (connection refused, reset, timed out).
    pub transport_errors: u64,
    /// For each 4xx/5xx status, the start of the first such response's body: what the errors
    /// were, not just how many.
    pub first_errors: BTreeMap<u16, String>,
}

/// The largest share of failed interactions (4xx/5xx or no response) a run may have and still
/// be reported as a measurement: past it, the figures describe errors — a rate limit, a wrong
/// path, a broken target — not the target's speed, and no ratio is drawn from them.
pub const MAX_ERROR_SHARE: f64 = 0.01;

/// How much of an error body [`Figures::first_errors`] keeps.
const ERROR_SAMPLE: usize = 300;

impl Figures {
    pub(crate) fn new() -> Self {
        Self {
            latency: histogram(),
            statuses: BTreeMap::new(),
            transport_errors: 0,
            first_errors: BTreeMap::new(),
        }
    }

    pub(crate) fn record(&mut self, latency: Duration, outcome: &Outcome) {
        let status = match outcome {
            Outcome::Answered(status) => *status,
            Outcome::Rejected(status, body) => {
                self.first_errors.entry(*status).or_insert_with(|| {
                    let end = body.len().min(ERROR_SAMPLE);
                    String::from_utf8_lossy(&body[..end]).into_owned()
                });
                *status
            }
            Outcome::NoResponse => {
                self.transport_errors += 1;
                return;
            }
        };
        let micros = u64::try_from(latency.as_micros()).unwrap_or(MAX_MICROS);
        self.latency.saturating_record(micros.clamp(1, MAX_MICROS));
        *self.statuses.entry(status).or_insert(0) += 1;
    }

    pub(crate) fn add(&mut self, other: &Self) {
        self.latency
            .add(&other.latency)
            .expect("histograms of the same bounds add");
        for (status, n) in &other.statuses {
            *self.statuses.entry(*status).or_insert(0) += n;
        }
        self.transport_errors += other.transport_errors;
        for (status, body) in &other.first_errors {
            self.first_errors
                .entry(*status)
                .or_insert_with(|| body.clone());
        }
    }

    /// Interactions answered, whatever the status.
    pub fn answered(&self) -> u64 {
        self.statuses.values().sum()
    }

    /// Answered with a 2xx or 3xx status.
    pub fn ok(&self) -> u64 {
        self.statuses
            .iter()
            .filter(|(status, _)| (200..400).contains(*status))
            .map(|(_, n)| n)
            .sum()
    }

    /// Failed: a 4xx/5xx status or no response.
    pub fn errors(&self) -> u64 {
        self.answered() - self.ok() + self.transport_errors
    }

    /// Failed interactions as a share of all those that finished (answered or not); 0 when
    /// none did.
    pub fn error_share(&self) -> f64 {
        let finished = self.answered() + self.transport_errors;
        if finished == 0 {
            0.0
        } else {
            self.errors() as f64 / finished as f64
        }
    }

    /// `429: 510, 503: 2, no response: 1`: the failures by kind, or `none`.
    pub fn error_breakdown(&self) -> String {
        let mut parts: Vec<String> = self
            .statuses
            .iter()
            .filter(|(status, _)| **status >= 400)
            .map(|(status, n)| format!("{status}: {n}"))
            .collect();
        if self.transport_errors > 0 {
            parts.push(format!("no response: {}", self.transport_errors));
        }
        if parts.is_empty() {
            "none".to_owned()
        } else {
            parts.join(", ")
        }
    }

    /// The latency at `percentile` (0–100) of the answered interactions.
    pub fn percentile(&self, percentile: f64) -> Duration {
        Duration::from_micros(self.latency.value_at_quantile(percentile / 100.0))
    }

    pub fn max(&self) -> Duration {
        Duration::from_micros(self.latency.max())
    }

    fn to_json(&self, seconds: f64) -> serde_json::Value {
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        serde_json::json!({
            "achieved_rate": self.answered() as f64 / seconds.max(f64::MIN_POSITIVE),
            "latency_ms": {
                "p50": ms(self.percentile(50.0)),
                "p90": ms(self.percentile(90.0)),
                "p99": ms(self.percentile(99.0)),
                "p99_9": ms(self.percentile(99.9)),
                "max": ms(self.max()),
            },
            "statuses": self.statuses.iter().map(|(s, n)| (s.to_string(), *n)).collect::<BTreeMap<_, _>>(),
            "transport_errors": self.transport_errors,
            "first_errors": self.first_errors.iter().map(|(s, b)| (s.to_string(), b.clone())).collect::<BTreeMap<_, _>>(),
        })
    }
}

/// One second of the measured part: what finished in it.
#[derive(Debug, Clone, Copy)]
pub struct Second {
    /// The end of the second, counted from the start of the measured part.
    pub at: Duration,
    pub answered: u64,
    pub errors: u64,
    /// p50, p90, p99, p99.9 and max of what was answered; `None` if nothing was.
    pub latency: Option<[Duration; 5]>,
}

impl Second {
    pub(crate) fn of(at: Duration, figures: &Figures) -> Self {
        Self {
            at,
            answered: figures.answered(),
            errors: figures.errors(),
            latency: (figures.answered() > 0).then(|| {
                [
                    figures.percentile(50.0),
                    figures.percentile(90.0),
                    figures.percentile(99.0),
                    figures.percentile(99.9),
                    figures.max(),
                ]
            }),
        }
    }
}

/// The figures of one run.
#[derive(Debug, Clone)]
pub struct Report {
    /// Arrivals per second asked for.
    pub requested_rate: f64,
    /// How long the measured part lasted (warm-up excluded; shorter if stopped early).
    pub measured: Duration,
    /// Every measured interaction.
    pub all: Figures,
    /// The same, by kind of interaction (`product`, `buy`, …).
    pub kinds: BTreeMap<&'static str, Figures>,
    /// Second by second.
    pub timeline: Vec<Second>,
    /// Stopped before its end (Ctrl-C).
    pub interrupted: bool,
}

impl Report {
    /// Interactions answered (any status) per second of the measured part.
    pub fn achieved_rate(&self) -> f64 {
        self.all.answered() as f64 / self.measured.as_secs_f64().max(f64::MIN_POSITIVE)
    }

    /// Measured interactions answered with a 2xx or 3xx status.
    pub fn ok(&self) -> u64 {
        self.all.ok()
    }

    /// Measured interactions that failed: a 4xx/5xx status or no response.
    pub fn errors(&self) -> u64 {
        self.all.errors()
    }

    /// The latency at `percentile` (0–100).
    pub fn percentile(&self, percentile: f64) -> Duration {
        self.all.percentile(percentile)
    }

    /// Why this run is not a valid measurement — more than [`MAX_ERROR_SHARE`] of its
    /// interactions failed — or `None` if it is one.
    pub fn invalid(&self) -> Option<String> {
        let share = self.all.error_share();
        (share > MAX_ERROR_SHARE).then(|| {
            format!(
                "{:.1}% of {} interactions failed ({}), above the {:.0}% a valid run allows",
                share * 100.0,
                self.all.answered() + self.all.transport_errors,
                self.all.error_breakdown(),
                MAX_ERROR_SHARE * 100.0
            )
        })
    }

    pub fn max(&self) -> Duration {
        self.all.max()
    }

    /// The header of [`Report::markdown_row`]'s table.
    pub fn markdown_header() -> &'static str {
        "| load | requested/s | achieved/s | p50 ms | p90 ms | p99 ms | p99.9 ms | max ms | errors | ÷ baseline |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    }

    /// One Markdown table row; with `baseline`, the achieved rate as a ratio to it.
    pub fn markdown_row(&self, name: &str, baseline: Option<&Report>) -> String {
        let ratio = baseline.map_or_else(
            || "–".to_owned(),
            |b| {
                format!(
                    "{:.2}",
                    self.achieved_rate() / b.achieved_rate().max(f64::MIN_POSITIVE)
                )
            },
        );
        row(
            name,
            self.requested_rate,
            self.achieved_rate(),
            &self.all,
            &ratio,
        )
    }

    /// Rows for each kind of interaction, when there is more than one: the mix's breakdown.
    pub fn markdown_kinds(&self) -> Vec<String> {
        if self.kinds.len() < 2 {
            return Vec::new();
        }
        let seconds = self.measured.as_secs_f64().max(f64::MIN_POSITIVE);
        let total = self.all.answered() + self.all.transport_errors;
        self.kinds
            .iter()
            .map(|(kind, figures)| {
                let share = (figures.answered() + figures.transport_errors) as f64
                    / (total as f64).max(1.0);
                row(
                    &format!("· {kind} ({:.0}%)", share * 100.0),
                    self.requested_rate * share,
                    figures.answered() as f64 / seconds,
                    figures,
                    "–",
                )
            })
            .collect()
    }

    /// The figures as JSON, for machines.
    pub fn to_json(&self, name: &str) -> serde_json::Value {
        let seconds = self.measured.as_secs_f64();
        let mut json = self.all.to_json(seconds);
        json["load"] = name.into();
        json["requested_rate"] = self.requested_rate.into();
        json["measured_seconds"] = seconds.into();
        json["interrupted"] = self.interrupted.into();
        if self.kinds.len() > 1 {
            json["kinds"] = self
                .kinds
                .iter()
                .map(|(kind, figures)| ((*kind).to_owned(), figures.to_json(seconds)))
                .collect::<serde_json::Map<_, _>>()
                .into();
        }
        json
    }
}

fn row(name: &str, requested: f64, achieved: f64, figures: &Figures, ratio: &str) -> String {
    let ms = |d: Duration| format!("{:.2}", d.as_secs_f64() * 1000.0);
    format!(
        "| {name} | {requested:.0} | {achieved:.0} | {} | {} | {} | {} | {} | {} | {ratio} |",
        ms(figures.percentile(50.0)),
        ms(figures.percentile(90.0)),
        ms(figures.percentile(99.0)),
        ms(figures.percentile(99.9)),
        ms(figures.max()),
        figures.errors(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_follow_the_recorded_distribution() {
        let mut latency = histogram();
        // 1..=1000 ms, once each: the p-th percentile is p × 10 ms.
        for ms in 1..=1_000u64 {
            latency.record(ms * 1_000).unwrap();
        }
        let report = Report {
            requested_rate: 100.0,
            measured: Duration::from_secs(10),
            all: Figures {
                latency,
                statuses: BTreeMap::from([(200, 990), (503, 10)]),
                transport_errors: 5,
                first_errors: BTreeMap::new(),
            },
            kinds: BTreeMap::new(),
            timeline: Vec::new(),
            interrupted: false,
        };
        let close = |actual: Duration, ms: u64| {
            let expected = Duration::from_millis(ms).as_secs_f64();
            (actual.as_secs_f64() - expected).abs() <= expected * 0.002
        };
        assert!(
            close(report.percentile(50.0), 500),
            "{:?}",
            report.percentile(50.0)
        );
        assert!(
            close(report.percentile(99.0), 990),
            "{:?}",
            report.percentile(99.0)
        );
        assert!(close(report.max(), 1_000));
        assert_eq!(report.achieved_rate(), 100.0);
        assert_eq!((report.ok(), report.errors()), (990, 15));
        // 15 of 1,005 failed: 1.5%, so this is no measurement.
        let invalid = report.invalid().expect("1.5% of failures is too many");
        assert!(
            invalid.starts_with("1.5% of 1005 interactions failed (503: 10, no response: 5)"),
            "{invalid}"
        );
    }

    #[test]
    fn a_run_within_one_percent_of_errors_is_valid() {
        let mut all = Figures::new();
        all.statuses = BTreeMap::from([(200, 990), (404, 10)]);
        assert!((all.error_share() - 0.01).abs() < 1e-12);
        let report = Report {
            requested_rate: 100.0,
            measured: Duration::from_secs(10),
            all,
            kinds: BTreeMap::new(),
            timeline: Vec::new(),
            interrupted: false,
        };
        assert_eq!(report.invalid(), None, "exactly 1% is allowed");
        assert_eq!(Figures::new().error_share(), 0.0);
        assert_eq!(Figures::new().error_breakdown(), "none");
    }
}
