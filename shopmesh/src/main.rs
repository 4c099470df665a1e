//! `shopmesh serve <service>` runs one service per process (production);
//! `shopmesh dev` runs every service and the gateway in one process, each
//! still its own tonic server on its own port, talking over real gRPC and Kafka.

mod dev;
mod registry;
mod seed;

use clap::{Parser, Subcommand};
use shopmesh_gateway::settings::GatewaySettings;
use shopmesh_platform::config::{ConfigSource, ServiceConfig};
use shopmesh_platform::shutdown::Shutdown;

// glibc's per-thread arenas kept gigabytes of argon2 scratch memory resident
// under load, and its malloc was a tenth of the CPU profile.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
    /// Load the demo catalog and its stock (idempotent).
    Seed,
    /// Administrative tasks against the auth database.
    Admin {
        #[command(subcommand)]
        action: AdminAction,
    },
    /// Dead-lettered events: list them, or send them back once their cause is fixed.
    Dlq {
        #[command(subcommand)]
        action: DlqAction,
    },
}

#[derive(Subcommand)]
enum DlqAction {
    /// Every dead letter of a topic (e.g. order-events): consumer, attempts, error, event.
    List { topic: String },
    /// Publish the topic's dead letters no earlier replay (with the same
    /// --consumer) sent back to the topic: the consumer that gave up on each
    /// applies it, the others' inboxes drop it.
    Replay {
        topic: String,
        /// Only the letters this consumer dead-lettered (e.g. inventory).
        #[arg(long)]
        consumer: Option<String>,
    },
}

#[derive(Subcommand)]
enum AdminAction {
    /// Create an admin account, or grant admin to an existing one (idempotent).
    Create {
        #[arg(long)]
        email: String,
        /// Read from SHOPMESH_ADMIN_PASSWORD when omitted, to keep it out of shell history.
        #[arg(long, env = "SHOPMESH_ADMIN_PASSWORD", hide_env_values = true)]
        password: String,
        #[arg(long, default_value = "Administrator")]
        name: String,
    },
    /// Start signing with a new key; old keys keep verifying until their tokens expire.
    RotateKeys,
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
            println!("{}", registry::GATEWAY);
            Ok(())
        }
        Command::Serve { service } if service == registry::GATEWAY => {
            let _telemetry = shopmesh_platform::telemetry::init(registry::GATEWAY)?;
            let settings = GatewaySettings::load(&ConfigSource::from_env()?, &registry::gateway_backends())?;
            let launched = shopmesh_gateway::settings::launch(settings, Shutdown::on_signals()).await?;
            launched.task.await??;
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
        Command::Admin { action } => {
            let source = ConfigSource::from_env()?;
            let def = &shopmesh_auth::SERVICE;
            let config = ServiceConfig::load(def.spec.name, &source, def.spec.needs)?;
            let url = config.database_url.expect("auth needs postgres");
            let pool = shopmesh_platform::db::connect(&url, 2).await?;
            shopmesh_platform::db::migrate(&pool, def.spec.migrator).await?;
            match action {
                AdminAction::Create { email, password, name } => {
                    let outbox = shopmesh_platform::outbox::Outbox::new(def.spec.name);
                    let id = shopmesh_auth::create_admin(&pool, &outbox, &email, &password, &name).await?;
                    println!("admin {email} has user id {id}");
                }
                AdminAction::RotateKeys => {
                    let kid = shopmesh_auth::rotate_signing_key(&pool).await?;
                    println!("now signing with key {kid}");
                }
            }
            Ok(())
        }
        Command::Dlq { action } => dead_letters(action).await,
        Command::Seed => seed::run(dev::dev_source(ConfigSource::from_env()?)).await,
        Command::Dev => {
            let _telemetry = shopmesh_platform::telemetry::init("shopmesh")?;
            dev::run(ConfigSource::from_env()?, Shutdown::on_signals()).await
        }
    }
}

async fn dead_letters(action: DlqAction) -> anyhow::Result<()> {
    use shopmesh_platform::config::Needs;
    use shopmesh_platform::dlq;
    use shopmesh_platform::kafka::{Kafka, topics};

    let topic = match &action {
        DlqAction::List { topic } | DlqAction::Replay { topic, .. } => topic.clone(),
    };
    anyhow::ensure!(
        topics::ALL.contains(&topic.as_str()),
        "unknown topic {topic:?}; one of {}",
        topics::ALL.join(", ")
    );
    let needs = Needs { postgres: false, redis: false, kafka: true };
    let config = ServiceConfig::load("dlq", &ConfigSource::from_env()?, needs)?;
    let kafka = Kafka::connect(config.kafka.expect("kafka was asked for"), "shopmesh-dlq")?;
    match action {
        DlqAction::List { .. } => {
            let letters = dlq::list(&kafka, &topic).await?;
            for l in &letters {
                println!(
                    "{}/{}  consumer {}  attempts {}  {} {}\n    {}",
                    l.partition, l.offset, l.consumer, l.attempts, l.event_type, l.event_id, l.error
                );
            }
            println!("{} dead letters in {}", letters.len(), topics::dlq(&topic));
        }
        DlqAction::Replay { consumer, .. } => {
            let done = dlq::replay(&kafka, &topic, consumer.as_deref()).await?;
            println!(
                "{} replayed to {topic}, {} left for other consumers, {} too old to replay safely (see `dlq list`), \
                 {} already sent back for another consumer",
                done.replayed, done.skipped, done.too_old, done.same_message
            );
        }
    }
    kafka.flush(std::time::Duration::from_secs(10)).await;
    Ok(())
}
