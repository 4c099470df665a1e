//! The same read through the gateway (REST/JSON → gRPC) and straight to the
//! service over gRPC: what the edge costs.

use std::future::Future;
use std::time::Duration;

use anyhow::Context;
use reqwest::{Method, StatusCode};
use shopmesh_catalog::pb::catalog_service_client::CatalogServiceClient;
use shopmesh_user::pb::user_service_client::UserServiceClient;

use crate::api::{self, Gateway};
use crate::load::{Stats, closed_loop};
use crate::report::{Report, verdict};

const TARGET_RATIO: f64 = 0.6;
const TARGET_ADDED_P99_MS: f64 = 1.0;

#[derive(clap::Args, Clone)]
pub struct LoadArgs {
    /// Concurrent workers for the throughput run.
    #[arg(long, default_value_t = 32)]
    pub concurrency: usize,
    /// Concurrent workers for the latency run (moderate load).
    #[arg(long, default_value_t = 4)]
    pub moderate_concurrency: usize,
    /// Seconds each run is timed.
    #[arg(long, default_value_t = 10)]
    pub duration: u64,
    /// Unrecorded seconds before each run.
    #[arg(long, default_value_t = 1)]
    pub warmup: u64,
}

impl LoadArgs {
    async fn run<F, Fut>(&self, concurrency: usize, op: F) -> Stats
    where
        F: Fn() -> Fut + Clone + Send + 'static,
        Fut: Future<Output = bool> + Send,
    {
        closed_loop(concurrency, Duration::from_secs(self.warmup), Duration::from_secs(self.duration), op).await
    }
}

/// Runs both paths at full and at moderate concurrency and prints the ratio
/// and the p99 the gateway adds.
async fn compare<G, GF, D, DF>(
    report: &mut Report,
    key: &str,
    what: (&str, &str),
    load: &LoadArgs,
    gateway: G,
    direct: D,
) -> Stats
where
    G: Fn() -> GF + Clone + Send + 'static,
    GF: Future<Output = bool> + Send,
    D: Fn() -> DF + Clone + Send + 'static,
    DF: Future<Output = bool> + Send,
{
    let (gw_label, direct_label) = what;
    report.say(format!("concurrency {}, {} s per run:", load.concurrency, load.duration));
    let gw = load.run(load.concurrency, gateway.clone()).await;
    report.say(format!("  {}", gw.line(gw_label)));
    let dr = load.run(load.concurrency, direct.clone()).await;
    report.say(format!("  {}", dr.line(direct_label)));
    let ratio = gw.rate() / dr.rate().max(f64::MIN_POSITIVE);
    report.say(format!(
        "ratio gateway/direct: {ratio:.2} (target ≥ {TARGET_RATIO:.2}) {}",
        verdict(ratio >= TARGET_RATIO)
    ));

    report.say(format!("moderate load, concurrency {}:", load.moderate_concurrency));
    let gw_m = load.run(load.moderate_concurrency, gateway).await;
    report.say(format!("  {}", gw_m.line(gw_label)));
    let dr_m = load.run(load.moderate_concurrency, direct).await;
    report.say(format!("  {}", dr_m.line(direct_label)));
    let added = gw_m.p99_ms() - dr_m.p99_ms();
    report.say(format!(
        "p99 added by the gateway: {added:.2} ms (target < {TARGET_ADDED_P99_MS:.2} ms) {}",
        verdict(added < TARGET_ADDED_P99_MS)
    ));

    report.set(
        key,
        serde_json::json!({
            "gateway": gw.json(), "direct": dr.json(), "ratio": ratio,
            "moderate": {"gateway": gw_m.json(), "direct": dr_m.json(), "p99_added_ms": added},
        }),
    );
    dr
}

/// A GET that succeeds on 200 with the body read to the end.
async fn get_ok(req: reqwest::RequestBuilder) -> bool {
    match req.send().await {
        Ok(resp) => resp.status() == StatusCode::OK && resp.bytes().await.is_ok(),
        Err(_) => false,
    }
}

pub async fn gateway_vs_grpc(report: &mut Report, gw: &Gateway, user_url: &str, load: &LoadArgs) -> anyhow::Result<()> {
    let token = gw.new_customer(true).await.context("creating the benchmark user")?;
    let client = UserServiceClient::new(api::channel(user_url).await?);
    let bearer: tonic::metadata::MetadataValue<_> = format!("Bearer {token}").parse()?;

    let gateway = {
        let (gw, token) = (gw.clone(), token.clone());
        move || {
            let req = gw.request(Method::GET, "/v1/users/me", Some(&token));
            get_ok(req)
        }
    };
    let direct = move || {
        let (mut client, bearer) = (client.clone(), bearer.clone());
        async move { client.get_me(api::authorized(shopmesh_user::pb::GetMeRequest {}, &bearer)).await.is_ok() }
    };
    compare(report, "gateway_vs_grpc", ("gateway GET /v1/users/me", "direct UserService/GetMe"), load, gateway, direct)
        .await;
    Ok(())
}

pub async fn catalog_get(report: &mut Report, gw: &Gateway, catalog_url: &str, load: &LoadArgs) -> anyhow::Result<()> {
    let first = gw.call(Method::GET, "/v1/products?page.pageSize=1", None, None).await?;
    let id = first["products"][0]["id"].as_str().context("no products listed: run `shopmesh seed` first")?.to_owned();
    let path = format!("/v1/products/{id}");
    // Warm the product cache so both paths read the same cached entry.
    for _ in 0..10 {
        gw.call(Method::GET, &path, None, None).await?;
    }
    let client = CatalogServiceClient::new(api::channel(catalog_url).await?);

    let gateway = {
        let (gw, path) = (gw.clone(), path.clone());
        move || get_ok(gw.request(Method::GET, &path, None))
    };
    let direct = {
        let id = id.clone();
        move || {
            let (mut client, id) = (client.clone(), id.clone());
            async move { client.get_product(shopmesh_catalog::pb::GetProductRequest { id }).await.is_ok() }
        }
    };
    let direct_stats = compare(
        report,
        "catalog_get",
        ("gateway GET /v1/products/{id}", "direct CatalogService/GetProduct"),
        load,
        gateway,
        direct,
    )
    .await;
    structured_proxy(report, catalog_url, &path, load, &direct_stats).await
}

/// The same read through structured-proxy, a config-driven transcoding
/// proxy, in front of the same catalog: a reference point for our gateway.
async fn structured_proxy(
    report: &mut Report,
    catalog_url: &str,
    path: &str,
    load: &LoadArgs,
    direct: &Stats,
) -> anyhow::Result<()> {
    let Some(bin) = crate::on_path("structured-proxy") else {
        report.say("structured-proxy: not installed (no `structured-proxy` on PATH); skipped");
        report.set("structured_proxy", serde_json::Value::Null);
        return Ok(());
    };
    let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let dir = std::env::temp_dir().join(format!("shopmesh-bench-sp-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let config = dir.join("config.yaml");
    std::fs::write(
        &config,
        format!(
            "listen:\n  http: \"127.0.0.1:{port}\"\nupstream:\n  default: \"{catalog_url}\"\n\
             descriptors:\n  - reflection: \"{catalog_url}\"\nlogging:\n  level: warn\n"
        ),
    )?;
    let mut child = tokio::process::Command::new(&bin)
        .arg("--config")
        .arg(&config)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting {}", bin.display()))?;
    let sp = Gateway::new(&format!("http://127.0.0.1:{port}"), load.concurrency)?;
    let mut up = false;
    for _ in 0..100 {
        if get_ok(sp.request(Method::GET, path, None)).await {
            up = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    if !up {
        child.kill().await.ok();
        report.say(format!("structured-proxy: did not serve {path} within 20 s; skipped"));
        return Ok(());
    }
    let stats = {
        let (sp, path) = (sp.clone(), path.to_owned());
        load.run(load.concurrency, move || get_ok(sp.request(Method::GET, &path, None))).await
    };
    child.kill().await.ok();
    let ratio = stats.rate() / direct.rate().max(f64::MIN_POSITIVE);
    report.say(format!("  {}", stats.line("structured-proxy GET /v1/products/{id}")));
    report.say(format!("ratio structured-proxy/direct: {ratio:.2}"));
    report.set("structured_proxy", serde_json::json!({"stats": stats.json(), "ratio": ratio}));
    std::fs::remove_dir_all(&dir).ok();
    Ok(())
}
