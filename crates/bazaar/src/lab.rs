//! `bazaar lab`: the command line over `bazaar-lab`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bazaar_lab::mix::{Mix, MixKind, Shop};
use bazaar_lab::{
    Baseline, LabError, LoadSpec, Progress, Report, SaturateSpec, Saturation, Stop, Target,
    Workload, plot, workload,
};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// How a lab command ended, when it did not fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Finished {
    /// It ran to its end.
    Complete,
    /// Ctrl-C stopped it early; what was measured was still printed.
    Interrupted,
    /// It ran, but too many requests failed for its figures to measure anything: the table
    /// was printed without a ratio, with what failed.
    Invalid,
}

/// Built-in workloads against a Bazaar server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum WorkloadName {
    /// `GET /products/{id}`, ids discovered from the target, Zipf popularity.
    Product,
    /// `GET /products?limit=20`.
    List,
    /// The seed's GraphQL product query, ids as for `product`.
    Graphql,
    /// `GET /search`: the judged query set's searches (with their filters) and single words
    /// of the demo catalog's vocabulary, Zipf popularity.
    Search,
    /// `GET /search/suggest`: prefixes (1 to 6 characters) of the demo catalog's words, Zipf
    /// popularity.
    Suggest,
    /// TPC-W's browsing mix: 95% browsing, 5% cart and checkout, by signed-up shoppers.
    Browsing,
    /// TPC-W's shopping mix: 80% browsing, 20% cart and checkout.
    Shopping,
    /// TPC-W's ordering mix: 50% browsing, 50% cart and checkout.
    Ordering,
}

impl WorkloadName {
    fn mix(self) -> Option<MixKind> {
        match self {
            Self::Browsing => Some(MixKind::Browsing),
            Self::Shopping => Some(MixKind::Shopping),
            Self::Ordering => Some(MixKind::Ordering),
            Self::Product | Self::List | Self::Graphql | Self::Search | Self::Suggest => None,
        }
    }
}

/// How `--graphql-variables` lines are drawn.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum VariablesOrder {
    /// Zipf(`--alpha`) popularity over the lines, the first the hottest.
    Zipf,
    /// Each line in turn.
    RoundRobin,
}

/// What to load, and whether to measure the baseline too: shared by `run` and `saturate`.
#[derive(Debug, clap::Args)]
pub struct LoadArgs {
    /// The origin to load, e.g. http://127.0.0.1:8080.
    #[arg(long)]
    pub target: String,
    /// A built-in workload.
    #[arg(long, value_enum, required_unless_present_any = ["http_path", "graphql_query"],
          conflicts_with_all = ["http_path", "graphql_query"])]
    pub workload: Option<WorkloadName>,
    /// Load `GET` of this path instead (any HTTP server).
    #[arg(long, conflicts_with = "graphql_query")]
    pub http_path: Option<String>,
    /// Load this GraphQL query (a file) at `--graphql-path` instead (any GraphQL server).
    #[arg(long)]
    pub graphql_query: Option<PathBuf>,
    /// Where `--graphql-query` is posted, e.g. Vendure's `/shop-api` [default: /graphql].
    #[arg(long, value_name = "PATH", requires = "graphql_query")]
    pub graphql_path: Option<String>,
    /// Variables for `--graphql-query`: JSON lines, one variables object per line, such as
    /// `{"slug": "mug"}`; each request sends one line's.
    #[arg(long, value_name = "FILE", requires = "graphql_query")]
    pub graphql_variables: Option<PathBuf>,
    /// How requests pick their line of `--graphql-variables`: `zipf` (popularity with
    /// `--alpha`, the first lines hottest) or `round-robin` [default: zipf].
    #[arg(long, value_enum, value_name = "ORDER", requires = "graphql_variables")]
    pub variables_order: Option<VariablesOrder>,
    /// A header sent on every request to the target, as `'Name: value'`; repeatable (e.g. a
    /// channel token, or an `Authorization` for the plain workloads).
    #[arg(long = "header", value_name = "'NAME: VALUE'")]
    pub headers: Vec<String>,
    /// Zipf skew of product popularity.
    #[arg(long, default_value_t = 0.99)]
    pub alpha: f64,
    /// Also measure an in-process bare hyper server (a fixed body of `--body-size` bytes) the
    /// same way, and report the target beside it as a ratio.
    #[arg(long)]
    pub baseline: bool,
    /// The baseline's body size in bytes.
    #[arg(long, default_value_t = 512)]
    pub body_size: usize,
    /// Sent before measuring (each step, for `saturate`) and not measured.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "3s")]
    pub warmup: Duration,
    /// Keep-alive connections.
    #[arg(long, default_value_t = 64)]
    pub connections: usize,
    /// Accounts a mix signs up before the load; at least `--connections`, so that a shopper's
    /// writes (which take turns) rarely wait for each other.
    #[arg(long, default_value_t = 100)]
    pub shoppers: usize,
    /// Also append the table, with the command line, git revision and machine, to this
    /// Markdown file.
    #[arg(long)]
    pub results: Option<PathBuf>,
    /// Draw an SVG chart: latency percentiles second by second (`run`), or latency against
    /// throughput (`saturate`).
    #[arg(long, value_name = "FILE.svg")]
    pub plot: Option<PathBuf>,
    /// Print JSON instead of Markdown tables.
    #[arg(long)]
    pub json: bool,
}

/// `bazaar lab run`.
#[derive(Debug, clap::Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub load: LoadArgs,
    /// Requests per second, at fixed intervals (open loop).
    #[arg(long)]
    pub rate: f64,
    /// The measured part of the run.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "30s")]
    pub duration: Duration,
}

/// `bazaar lab saturate`.
#[derive(Debug, clap::Args)]
pub struct SaturateArgs {
    #[command(flatten)]
    pub load: LoadArgs,
    /// The p99 a sustained rate must stay within, e.g. 10ms.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub p99: Duration,
    /// The first rate tried.
    #[arg(long, default_value_t = 500.0)]
    pub start_rate: f64,
    /// The highest rate tried.
    #[arg(long, default_value_t = 200_000.0)]
    pub max_rate: f64,
    /// The measured part of each step.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "10s")]
    pub step: Duration,
}

/// Everything a command checks and prepares before it sends any load.
struct Prepared {
    target: Target,
    name: String,
    plan: Plan,
    results: Option<std::fs::File>,
}

/// Checks the flags, the files and the target, then discovers (and for a mix, signs shoppers
/// up) — all before any load, so bad input stops here with a message naming it.
async fn prepare(load: &LoadArgs) -> Result<Prepared, LabError> {
    if !(load.alpha.is_finite() && load.alpha >= 0.0) {
        return Err(spec_error(
            "alpha",
            format!(
                "expected a skew of 0 or more, such as 0.99; found {}",
                load.alpha
            ),
        ));
    }
    let mix = load.workload.and_then(WorkloadName::mix);
    if mix.is_some() && load.shoppers < load.connections {
        return Err(spec_error(
            "shoppers",
            format!(
                "a mix needs at least as many shoppers as connections ({}), found {}",
                load.connections, load.shoppers
            ),
        ));
    }
    let headers = load
        .headers
        .iter()
        .map(|h| bazaar_lab::parse_header(h))
        .collect::<Result<Vec<_>, _>>()?;
    let results = open_results(load.results.as_deref())?;
    check_plot(load.plot.as_deref())?;
    let target = Target::parse(&load.target).await?.with_headers(headers);
    target.check_reachable().await?;
    let (name, plan) = plan(load, &target).await?;
    Ok(Prepared {
        target,
        name,
        plan,
        results,
    })
}

pub(crate) fn spec_error(setting: &'static str, reason: String) -> LabError {
    LabError::Spec { setting, reason }
}

/// Fails unless `path` names an `.svg` file that can be written, leaving the file as it was.
/// A mix signs up one shopper per connection at least: `--shoppers` below `--connections`
/// is refused naming it.
pub(crate) fn check_shoppers(shoppers: usize, connections: usize) -> Result<(), LabError> {
    if shoppers < connections {
        return Err(spec_error(
            "shoppers",
            format!(
                "a mix needs at least as many shoppers as connections ({connections}), found \
                 {shoppers}"
            ),
        ));
    }
    Ok(())
}

pub(crate) fn check_plot(path: Option<&Path>) -> Result<(), LabError> {
    let Some(path) = path else {
        return Ok(());
    };
    if path.extension().and_then(|e| e.to_str()) != Some("svg") {
        return Err(spec_error(
            "plot",
            format!("expected a file ending in .svg, found {}", path.display()),
        ));
    }
    // Opened without truncating, and removed again if it is new: a run that fails later
    // leaves neither an empty chart nor a damaged old one.
    let existed = path.exists();
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| spec_error("plot", format!("cannot write {}: {e}", path.display())))?;
    if !existed {
        let _ = std::fs::remove_file(path);
    }
    Ok(())
}

/// Starts the in-process baseline server.
async fn start_baseline(body_size: usize) -> Result<(Baseline, Target), LabError> {
    let server = Baseline::start(body_size)
        .await
        .map_err(|e| LabError::Request {
            request: "starting the baseline server".into(),
            reason: e.to_string(),
        })?;
    let target = Target::parse(&server.url()).await?;
    Ok((server, target))
}

/// Runs `bazaar lab run`: every check before any load, then the baseline (if asked), then the
/// target, then the table. Ctrl-C stops the measuring and prints what was measured.
pub async fn run(args: &RunArgs) -> Result<Finished, LabError> {
    let spec = LoadSpec {
        rate: args.rate,
        duration: args.duration,
        warmup: args.load.warmup,
        connections: args.load.connections,
        timeout: Duration::from_secs(30),
    };
    spec.validate()?;
    let prepared = prepare(&args.load).await?;
    let stop = stop_on_ctrl_c();
    let baseline = if args.load.baseline {
        let (_server, baseline_target) = start_baseline(args.load.body_size).await?;
        let label = format!("baseline ({} bytes)", args.load.body_size);
        let meter = Meter::new(&label);
        let report = bazaar_lab::run_observed(
            &baseline_target,
            &spec,
            workload::path("/"),
            |p| meter.show(p),
            &stop,
        )
        .await?;
        meter.done();
        Some(report)
    } else {
        None
    };
    let report = if stop.is_requested() {
        None
    } else {
        let meter = Meter::new(&prepared.name);
        let report = bazaar_lab::run_observed(
            &prepared.target,
            &spec,
            prepared.plan.build(args.load.alpha),
            |p| meter.show(p),
            &stop,
        )
        .await?;
        meter.done();
        Some(report)
    };
    if let (Some(path), Some(report)) = (&args.load.plot, &report) {
        plot::timeline(
            path,
            &format!("{} at {} req/s", prepared.name, args.rate),
            report,
        )?;
    }
    // Too many failures and the figures measure the failures: no ratio, and no results entry.
    let invalid: Vec<String> = [
        ("baseline", baseline.as_ref()),
        (&*prepared.name, report.as_ref()),
    ]
    .into_iter()
    .filter_map(|(label, report)| Some(format!("{label}: {}", report?.invalid()?)))
    .collect();
    if args.load.json {
        let mut document = serde_json::json!({});
        if let Some(report) = &report {
            document["target"] = report.to_json(&prepared.name);
        }
        if let Some(baseline) = &baseline {
            document["baseline"] = baseline.to_json("baseline");
            if let (Some(report), true) = (&report, invalid.is_empty()) {
                document["ratio_to_baseline"] = (report.achieved_rate()
                    / baseline.achieved_rate().max(f64::MIN_POSITIVE))
                .into();
            }
        }
        document["valid"] = invalid.is_empty().into();
        if !invalid.is_empty() {
            document["invalid"] = invalid.clone().into();
        }
        println!("{document:#}");
    } else {
        let ratio_to = baseline.as_ref().filter(|_| invalid.is_empty());
        let mut table = run_table(&prepared.name, report.as_ref(), baseline.as_ref(), ratio_to);
        table += &invalid_note(&invalid);
        print!("{table}");
        if invalid.is_empty() {
            record(prepared.results, &table)?;
        }
    }
    Ok(verdict(&stop, &invalid))
}

/// What the table says under an invalid run.
fn invalid_note(invalid: &[String]) -> String {
    invalid
        .iter()
        .map(|reason| format!("\nNOT A VALID MEASUREMENT: {reason}; no ratio is reported\n"))
        .collect()
}

/// How a command that measured ended: invalid (said on standard error too), interrupted or
/// complete.
fn verdict(stop: &Stop, invalid: &[String]) -> Finished {
    if invalid.is_empty() {
        return finished(stop);
    }
    for reason in invalid {
        eprintln!("error: not a valid measurement: {reason}");
    }
    Finished::Invalid
}

fn finished(stop: &Stop) -> Finished {
    if stop.is_requested() {
        Finished::Interrupted
    } else {
        Finished::Complete
    }
}

/// The table of a run; `ratio_to` is the baseline the ratio is drawn from (`None` when there
/// is none, or the run is not valid).
fn run_table(
    name: &str,
    report: Option<&Report>,
    baseline: Option<&Report>,
    ratio_to: Option<&Report>,
) -> String {
    let mut out = format!("{}\n", Report::markdown_header());
    if let Some(baseline) = baseline {
        out += &format!("{}\n", baseline.markdown_row("baseline", None));
    }
    let Some(report) = report else {
        return out + "\nstopped before the target was measured\n";
    };
    out += &format!("{}\n", report.markdown_row(name, ratio_to));
    for row in report.markdown_kinds() {
        out += &format!("{row}\n");
    }
    let statuses: Vec<String> = report
        .all
        .statuses
        .iter()
        .map(|(status, n)| format!("{status}: {n}"))
        .collect();
    out += &format!(
        "\nresponses by status: {}; no response: {}\n",
        if statuses.is_empty() {
            "none".to_owned()
        } else {
            statuses.join(", ")
        },
        report.all.transport_errors
    );
    for (status, body) in &report.all.first_errors {
        out += &format!("first {status}: {body}\n");
    }
    if report.interrupted {
        out += &format!(
            "stopped early (Ctrl-C): measured {:.1} s\n",
            report.measured.as_secs_f64()
        );
    }
    out
}

/// A stop asked by the first Ctrl-C; a second one quits at once.
pub(crate) fn stop_on_ctrl_c() -> Stop {
    let (stopper, stop) = Stop::new();
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            eprintln!(
                "\nstopping: waiting for requests in flight, then reporting (Ctrl-C again to quit at once)"
            );
            stopper.stop();
        }
        if tokio::signal::ctrl_c().await.is_ok() {
            std::process::exit(130);
        }
    });
    stop
}

/// Progress on standard error: a bar on a terminal, a line a second otherwise.
pub(crate) struct Meter {
    bar: ProgressBar,
    label: String,
}

impl Meter {
    pub(crate) fn new(label: &str) -> Self {
        let bar = ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::stderr());
        bar.set_style(
            ProgressStyle::with_template("{prefix} [{bar:24}] {pos}/{len} s  {msg}")
                .expect("a valid progress template")
                .progress_chars("=> "),
        );
        bar.set_prefix(label.to_owned());
        Self {
            bar,
            label: label.to_owned(),
        }
    }

    pub(crate) fn show(&self, progress: &Progress) {
        let p99 = progress.p99.map_or_else(
            || "–".to_owned(),
            |p99| format!("{:.2} ms", p99.as_secs_f64() * 1000.0),
        );
        let message = format!(
            "{}{:.0}/s  p99 {p99}  errors {}  backlog {}",
            if progress.warming_up { "warm-up " } else { "" },
            progress.rate,
            progress.errors,
            progress.backlog
        );
        if self.bar.is_hidden() {
            eprintln!(
                "{} [{:>3}/{} s] {message}",
                self.label,
                progress.elapsed.as_secs(),
                progress.total.as_secs()
            );
        } else {
            self.bar.set_length(progress.total.as_secs());
            self.bar.set_position(progress.elapsed.as_secs());
            self.bar.set_message(message);
        }
    }

    pub(crate) fn done(&self) {
        self.bar.finish_and_clear();
    }
}

/// Opens the `--results` file for appending now, so a path that cannot be written fails
/// before any load.
pub(crate) fn open_results(path: Option<&Path>) -> Result<Option<std::fs::File>, LabError> {
    path.map(|path| {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|e| spec_error("results", format!("cannot write {}: {e}", path.display())))
    })
    .transpose()
}
/// Appends `table` to the results file as a dated block with the command line, the git
/// revision and the machine.
pub(crate) fn record(file: Option<std::fs::File>, table: &str) -> Result<(), LabError> {
    use std::io::Write;
    let Some(mut file) = file else {
        return Ok(());
    };
    let revision = std::process::Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map_or_else(
            || "unknown".to_owned(),
            |o| String::from_utf8_lossy(&o.stdout).trim().to_owned(),
        );
    let cpus = std::thread::available_parallelism().map_or(0, usize::from);
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, model)| model.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".to_owned());
    let command: Vec<String> = std::env::args().collect();
    let block = format!(
        "\n### {}\n\n- **Command:** `{}`\n- **Revision:** {revision}\n- **Machine:** {cpus} CPUs, {model}\n\n{table}",
        humantime::format_rfc3339_seconds(std::time::SystemTime::now()),
        command.join(" "),
    );
    file.write_all(block.as_bytes())
        .map_err(|e| LabError::Request {
            request: "appending to the results file".into(),
            reason: e.to_string(),
        })
}

/// What a run or search sends, resolved against the target once.
enum Plan {
    Product(Vec<String>),
    Queries {
        kind: &'static str,
        path: &'static str,
        queries: Vec<String>,
    },
    List,
    Seed(Vec<String>),
    Path(String),
    Query {
        path: String,
        query: String,
        variables: Vec<serde_json::Value>,
        order: workload::Order,
    },
    Mix(Arc<Shop>, MixKind),
}

impl Plan {
    fn build(&self, alpha: f64) -> Box<dyn Workload> {
        match self {
            Self::Product(ids) => Box::new(workload::product(ids.clone(), alpha)),
            Self::Queries {
                kind,
                path,
                queries,
            } => Box::new(workload::queries_at(kind, path, queries.clone(), alpha)),
            Self::List => Box::new(workload::list()),
            Self::Seed(ids) => Box::new(workload::seed_query(ids.clone(), alpha)),
            Self::Path(path) => Box::new(workload::path(path)),
            Self::Query {
                path,
                query,
                variables,
                order,
            } => Box::new(workload::graphql_at(path, query, variables.clone(), *order)),
            Self::Mix(shop, mix) => Box::new(Mix::new(shop.clone(), *mix, alpha, 0x5EED)),
        }
    }
}

async fn plan(load: &LoadArgs, target: &Target) -> Result<(String, Plan), LabError> {
    if let Some(path) = &load.http_path {
        if !path.starts_with('/') {
            return Err(spec_error(
                "http-path",
                format!("expected a path starting with `/`, found `{path}`"),
            ));
        }
        return Ok((format!("GET {path}"), Plan::Path(path.clone())));
    }
    if let Some(file) = &load.graphql_query {
        let query = std::fs::read_to_string(file).map_err(|e| {
            spec_error(
                "graphql-query",
                format!("cannot read {}: {e}", file.display()),
            )
        })?;
        let path = load
            .graphql_path
            .clone()
            .unwrap_or_else(|| "/graphql".into());
        if !path.starts_with('/') {
            return Err(spec_error(
                "graphql-path",
                format!("expected a path starting with `/`, found `{path}`"),
            ));
        }
        let mut name = format!("GraphQL {}", file.display());
        if path != "/graphql" {
            name += &format!(" at {path}");
        }
        let (variables, order) = match &load.graphql_variables {
            None => (Vec::new(), workload::Order::RoundRobin),
            Some(lines) => {
                let text = std::fs::read_to_string(lines).map_err(|e| {
                    spec_error(
                        "graphql-variables",
                        format!("cannot read {}: {e}", lines.display()),
                    )
                })?;
                let variables = workload::parse_variables(&text).map_err(|reason| {
                    spec_error(
                        "graphql-variables",
                        format!("{}: {reason}", lines.display()),
                    )
                })?;
                let order = match load.variables_order.unwrap_or(VariablesOrder::Zipf) {
                    VariablesOrder::Zipf => workload::Order::Zipf(load.alpha),
                    VariablesOrder::RoundRobin => workload::Order::RoundRobin,
                };
                name += &format!(
                    " × {} variables ({})",
                    variables.len(),
                    match order {
                        workload::Order::Zipf(alpha) => format!("Zipf α={alpha}"),
                        workload::Order::RoundRobin => "round robin".into(),
                    }
                );
                (variables, order)
            }
        };
        return Ok((
            name,
            Plan::Query {
                path,
                query,
                variables,
                order,
            },
        ));
    }
    let alpha = load.alpha;
    let workload = load.workload.expect("clap requires one of the three");
    Ok(match workload {
        WorkloadName::Product => (
            format!("product (α={alpha})"),
            Plan::Product(workload::discover_products(target, 10_000, "product").await?),
        ),
        WorkloadName::List => ("list".into(), Plan::List),
        WorkloadName::Search | WorkloadName::Suggest => {
            let (kind, path, queries) = if workload == WorkloadName::Search {
                ("search", "/search", crate::relevance::workload_queries())
            } else {
                (
                    "suggest",
                    "/search/suggest",
                    crate::relevance::suggest_queries(),
                )
            };
            (
                format!("{kind}: {} queries (α={alpha})", queries.len()),
                Plan::Queries {
                    kind,
                    path,
                    queries,
                },
            )
        }
        WorkloadName::Graphql => (
            format!("graphql seed query (α={alpha})"),
            Plan::Seed(workload::discover_products(target, 10_000, "graphql").await?),
        ),
        WorkloadName::Browsing | WorkloadName::Shopping | WorkloadName::Ordering => {
            let mix = workload.mix().expect("a mix");
            let products = workload::discover_products(target, 10_000, mix.name()).await?;
            eprintln!(
                "{}: signing {} shoppers up and finding variants in stock…",
                mix.name(),
                load.shoppers
            );
            let shop = Shop::prepare(target, mix, products, load.shoppers).await?;
            (
                format!("{} mix (α={alpha})", mix.name()),
                Plan::Mix(Arc::new(shop), mix),
            )
        }
    })
}

/// Prints each step of a search as it finishes, with why it failed if it did.
fn step_printer(label: &str, spec: &SaturateSpec) -> impl FnMut(&bazaar_lab::Step) + use<> {
    let label = label.to_owned();
    let spec = spec.clone();
    move |step| {
        eprintln!(
            "{label}: {:.0} req/s -> achieved {:.0}, p99 {:.2} ms, errors {}{}: {}",
            step.rate,
            step.report.achieved_rate(),
            step.report.percentile(99.0).as_secs_f64() * 1000.0,
            step.report.errors(),
            failures(&step.report.all),
            match spec.failure(step.rate, &step.report) {
                None => "pass".to_owned(),
                Some(why) => format!("fail ({why})"),
            }
        );
        for (status, body) in &step.report.all.first_errors {
            eprintln!("  first {status}: {body}");
        }
    }
}

/// ` (409: 3, no response: 1)`: what the errors were, or nothing if there were none.
fn failures(figures: &bazaar_lab::Figures) -> String {
    let mut parts: Vec<String> = figures
        .statuses
        .iter()
        .filter(|(status, _)| **status >= 400)
        .map(|(status, n)| format!("{status}: {n}"))
        .collect();
    if figures.transport_errors > 0 {
        parts.push(format!("no response: {}", figures.transport_errors));
    }
    if parts.is_empty() {
        String::new()
    } else {
        format!(" ({})", parts.join(", "))
    }
}

/// Runs `bazaar lab saturate`: the search (and a run at half the rate found) on the baseline
/// if asked, then on the target.
pub async fn saturate(args: &SaturateArgs) -> Result<Finished, LabError> {
    let spec = SaturateSpec {
        start_rate: args.start_rate,
        max_rate: args.max_rate,
        growth: 1.5,
        refinements: 3,
        step: args.step,
        warmup: args.load.warmup,
        connections: args.load.connections,
        p99_bound: args.p99,
        at_half: true,
    };
    spec.validate()?;
    let prepared = prepare(&args.load).await?;
    let stop = stop_on_ctrl_c();
    let search = async |label: &str, target: &Target, plan: &dyn Fn() -> Box<dyn Workload>| {
        let meter = Meter::new(label);
        let found = bazaar_lab::saturate(
            target,
            &spec,
            plan,
            step_printer(label, &spec),
            |p| meter.show(p),
            &stop,
        )
        .await;
        meter.done();
        found
    };
    let baseline = if args.load.baseline {
        let (_server, baseline_target) = start_baseline(args.load.body_size).await?;
        Some(
            search("baseline", &baseline_target, &|| {
                Box::new(workload::path("/"))
            })
            .await?,
        )
    } else {
        None
    };
    let found = if stop.is_requested() {
        None
    } else {
        Some(
            search(&prepared.name, &prepared.target, &|| {
                prepared.plan.build(args.load.alpha)
            })
            .await?,
        )
    };
    if let (Some(path), Some(found)) = (&args.load.plot, &found) {
        plot::saturation(
            path,
            &format!(
                "{}: latency against throughput (p99 bound {})",
                prepared.name,
                humantime::format_duration(args.p99)
            ),
            found,
            baseline.as_ref(),
            args.p99,
        )?;
    }
    let invalid: Vec<String> = [
        ("baseline", baseline.as_ref()),
        (&*prepared.name, found.as_ref()),
    ]
    .into_iter()
    .filter_map(|(label, search)| Some(format!("{label}: {}", search?.invalid(&spec)?)))
    .collect();
    if args.load.json {
        let search_json = |found: &Saturation, name: &str| {
            serde_json::json!({
                "saturation_rate": found.rate,
                "at_half": found.at_half.as_ref().map(|r| r.to_json(name)),
                "steps": found.steps.iter().map(|s| {
                    let mut step = s.report.to_json(name);
                    step["passed"] = s.passed.into();
                    step
                }).collect::<Vec<_>>(),
                "interrupted": found.interrupted,
            })
        };
        let mut document = serde_json::json!({ "p99_bound_ms": args.p99.as_secs_f64() * 1000.0 });
        if let Some(found) = &found {
            document["target"] = search_json(found, &prepared.name);
        }
        if let Some(baseline) = &baseline {
            document["baseline"] = search_json(baseline, "baseline");
        }
        document["valid"] = invalid.is_empty().into();
        if !invalid.is_empty() {
            document["invalid"] = invalid.clone().into();
        }
        println!("{document:#}");
    } else {
        let mut out = saturate_table(
            args,
            &prepared.name,
            found.as_ref(),
            baseline.as_ref(),
            invalid.is_empty(),
        );
        out += &invalid_note(&invalid);
        print!("{out}");
        if invalid.is_empty() {
            record(prepared.results, &out)?;
        }
    }
    Ok(verdict(&stop, &invalid))
}

fn saturate_table(
    args: &SaturateArgs,
    name: &str,
    found: Option<&Saturation>,
    baseline: Option<&Saturation>,
    valid: bool,
) -> String {
    let mut out = format!("{}\n", Report::markdown_header());
    for (label, search) in [("baseline", baseline), (name, found)] {
        let Some(search) = search else { continue };
        for step in &search.steps {
            let verdict = if step.passed { "pass" } else { "fail" };
            out += &format!(
                "{}\n",
                step.report
                    .markdown_row(&format!("{label} ({verdict})"), None)
            );
        }
        if let Some(half) = &search.at_half {
            out += &format!("{}\n", half.markdown_row(&format!("{label} at half"), None));
        }
    }
    let bound = humantime::format_duration(args.p99);
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    out += &format!(
        "\n| p99 ≤ {bound} | saturation req/s | at half: achieved/s | p50 ms | p99 ms |\n|---|---:|---:|---:|---:|\n"
    );
    let summary = |label: &str, search: &Saturation| {
        let rate = match search.rate {
            None => format!("< {:.0}", args.start_rate),
            // Nothing failed: the target can do more than the search tried.
            Some(r) if search.steps.iter().all(|s| s.passed) => format!("≥ {r:.0} (--max-rate)"),
            Some(r) => format!("{r:.0}"),
        };
        match &search.at_half {
            Some(half) => format!(
                "| {label} | {rate} | {:.0} | {:.2} | {:.2} |\n",
                half.achieved_rate(),
                ms(half.percentile(50.0)),
                ms(half.percentile(99.0))
            ),
            None => format!("| {label} | {rate} | – | – | – |\n"),
        }
    };
    if let Some(baseline) = baseline {
        out += &summary(
            &format!("baseline ({} bytes)", args.load.body_size),
            baseline,
        );
    }
    let Some(found) = found else {
        return out + "\nstopped before the target was measured\n";
    };
    out += &summary(name, found);
    if let (Some(baseline), true) = (baseline, valid) {
        let ratio = |a: f64, b: f64| format!("{:.2}", a / b.max(f64::MIN_POSITIVE));
        let rate = match (found.rate, baseline.rate) {
            (Some(a), Some(b)) => ratio(a, b),
            _ => "–".to_owned(),
        };
        out += &match (&found.at_half, &baseline.at_half) {
            (Some(a), Some(b)) => format!(
                "| {name} ÷ baseline | {rate} | {} | {} | {} |\n",
                ratio(a.achieved_rate(), b.achieved_rate()),
                ratio(ms(a.percentile(50.0)), ms(b.percentile(50.0))),
                ratio(ms(a.percentile(99.0)), ms(b.percentile(99.0)))
            ),
            _ => format!("| {name} ÷ baseline | {rate} | – | – | – |\n"),
        };
    }
    if found.interrupted || baseline.is_some_and(|b| b.interrupted) {
        out += "\nstopped early (Ctrl-C): the saturation shown is the best found before\n";
    }
    out
}

/// Runs `bazaar lab baseline` until Ctrl-C.
pub async fn baseline(listen: SocketAddr, body_size: usize) -> anyhow::Result<Finished> {
    let server = Baseline::start_on(listen, body_size).await?;
    println!(
        "Baseline serving {body_size} bytes on {} — press Ctrl-C to stop.",
        server.url()
    );
    tokio::signal::ctrl_c().await?;
    Ok(Finished::Complete)
}
