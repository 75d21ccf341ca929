//! `bazaar lab`: the command line over `bazaar-lab`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use bazaar_lab::{Baseline, LabError, LoadSpec, Report, SaturateSpec, Target, Workload, workload};

/// Built-in workloads against a Bazaar server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum WorkloadName {
    /// `GET /products/{id}`, ids discovered from the target, Zipf popularity.
    Product,
    /// `GET /products?limit=20`.
    List,
    /// The seed's GraphQL product query, ids as for `product`.
    Graphql,
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
    /// Load this GraphQL query (a file) at `/graphql` instead (any GraphQL server).
    #[arg(long)]
    pub graphql_query: Option<PathBuf>,
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
    /// Also append the table, with the command line, git revision and machine, to this
    /// Markdown file.
    #[arg(long)]
    pub results: Option<PathBuf>,
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
    /// Print JSON instead of a Markdown table.
    #[arg(long)]
    pub json: bool,
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

/// Runs `bazaar lab run`: every check before any load, then the baseline (if asked), then the
/// target, then the table.
pub async fn run(args: &RunArgs) -> Result<(), LabError> {
    let spec = LoadSpec {
        rate: args.rate,
        duration: args.duration,
        warmup: args.load.warmup,
        connections: args.load.connections,
        timeout: Duration::from_secs(30),
    };
    spec.validate()?;
    let results = open_results(args.load.results.as_deref())?;
    let target = Target::parse(&args.load.target).await?;
    target.check_reachable().await?;
    if !(args.load.alpha.is_finite() && args.load.alpha >= 0.0) {
        return Err(LabError::Spec {
            setting: "alpha",
            reason: format!(
                "expected a skew of 0 or more, such as 0.99; found {}",
                args.load.alpha
            ),
        });
    }
    let (name, load) = workload_for(args, &target).await?;
    let baseline = if args.load.baseline {
        let server = Baseline::start(args.load.body_size)
            .await
            .map_err(|e| LabError::Request {
                request: "starting the baseline server".into(),
                reason: e.to_string(),
            })?;
        let baseline_target = Target::parse(&server.url()).await?;
        eprintln!(
            "measuring the baseline ({} bytes) at {} req/s…",
            args.load.body_size, args.rate
        );
        let path = workload::path("/");
        Some(bazaar_lab::run(&baseline_target, &spec, path).await?)
    } else {
        None
    };
    eprintln!(
        "measuring {name} on {} at {} req/s…",
        args.load.target, args.rate
    );
    let report = bazaar_lab::run(&target, &spec, load).await?;
    if args.json {
        let mut document = serde_json::json!({ "target": report.to_json(&name) });
        if let Some(baseline) = &baseline {
            document["baseline"] = baseline.to_json("baseline");
            document["ratio_to_baseline"] =
                (report.achieved_rate() / baseline.achieved_rate().max(f64::MIN_POSITIVE)).into();
        }
        println!("{document:#}");
        return Ok(());
    }
    let table = table(&name, &report, baseline.as_ref());
    print!("{table}");
    record(results, &table)
}

fn table(name: &str, report: &Report, baseline: Option<&Report>) -> String {
    let mut out = format!("{}\n", Report::markdown_header());
    if let Some(baseline) = baseline {
        out += &format!("{}\n", baseline.markdown_row("baseline", None));
    }
    out += &format!("{}\n", report.markdown_row(name, baseline));
    let statuses: Vec<String> = report
        .statuses
        .iter()
        .map(|(status, n)| format!("{status}: {n}"))
        .collect();
    out += &format!(
        "\nresponses by status: {}; no response: {}\n",
        statuses.join(", "),
        report.transport_errors
    );
    out
}

/// Opens the `--results` file for appending now, so a path that cannot be written fails
/// before any load.
fn open_results(path: Option<&std::path::Path>) -> Result<Option<std::fs::File>, LabError> {
    path.map(|path| {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|e| LabError::Spec {
                setting: "results",
                reason: format!("cannot write {}: {e}", path.display()),
            })
    })
    .transpose()
}

/// Appends `table` to the results file as a dated block with the command line, the git
/// revision and the machine.
fn record(file: Option<std::fs::File>, table: &str) -> Result<(), LabError> {
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
    List,
    Seed(Vec<String>),
    Path(String),
    Query(String),
}

impl Plan {
    fn build(&self, alpha: f64) -> Box<dyn Workload> {
        match self {
            Self::Product(ids) => Box::new(workload::product(ids.clone(), alpha)),
            Self::List => Box::new(workload::list()),
            Self::Seed(ids) => Box::new(workload::seed_query(ids.clone(), alpha)),
            Self::Path(path) => Box::new(workload::path(path)),
            Self::Query(query) => Box::new(workload::graphql(query)),
        }
    }
}

async fn plan(
    workload: Option<WorkloadName>,
    http_path: Option<&str>,
    graphql_query: Option<&std::path::Path>,
    alpha: f64,
    target: &Target,
) -> Result<(String, Plan), LabError> {
    if let Some(path) = http_path {
        if !path.starts_with('/') {
            return Err(LabError::Spec {
                setting: "http-path",
                reason: format!("expected a path starting with `/`, found `{path}`"),
            });
        }
        return Ok((format!("GET {path}"), Plan::Path(path.to_owned())));
    }
    if let Some(file) = graphql_query {
        let query = std::fs::read_to_string(file).map_err(|e| LabError::Spec {
            setting: "graphql-query",
            reason: format!("cannot read {}: {e}", file.display()),
        })?;
        return Ok((format!("GraphQL {}", file.display()), Plan::Query(query)));
    }
    Ok(match workload.expect("clap requires one of the three") {
        WorkloadName::Product => (
            format!("product (α={alpha})"),
            Plan::Product(workload::discover_products(target, 10_000).await?),
        ),
        WorkloadName::List => ("list".into(), Plan::List),
        WorkloadName::Graphql => (
            format!("graphql seed query (α={alpha})"),
            Plan::Seed(workload::discover_products(target, 10_000).await?),
        ),
    })
}

async fn workload_for(
    args: &RunArgs,
    target: &Target,
) -> Result<(String, Box<dyn Workload>), LabError> {
    let (name, plan) = plan(
        args.load.workload,
        args.load.http_path.as_deref(),
        args.load.graphql_query.as_deref(),
        args.load.alpha,
        target,
    )
    .await?;
    Ok((name, plan.build(args.load.alpha)))
}

/// Prints each step of a search as it finishes.
fn step_printer(label: &str) -> impl FnMut(&bazaar_lab::Step) + use<> {
    let label = label.to_owned();
    move |step| {
        eprintln!(
            "{label}: {:.0} req/s -> achieved {:.0}, p99 {:.2} ms, errors {}: {}",
            step.rate,
            step.report.achieved_rate(),
            step.report.percentile(99.0).as_secs_f64() * 1000.0,
            step.report.errors(),
            if step.passed { "pass" } else { "fail" }
        );
    }
}

/// Runs `bazaar lab saturate`: the search on the baseline (if asked), then on the target.
pub async fn saturate(args: &SaturateArgs) -> Result<(), LabError> {
    let spec = SaturateSpec {
        start_rate: args.start_rate,
        max_rate: args.max_rate,
        growth: 1.5,
        refinements: 3,
        step: args.step,
        warmup: args.load.warmup,
        connections: args.load.connections,
        p99_bound: args.p99,
    };
    spec.validate()?;
    let results = open_results(args.load.results.as_deref())?;
    let target = Target::parse(&args.load.target).await?;
    target.check_reachable().await?;
    let (name, plan) = plan(
        args.load.workload,
        args.load.http_path.as_deref(),
        args.load.graphql_query.as_deref(),
        args.load.alpha,
        &target,
    )
    .await?;
    let baseline = if args.load.baseline {
        let server = Baseline::start(args.load.body_size)
            .await
            .map_err(|e| LabError::Request {
                request: "starting the baseline server".into(),
                reason: e.to_string(),
            })?;
        let baseline_target = Target::parse(&server.url()).await?;
        let found = bazaar_lab::saturate(
            &baseline_target,
            &spec,
            || Box::new(workload::path("/")),
            step_printer("baseline"),
        )
        .await?;
        Some(found)
    } else {
        None
    };
    let found = bazaar_lab::saturate(
        &target,
        &spec,
        || plan.build(args.load.alpha),
        step_printer(&name),
    )
    .await?;
    let mut out = format!("{}\n", Report::markdown_header());
    for step in &found.steps {
        let verdict = if step.passed { "pass" } else { "fail" };
        out += &format!(
            "{}\n",
            step.report
                .markdown_row(&format!("{name} ({verdict})"), None)
        );
    }
    let bound = humantime::format_duration(args.p99);
    out += &match found.rate {
        Some(rate) => format!("\n{name}: saturation {rate:.0} req/s with p99 <= {bound}\n"),
        None => format!(
            "\n{name}: even {:.0} req/s exceeds p99 {bound}\n",
            args.start_rate
        ),
    };
    if let Some(baseline) = baseline {
        out += &match (baseline.rate, found.rate) {
            (Some(base), Some(rate)) => format!(
                "baseline ({} bytes): saturation {base:.0} req/s; ratio {:.2}\n",
                args.load.body_size,
                rate / base
            ),
            (Some(base), None) => format!("baseline: saturation {base:.0} req/s\n"),
            (None, _) => "baseline: even the start rate exceeds the bound\n".to_owned(),
        };
    }
    print!("{out}");
    record(results, &out)
}

/// Runs `bazaar lab baseline` until Ctrl-C.
pub async fn baseline(listen: SocketAddr, body_size: usize) -> anyhow::Result<()> {
    let server = Baseline::start_on(listen, body_size).await?;
    println!(
        "Baseline serving {body_size} bytes on {} — press Ctrl-C to stop.",
        server.url()
    );
    tokio::signal::ctrl_c().await?;
    Ok(())
}
