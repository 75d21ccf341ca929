//! `bazaar shards add`: grows a running store by one shard, moving the keys the new layout
//! gives it while the servers keep serving (see `bazaar_store::reshard`).

use std::time::Duration;

use bazaar_store::reshard::{self, MoveOptions, MoveReport, Progress};
use indicatif::{ProgressBar, ProgressStyle};

use crate::app::open_store;
use crate::config::{Config, StoreBackend, without_credentials};

/// What `bazaar shards add` was asked.
#[derive(Debug, Clone, clap::Args)]
pub struct AddArgs {
    /// The new shard's PostgreSQL database (an empty one), with `store.backend = "postgres"`.
    #[arg(long, value_name = "URL")]
    pub url: Option<String>,
    /// The shard count after the move: the current count plus one (SQLite).
    #[arg(long, value_name = "N")]
    pub count: Option<usize>,
    /// Slices of the hash circle moved one at a time; more slices hold each write for less.
    #[arg(long, value_name = "N", default_value_t = reshard::DEFAULT_RANGES,
          value_parser = clap::value_parser!(u32).range(1..=4096))]
    pub ranges: u32,
}

/// A progress bar over the ranges, with the phase and rows copied as its message.
struct Bar(ProgressBar);

impl Progress for Bar {
    fn phase(&self, message: &str) {
        self.0.set_message(message.to_owned());
    }

    fn ranges(&self, done: u32, total: u32, rows: u64) {
        self.0.set_length(u64::from(total));
        self.0.set_position(u64::from(done));
        self.0.set_message(format!("{rows} rows copied"));
    }
}

/// Checks the arguments against the configured store before anything is opened; the error
/// names the flag (`bazaar` exits with status 2 on it).
pub fn validate(config: &Config, args: &AddArgs) -> anyhow::Result<()> {
    match config.store.backend {
        StoreBackend::Sqlite => {
            if args.url.is_some() {
                anyhow::bail!(
                    "--url names a PostgreSQL database, and this store is SQLite \
                     (store.backend = \"sqlite\"): its shards are files in the data directory; \
                     use --count {}",
                    config.store.shards + 1
                );
            }
            match args.count {
                Some(count) if count == config.store.shards + 1 => Ok(()),
                Some(count) => anyhow::bail!(
                    "--count {count}: shards are added one at a time, and the store is \
                     configured with {}; use --count {}",
                    config.store.shards,
                    config.store.shards + 1
                ),
                None => anyhow::bail!(
                    "name the shard count after the move: --count {}",
                    config.store.shards + 1
                ),
            }
        }
        StoreBackend::Postgres => {
            let configured = config.store.postgres.shards.len();
            if let Some(count) = args.count
                && count != configured + 1
            {
                anyhow::bail!(
                    "--count {count}: shards are added one at a time, and \
                     store.postgres.shards lists {configured}"
                );
            }
            if let Some(url) = &args.url
                && config.store.postgres.shards.contains(url)
            {
                anyhow::bail!(
                    "--url {} is already in store.postgres.shards; name a new, empty database",
                    without_credentials(url)
                );
            }
            Ok(())
        }
    }
}

/// Runs (or resumes) the move and prints what it did.
pub async fn add(config: &Config, args: &AddArgs) -> anyhow::Result<()> {
    validate(config, args)?;
    let metrics = bazaar_telemetry::Metrics::new();
    let store = open_store(config, &metrics).await?;
    let bar = ProgressBar::new(u64::from(args.ranges));
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {wide_bar} {pos}/{len} ranges  {msg}",
        )
        .expect("the template is valid"),
    );
    bar.enable_steady_tick(Duration::from_millis(200));
    let options = MoveOptions {
        ranges: args.ranges,
        new_shard: args.url.clone(),
        stop_after_steps: None,
    };
    if config.store.backend == StoreBackend::Postgres && args.url.is_none() && !store.is_moving() {
        anyhow::bail!(
            "name the new shard's database: --url postgres://…/bazaar_{}",
            store.shard_count()
        );
    }
    let outcome = reshard::add_shard(&store, &options, &Bar(bar.clone())).await;
    bar.finish_and_clear();
    let report = match outcome {
        Ok(report) => report,
        Err(error) => {
            // Only a recorded move can be resumed; a refusal before it (a bad new shard,
            // another mover) is the whole answer.
            let recorded = store
                .directory()
                .meta(bazaar_store::placement::MOVE_KEY)
                .await
                .ok()
                .flatten()
                .and_then(|text| bazaar_store::placement::MoveRecord::parse(&text).ok())
                .is_some_and(|record| !record.done);
            store.close().await;
            return Err(if recorded {
                anyhow::Error::new(error)
                    .context("the move stopped; run the same command again to resume it")
            } else {
                error.into()
            });
        }
    };
    store.close().await;
    println!("{}", summary(&report));
    println!("{}", next_step(config, &report, args.url.as_deref()));
    Ok(())
}

/// The report as a person reads it.
pub fn summary(report: &MoveReport) -> String {
    let scanned: u64 = report.scanned.values().sum();
    let moved: u64 = report.moved.values().sum();
    let by_kind = |counts: &std::collections::BTreeMap<&str, u64>| {
        counts
            .iter()
            .map(|(kind, n)| format!("{n} {kind}s"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    format!(
        "moved {moved} of {scanned} entities {}({:.1}% of those; {}) from {} to {} shards in \
         {:.1} s{}; {} rows copied, {} created during the move caught up; longest write hold \
         {} ms",
        if report.resumed {
            "still on their old shards when this run resumed the move "
        } else {
            ""
        },
        report.moved_fraction() * 100.0,
        by_kind(&report.moved),
        report.from,
        report.to,
        report.took.as_secs_f64(),
        if report.resumed { " (resumed)" } else { "" },
        report.rows_copied,
        report.caught_up,
        report.longest_fence.as_millis(),
    )
}

/// What the operator must change before the next restart.
fn next_step(config: &Config, report: &MoveReport, url: Option<&str>) -> String {
    match config.store.backend {
        StoreBackend::Sqlite => format!(
            "the store now has {} shards: set store.shards = {} (or BAZAAR_STORE__SHARDS={}) \
             before processes restart",
            report.to, report.to, report.to
        ),
        StoreBackend::Postgres => format!(
            "the store now has {} shards: append {} to store.postgres.shards before processes \
             restart",
            report.to,
            if url.is_some() {
                "the URL given with --url"
            } else {
                "the new database's URL"
            }
        ),
    }
}
