//! `bazaar`: the command line. With no arguments it runs `bazaar serve`.

use std::path::PathBuf;
use std::process::ExitCode;

use bazaar::config::{Config, Overrides};
use bazaar::{Application, app};
use clap::{Parser, Subcommand};

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
            Command::Config(_) => unreachable!("handled above"),
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

async fn serve(config: &Config) -> anyhow::Result<()> {
    let app = Application::build(config).await?;
    let base = format!("http://{}", app.local_addr());
    println!("Bazaar is serving on {base}");
    println!("  REST API            {base}/products");
    println!("  GraphQL playground  {base}/graphql");
    println!("  API docs            {base}/docs   (OpenAPI: {base}/openapi.json)");
    println!("  Metrics             {base}/metrics");
    println!("  Health              {base}/healthz   (readiness: {base}/readyz)");
    println!("Press Ctrl-C to stop.");
    app.run_until_stopped(app::shutdown_signal()).await
}
