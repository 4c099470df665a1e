//! `shopmesh dev`: the whole platform in one process for local work.

use shopmesh_platform::config::{ConfigSource, ServiceConfig};
use shopmesh_platform::runtime::{Launched, launch};
use shopmesh_platform::shutdown::Shutdown;

use crate::registry::SERVICES;

/// First gRPC port; service i listens on GRPC_BASE + i and HTTP_BASE + i.
const GRPC_BASE: u16 = 50051;
const HTTP_BASE: u16 = 9101;

/// Local defaults; every one can be overridden by the usual variables.
pub fn dev_source(base: ConfigSource) -> ConfigSource {
    let pg = base.get("POSTGRES_URL").unwrap_or_else(|| "postgres://postgres:postgres@127.0.0.1:5432".into());
    let mut source = base
        .set_default("REDIS_URL", "redis://127.0.0.1:6379")
        .set_default("KAFKA_BROKERS", "127.0.0.1:9092")
        .set_default("SHUTDOWN_GRACE_MS", "5000");
    for (i, def) in SERVICES.iter().enumerate() {
        let name = def.spec.name;
        let scoped = |key: &str| format!("{name}.{key}");
        let i = i as u16;
        if source.scoped(name).get("DATABASE_URL").is_none() {
            source = source.set(&scoped("DATABASE_URL"), format!("{pg}/shopmesh_{name}"));
        }
        source = source
            .set_default(&scoped("GRPC_ADDR"), format!("127.0.0.1:{}", GRPC_BASE + i))
            .set_default(&scoped("HTTP_ADDR"), format!("127.0.0.1:{}", HTTP_BASE + i))
            // How the gateway and other services reach this one.
            .set_default(&format!("{}_URL", name.to_uppercase()), format!("http://127.0.0.1:{}", GRPC_BASE + i));
    }
    source = source
        .set_default("GATEWAY_LISTEN", "127.0.0.1:8080")
        .set_default("gateway.HTTP_ADDR", format!("127.0.0.1:{}", HTTP_BASE + SERVICES.len() as u16));
    if let Some(auth) = SERVICES.iter().position(|d| d.spec.name == "auth") {
        source = source
            .set_default("JWKS_URL", format!("http://127.0.0.1:{}/.well-known/jwks.json", HTTP_BASE + auth as u16));
    }
    source
}

pub async fn run(base: ConfigSource, shutdown: Shutdown) -> anyhow::Result<()> {
    let source = dev_source(base);
    let mut launched: Vec<Launched> = Vec::new();
    for def in SERVICES {
        let config = ServiceConfig::load(def.spec.name, &source, def.spec.needs)?;
        if let Some(url) = &config.database_url {
            shopmesh_platform::db::ensure_database(url).await?;
        }
        launched.push(launch(def, config, shutdown.clone()).await?);
    }
    let gateway = shopmesh_gateway::settings::launch(
        shopmesh_gateway::settings::GatewaySettings::load(&source, &crate::registry::gateway_backends())?,
        shutdown.clone(),
    )
    .await?;
    println!("\nshopmesh dev is up:");
    println!(
        "  {:<14} http://{}  (REST; /openapi.json, /docs)  ops http://{}",
        "gateway", gateway.addr, gateway.ops_addr
    );
    for l in &launched {
        println!("  {:<14} grpc http://{:<21} ops http://{}", l.name, l.grpc_addr, l.http_addr);
    }
    println!(
        "  try: grpcurl -plaintext {} list\n",
        launched.first().map(|l| l.grpc_addr.to_string()).unwrap_or_default()
    );
    // A signal, or one service stopping on its own, stops them all.
    shutdown.wait().await;
    let mut failed = Vec::new();
    if !stopped_cleanly("gateway", gateway.task.await) {
        failed.push("gateway");
    }
    for l in launched {
        if !stopped_cleanly(l.name, l.task.await) {
            failed.push(l.name);
        }
    }
    anyhow::ensure!(failed.is_empty(), "stopped because of {}", failed.join(", "));
    Ok(())
}

/// Whether a component's task ended without an error; logs the error if not.
fn stopped_cleanly<E: std::fmt::Display>(name: &str, joined: Result<Result<(), E>, tokio::task::JoinError>) -> bool {
    let error = match joined {
        Ok(Ok(())) => return true,
        Ok(Err(e)) => e.to_string(),
        Err(e) => format!("task failed: {e}"),
    };
    tracing::error!(service = name, %error, "stopped with an error");
    false
}
