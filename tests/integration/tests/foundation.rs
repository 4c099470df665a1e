//! Foundation: the platform runtime serves health, reflection and ops
//! endpoints; the outbox publishes each event once, re-publishes what a crash
//! left unmarked, is woken by commits on any replica, and the inbox applies a
//! redelivered copy only once; a handler's after-commit step sees only
//! effects that committed.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use prost::Message;
use rdkafka::consumer::Consumer;
use shopmesh_integration_tests::{TestEnv, drain, eventually, publish_raw};
use shopmesh_platform::config::Needs;
use shopmesh_platform::consumer::{EventConsumer, EventHandler, HandlerError};
use shopmesh_platform::events::{DomainEvent as _, ReceivedEvent};
use shopmesh_platform::kafka::{Kafka, Pace, topics};
use shopmesh_platform::outbox::{Outbox, OutboxRelay, RelayConfig};
use shopmesh_platform::pb::events::v1::UserRegistered;
use shopmesh_platform::runtime::{ServiceDef, ServiceRuntime, ServiceSpec};
use sqlx::PgConnection;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

/// A service with no RPCs of its own: just what the platform gives everyone.
static PROBE: ServiceDef = ServiceDef {
    spec: ServiceSpec {
        name: "probe",
        needs: Needs { postgres: true, redis: true, kafka: true },
        grpc_services: &["shopmesh.probe.v1.ProbeService"],
        descriptor_sets: &[],
        migrator: None,
        topics: &[topics::USER],
        db_settings: &[],
    },
    build: |_rt: &mut ServiceRuntime| Box::pin(async { Ok(tonic::service::Routes::default()) }),
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runtime_serves_grpc_health_reflection_and_ops_endpoints() {
    let env = TestEnv::new();
    let svc = env.launch(&PROBE).await;
    let grpc = format!("http://{}", svc.grpc_addr);

    // grpc.health.v1 reports SERVING once readiness (postgres, redis, kafka) passes.
    let mut health = HealthClient::new(shopmesh_platform::grpc::channel(&grpc).unwrap());
    let status = eventually("health SERVING", Duration::from_secs(10), || {
        let mut health = health.clone();
        async move {
            let resp = health.check(HealthCheckRequest { service: String::new() }).await.ok()?;
            (resp.into_inner().status == 1).then_some(1)
        }
    })
    .await;
    assert_eq!(status, 1);
    let named = health.check(HealthCheckRequest { service: "shopmesh.probe.v1.ProbeService".into() }).await.unwrap();
    assert_eq!(named.into_inner().status, 1, "named service is SERVING too");

    // Reflection v1 and v1alpha both list the served services.
    for listed in [list_services_v1(&grpc).await, list_services_v1alpha(&grpc).await] {
        assert!(listed.contains(&"grpc.health.v1.Health".to_owned()), "{listed:?}");
        assert!(listed.iter().any(|s| s.starts_with("grpc.reflection.")), "{listed:?}");
    }

    // Ops HTTP: live, ready with per-dependency checks, Prometheus metrics.
    let http = format!("http://{}", svc.http_addr);
    let live = reqwest::get(format!("{http}/health/live")).await.unwrap();
    assert_eq!(live.status(), 200);
    let ready = reqwest::get(format!("{http}/health/ready")).await.unwrap();
    assert_eq!(ready.status(), 200);
    let body: serde_json::Value = ready.json().await.unwrap();
    for dep in ["postgres", "redis", "kafka"] {
        assert_eq!(body["checks"][dep], "ok", "{body}");
    }
    let metrics = reqwest::get(format!("{http}/metrics")).await.unwrap().text().await.unwrap();
    assert!(metrics.contains("grpc_server_handled_total"), "RED metrics recorded: {metrics}");
}

/// A service whose one background task dies shortly after start.
static DOOMED: ServiceDef = ServiceDef {
    spec: ServiceSpec { name: "doomed", ..PROBE.spec },
    build: |rt: &mut ServiceRuntime| {
        rt.spawn_task(async {
            tokio::time::sleep(Duration::from_millis(300)).await;
            panic!("consumer lost its mind");
        });
        Box::pin(async { Ok(tonic::service::Routes::default()) })
    },
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_background_task_that_dies_stops_its_service_with_the_cause() {
    let env = TestEnv::new();
    let svc = env.launch(&DOOMED).await;
    let live = format!("http://{}/health/live", svc.http_addr);
    assert_eq!(reqwest::get(&live).await.unwrap().status(), 200);
    let stopped = tokio::time::timeout(Duration::from_secs(10), svc.task).await.expect("the service stopped");
    let err = stopped.unwrap().expect_err("stopping for a dead task is an error");
    assert!(err.to_string().contains("panicked: consumer lost its mind"), "{err:#}");
    assert!(reqwest::get(&live).await.is_err(), "nothing answers any more");
}

async fn list_services_v1(uri: &str) -> Vec<String> {
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    let mut client = ServerReflectionClient::new(shopmesh_platform::grpc::channel(uri).unwrap());
    let req = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut stream = client.server_reflection_info(tokio_stream::iter([req])).await.unwrap().into_inner();
    match stream.next().await.unwrap().unwrap().message_response.unwrap() {
        MessageResponse::ListServicesResponse(list) => list.service.into_iter().map(|s| s.name).collect(),
        other => panic!("unexpected reflection response {other:?}"),
    }
}

async fn list_services_v1alpha(uri: &str) -> Vec<String> {
    use tonic_reflection::pb::v1alpha::ServerReflectionRequest;
    use tonic_reflection::pb::v1alpha::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1alpha::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1alpha::server_reflection_response::MessageResponse;
    let mut client = ServerReflectionClient::new(shopmesh_platform::grpc::channel(uri).unwrap());
    let req = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut stream = client.server_reflection_info(tokio_stream::iter([req])).await.unwrap().into_inner();
    match stream.next().await.unwrap().unwrap().message_response.unwrap() {
        MessageResponse::ListServicesResponse(list) => list.service.into_iter().map(|s| s.name).collect(),
        other => panic!("unexpected reflection response {other:?}"),
    }
}

/// Counts each applied event in `applied_events`, in the inbox's transaction.
struct CountingHandler;

#[async_trait::async_trait]
impl EventHandler for CountingHandler {
    fn wants(&self, event_type: &str) -> bool {
        event_type == "shopmesh.events.v1.UserRegistered"
    }

    async fn handle(&self, tx: &mut PgConnection, event: &ReceivedEvent) -> Result<(), HandlerError> {
        let user = event.payload::<UserRegistered>()?;
        sqlx::query("INSERT INTO applied_events (event_id, user_id) VALUES ($1, $2)")
            .bind(event.event_id)
            .bind(user.user_id)
            .execute(tx)
            .await?;
        Ok(())
    }
}

/// How many times `CountingHandler` applied event `id`.
async fn times_applied(pool: &sqlx::PgPool, id: uuid::Uuid) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar("SELECT count(*) FROM applied_events WHERE event_id = $1").bind(id).fetch_one(pool).await
}

/// Waits until `CountingHandler` has applied event `id` once.
async fn applied_once(what: &str, pool: &sqlx::PgPool, id: uuid::Uuid) {
    eventually(
        what,
        Duration::from_secs(30),
        || async move { (times_applied(pool, id).await.ok()? == 1).then_some(()) },
    )
    .await;
}

/// A `UserRegistered` for `user` in a new envelope from "test".
fn registered(user: &str) -> shopmesh_platform::pb::events::v1::EventEnvelope {
    shopmesh_platform::events::envelope("test", &UserRegistered { user_id: user.into(), ..Default::default() })
}

/// The env's Kafka with the user topic (and its `.dlq`) created.
async fn user_topic(env: &TestEnv) -> Kafka {
    let kafka = env.kafka();
    kafka.ensure_topics(&[topics::USER]).await.unwrap();
    kafka
}

/// Runs consumer group "probe" on the user topic with `handler` until the env shuts down.
fn spawn_probe(env: &TestEnv, pool: &sqlx::PgPool, kafka: &Kafka, handler: Arc<dyn EventHandler>) {
    spawn_user_consumer(env, "probe", pool, kafka, handler);
}

/// Runs consumer group `name` on the user topic with `handler` until the env shuts down.
fn spawn_user_consumer(env: &TestEnv, name: &str, pool: &sqlx::PgPool, kafka: &Kafka, handler: Arc<dyn EventHandler>) {
    let consumer = EventConsumer { name: name.into(), topics: vec![topics::USER], handler, pace: Pace::Prompt };
    tokio::spawn(consumer.run(pool.clone(), kafka.clone(), Outbox::new(name), env.shutdown.clone()));
}

/// `platform_database` with the table `CountingHandler` writes.
async fn counting_database(env: &TestEnv, name: &str, connections: u32) -> sqlx::PgPool {
    let pool = platform_database(env, name, connections).await;
    sqlx::query("CREATE TABLE applied_events (event_id UUID PRIMARY KEY, user_id TEXT NOT NULL)")
        .execute(&pool)
        .await
        .unwrap();
    pool
}

/// A fresh database holding only the platform's tables (outbox, inbox).
async fn platform_database(env: &TestEnv, name: &str, connections: u32) -> sqlx::PgPool {
    let url = env.database_url(name).await;
    let pool = shopmesh_platform::db::connect(&url, connections).await.unwrap();
    shopmesh_platform::db::migrate(&pool, None).await.unwrap();
    pool
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_services_database_settings_hold_on_every_connection() {
    let env = TestEnv::new();
    let url = env.database_url("settings").await;
    let settings = shopmesh_order::SERVICE.spec.db_settings;
    assert!(settings.contains(&("plan_cache_mode", "force_generic_plan")));
    let pool = shopmesh_platform::db::connect_with(&url, "order", 3, settings).await.unwrap();
    // Three sessions at once, so each is a connection of its own.
    let mut held = Vec::new();
    for _ in 0..3 {
        let mut conn = pool.acquire().await.unwrap();
        let mode: String = sqlx::query_scalar("SHOW plan_cache_mode").fetch_one(&mut *conn).await.unwrap();
        assert_eq!(mode, "force_generic_plan");
        let name: String = sqlx::query_scalar("SHOW application_name").fetch_one(&mut *conn).await.unwrap();
        assert_eq!(name, "order", "pg_stat_activity tells the service's sessions apart");
        held.push(conn);
    }
    let plain = shopmesh_platform::db::connect(&url, 1).await.unwrap();
    let mode: String = sqlx::query_scalar("SHOW plan_cache_mode").fetch_one(&plain).await.unwrap();
    assert_eq!(mode, "auto", "other services keep Postgres' default");
    // An operator's own application_name in the URL wins.
    let named_url = format!("{url}?application_name=order-eu");
    let named = shopmesh_platform::db::connect_with(&named_url, "order", 1, &[]).await.unwrap();
    let name: String = sqlx::query_scalar("SHOW application_name").fetch_one(&named).await.unwrap();
    assert_eq!(name, "order-eu");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outbox_publishes_once_republishes_after_crash_and_inbox_applies_once() {
    let env = TestEnv::new();
    let pool = counting_database(&env, "outbox", 5).await;
    let kafka = user_topic(&env).await;
    let topic = kafka.config.topic(topics::USER);

    // An event committed with its transaction; one that rolled back must never leave.
    let outbox = Outbox::new("test");
    let event = UserRegistered { user_id: "user-1".into(), email: "a@example.com".into(), ..Default::default() };
    let mut tx = pool.begin().await.unwrap();
    let event_id = outbox.enqueue(&mut tx, &event).await.unwrap();
    tx.commit().await.unwrap();
    let mut rolled_back = pool.begin().await.unwrap();
    outbox.enqueue(&mut rolled_back, &UserRegistered { user_id: "ghost".into(), ..Default::default() }).await.unwrap();
    rolled_back.rollback().await.unwrap();

    let observer = env.observer(&topic);
    let relay_stop = env.shutdown.child();
    let relay = tokio::spawn(
        OutboxRelay::new(pool.clone(), kafka.clone(), &outbox, RelayConfig::default()).run(relay_stop.clone()),
    );

    let seen = drain(&observer, Duration::from_secs(20), Duration::from_secs(3)).await;
    assert_eq!(seen.len(), 1, "published exactly once");
    let envelope = shopmesh_platform::pb::events::v1::EventEnvelope::decode(seen[0].as_slice()).unwrap();
    assert_eq!(envelope.id, event_id.to_string());
    assert_eq!(UserRegistered::decode(envelope.payload.as_slice()).unwrap(), event);
    let unpublished: i64 =
        sqlx::query_scalar("SELECT count(*) FROM outbox WHERE published_at IS NULL").fetch_one(&pool).await.unwrap();
    assert_eq!(unpublished, 0, "row marked published");

    // A crash between the broker's ack and the mark: the row is unmarked again,
    // and the relay (restarted) publishes it a second time.
    relay_stop.trigger();
    relay.await.unwrap();
    sqlx::query("UPDATE outbox SET published_at = NULL WHERE event_id = $1")
        .bind(event_id)
        .execute(&pool)
        .await
        .unwrap();
    // A later event for the same aggregate (same partition) marks the end of the stream.
    let mut tx = pool.begin().await.unwrap();
    let sentinel =
        UserRegistered { user_id: "user-1".into(), email: "sentinel@example.com".into(), ..Default::default() };
    let sentinel_id = outbox.enqueue(&mut tx, &sentinel).await.unwrap();
    tx.commit().await.unwrap();
    tokio::spawn(
        OutboxRelay::new(pool.clone(), kafka.clone(), &outbox, RelayConfig::default()).run(env.shutdown.clone()),
    );
    let seen = drain(&observer, Duration::from_secs(20), Duration::from_secs(3)).await;
    assert_eq!(seen.len(), 2, "the unmarked row is re-published, plus the new one");

    // The consumer sees the event twice and applies it once.
    let handler = Arc::new(CountingHandler);
    spawn_probe(&env, &pool, &kafka, handler);
    applied_once("sentinel applied", &pool, sentinel_id).await;
    assert_eq!(times_applied(&pool, event_id).await.unwrap(), 1, "redelivered copy ignored by the inbox");
    let inbox: i64 =
        sqlx::query_scalar("SELECT count(*) FROM inbox WHERE consumer = 'probe'").fetch_one(&pool).await.unwrap();
    assert_eq!(inbox, 2, "one inbox row per distinct event");
    let ghost: i64 = sqlx::query_scalar("SELECT count(*) FROM applied_events WHERE user_id = 'ghost'")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(ghost, 0, "rolled-back events never leave");

    // Inbox rows older than the retention (longer than any redelivery) are pruned.
    sqlx::query("UPDATE inbox SET processed_at = now() - interval '15 days' WHERE event_id = $1")
        .bind(event_id)
        .execute(&pool)
        .await
        .unwrap();
    let pruned = shopmesh_platform::inbox::prune(&pool, shopmesh_platform::inbox::RETENTION).await.unwrap();
    assert_eq!(pruned, 1);
    let kept: Vec<uuid::Uuid> =
        sqlx::query_scalar("SELECT event_id FROM inbox WHERE consumer = 'probe'").fetch_all(&pool).await.unwrap();
    assert_eq!(kept, vec![sentinel_id], "recent rows stay");
    observer.unsubscribe();
}

/// The event ids of published envelopes, in the order seen.
fn envelope_ids(seen: &[Vec<u8>]) -> Vec<String> {
    seen.iter().map(|b| shopmesh_platform::pb::events::v1::EventEnvelope::decode(b.as_slice()).unwrap().id).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_the_broker_refuses_holds_back_its_aggregates_later_events_and_nothing_else() {
    let env = TestEnv::new();
    let pool = platform_database(&env, "outbox_refused", 5).await;
    let kafka = user_topic(&env).await;
    let observer = env.observer(&kafka.config.topic(topics::USER));
    let outbox = Outbox::new("test");
    let registered = |user: &str, name: String| UserRegistered { user_id: user.into(), name, ..Default::default() };
    // user-1's first event is over the producer's 1 MB message limit.
    let mut tx = pool.begin().await.unwrap();
    let refused = outbox.enqueue(&mut tx, &registered("user-1", "x".repeat(1_100_000))).await.unwrap();
    let later = outbox.enqueue(&mut tx, &registered("user-1", "later".into())).await.unwrap();
    let other = outbox.enqueue(&mut tx, &registered("user-2", "other".into())).await.unwrap();
    tx.commit().await.unwrap();
    let config = RelayConfig { max_backoff: Duration::from_secs(1), ..RelayConfig::default() };
    tokio::spawn(OutboxRelay::new(pool.clone(), kafka.clone(), &outbox, config).run(env.shutdown.clone()));

    let seen = envelope_ids(&drain(&observer, Duration::from_secs(20), Duration::from_secs(3)).await);
    assert_eq!(seen, vec![other.to_string()], "user-2's event leaves; user-1's later one waits behind the refused");
    let (attempts, error): (i32, Option<String>) =
        sqlx::query_as("SELECT attempts, last_error FROM outbox WHERE event_id = $1")
            .bind(refused)
            .fetch_one(&pool)
            .await
            .unwrap();
    assert!(attempts >= 1, "every refusal is counted");
    assert!(error.unwrap_or_default().contains("MessageSizeTooLarge"));

    // Once the first can go (an operator shrank it), both follow in order.
    let stored: Vec<u8> = sqlx::query_scalar("SELECT envelope FROM outbox WHERE event_id = $1")
        .bind(refused)
        .fetch_one(&pool)
        .await
        .unwrap();
    let mut envelope = shopmesh_platform::pb::events::v1::EventEnvelope::decode(stored.as_slice()).unwrap();
    envelope.payload = registered("user-1", "first".into()).encode_to_vec();
    sqlx::query("UPDATE outbox SET envelope = $2 WHERE event_id = $1")
        .bind(refused)
        .bind(envelope.encode_to_vec())
        .execute(&pool)
        .await
        .unwrap();
    let seen = envelope_ids(&drain(&observer, Duration::from_secs(20), Duration::from_secs(3)).await);
    assert_eq!(seen, vec![refused.to_string(), later.to_string()]);
    observer.unsubscribe();
}

/// More of the refused aggregate's events than a batch holds wait behind
/// it: the relay reads past them to the other aggregates' events, which
/// leave; the refused one's wait in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_event_with_a_batch_of_its_aggregate_behind_it_holds_back_nothing_else() {
    let env = TestEnv::new();
    let pool = platform_database(&env, "outbox_refused_batch", 5).await;
    let kafka = user_topic(&env).await;
    let observer = env.observer(&kafka.config.topic(topics::USER));
    let outbox = Outbox::new("test");
    let registered = |user: &str, name: String| UserRegistered { user_id: user.into(), name, ..Default::default() };
    let mut tx = pool.begin().await.unwrap();
    outbox.enqueue(&mut tx, &registered("user-1", "x".repeat(1_100_000))).await.unwrap();
    for n in 0..6 {
        outbox.enqueue(&mut tx, &registered("user-1", format!("later {n}"))).await.unwrap();
    }
    let other = outbox.enqueue(&mut tx, &registered("user-2", "other".into())).await.unwrap();
    tx.commit().await.unwrap();
    // A batch of 4: user-1's rows fill the first two.
    let config = RelayConfig { batch_size: 4, max_backoff: Duration::from_secs(1), ..RelayConfig::default() };
    tokio::spawn(OutboxRelay::new(pool.clone(), kafka.clone(), &outbox, config).run(env.shutdown.clone()));

    let seen = envelope_ids(&drain(&observer, Duration::from_secs(20), Duration::from_secs(3)).await);
    assert_eq!(seen, vec![other.to_string()], "user-2's event leaves; user-1's wait behind the refused");
    let waiting: i64 =
        sqlx::query_scalar("SELECT count(*) FROM outbox WHERE published_at IS NULL").fetch_one(&pool).await.unwrap();
    assert_eq!(waiting, 7);
    observer.unsubscribe();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outbox_row_written_by_the_callers_own_statement_is_stored_and_published_like_an_enqueued_event() {
    let env = TestEnv::new();
    let pool = platform_database(&env, "outbox_row", 5).await;
    let kafka = user_topic(&env).await;
    let observer = env.observer(&kafka.config.topic(topics::USER));
    let outbox = Outbox::new("test");

    // One event the usual way, one as a row the caller writes itself (in
    // autocommit, as a one-statement change would).
    let enqueued =
        UserRegistered { user_id: "user-1".into(), email: "enqueued@example.com".into(), ..Default::default() };
    let mut tx = pool.begin().await.unwrap();
    let enqueued_id = outbox.enqueue(&mut tx, &enqueued).await.unwrap();
    tx.commit().await.unwrap();
    let own = UserRegistered { user_id: "user-1".into(), email: "own@example.com".into(), ..Default::default() };
    let before = outbox.enqueued();
    let row = outbox.row(&own, &tracing::Span::current());
    assert_eq!(outbox.enqueued(), before + 1, "a row counts as enqueued, so a consumer's commit wakes the relay");
    let query = sqlx::query(concat!(shopmesh_platform::outbox_insert!(), "VALUES ($1, $2, $3, $4, $5, $6)"));
    row.bind(query).execute(&pool).await.unwrap();
    outbox.committed();

    // Stored alike: same topic, key and type columns.
    let stored: Vec<(uuid::Uuid, String, String, String)> =
        sqlx::query_as("SELECT event_id, topic, event_key, event_type FROM outbox ORDER BY seq")
            .fetch_all(&pool)
            .await
            .unwrap();
    let expect = |id: uuid::Uuid| (id, topics::USER.to_owned(), "user-1".to_owned(), UserRegistered::TYPE.to_owned());
    assert_eq!(stored, vec![expect(enqueued_id), expect(row.event_id)]);

    // Published alike, in order, each envelope carrying its event.
    tokio::spawn(
        OutboxRelay::new(pool.clone(), kafka.clone(), &outbox, RelayConfig::default()).run(env.shutdown.clone()),
    );
    let seen = drain(&observer, Duration::from_secs(20), Duration::from_secs(1)).await;
    let envelopes: Vec<_> =
        seen.iter().map(|b| shopmesh_platform::pb::events::v1::EventEnvelope::decode(b.as_slice()).unwrap()).collect();
    assert_eq!(
        envelopes.iter().map(|e| e.id.clone()).collect::<Vec<_>>(),
        vec![enqueued_id.to_string(), row.event_id.to_string()]
    );
    assert_eq!(UserRegistered::decode(envelopes[1].payload.as_slice()).unwrap(), own);
    observer.unsubscribe();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_wakes_the_publishing_relay_here_or_on_another_replica() {
    let env = TestEnv::new();
    let pool = platform_database(&env, "outbox_wake", 5).await;
    let kafka = user_topic(&env).await;
    let observer = env.observer(&kafka.config.topic(topics::USER));
    // Polling so rare that within this test only a wake-up can publish.
    let config = RelayConfig { poll_interval: Duration::from_secs(3600), ..RelayConfig::default() };

    // Two replicas of one service: `here` publishes, `there` waits for the lock.
    let (here, there) = (Outbox::new("test"), Outbox::new("test"));
    tokio::spawn(OutboxRelay::new(pool.clone(), kafka.clone(), &here, config.clone()).run(env.shutdown.clone()));
    eventually("a relay holds the publisher lock", Duration::from_secs(10), || {
        let pool = pool.clone();
        async move {
            let held: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM pg_locks l JOIN pg_database d ON d.oid = l.database
                 WHERE l.locktype = 'advisory' AND l.granted AND d.datname = current_database()",
            )
            .fetch_one(&pool)
            .await
            .ok()?;
            (held == 1).then_some(())
        }
    })
    .await;
    tokio::spawn(OutboxRelay::new(pool.clone(), kafka.clone(), &there, config).run(env.shutdown.clone()));

    let write = |outbox: Outbox, user: &'static str| {
        let pool = pool.clone();
        async move {
            let mut tx = pool.begin().await.unwrap();
            let event = UserRegistered { user_id: user.into(), ..Default::default() };
            let id = outbox.enqueue(&mut tx, &event).await.unwrap();
            outbox.commit(tx).await.unwrap();
            id.to_string()
        }
    };
    let ids = |seen: Vec<Vec<u8>>| -> Vec<String> {
        seen.iter()
            .map(|b| shopmesh_platform::pb::events::v1::EventEnvelope::decode(b.as_slice()).unwrap().id)
            .collect()
    };

    // Written on the other replica: its wake-up reaches the publisher as a NOTIFY.
    let from_there = write(there.clone(), "written-there").await;
    let seen = drain(&observer, Duration::from_secs(20), Duration::from_secs(1)).await;
    assert_eq!(ids(seen), vec![from_there], "published on the other replica's wake-up");

    // Written beside the publisher: woken in-process.
    let from_here = write(here.clone(), "written-here").await;
    let seen = drain(&observer, Duration::from_secs(20), Duration::from_secs(1)).await;
    assert_eq!(ids(seen), vec![from_here], "published on this process's wake-up");
    observer.unsubscribe();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inbox_records_a_batch_in_one_statement_and_names_only_new_events() {
    let env = TestEnv::new();
    let pool = platform_database(&env, "inbox_batch", 2).await;
    let received =
        |user: &str| ReceivedEvent::decode_envelope(&registered(user).encode_to_vec(), topics::USER, 0, 0).unwrap();
    let (seen, fresh, other) = (received("seen"), received("fresh"), received("other"));
    let mut conn = pool.acquire().await.unwrap();
    assert!(shopmesh_platform::inbox::record(&mut conn, "probe", &seen).await.unwrap());

    // A batch holding an already processed event and the same new one twice.
    let mut tx = pool.begin().await.unwrap();
    let new = shopmesh_platform::inbox::record_all(&mut tx, "probe", &[&seen, &fresh, &fresh]).await.unwrap();
    assert_eq!(new, [fresh.event_id].into(), "only the unseen event is new, and once");
    tx.rollback().await.unwrap();

    // Rolled back with its effects: the same batch is new again.
    let mut tx = pool.begin().await.unwrap();
    let new = shopmesh_platform::inbox::record_all(&mut tx, "probe", &[&fresh, &other]).await.unwrap();
    assert_eq!(new, [fresh.event_id, other.event_id].into());
    tx.commit().await.unwrap();
    // Another consumer keeps an inbox of its own.
    let mut tx = pool.begin().await.unwrap();
    let new = shopmesh_platform::inbox::record_all(&mut tx, "other-consumer", &[&seen]).await.unwrap();
    assert_eq!(new, [seen.event_id].into());
    tx.commit().await.unwrap();
    assert!(shopmesh_platform::inbox::record_all(&mut conn, "probe", &[]).await.unwrap().is_empty());
}

/// Applies UserRegistered like `CountingHandler`, refusing user "poison"
/// for good; after each commit it checks, over another connection, that
/// what it is told about is there for everyone to read.
struct CommitWatcher {
    /// (event id, its row visible outside the transaction) per call.
    told: Mutex<Vec<(uuid::Uuid, bool)>>,
}

#[async_trait::async_trait]
impl EventHandler for CommitWatcher {
    fn wants(&self, event_type: &str) -> bool {
        CountingHandler.wants(event_type)
    }

    async fn handle(&self, tx: &mut PgConnection, event: &ReceivedEvent) -> Result<(), HandlerError> {
        if event.payload::<UserRegistered>()?.user_id == "poison" {
            return Err(HandlerError::Permanent("poison".into()));
        }
        CountingHandler.handle(tx, event).await
    }

    async fn after_commit(&self, pool: &sqlx::PgPool, applied: &[&ReceivedEvent]) {
        for event in applied {
            let visible = times_applied(pool, event.event_id).await.unwrap() == 1;
            self.told.lock().unwrap().push((event.event_id, visible));
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_commit_hears_of_each_applied_event_once_and_only_once_it_is_committed() {
    let env = TestEnv::new();
    let pool = counting_database(&env, "after_commit", 5).await;
    let kafka = user_topic(&env).await;

    // One key, one partition: the consumer most likely takes all four in
    // one batch, which the poison rolls back before each is applied alone.
    let (first, poison, second) = (registered("u1"), registered("poison"), registered("u2"));
    for e in [&first, &poison, &first, &second] {
        publish_raw(&kafka, topics::USER, "watched", &e.encode_to_vec()).await;
    }
    let watcher = Arc::new(CommitWatcher { told: Mutex::default() });
    spawn_probe(&env, &pool, &kafka, watcher.clone());

    let id = |e: &shopmesh_platform::pb::events::v1::EventEnvelope| e.id.parse::<uuid::Uuid>().unwrap();
    eventually("both good events applied", Duration::from_secs(30), || {
        let told = watcher.told.lock().unwrap().len();
        async move { (told >= 2).then_some(()) }
    })
    .await;
    // Anything late (a duplicate, the dead-lettered poison) would show by now.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut told = watcher.told.lock().unwrap().clone();
    told.sort();
    let mut expected = vec![(id(&first), true), (id(&second), true)];
    expected.sort();
    assert_eq!(told, expected, "each applied event once, its effect committed; the poison and the duplicate never");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_waits_out_a_database_outage_instead_of_being_dead_lettered() {
    let env = TestEnv::new(); // KAFKA_MAX_ATTEMPTS=3: dead-lettered within a second, if counted
    let pool = counting_database(&env, "outage", 2).await;
    let kafka = user_topic(&env).await;
    let dlq = env.observer(&kafka.config.topic(&topics::dlq(topics::USER)));

    // The database goes away: new sessions refused, the pool's ended.
    let name = format!("t{}_outage", env.id);
    let admin = shopmesh_platform::db::connect(&format!("{}/postgres", shopmesh_platform::testing::postgres_url()), 1)
        .await
        .unwrap();
    let allow = |on: bool| sqlx::AssertSqlSafe(format!("ALTER DATABASE \"{name}\" WITH ALLOW_CONNECTIONS {on}"));
    sqlx::query(allow(false)).execute(&admin).await.unwrap();
    sqlx::query("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1")
        .bind(&name)
        .execute(&admin)
        .await
        .unwrap();

    let envelope = registered("patient");
    publish_raw(&kafka, topics::USER, "patient", &envelope.encode_to_vec()).await;
    spawn_probe(&env, &pool, &kafka, Arc::new(CountingHandler));

    // Well past three attempts' back-off (and the group join), still down.
    tokio::time::sleep(Duration::from_secs(6)).await;
    sqlx::query(allow(true)).execute(&admin).await.unwrap();
    let id: uuid::Uuid = envelope.id.parse().unwrap();
    applied_once("applied once the database is back", &pool, id).await;
    let dead = drain(&dlq, Duration::from_secs(1), Duration::from_secs(1)).await;
    assert!(dead.is_empty(), "nothing dead-lettered during the outage");
    dlq.unsubscribe();
}

/// Waits until the user topic holds at least `n` dead letters; returns them.
async fn dead_letters(kafka: &Kafka, n: usize) -> Vec<shopmesh_platform::dlq::DeadLetter> {
    eventually(&format!("{n} dead letters"), Duration::from_secs(30), || async {
        let letters = shopmesh_platform::dlq::list(kafka, topics::USER).await.unwrap();
        (letters.len() >= n).then_some(letters)
    })
    .await
}

/// Refuses events for good while `broken`, as a bug would; applies them
/// like `CountingHandler` once fixed.
struct FixableHandler {
    broken: std::sync::atomic::AtomicBool,
}

#[async_trait::async_trait]
impl EventHandler for FixableHandler {
    fn wants(&self, event_type: &str) -> bool {
        CountingHandler.wants(event_type)
    }

    async fn handle(&self, tx: &mut PgConnection, event: &ReceivedEvent) -> Result<(), HandlerError> {
        if self.broken.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(HandlerError::Permanent("the handler has a bug".into()));
        }
        CountingHandler.handle(tx, event).await
    }
}

/// A dead letter can be listed, and once its cause is fixed, replayed: a
/// replay before the fix dead-letters it again (and stops at the end the
/// topic had, not chasing it); the one after the fix sends only the newer
/// letter, which the consumer applies once; a replay for another consumer
/// passes it over; nothing is sent twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_letter_is_listed_and_once_fixed_replayed_to_its_consumer_once() {
    use shopmesh_platform::dlq::{self, Replayed};
    let env = TestEnv::new();
    let pool = counting_database(&env, "dlq_replay", 2).await;
    let kafka = user_topic(&env).await;
    let handler = Arc::new(FixableHandler { broken: true.into() });
    spawn_probe(&env, &pool, &kafka, handler.clone());

    let envelope = registered("unlucky");
    publish_raw(&kafka, topics::USER, "unlucky", &envelope.encode_to_vec()).await;
    let letters = dead_letters(&kafka, 1).await;
    assert_eq!(letters.len(), 1);
    assert_eq!((letters[0].consumer.as_str(), letters[0].event_id.as_str()), ("probe", envelope.id.as_str()));
    assert!(letters[0].error.contains("the handler has a bug"), "{letters:?}");
    assert_eq!(letters[0].event_type, "shopmesh.events.v1.UserRegistered");
    let id: uuid::Uuid = envelope.id.parse().unwrap();

    let only = |replayed, skipped| Replayed { replayed, skipped, ..Replayed::default() };
    assert_eq!(dlq::replay(&kafka, topics::USER, Some("search")).await.unwrap(), only(0, 1));
    assert_eq!(dlq::replay(&kafka, topics::USER, Some("probe")).await.unwrap(), only(1, 0), "replayed before the fix");
    let letters = dead_letters(&kafka, 2).await;
    assert_eq!(letters.len(), 2, "dead-lettered again, once: {letters:?}");
    assert_eq!(letters[1].consumer, "probe", "the newest dlq headers count");
    assert_eq!(letters[1].event_id, envelope.id);

    handler.broken.store(false, std::sync::atomic::Ordering::SeqCst);
    assert_eq!(dlq::replay(&kafka, topics::USER, Some("probe")).await.unwrap(), only(1, 0), "only the newer letter");
    applied_once("applied once replayed", &pool, id).await;
    assert_eq!(dlq::replay(&kafka, topics::USER, Some("probe")).await.unwrap(), only(0, 0), "nothing sent twice");
    assert_eq!(dlq::list(&kafka, topics::USER).await.unwrap().len(), 2, "listing and replaying leave the letters");
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(times_applied(&pool, id).await.unwrap(), 1);
}

/// Two consumers that gave up on the same message left a letter each; a
/// replay of all letters sends it back once, which both see: while they
/// still fail, the letters stay two per round instead of doubling, and
/// once fixed each applies it once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_two_consumers_dead_lettered_is_replayed_once_to_both() {
    use shopmesh_platform::dlq::{self, Replayed};
    let env = TestEnv::new();
    let kafka = user_topic(&env).await;
    let mut consumers = Vec::new();
    for name in ["probe", "search"] {
        let pool = counting_database(&env, &format!("dlq_{name}"), 2).await;
        let handler = Arc::new(FixableHandler { broken: true.into() });
        // Two services, two producers. (Both letters sent together by one
        // producer met a Tansu fault under load: the partition's end as the
        // broker reports it stopped short of the second, so `list` never
        // showed it.)
        spawn_user_consumer(&env, name, &pool, &env.kafka(), handler.clone());
        consumers.push((pool, handler));
    }
    let consumers_of = |letters: &[dlq::DeadLetter]| {
        let mut names: Vec<String> = letters.iter().map(|l| l.consumer.clone()).collect();
        names.sort();
        names
    };

    let envelope = registered("twice_unlucky");
    publish_raw(&kafka, topics::USER, "twice_unlucky", &envelope.encode_to_vec()).await;
    assert_eq!(consumers_of(&dead_letters(&kafka, 2).await), ["probe", "search"]);

    let once = Replayed { replayed: 1, same_message: 1, ..Replayed::default() };
    assert_eq!(dlq::replay(&kafka, topics::USER, None).await.unwrap(), once, "still broken");
    let again = dead_letters(&kafka, 4).await;
    assert_eq!(consumers_of(&again[2..]), ["probe", "search"], "each dead-lettered the one copy");
    // A second copy would have come back from both within this wait.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(dlq::list(&kafka, topics::USER).await.unwrap().len(), 4, "two letters per round, not doubling");

    for (_, handler) in &consumers {
        handler.broken.store(false, std::sync::atomic::Ordering::SeqCst);
    }
    assert_eq!(dlq::replay(&kafka, topics::USER, None).await.unwrap(), once, "fixed");
    let id: uuid::Uuid = envelope.id.parse().unwrap();
    for (pool, _) in &consumers {
        applied_once("applied once by each consumer", pool, id).await;
    }
    assert_eq!(dlq::replay(&kafka, topics::USER, None).await.unwrap(), Replayed::default(), "nothing sent twice");
}

/// Event topics keep a message for less time than inboxes remember its id,
/// whatever the broker's default: a group that starts over from the oldest
/// offset cannot meet an event it applied and forgot. Dead letters keep
/// the broker's default.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn event_topics_keep_messages_for_less_time_than_inboxes_remember() {
    use rdkafka::admin::{AdminClient, AdminOptions, ResourceSpecifier};
    use shopmesh_platform::kafka::{EVENT_RETENTION, EVENT_SEGMENT};
    assert!(EVENT_RETENTION + EVENT_SEGMENT < shopmesh_platform::inbox::RETENTION);
    let env = TestEnv::new();
    let kafka = user_topic(&env).await;
    let admin: AdminClient<_> =
        rdkafka::ClientConfig::new().set("bootstrap.servers", &kafka.config.brokers).create().unwrap();
    let (events, letters) = (kafka.config.topic(topics::USER), kafka.config.topic(&topics::dlq(topics::USER)));
    let described = admin
        .describe_configs(
            &[ResourceSpecifier::Topic(&events), ResourceSpecifier::Topic(&letters)],
            &AdminOptions::new().request_timeout(Some(Duration::from_secs(10))),
        )
        .await
        .unwrap();
    let (events_config, letters_config) = match &described[..] {
        [Ok(e), Ok(l)] => (e, l),
        other => panic!("{other:?}"),
    };
    // Values, not their source: Tansu lists only what a topic sets, calling
    // it the default. (Kafka's default retention is 7 days too; its default
    // segment, 7 days, is not.)
    let set = |name: &str| events_config.get(name).and_then(|e| e.value.clone());
    assert_eq!(set("retention.ms"), Some(EVENT_RETENTION.as_millis().to_string()), "{events}");
    assert_eq!(set("segment.ms"), Some(EVENT_SEGMENT.as_millis().to_string()), "{events}");
    let dlq_retention = letters_config.get("retention.ms");
    assert!(dlq_retention.is_none_or(|e| e.is_default), "{letters} keeps the broker's default: {dlq_retention:?}");
}
