//! SVG charts of what was measured: latency percentiles second by second for a run, latency
//! against throughput for a saturation search, and bars comparing a few scenarios.

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

/// One kind of bar of a [`Panel`]: its name (the legend's), and a value for each category
/// (`None`: no bar, say nothing was measured).
#[derive(Debug, Clone)]
pub struct Bars {
    pub name: String,
    /// Milliseconds, one per category, in the order of [`bars`]'s `categories`.
    pub values: Vec<Option<f64>>,
}

/// One chart of a [`bars`] figure: a group of bars per category.
#[derive(Debug, Clone)]
pub struct Panel {
    pub title: String,
    /// What the values are, e.g. `checkout latency`; the axis adds `ms (log scale)`.
    pub y_label: String,
    pub bars: Vec<Bars>,
}

/// Colours of a panel's bars, in order.
const BAR_COLORS: [RGBColor; 4] = [
    PERCENTILES[0].1,
    PERCENTILES[2].1,
    PERCENTILES[1].1,
    PERCENTILES[3].1,
];

/// `panels` side by side, each with a group of bars for every one of `categories` (a
/// category's name may hold `\n`: each line is written under its group), on a logarithmic
/// axis of milliseconds: scenarios compared at a glance.
pub fn bars(
    path: &Path,
    title: &str,
    categories: &[String],
    panels: &[Panel],
) -> Result<(), LabError> {
    let failed = |e: &dyn std::fmt::Display| LabError::Spec {
        setting: "plot",
        reason: format!("cannot draw {}: {e}", path.display()),
    };
    let width = u32::try_from(panels.len()).unwrap_or(1).max(1) * 560;
    let root = SVGBackend::new(path, (width, SIZE.1)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| failed(&e))?;
    let body = root
        .titled(title, ("sans-serif", 20))
        .map_err(|e| failed(&e))?;
    let groups = categories.len().max(1);
    let lines = categories
        .iter()
        .map(|c| c.lines().count())
        .max()
        .unwrap_or(1);
    for (panel, area) in panels
        .iter()
        .zip(body.split_evenly((1, panels.len().max(1))))
    {
        let values = || {
            panel
                .bars
                .iter()
                .flat_map(|bars| bars.values.iter().flatten().copied())
        };
        let y_min = values().fold(1.0, f64::min).max(0.001) / 2.0;
        // Headroom above the tallest bar for the legend, in the upper left.
        let y_max = values().fold(1.0, f64::max) * 8.0;
        let mut chart = ChartBuilder::on(&area)
            .caption(&panel.title, ("sans-serif", 16))
            .margin(16)
            .x_label_area_size(16 + 16 * lines as u32)
            .y_label_area_size(64)
            .build_cartesian_2d(0.0..groups as f64, (y_min..y_max).log_scale())
            .map_err(|e| failed(&e))?;
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_labels(0)
            .y_desc(format!("{}, ms (log scale)", panel.y_label))
            .light_line_style(RGBColor(0xf2, 0xf2, 0xf2))
            .draw()
            .map_err(|e| failed(&e))?;
        // Each group is 80% of its slot, shared evenly by the panel's bars.
        let width = 0.8 / panel.bars.len().max(1) as f64;
        for (k, bars) in panel.bars.iter().enumerate() {
            let color = BAR_COLORS[k % BAR_COLORS.len()];
            let rectangles = bars.values.iter().enumerate().filter_map(|(i, value)| {
                let left = i as f64 + 0.1 + k as f64 * width;
                let value = (*value)?.max(y_min);
                Some(Rectangle::new(
                    [(left, y_min), (left + width * 0.9, value)],
                    color.filled(),
                ))
            });
            chart
                .draw_series(rectangles)
                .map_err(|e| failed(&e))?
                .label(&bars.name)
                .legend(move |(x, y)| {
                    Rectangle::new([(x, y - 5), (x + 14, y + 5)], color.filled())
                });
        }
        let label = TextStyle::from(("sans-serif", 13).into_font()).pos(
            plotters::style::text_anchor::Pos::new(
                plotters::style::text_anchor::HPos::Center,
                plotters::style::text_anchor::VPos::Top,
            ),
        );
        for (i, category) in categories.iter().enumerate() {
            let (x, y) = chart.backend_coord(&(i as f64 + 0.5, y_min));
            for (line, text) in category.lines().enumerate() {
                let line = i32::try_from(line).unwrap_or(0);
                root.draw(&Text::new(
                    text.to_owned(),
                    (x, y + 6 + line * 16),
                    label.clone(),
                ))
                .map_err(|e| failed(&e))?;
            }
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .draw()
            .map_err(|e| failed(&e))?;
    }
    root.present().map_err(|e| failed(&e))
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
    fn a_bar_chart_draws_a_bar_for_each_value_and_names_each_category() {
        let categories = vec!["async\nhealthy".to_owned(), "sync\ndown".to_owned()];
        let panel = |title: &str, values: [Vec<Option<f64>>; 2]| Panel {
            title: title.to_owned(),
            y_label: "latency".to_owned(),
            bars: values
                .into_iter()
                .zip(["p50", "p99"])
                .map(|(values, name)| Bars {
                    name: name.to_owned(),
                    values,
                })
                .collect(),
        };
        let panels = [
            panel(
                "checkout",
                [vec![Some(2.0), Some(0.0)], vec![Some(9.0), Some(1_500.0)]],
            ),
            panel(
                "staleness",
                [vec![Some(40.0), None], vec![Some(90.0), Some(12_000.0)]],
            ),
        ];
        let svg = drawn("bars", |path| {
            bars(path, "six scenarios", &categories, &panels)
        });
        for label in [
            "six scenarios",
            "checkout",
            "staleness",
            "async",
            "healthy",
            "sync",
            "down",
            "p50",
            "p99",
            "latency, ms (log scale)",
        ] {
            assert!(svg.contains(label), "{label} is drawn");
        }
        // Seven values (one is missing), each a bar, plus one legend sample per kind of bar
        // and panel: p50 in blue, p99 in orange.
        let filled = |color: RGBColor| {
            let hex = format!("fill=\"#{:02X}{:02X}{:02X}\"", color.0, color.1, color.2);
            svg.matches(&hex).count()
        };
        assert_eq!(filled(BAR_COLORS[0]), 3 + 2, "{svg}");
        assert_eq!(filled(BAR_COLORS[1]), 4 + 2);
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
