//! `shopmesh serve <service>` runs one service per process (production);
//! `shopmesh dev` runs every service and the gateway in one process, each
//! still its own tonic server on its own port, talking over real gRPC and Kafka.

mod dev;
mod registry;

use clap::{Parser, Subcommand};
use shopmesh_platform::config::{ConfigSource, ServiceConfig};
use shopmesh_platform::shutdown::Shutdown;

#[derive(Parser)]
#[command(name = "shopmesh", version, about = "shopmesh e-commerce service mesh")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run one service until SIGTERM/SIGINT.
    Serve {
        /// One of the names `shopmesh list` prints.
        service: String,
    },
    /// Run every service plus the gateway locally (ports print at start).
    Dev,
    /// Apply a service's database migrations and exit (deploy jobs).
    Migrate { service: String },
    /// List the services this binary can run.
    List,
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    match run(cli).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // Startup errors (missing config, unreachable database) are for humans.
            eprintln!("shopmesh: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::List => {
            for def in registry::SERVICES {
                println!("{}", def.spec.name);
            }
            Ok(())
        }
        Command::Serve { service } => {
            let def = registry::find(&service)?;
            let _telemetry = shopmesh_platform::telemetry::init(def.spec.name)?;
            let source = ConfigSource::from_env()?;
            let config = ServiceConfig::load(def.spec.name, &source, def.spec.needs)?;
            shopmesh_platform::runtime::run(def, config, Shutdown::on_signals()).await
        }
        Command::Migrate { service } => {
            let def = registry::find(&service)?;
            let source = ConfigSource::from_env()?;
            let config = ServiceConfig::load(def.spec.name, &source, def.spec.needs)?;
            let url = config.database_url.ok_or_else(|| anyhow::anyhow!("{service} has no database"))?;
            let pool = shopmesh_platform::db::connect(&url, 1).await?;
            shopmesh_platform::db::migrate(&pool, def.spec.migrator).await?;
            println!("{service}: migrations applied");
            Ok(())
        }
        Command::Dev => {
            let _telemetry = shopmesh_platform::telemetry::init("shopmesh")?;
            dev::run(ConfigSource::from_env()?, Shutdown::on_signals()).await
        }
    }
}
