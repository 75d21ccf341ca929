//! What a run measured.

use std::collections::BTreeMap;
use std::time::Duration;

use hdrhistogram::Histogram;

/// The most latency a histogram records exactly: a minute, in microseconds.
pub(crate) const MAX_MICROS: u64 = 60_000_000;

/// A latency histogram in microseconds, 3 significant figures.
pub(crate) fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_MICROS, 3).expect("valid histogram bounds")
}

/// The figures of one run.
#[derive(Debug, Clone)]
pub struct Report {
    /// Requests per second asked for.
    pub requested_rate: f64,
    /// How long the measured part lasted (warm-up excluded).
    pub measured: Duration,
    /// Latencies of measured requests, from intended send time to the end of the response,
    /// in microseconds.
    pub latency: Histogram<u64>,
    /// Measured responses by HTTP status.
    pub statuses: BTreeMap<u16, u64>,
    /// Measured requests that got no response (connection refused, reset, timed out).
    pub transport_errors: u64,
}

impl Report {
    /// Responses received (any status) per second of the measured part.
    pub fn achieved_rate(&self) -> f64 {
        let answered: u64 = self.statuses.values().sum();
        answered as f64 / self.measured.as_secs_f64().max(f64::MIN_POSITIVE)
    }

    /// Measured responses with a 2xx or 3xx status.
    pub fn ok(&self) -> u64 {
        self.statuses
            .iter()
            .filter(|(status, _)| (200..400).contains(*status))
            .map(|(_, n)| n)
            .sum()
    }

    /// Measured requests that failed: a 4xx/5xx status or no response.
    pub fn errors(&self) -> u64 {
        let answered: u64 = self.statuses.values().sum();
        answered - self.ok() + self.transport_errors
    }

    /// The latency at `percentile` (0–100).
    pub fn percentile(&self, percentile: f64) -> Duration {
        Duration::from_micros(self.latency.value_at_quantile(percentile / 100.0))
    }

    pub fn max(&self) -> Duration {
        Duration::from_micros(self.latency.max())
    }

    /// The header of [`Report::markdown_row`]'s table.
    pub fn markdown_header() -> &'static str {
        "| load | requested/s | achieved/s | p50 ms | p90 ms | p99 ms | p99.9 ms | max ms | errors | ÷ baseline |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    }

    /// One Markdown table row; with `baseline`, the achieved rate as a ratio to it.
    pub fn markdown_row(&self, name: &str, baseline: Option<&Report>) -> String {
        let ms = |d: Duration| format!("{:.2}", d.as_secs_f64() * 1000.0);
        let ratio = baseline.map_or_else(
            || "–".to_owned(),
            |b| {
                format!(
                    "{:.2}",
                    self.achieved_rate() / b.achieved_rate().max(f64::MIN_POSITIVE)
                )
            },
        );
        format!(
            "| {name} | {:.0} | {:.0} | {} | {} | {} | {} | {} | {} | {ratio} |",
            self.requested_rate,
            self.achieved_rate(),
            ms(self.percentile(50.0)),
            ms(self.percentile(90.0)),
            ms(self.percentile(99.0)),
            ms(self.percentile(99.9)),
            ms(self.max()),
            self.errors(),
        )
    }

    /// The figures as JSON, for machines.
    pub fn to_json(&self, name: &str) -> serde_json::Value {
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        serde_json::json!({
            "load": name,
            "requested_rate": self.requested_rate,
            "achieved_rate": self.achieved_rate(),
            "measured_seconds": self.measured.as_secs_f64(),
            "latency_ms": {
                "p50": ms(self.percentile(50.0)),
                "p90": ms(self.percentile(90.0)),
                "p99": ms(self.percentile(99.0)),
                "p99_9": ms(self.percentile(99.9)),
                "max": ms(self.max()),
            },
            "statuses": self.statuses.iter().map(|(s, n)| (s.to_string(), *n)).collect::<BTreeMap<_, _>>(),
            "transport_errors": self.transport_errors,
        })
    }
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
            latency,
            statuses: BTreeMap::from([(200, 990), (503, 10)]),
            transport_errors: 5,
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
    }
}
