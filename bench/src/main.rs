//! `shopmesh-bench`: load against a running `shopmesh dev` (see
//! scripts/bench.sh), printing figures and their targets. Figures, not
//! pass/fail tests: they depend on the machine.

mod api;
mod checkout;
mod compare;
mod cpu;
mod load;
mod report;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "shopmesh-bench", about = "Benchmarks against a running shopmesh dev")]
struct Cli {
    /// Gateway base URL.
    #[arg(long, global = true, env = "SHOPMESH_BENCH_GATEWAY", default_value = "http://127.0.0.1:8080")]
    gateway: String,
    /// Print the figures as one JSON object on stdout (the lines go to stderr).
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// GET /v1/users/me through the gateway vs UserService/GetMe over gRPC.
    GatewayVsGrpc {
        #[arg(long, default_value = "http://127.0.0.1:50052")]
        user_grpc: String,
        #[command(flatten)]
        load: compare::LoadArgs,
    },
    /// GET /v1/products/{id} through the gateway vs CatalogService/GetProduct (cached).
    CatalogGet {
        #[arg(long, default_value = "http://127.0.0.1:50053")]
        catalog_grpc: String,
        #[command(flatten)]
        load: compare::LoadArgs,
    },
    /// Open-loop checkouts, every order followed to its final state, then an audit.
    Checkout(checkout::CheckoutArgs),
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let mut report = report::Report::new(cli.json);
    let pool = match &cli.command {
        Command::GatewayVsGrpc { load, .. } | Command::CatalogGet { load, .. } => load.concurrency,
        Command::Checkout(args) => args.rate as usize,
    };
    let gw = api::Gateway::new(&cli.gateway, pool)?;
    anyhow::ensure!(gw.ready().await, "{}/health/ready is not OK: start `shopmesh dev` first", cli.gateway);
    report.say(format!(
        "shopmesh-bench {} ({} build of the bench; the server's build is whatever runs)",
        env!("CARGO_PKG_VERSION"),
        if cfg!(debug_assertions) { "debug" } else { "release" }
    ));
    match &cli.command {
        Command::GatewayVsGrpc { user_grpc, load } => {
            compare::gateway_vs_grpc(&mut report, &gw, user_grpc, load).await?
        }
        Command::CatalogGet { catalog_grpc, load } => {
            compare::catalog_get(&mut report, &gw, catalog_grpc, load).await?
        }
        Command::Checkout(args) => checkout::run(&mut report, &gw, args).await?,
    }
    report.finish();
    Ok(())
}

/// An executable of that name on PATH, if any.
pub fn on_path(name: &str) -> Option<std::path::PathBuf> {
    std::env::var_os("PATH")?.to_str()?.split(':').map(|d| std::path::Path::new(d).join(name)).find(|p| p.is_file())
}
