//! `bazaar`: the command line. With no arguments it runs `bazaar serve`.

use std::path::PathBuf;
use std::process::ExitCode;

use bazaar::config::{Config, Overrides};
use bazaar::{Application, app};
use clap::{Parser, Subcommand};

/// mimalloc rather than the system allocator: a request allocates and frees many small
/// buffers across threads, which glibc's malloc serves markedly slower (bench/RESULTS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Debug, Parser)]
#[command(
    name = "bazaar",
    version,
    about = "A marketplace backend in which every layer of a classic system design is real",
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// With no command, `bazaar` is `bazaar serve` and takes its flags.
    #[command(flatten)]
    serve: ServeArgs,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the whole system (the default).
    Serve(ServeArgs),
    /// Write a deterministic demo catalog into an empty data directory.
    Seed(SeedArgs),
    /// Inspect the configuration.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Administer accounts.
    #[command(subcommand)]
    Admin(AdminCommand),
    /// Rotate access-token signing keys.
    #[command(subcommand)]
    Keys(KeysCommand),
    /// Manage the encryption of personal data.
    #[command(subcommand)]
    Privacy(PrivacyCommand),
    /// Run the outbox relay and the event consumers without the HTTP API.
    Worker(WorkerArgs),
    /// Inspect and operate the dead-letter queue of events consumers gave up on.
    #[command(subcommand)]
    Dlq(DlqCommand),
    /// Grow the store: add a shard and move the keys it now owns, online.
    #[command(subcommand)]
    Shards(ShardsCommand),
    /// Operate the search index.
    #[command(subcommand)]
    Search(SearchCommand),
    /// Measure: an open-loop load generator and an in-process baseline server.
    #[command(subcommand)]
    Lab(LabCommand),
}

#[derive(Debug, Subcommand)]
enum SearchCommand {
    /// Rebuild the search index from the store. Each running server rebuilds its own while
    /// its old index keeps answering, then swaps the new one in at once; with no server
    /// running, the indexes in the data directory are rebuilt by this command.
    Reindex {
        #[command(flatten)]
        store: StoreArgs,
    },
}

#[derive(Debug, Subcommand)]
enum LabCommand {
    /// Load a target at a fixed arrival rate; report throughput and latency percentiles
    /// measured from each request's intended send time.
    Run(bazaar::lab::RunArgs),
    /// Find the highest arrival rate a target sustains with its p99 under a bound.
    Saturate(bazaar::lab::SaturateArgs),
    /// Measure a trade-off of the design: fresh in-process servers, one per scenario, under
    /// the same load, compared in one table.
    #[command(subcommand)]
    Tradeoff(bazaar::tradeoff::TradeoffCommand),
    /// Measure search freshness: the time from a product write's 201 to the product being
    /// findable through `GET /search`.
    Freshness(bazaar::freshness::FreshnessArgs),
    /// Score search on the judged query set (nDCG@10, zero-result rate) for the tantivy index
    /// and the SQLite FTS5 baseline, over the demo catalog.
    Relevance {
        /// Write the judgements the rules give to this file instead (for maintainers: the
        /// committed file is crates/bazaar/src/relevance/judgements.tsv).
        #[arg(long, value_name = "PATH")]
        write_judgements: Option<std::path::PathBuf>,
        /// Score with `search.ranking.may_miss` set to this (default: its default, 1).
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u8).range(0..=8))]
        may_miss: Option<u8>,
    },
    /// Serve a fixed body from a bare hyper server: the ceiling to compare against.
    Baseline {
        #[arg(long, default_value = "127.0.0.1:8081")]
        listen: std::net::SocketAddr,
        /// Bytes in each response body.
        #[arg(long, default_value_t = 512)]
        body_size: usize,
    },
}

/// Flags shared by commands that open the store.
#[derive(Debug, clap::Args)]
struct StoreArgs {
    /// Directory holding the store's shard files [default: ./bazaar-data].
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// TOML configuration file.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
enum AdminCommand {
    /// Create an administrator. The password is read from standard input (one line), never
    /// from the command line, where other users could see it.
    Create {
        #[arg(long)]
        email: String,
        #[arg(long)]
        name: String,
        #[command(flatten)]
        store: StoreArgs,
    },
}

#[derive(Debug, clap::Args)]
struct WorkerArgs {
    #[command(flatten)]
    store: StoreArgs,
    /// Serve Prometheus metrics at http://ADDR/metrics (port 0 picks a free port).
    #[arg(long, value_name = "ADDR")]
    metrics_listen: Option<std::net::SocketAddr>,
}

#[derive(Debug, Subcommand)]
enum DlqCommand {
    /// The dead letters, oldest first.
    List {
        /// How many to show.
        #[arg(long, default_value_t = 50)]
        limit: usize,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// One dead letter in full, as JSON.
    Show {
        id: String,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Deliver dead letters again to the consumer that gave up on them.
    Replay {
        #[arg(required = true)]
        ids: Vec<String>,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Remove every dead letter.
    Purge {
        #[command(flatten)]
        store: StoreArgs,
    },
}

#[derive(Debug, Subcommand)]
enum ShardsCommand {
    /// Add one shard: copy the keys the new layout gives it (and, with `placement = "modulo"`,
    /// to every shard) range by range while servers keep serving, then delete them where they
    /// were. A move that stopped is resumed by running the command again.
    Add {
        #[command(flatten)]
        args: bazaar::shards::AddArgs,
        #[command(flatten)]
        store: StoreArgs,
    },
}

#[derive(Debug, Subcommand)]
enum KeysCommand {
    /// Add a new access-token signing key; tokens signed by older keys stay valid until they
    /// expire, and keys whose tokens have all expired are dropped. Restart servers to apply.
    RotateJwt {
        #[command(flatten)]
        store: StoreArgs,
    },
}

#[derive(Debug, Subcommand)]
enum PrivacyCommand {
    /// Add a new encryption key for personal data and re-encrypt every user under it.
    RotateKey {
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Re-encrypt every user still sealed under an older key (resumes an interrupted rotation).
    Reencrypt {
        #[command(flatten)]
        store: StoreArgs,
    },
}

#[derive(Debug, clap::Args)]
struct ServeArgs {
    /// Address to listen on [default: 127.0.0.1:8080].
    #[arg(long, value_name = "ADDR")]
    listen: Option<std::net::SocketAddr>,
    /// Directory holding the store's shard files [default: ./bazaar-data].
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// TOML configuration file.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Demo products to seed when the store is empty; 0 disables [default: 1000].
    #[arg(long, value_name = "N")]
    demo_products: Option<u64>,
}

#[derive(Debug, clap::Args)]
struct SeedArgs {
    /// Directory holding the store's shard files [default: ./bazaar-data].
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// How many products to generate.
    #[arg(long, value_name = "N")]
    products: u64,
    /// Seed of the random stream; the same seed gives the same catalog.
    #[arg(long, value_name = "SEED")]
    seed: Option<u64>,
    /// TOML configuration file.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
enum ConfigCommand {
    /// Print the effective configuration, secrets redacted.
    Print {
        /// TOML configuration file.
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let command = cli.command.unwrap_or(Command::Serve(cli.serve));
    if let Command::Lab(lab) = command {
        return run_lab(lab);
    }
    let (file, overrides) = match &command {
        Command::Serve(args) => (
            args.config.clone(),
            Overrides {
                listen: args.listen,
                data_dir: args.data_dir.clone(),
                demo_products: args.demo_products,
            },
        ),
        Command::Seed(args) => (
            args.config.clone(),
            Overrides {
                data_dir: args.data_dir.clone(),
                ..Overrides::default()
            },
        ),
        Command::Config(ConfigCommand::Print { config }) => (config.clone(), Overrides::default()),
        Command::Admin(AdminCommand::Create { store, .. })
        | Command::Worker(WorkerArgs { store, .. })
        | Command::Dlq(
            DlqCommand::List { store, .. }
            | DlqCommand::Show { store, .. }
            | DlqCommand::Replay { store, .. }
            | DlqCommand::Purge { store },
        )
        | Command::Keys(KeysCommand::RotateJwt { store })
        | Command::Shards(ShardsCommand::Add { store, .. })
        | Command::Search(SearchCommand::Reindex { store })
        | Command::Privacy(
            PrivacyCommand::RotateKey { store } | PrivacyCommand::Reencrypt { store },
        ) => (
            store.config.clone(),
            Overrides {
                data_dir: store.data_dir.clone(),
                ..Overrides::default()
            },
        ),
        Command::Lab(_) => unreachable!("handled above"),
    };
    let config = match Config::load(file.as_deref(), &overrides) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("error: {error}");
            return ExitCode::from(2);
        }
    };
    if let Command::Config(ConfigCommand::Print { .. }) = command {
        print!("{}", config.to_redacted_toml());
        return ExitCode::SUCCESS;
    }
    // Commands that change an existing store refuse a directory without one, before anything
    // (logging included) could write there.
    let needs_store = match &command {
        // An admin may be the first account of a seeded store; the server would create its
        // key file on start just the same.
        Command::Admin(_) => Some(false),
        // The queue and outbox of an existing deployment: a fresh store would hold no dead
        // letters and no events, and a worker on a mistyped path would run on nothing.
        Command::Dlq(_) | Command::Worker(_) | Command::Shards(_) | Command::Search(_) => {
            Some(false)
        }
        // Keys and the data sealed under them: a fresh key file would hold none of them.
        Command::Keys(_) | Command::Privacy(_) => Some(true),
        _ => None,
    };
    if let Some(needs_keys) = needs_store
        && let Err(refused) = bazaar::datadir::require_store(&config, needs_keys)
    {
        eprintln!("error: {refused}");
        return ExitCode::from(2);
    }
    if let Command::Shards(ShardsCommand::Add { args, .. }) = &command
        && let Err(refused) = bazaar::shards::validate(&config, args)
    {
        eprintln!("error: {refused}");
        return ExitCode::from(2);
    }
    if let Err(error) = bazaar_telemetry::logging::init(config.log.format, &config.log.filter) {
        eprintln!("error: {error}");
        return ExitCode::from(2);
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match command {
            Command::Serve(_) => serve(&config).await,
            Command::Seed(args) => {
                bazaar::seed::run(
                    &config,
                    args.products,
                    args.seed.unwrap_or(config.catalog.demo_seed),
                )
                .await
            }
            Command::Admin(AdminCommand::Create { email, name, .. }) => {
                admin_create(&config, &email, &name).await
            }
            Command::Worker(args) => {
                let shutdown = app::shutdown_signal();
                app::run_worker(&config, args.metrics_listen, shutdown).await
            }
            Command::Dlq(command) => dlq(&config, command).await,
            Command::Shards(ShardsCommand::Add { args, .. }) => {
                bazaar::shards::add(&config, &args).await
            }
            Command::Search(SearchCommand::Reindex { .. }) => {
                bazaar::search::reindex(&config).await
            }
            Command::Keys(KeysCommand::RotateJwt { .. }) => rotate_jwt(&config),
            Command::Privacy(PrivacyCommand::RotateKey { .. }) => reencrypt(&config, true).await,
            Command::Privacy(PrivacyCommand::Reencrypt { .. }) => reencrypt(&config, false).await,
            Command::Config(_) | Command::Lab(_) => unreachable!("handled above"),
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// `bazaar lab`: needs no configuration or store. Bad input exits with 2 before any load.
fn run_lab(command: LabCommand) -> ExitCode {
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match command {
            LabCommand::Run(args) => bazaar::lab::run(&args).await.map_err(anyhow::Error::from),
            LabCommand::Saturate(args) => bazaar::lab::saturate(&args)
                .await
                .map_err(anyhow::Error::from),
            LabCommand::Tradeoff(bazaar::tradeoff::TradeoffCommand::SyncAsync(args)) => {
                bazaar::tradeoff::sync_async(&args).await
            }
            LabCommand::Tradeoff(bazaar::tradeoff::TradeoffCommand::Resharding(args)) => {
                bazaar::resharding::resharding(&args).await
            }
            LabCommand::Freshness(args) => bazaar::freshness::freshness(&args)
                .await
                .map(|()| bazaar::lab::Finished::Complete),
            LabCommand::Relevance {
                write_judgements,
                may_miss,
            } => bazaar::relevance::command(write_judgements.as_deref(), may_miss.map(usize::from))
                .await
                .map(|()| bazaar::lab::Finished::Complete),
            LabCommand::Baseline { listen, body_size } => {
                bazaar::lab::baseline(listen, body_size).await
            }
        }
    });
    match result {
        Ok(bazaar::lab::Finished::Complete) => ExitCode::SUCCESS,
        // The shell's convention for "stopped by SIGINT", after printing what was measured.
        Ok(bazaar::lab::Finished::Interrupted) => ExitCode::from(130),
        // Measured, but not a measurement: the reasons are already on standard error.
        Ok(bazaar::lab::Finished::Invalid) => ExitCode::FAILURE,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::from(2)
        }
    }
}

async fn serve(config: &Config) -> anyhow::Result<()> {
    let fresh = match config.store.backend {
        bazaar::config::StoreBackend::Sqlite => !bazaar::datadir::has_store(&config.store.data_dir),
        bazaar::config::StoreBackend::Postgres => !bazaar::secrets::path(config).is_file(),
    };
    let app = Application::build(config).await?;
    // Installed before the banner: from the moment the server says it is up, SIGTERM and
    // Ctrl-C stop it gracefully.
    let shutdown = app::shutdown_signal();
    let base = format!("http://{}", app.local_addr());
    println!("Bazaar is serving on {base}");
    println!("  REST API            {base}/products");
    println!("  GraphQL IDE         {base}/graphql");
    println!("  API docs            {base}/docs   (OpenAPI: {base}/openapi.json)");
    println!("  Metrics             {base}/metrics");
    println!("  Health              {base}/healthz   (readiness: {base}/readyz)");
    if fresh {
        first_start_notes(config);
    }
    println!("Press Ctrl-C to stop.");
    app.run_until_stopped(shutdown).await
}

/// What a new data directory needs to be useful: the demo sellers' sign-in, and how to make
/// an administrator (there is none until one is created on the command line).
fn first_start_notes(config: &Config) {
    let dir = config.store.data_dir.display();
    println!("New data directory {dir}:");
    if config.catalog.demo_products > 0 {
        let emails: Vec<&str> = bazaar_shop::demo::SELLERS.iter().map(|s| s.email).collect();
        println!(
            "  Demo sellers        {} (demo-only password: {})",
            emails.join(", "),
            bazaar_shop::demo::SELLER_PASSWORD
        );
    }
    println!(
        "  Create an admin     bazaar admin create --data-dir {dir} --email you@example.com --name 'Your Name' < password.txt"
    );
}

async fn admin_create(config: &Config, email: &str, name: &str) -> anyhow::Result<()> {
    let mut password = String::new();
    std::io::stdin().read_line(&mut password)?;
    let password = password.trim_end_matches(['\r', '\n']);
    if password.is_empty() {
        anyhow::bail!(
            "no password on standard input; pipe it in: `bazaar admin create ... < password.txt`"
        );
    }
    let store =
        std::sync::Arc::new(app::open_store(config, &bazaar_telemetry::Metrics::new()).await?);
    let lease =
        bazaar::node::NodeLease::claim(store.clone(), config.node.id.map(|id| id.get())).await?;
    let core = app::Core::build(config, &store, &lease)?;
    let result = core.accounts.create_admin(email, password, name).await;
    lease.release().await?;
    store.close().await;
    let profile = result?;
    println!(
        "created admin {} (user id {})",
        bazaar_shop::accounts::mask_email(&profile.email),
        profile.id
    );
    Ok(())
}

async fn dlq(config: &Config, command: DlqCommand) -> anyhow::Result<()> {
    let queue = bazaar::events::open_queue(config).await?;
    let dead = queue.dead_letters();
    match command {
        DlqCommand::List { limit, .. } => {
            let letters = dead.list(None, limit.clamp(1, 10_000)).await?;
            if letters.is_empty() {
                println!("the dead-letter queue is empty");
            }
            for letter in letters {
                println!(
                    "{}  {}  {}  key={}  attempts={}  dead_at={}  error: {}",
                    letter.id,
                    letter.group,
                    letter.message.topic,
                    letter.message.key,
                    letter.attempts,
                    humantime::format_rfc3339_millis(letter.dead_at),
                    letter.last_error
                );
            }
        }
        DlqCommand::Show { id, .. } => {
            let letter = dead
                .get(&id)
                .await?
                .ok_or_else(|| anyhow::anyhow!("no dead letter `{id}`"))?;
            let event: serde_json::Value = serde_json::from_slice(&letter.message.payload)
                .unwrap_or_else(|_| {
                    String::from_utf8_lossy(&letter.message.payload)
                        .into_owned()
                        .into()
                });
            let shown = serde_json::json!({
                "id": letter.id,
                "consumer": letter.group,
                "event_id": letter.message.id,
                "type": letter.message.topic,
                "key": letter.message.key,
                "attempts": letter.attempts,
                "last_error": letter.last_error,
                "published_at": humantime::format_rfc3339_millis(letter.published_at).to_string(),
                "dead_at": humantime::format_rfc3339_millis(letter.dead_at).to_string(),
                "event": event,
            });
            println!("{}", serde_json::to_string_pretty(&shown)?);
        }
        DlqCommand::Replay { ids, .. } => {
            let mut missing = Vec::new();
            for id in ids {
                if dead.replay(&id).await? {
                    println!("replayed {id}");
                } else {
                    missing.push(id);
                }
            }
            if !missing.is_empty() {
                anyhow::bail!("no dead letter `{}`", missing.join("`, `"));
            }
        }
        DlqCommand::Purge { .. } => {
            println!("purged {} dead letter(s)", dead.purge().await?);
        }
    }
    Ok(())
}

fn rotate_jwt(config: &Config) -> anyhow::Result<()> {
    let path = bazaar::secrets::path(config);
    let mut secrets = bazaar::secrets::Secrets::load_or_create(&path)?;
    let ttl = i64::try_from(config.auth.access_ttl.as_millis()).unwrap_or(i64::MAX);
    let id = secrets.rotate_jwt(ttl);
    secrets.save(&path)?;
    println!(
        "new access-token key `{id}` signs from the next server start; {} key(s) kept",
        secrets.jwt_keys.len()
    );
    Ok(())
}

async fn reencrypt(config: &Config, rotate: bool) -> anyhow::Result<()> {
    let path = bazaar::secrets::path(config);
    if rotate {
        let mut secrets = bazaar::secrets::Secrets::load_or_create(&path)?;
        let id = secrets.rotate_pii()?;
        secrets.save(&path)?;
        println!("personal-data key {id} is now active");
    }
    let store =
        std::sync::Arc::new(app::open_store(config, &bazaar_telemetry::Metrics::new()).await?);
    let lease =
        bazaar::node::NodeLease::claim(store.clone(), config.node.id.map(|id| id.get())).await?;
    let core = app::Core::build(config, &store, &lease)?;
    let result = core.accounts.reencrypt_all().await;
    lease.release().await?;
    store.close().await;
    println!("re-encrypted {} user(s) under the active key", result?);
    Ok(())
}
