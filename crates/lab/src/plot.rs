//! SVG charts of what was measured: latency percentiles second by second for a run, latency
//! against throughput for a saturation search.

use std::path::Path;
use std::time::Duration;

use plotters::coord::ranged1d::{AsRangedCoord, ValueFormatter};
use plotters::prelude::*;

use crate::load::LabError;
use crate::report::Report;
use crate::saturate::Saturation;

const SIZE: (u32, u32) = (960, 540);
const PERCENTILES: [(&str, RGBColor); 4] = [
    ("p50", RGBColor(0x1f, 0x77, 0xb4)),
    ("p90", RGBColor(0x2c, 0xa0, 0x2c)),
    ("p99", RGBColor(0xff, 0x7f, 0x0e)),
    ("p99.9", RGBColor(0xd6, 0x27, 0x28)),
];

/// One line of a chart: its name, colour and points (x, latency in ms).
struct Line {
    name: String,
    color: RGBColor,
    points: Vec<(f64, f64)>,
}

/// Latency percentiles of `report`, second by second.
pub fn timeline(path: &Path, title: &str, report: &Report) -> Result<(), LabError> {
    let lines = PERCENTILES
        .iter()
        .enumerate()
        .map(|(i, (name, color))| Line {
            name: (*name).to_owned(),
            color: *color,
            points: report
                .timeline
                .iter()
                .filter_map(|second| Some((second.at.as_secs_f64(), ms(second.latency?[i]))))
                .collect(),
        })
        .collect::<Vec<_>>();
    let x_max = x_extent(&lines).1 * 1.05;
    draw(
        path,
        title,
        "seconds into the measured run",
        &lines,
        None,
        0.0..x_max,
    )
}

/// p50 and p99 against the throughput achieved at each step of `found` (and of `baseline`),
/// with the p99 bound of the search.
pub fn saturation(
    path: &Path,
    title: &str,
    found: &Saturation,
    baseline: Option<&Saturation>,
    bound: Duration,
) -> Result<(), LabError> {
    let curves = |search: &Saturation, label: &str, colors: [RGBColor; 2]| {
        let mut reports: Vec<&Report> = search.steps.iter().map(|s| &s.report).collect();
        reports.extend(search.at_half.as_ref());
        reports.sort_by(|a, b| a.achieved_rate().total_cmp(&b.achieved_rate()));
        [(50.0, "p50", colors[0]), (99.0, "p99", colors[1])].map(|(p, name, color)| Line {
            name: format!("{label} {name}"),
            color,
            points: reports
                .iter()
                .filter(|r| r.all.answered() > 0)
                .map(|r| (r.achieved_rate(), ms(r.percentile(p))))
                .collect(),
        })
    };
    let mut lines = Vec::from(curves(
        found,
        "target",
        [PERCENTILES[0].1, PERCENTILES[2].1],
    ));
    if let Some(baseline) = baseline {
        lines.extend(curves(
            baseline,
            "baseline",
            [RGBColor(0x9e, 0xc9, 0xe8), RGBColor(0xff, 0xc8, 0x96)],
        ));
    }
    // Throughputs span orders of magnitude (a baseline can be 30× the target): log scale.
    let (x_min, x_max) = x_extent(&lines);
    draw(
        path,
        title,
        "achieved requests per second (log scale)",
        &lines,
        Some(ms(bound)),
        (x_min / 1.2..x_max * 1.2).log_scale(),
    )
}

/// The smallest and largest x of any point (1 and 1 if there is none).
fn x_extent(lines: &[Line]) -> (f64, f64) {
    let xs = || {
        lines
            .iter()
            .flat_map(|line| line.points.iter().map(|p| p.0))
    };
    let min = xs().fold(f64::INFINITY, f64::min);
    let max = xs().fold(f64::NEG_INFINITY, f64::max);
    if min.is_finite() && max > 0.0 {
        (min.max(f64::MIN_POSITIVE), max)
    } else {
        (1.0, 1.0)
    }
}

fn ms(duration: Duration) -> f64 {
    (duration.as_secs_f64() * 1000.0).max(0.001)
}

/// Draws `lines` over `x` on a logarithmic latency axis, with an optional horizontal bound.
fn draw<X>(
    path: &Path,
    title: &str,
    x_label: &str,
    lines: &[Line],
    bound: Option<f64>,
    x: X,
) -> Result<(), LabError>
where
    X: AsRangedCoord<Value = f64>,
    X::CoordDescType: ValueFormatter<f64>,
{
    let failed = |e: &dyn std::fmt::Display| LabError::Spec {
        setting: "plot",
        reason: format!("cannot draw {}: {e}", path.display()),
    };
    let values = lines
        .iter()
        .flat_map(|line| line.points.iter().map(|p| p.1))
        .chain(bound);
    let y_min = values.clone().fold(f64::INFINITY, f64::min).min(1.0) / 1.5;
    let y_max = values.fold(1.0, f64::max) * 1.5;

    let root = SVGBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE).map_err(|e| failed(&e))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(16)
        .x_label_area_size(40)
        .y_label_area_size(64)
        .build_cartesian_2d(x, (y_min..y_max).log_scale())
        .map_err(|e| failed(&e))?;
    chart
        .configure_mesh()
        .x_desc(x_label)
        .y_desc("latency, ms (log scale)")
        .light_line_style(RGBColor(0xf2, 0xf2, 0xf2))
        .draw()
        .map_err(|e| failed(&e))?;
    for line in lines.iter().filter(|line| !line.points.is_empty()) {
        let color = line.color;
        chart
            .draw_series(LineSeries::new(
                line.points.iter().copied(),
                color.stroke_width(2),
            ))
            .map_err(|e| failed(&e))?
            .label(&line.name)
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], color.stroke_width(2)));
        chart
            .draw_series(
                line.points
                    .iter()
                    .map(|&point| Circle::new(point, 3, color.filled())),
            )
            .map_err(|e| failed(&e))?;
    }
    if let Some(bound) = bound {
        let across = chart.x_range();
        chart
            .draw_series(LineSeries::new(
                [(across.start, bound), (across.end, bound)],
                BLACK.stroke_width(2),
            ))
            .map_err(|e| failed(&e))?
            .label("p99 bound")
            .legend(|(x, y)| PathElement::new([(x, y), (x + 20, y)], BLACK.stroke_width(2)));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
        .map_err(|e| failed(&e))?;
    root.present().map_err(|e| failed(&e))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::report::{Figures, Second};

    /// A report of one answered request at `rate`, with `timeline`.
    fn report(rate: f64, latency: Duration, timeline: Vec<Second>) -> Report {
        let mut all = Figures::new();
        all.record(latency, &crate::load::Outcome::Answered(200));
        Report {
            requested_rate: rate,
            measured: Duration::from_secs(1),
            all,
            kinds: BTreeMap::new(),
            timeline,
            interrupted: false,
        }
    }

    /// Draws with `draw` into a fresh directory and returns the SVG text.
    fn drawn(name: &str, draw: impl FnOnce(&Path) -> Result<(), LabError>) -> String {
        let dir = std::env::temp_dir().join(format!("bazaar-plot-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(format!("{name}.svg"));
        draw(&path).unwrap();
        let svg = std::fs::read_to_string(&path).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(svg.starts_with("<svg"), "{}", &svg[..80.min(svg.len())]);
        svg
    }

    #[test]
    fn a_timeline_draws_each_percentile_as_a_line() {
        let report = report(
            10.0,
            Duration::from_millis(3),
            (1..=3)
                .map(|s| Second {
                    at: Duration::from_secs(s),
                    answered: 10,
                    errors: 0,
                    latency: (s != 2).then(|| [Duration::from_millis(s * 2); 5]),
                })
                .collect(),
        );
        let svg = drawn("timeline", |path| timeline(path, "a run", &report));
        for label in ["a run", "p50", "p90", "p99", "p99.9", "latency, ms"] {
            assert!(svg.contains(label), "{label} is drawn");
        }
        // Two seconds answered something (the second one nothing): two points per line.
        assert_eq!(svg.matches("<circle").count(), 4 * 2);
    }

    #[test]
    fn a_saturation_chart_draws_each_step_and_the_run_at_half_beside_the_baseline() {
        let search = |rates: &[f64]| Saturation {
            steps: rates
                .iter()
                .map(|&rate| crate::saturate::Step {
                    rate,
                    report: report(rate, Duration::from_millis(2), Vec::new()),
                    passed: true,
                })
                .collect(),
            rate: rates.last().copied(),
            at_half: Some(report(50.0, Duration::from_millis(1), Vec::new())),
            interrupted: false,
        };
        let (target, baseline) = (search(&[100.0, 150.0]), search(&[100.0, 150.0, 225.0]));
        let svg = drawn("saturation", |path| {
            saturation(
                path,
                "a search",
                &target,
                Some(&baseline),
                Duration::from_millis(10),
            )
        });
        for label in [
            "a search",
            "target p50",
            "target p99",
            "baseline p99",
            "p99 bound",
            "(log scale)",
        ] {
            assert!(svg.contains(label), "{label} is drawn");
        }
        // p50 and p99 at each step and at half: (2 + 1) × 2 for the target, (3 + 1) × 2 for
        // the baseline.
        assert_eq!(svg.matches("<circle").count(), 6 + 8);
    }
}
