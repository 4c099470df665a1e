//! Checkout saga under load: customers with filled carts check out on a fixed
//! schedule (open loop, so a slow system cannot slow the arrivals), then
//! every order is followed to its final state and the books are audited.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use anyhow::Context;
use futures::StreamExt;
use rand::Rng;
use rand::seq::IndexedRandom;
use reqwest::Method;
use serde_json::{Value, json};

use crate::api::{self, Gateway, int};
use crate::cpu;
use crate::load::histogram;
use crate::report::{Report, verdict};

const TARGET_ORDERS_PER_SEC: f64 = 500.0;
const TARGET_P99_MS: f64 = 250.0;
/// How long the saga may leave an order PENDING before it counts as stuck.
const PENDING_TIMEOUT: Duration = Duration::from_secs(60);
/// Polling for final states is load on the system being measured; latency
/// comes from the orders' own timestamps, so polling gently costs no accuracy.
const SETTLE_CONCURRENCY: usize = 8;
/// Before the idle sample: setup's last events are still being consumed.
const IDLE_SETTLE: Duration = Duration::from_secs(2);
const IDLE_SAMPLE: Duration = Duration::from_secs(3);
const SETTLE_POLL_PAUSE: Duration = Duration::from_secs(1);

#[derive(clap::Args, Clone)]
pub struct CheckoutArgs {
    /// Checkouts started per second.
    #[arg(long, default_value_t = 500)]
    pub rate: u32,
    /// Seconds checkouts are started for.
    #[arg(long, default_value_t = 10)]
    pub duration: u32,
    /// Customers to register; each checks out once, so at least rate × duration (the default).
    #[arg(long)]
    pub users: Option<usize>,
    /// Products carts draw from (the first N listed; fewer means more contention on each stock row).
    #[arg(long)]
    pub products: Option<usize>,
    /// on_hand set on each of those products before the run.
    #[arg(long, default_value_t = 100_000)]
    pub stock: i64,
    /// Leave the seeded stock as it is (scarce: many orders cancel out of stock).
    #[arg(long)]
    pub keep_seeded_stock: bool,
    /// Every Nth checkout pays with a card that is declined.
    #[arg(long, default_value_t = 20)]
    pub decline_every: usize,
    /// Concurrent requests while registering customers and filling carts.
    #[arg(long, default_value_t = 16)]
    pub setup_concurrency: usize,
    /// Seconds to wait for every order to reach a final state.
    #[arg(long, default_value_t = 120)]
    pub settle_timeout: u64,
    #[arg(long, env = "SHOPMESH_ADMIN_EMAIL", default_value = "admin@bench.test")]
    pub admin_email: String,
    #[arg(long, env = "SHOPMESH_ADMIN_PASSWORD", default_value = "bench-admin-password", hide_env_values = true)]
    pub admin_password: String,
    /// Server for the pgbench reference run (a scratch database is created on it).
    #[arg(long, env = "SHOPMESH_POSTGRES_URL", default_value = "postgres://postgres:postgres@127.0.0.1:5432")]
    pub postgres_url: String,
    /// Skip the pgbench reference run.
    #[arg(long)]
    pub no_pgbench: bool,
}

struct Customer {
    token: String,
}

/// A checkout that was accepted: the order to follow.
struct Placed {
    id: String,
    customer: usize,
}

pub async fn run(report: &mut Report, gw: &Gateway, args: &CheckoutArgs) -> anyhow::Result<()> {
    let orders = args.rate as usize * args.duration as usize;
    let users = args.users.unwrap_or(orders);
    anyhow::ensure!(
        users >= orders,
        "--users {users} < rate × duration = {orders}: every checkout needs its own customer (a confirmed order clears the cart)"
    );
    let admin = gw.login(&args.admin_email, &args.admin_password).await.context(
        "admin login: start shopmesh with SHOPMESH_ADMIN_EMAIL/SHOPMESH_ADMIN_PASSWORD set to the same values",
    )?;

    // Products and their starting stock, the baseline of the audit.
    let mut products = gw.products().await?;
    anyhow::ensure!(!products.is_empty(), "no products listed: run `shopmesh seed` first");
    products.truncate(args.products.unwrap_or(usize::MAX).max(1));
    let mut start = HashMap::new();
    for (id, _) in &products {
        let path = format!("/v1/inventory/{id}");
        let stock = if args.keep_seeded_stock {
            gw.call(Method::GET, &path, Some(&admin), None).await?
        } else {
            gw.call(Method::PUT, &path, Some(&admin), Some(json!({"onHand": args.stock.to_string()}))).await?
        };
        start.insert(id.clone(), (int(&stock["stock"]["onHand"]), int(&stock["stock"]["reserved"])));
    }
    let units: i64 = start.values().map(|(on_hand, _)| on_hand).sum();
    report.say(format!("{} products, {units} units on hand in total", products.len()));

    // Customers with carts, before the clock starts.
    let setup = Instant::now();
    let ids: Vec<String> = products.iter().map(|(id, _)| id.clone()).collect();
    let customers: Vec<Customer> = futures::stream::iter(0..users)
        .map(|_| {
            let picks: Vec<String> = {
                let mut rng = rand::rng();
                let n = rng.random_range(1..=3usize).min(ids.len());
                ids.choose_multiple(&mut rng, n).cloned().collect()
            };
            async move {
                let token = gw.new_customer(false).await?;
                for product in picks {
                    let body = json!({"productId": product, "quantity": 1});
                    gw.call(Method::POST, "/v1/cart/items", Some(&token), Some(body)).await?;
                }
                anyhow::Ok(Customer { token })
            }
        })
        .buffer_unordered(args.setup_concurrency.max(1))
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<Result<_, _>>()
        .context("registering customers")?;
    let setup = setup.elapsed();
    report.say(format!(
        "setup: {users} customers registered with carts in {:.1} s ({:.0}/s)",
        setup.as_secs_f64(),
        users as f64 / setup.as_secs_f64()
    ));

    // What the stack burns doing nothing (consumers polling the broker, say),
    // once setup's last events have been handled.
    tokio::time::sleep(IDLE_SETTLE).await;
    if let Some(idle) = cpu::Snapshot::take() {
        tokio::time::sleep(IDLE_SAMPLE).await;
        if let Some(after) = cpu::Snapshot::take() {
            let spent = idle.spent_until(&after);
            let (total, shares) = cpu::in_units(&spent, |d| d.as_secs_f64() / IDLE_SAMPLE.as_secs_f64() * 100.0);
            let parts: Vec<String> = shares.iter().map(|(p, v)| format!("{p} {v:.0}%")).collect();
            report.say(format!("idle: {total:.0}% of a core before the first checkout ({})", parts.join(", ")));
            report.set("idle_cpu_percent_of_a_core", json!(total));
        }
    }

    // Open loop: checkout k starts at k / rate, whatever happened before it.
    let cpu_before = cpu::Snapshot::take();
    let period = Duration::from_secs_f64(1.0 / args.rate.max(1) as f64);
    let t0 = tokio::time::Instant::now();
    let mut tasks = Vec::with_capacity(orders);
    let mut max_lag = Duration::ZERO;
    for (k, customer) in customers.iter().enumerate().take(orders) {
        let due = t0 + period * k as u32;
        tokio::time::sleep_until(due).await;
        max_lag = max_lag.max(due.elapsed());
        let token = customer.token.clone();
        let card = if args.decline_every > 0 && k % args.decline_every == args.decline_every - 1 {
            "tok_chargeDeclined"
        } else {
            "tok_visa"
        };
        let gw = gw.clone();
        tasks.push(tokio::spawn(async move {
            let body = json!({"paymentToken": card, "shippingAddress": address()});
            let resp = gw
                .request(Method::POST, "/v1/orders", Some(&token))
                .header("Idempotency-Key", uuid::Uuid::new_v4().to_string())
                .json(&body)
                .send()
                .await;
            // Latency from the scheduled start, so queueing in the client counts too.
            let latency = due.elapsed();
            let placed = match resp {
                Ok(r) => api::expect_ok(r, &Method::POST, "/v1/orders")
                    .await
                    .and_then(|v| v["order"]["id"].as_str().map(str::to_owned).context("no order id in the response")),
                Err(e) => Err(e.into()),
            };
            (k, latency, placed)
        }));
    }
    let mut placed = Vec::with_capacity(orders);
    let mut post_latency = histogram();
    let mut post_errors: BTreeMap<String, usize> = BTreeMap::new();
    for task in tasks {
        let (k, latency, result) = task.await?;
        post_latency.saturating_record(latency.as_micros() as u64);
        match result {
            Ok(id) => placed.push(Placed { id, customer: k }),
            Err(e) => *post_errors.entry(short(&e.to_string())).or_default() += 1,
        }
    }
    let fired_in = t0.elapsed();
    report.say(format!(
        "checkout: {orders} started at {} /s over {} s (scheduler lag max {:.1} ms); {} accepted, {} failed; \
         POST /v1/orders p50 {:.1} ms  p99 {:.1} ms",
        args.rate,
        args.duration,
        max_lag.as_secs_f64() * 1e3,
        placed.len(),
        orders - placed.len(),
        post_latency.value_at_quantile(0.5) as f64 / 1e3,
        post_latency.value_at_quantile(0.99) as f64 / 1e3,
    ));
    for (error, n) in &post_errors {
        report.say(format!("  {n} × {error}"));
    }

    // Follow every order to its final state.
    let finals = settle(gw, &customers, &placed, Duration::from_secs(args.settle_timeout)).await;
    let cpu_after = cpu::Snapshot::take();
    let mut latency = histogram();
    let mut outcomes: BTreeMap<String, usize> = BTreeMap::new();
    let (mut first_created, mut last_final) = (i64::MAX, i64::MIN);
    let mut confirmed_units: HashMap<String, i64> = HashMap::new();
    let (mut pending_now, mut stuck) = (0, 0);
    let now = chrono::Utc::now().timestamp_micros();
    for order in finals.values() {
        let created = micros(&order["createdAt"]);
        first_created = first_created.min(created);
        let status = order["status"].as_str().unwrap_or("?").trim_start_matches("ORDER_STATUS_").to_owned();
        if status == "PENDING" {
            pending_now += 1;
            stuck += usize::from(now - created > PENDING_TIMEOUT.as_micros() as i64);
            continue;
        }
        let changed =
            order["history"].as_array().and_then(|h| h.last()).map(|h| micros(&h["changedAt"])).unwrap_or(created);
        last_final = last_final.max(changed);
        latency.saturating_record((changed - created).max(0) as u64);
        let reason = order["cancelReason"].as_str().unwrap_or("").trim_start_matches("CANCEL_REASON_");
        let key =
            if reason.is_empty() || reason == "UNSPECIFIED" { status.clone() } else { format!("{status}/{reason}") };
        *outcomes.entry(key).or_default() += 1;
        if status == "CONFIRMED" {
            for line in order["lines"].as_array().into_iter().flatten() {
                let id = line["productId"].as_str().unwrap_or_default().to_owned();
                *confirmed_units.entry(id).or_default() += int(&line["quantity"]);
            }
        }
    }
    let final_count = latency.len();
    let span = (last_final - first_created).max(1) as f64 / 1e6;
    let final_rate = if final_count > 0 { final_count as f64 / span } else { 0.0 };
    let p50 = latency.value_at_quantile(0.5) as f64 / 1e3;
    let p99 = latency.value_at_quantile(0.99) as f64 / 1e3;
    let lost = placed.len() - final_count as usize;
    report.say(format!(
        "final: {final_count} orders in {span:.1} s = {final_rate:.0} orders/s (target ≥ {TARGET_ORDERS_PER_SEC:.0}) {}",
        verdict(final_rate >= TARGET_ORDERS_PER_SEC)
    ));
    report.say(format!(
        "PENDING→final: p50 {p50:.1} ms  p99 {p99:.1} ms (target < {TARGET_P99_MS:.0} ms) {}",
        verdict(final_count > 0 && p99 < TARGET_P99_MS)
    ));
    let outcome_line: Vec<String> = outcomes.iter().map(|(k, n)| format!("{k} {n}")).collect();
    report.say(format!("outcomes: {}", outcome_line.join("  ")));
    let cpu_per_order = match (&cpu_before, &cpu_after) {
        (Some(before), Some(after)) if final_count > 0 => {
            let spent = before.spent_until(after);
            let (total, shares) = cpu::in_units(&spent, |d| d.as_secs_f64() * 1e3 / final_count as f64);
            let parts: Vec<String> = shares.iter().map(|(p, v)| format!("{p} {v:.2}")).collect();
            let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
            let budget = cores as f64 * 1e3 / TARGET_ORDERS_PER_SEC;
            report.say(format!(
                "cpu: {total:.2} ms per final order, first checkout to last settled ({}); \
                 {TARGET_ORDERS_PER_SEC:.0} orders/s on {cores} cores allows {budget:.2}",
                parts.join(", ")
            ));
            let by_program: serde_json::Map<String, Value> =
                shares.iter().map(|&(p, v)| (p.to_owned(), json!(v))).collect();
            json!({"total_ms": total, "by_program_ms": by_program, "budget_ms": budget})
        }
        _ => Value::Null,
    };

    // The audit: what the books say after the saga settled.
    let stock = audit_stock(gw, &admin, &start, &confirmed_units).await?;
    let charges = audit_payments(gw, &customers, &placed, &finals).await;
    let clean = stock.oversold == 0 && charges.double == 0 && stuck == 0 && lost == 0;
    report.say(format!(
        "AUDIT oversold units {}  double charges {}  stuck PENDING > {} s {}  lost events {}  {}",
        stock.oversold,
        charges.double,
        PENDING_TIMEOUT.as_secs(),
        stuck,
        lost,
        if clean { "ok" } else { "FAILED" }
    ));
    report.say(format!(
        "      (stock rows not matching start − confirmed {}  confirmed without a capture {}  still PENDING at the end {})",
        stock.mismatched, charges.confirmed_uncaptured, pending_now
    ));

    report.set(
        "checkout",
        json!({
            "rate": args.rate, "duration_s": args.duration, "orders": orders, "accepted": placed.len(),
            "post_errors": post_errors, "setup_s": setup.as_secs_f64(), "fired_s": fired_in.as_secs_f64(),
            "post_p50_ms": post_latency.value_at_quantile(0.5) as f64 / 1e3,
            "post_p99_ms": post_latency.value_at_quantile(0.99) as f64 / 1e3,
            "final": final_count, "final_per_s": final_rate, "p50_ms": p50, "p99_ms": p99,
            "outcomes": outcomes, "cpu_per_order": cpu_per_order,
            "audit": {
                "oversold_units": stock.oversold, "double_charges": charges.double, "stuck_pending": stuck,
                "lost_events": lost, "stock_mismatches": stock.mismatched,
                "confirmed_uncaptured": charges.confirmed_uncaptured,
            },
        }),
    );
    if !args.no_pgbench {
        pgbench(report, &args.postgres_url).await;
    }
    Ok(())
}

/// The latest view of every placed order, polled until none is PENDING or
/// the timeout passes.
async fn settle(gw: &Gateway, customers: &[Customer], placed: &[Placed], timeout: Duration) -> HashMap<String, Value> {
    let deadline = Instant::now() + timeout;
    let mut latest: HashMap<String, Value> = HashMap::new();
    let mut open: Vec<&Placed> = placed.iter().collect();
    while !open.is_empty() {
        let polled: Vec<(&Placed, Option<Value>)> = futures::stream::iter(open.iter().copied())
            .map(|p| async move {
                let path = format!("/v1/orders/{}", p.id);
                let order = gw.call(Method::GET, &path, Some(&customers[p.customer].token), None).await;
                (p, order.ok().map(|v| v["order"].clone()))
            })
            .buffer_unordered(SETTLE_CONCURRENCY)
            .collect()
            .await;
        open.clear();
        for (p, order) in polled {
            match order {
                Some(o) if o["status"] != "ORDER_STATUS_PENDING" => {
                    latest.insert(p.id.clone(), o);
                }
                other => {
                    if let Some(o) = other {
                        latest.insert(p.id.clone(), o);
                    }
                    open.push(p);
                }
            }
        }
        if open.is_empty() || Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(SETTLE_POLL_PAUSE).await;
    }
    latest
}

struct StockAudit {
    oversold: i64,
    mismatched: usize,
}

/// Compares every product's stock with start − confirmed units, waiting a
/// little for commits that trail the order's confirmation.
async fn audit_stock(
    gw: &Gateway,
    admin: &str,
    start: &HashMap<String, (i64, i64)>,
    confirmed: &HashMap<String, i64>,
) -> anyhow::Result<StockAudit> {
    let mut audit = StockAudit { oversold: 0, mismatched: 0 };
    for attempt in 0..40 {
        audit = StockAudit { oversold: 0, mismatched: 0 };
        for (id, (on_hand0, reserved0)) in start {
            let s = gw.call(Method::GET, &format!("/v1/inventory/{id}"), Some(admin), None).await?;
            let (available, on_hand, reserved) =
                (int(&s["stock"]["available"]), int(&s["stock"]["onHand"]), int(&s["stock"]["reserved"]));
            let sold = confirmed.get(id).copied().unwrap_or(0);
            // Negative stock, or more confirmed than there ever was.
            audit.oversold += (-available).max(0).max((-on_hand).max(0)) + (sold - on_hand0).max(0);
            audit.mismatched += usize::from(on_hand != on_hand0 - sold || reserved != *reserved0);
        }
        if audit.mismatched == 0 || attempt == 39 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    Ok(audit)
}

struct PaymentAudit {
    double: usize,
    confirmed_uncaptured: usize,
}

async fn audit_payments(
    gw: &Gateway,
    customers: &[Customer],
    placed: &[Placed],
    orders: &HashMap<String, Value>,
) -> PaymentAudit {
    let counts: Vec<(String, usize)> = futures::stream::iter(placed)
        .map(|p| async move {
            let path = format!("/v1/payments?orderId={}", p.id);
            let payments = gw.call(Method::GET, &path, Some(&customers[p.customer].token), None).await;
            let captured = payments
                .ok()
                .and_then(|v| v["payments"].as_array().cloned())
                .unwrap_or_default()
                .iter()
                .filter(|pay| pay["status"] == "PAYMENT_STATUS_CAPTURED")
                .count();
            (p.id.clone(), captured)
        })
        .buffer_unordered(32)
        .collect()
        .await;
    let mut audit = PaymentAudit { double: 0, confirmed_uncaptured: 0 };
    for (id, captured) in counts {
        let status = orders.get(&id).and_then(|o| o["status"].as_str()).unwrap_or("");
        // A refund turns the capture into REFUNDED, so a capture left on a
        // cancelled order is money taken for nothing.
        if captured > 1 || (captured > 0 && status == "ORDER_STATUS_CANCELLED") {
            audit.double += 1;
        }
        if captured == 0 && status == "ORDER_STATUS_CONFIRMED" {
            audit.confirmed_uncaptured += 1;
        }
    }
    audit
}

/// PostgreSQL's own TPC-B-like figure on the same machine, for scale.
async fn pgbench(report: &mut Report, server: &str) {
    if crate::on_path("pgbench").is_none() {
        report.say("pgbench: not available (no `pgbench` on PATH)");
        return;
    }
    let url = format!("{}/shopmesh_bench_pgbench", server.trim_end_matches('/'));
    if let Err(e) = shopmesh_platform::db::ensure_database(&url).await {
        report.say(format!("pgbench: could not create shopmesh_bench_pgbench: {e:#}"));
        return;
    }
    let run = |args: &[&str]| {
        let mut cmd = tokio::process::Command::new("pgbench");
        cmd.args(args).arg(&url).kill_on_drop(true);
        cmd.output()
    };
    match run(&["-i", "-q"]).await {
        Ok(out) if out.status.success() => {}
        Ok(out) => {
            report.say(format!("pgbench -i failed: {}", short(&String::from_utf8_lossy(&out.stderr))));
            return;
        }
        Err(e) => {
            report.say(format!("pgbench: {e}"));
            return;
        }
    }
    match run(&["-T", "10", "-c", "4", "-j", "2"]).await {
        Ok(out) if out.status.success() => {
            let text = String::from_utf8_lossy(&out.stdout);
            let tps = text
                .lines()
                .find(|l| l.trim_start().starts_with("tps ="))
                .and_then(|l| l.split_whitespace().nth(2))
                .and_then(|t| t.parse::<f64>().ok());
            match tps {
                Some(tps) => {
                    report.say(format!("pgbench reference (-T 10 -c 4, TPC-B-like): {tps:.0} tps"));
                    report.set("pgbench_tps", tps);
                }
                None => report.say("pgbench: ran, but no tps line in its output"),
            }
        }
        Ok(out) => report.say(format!("pgbench failed: {}", short(&String::from_utf8_lossy(&out.stderr)))),
        Err(e) => report.say(format!("pgbench: {e}")),
    }
}

fn micros(v: &Value) -> i64 {
    v.as_str().and_then(|s| chrono::DateTime::parse_from_rfc3339(s).ok()).map(|t| t.timestamp_micros()).unwrap_or(0)
}

fn short(s: &str) -> String {
    let s = s.trim().replace('\n', " ");
    if s.chars().count() > 160 { format!("{}…", s.chars().take(160).collect::<String>()) } else { s }
}

fn address() -> Value {
    json!({"recipientName": "Bench Customer", "line1": "1 Load St", "city": "Arlington", "postalCode": "22201",
        "countryCode": "US"})
}
