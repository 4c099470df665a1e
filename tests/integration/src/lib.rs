//! Test harness: starts services in-process on ephemeral ports against the
//! real PostgreSQL (a fresh database per test), the real Redis (a key prefix
//! per test) and the real Kafka-protocol broker (a topic prefix per test).
//!
//! Endpoints come from `SHOPMESH_TEST_POSTGRES_URL`, `SHOPMESH_TEST_REDIS_URL`
//! and `SHOPMESH_TEST_KAFKA_BROKERS`, defaulting to the local stack that
//! `scripts/test.sh` brings up.

pub mod broker;
pub mod process;
pub mod shop;
pub mod tokens;

use std::sync::Mutex;
use std::time::Duration;

use shopmesh_platform::config::{ConfigSource, ServiceConfig};
use shopmesh_platform::kafka::Kafka;
use shopmesh_platform::runtime::{Launched, ServiceDef, launch};
use shopmesh_platform::shutdown::Shutdown;

pub use shopmesh_platform::testing::{kafka_brokers, postgres_url, redis_url};

static TELEMETRY: std::sync::OnceLock<shopmesh_platform::telemetry::TelemetryGuard> = std::sync::OnceLock::new();

/// Installs this process's telemetry once; the first call decides the
/// exporters (a tracing test passes an in-memory one before any `TestEnv`).
pub fn install_telemetry(
    configure: impl FnOnce(
        opentelemetry_sdk::trace::TracerProviderBuilder,
    ) -> opentelemetry_sdk::trace::TracerProviderBuilder,
) {
    TELEMETRY.get_or_init(|| shopmesh_platform::telemetry::init_with("shopmesh-tests", configure));
}

/// One test's isolated slice of the real infrastructure.
pub struct TestEnv {
    /// Short unique id; prefixes databases, Redis keys, topics and groups.
    pub id: String,
    pub shutdown: Shutdown,
    source: ConfigSource,
    databases: Mutex<Vec<String>>,
}

impl TestEnv {
    pub fn new() -> Self {
        install_telemetry(|b| b);
        let id = uuid::Uuid::now_v7().simple().to_string()[20..].to_owned();
        let source = ConfigSource::from_pairs([
            ("REDIS_URL", redis_url()),
            ("REDIS_KEY_PREFIX", format!("t{id}:")),
            ("KAFKA_BROKERS", kafka_brokers()),
            ("KAFKA_TOPIC_PREFIX", format!("t{id}.")),
            ("KAFKA_SESSION_TIMEOUT_MS", "3000".to_owned()),
            ("KAFKA_HEARTBEAT_MS", "1000".to_owned()),
            ("KAFKA_MAX_POLL_INTERVAL_MS", "6000".to_owned()),
            ("KAFKA_MAX_ATTEMPTS", "3".to_owned()),
            ("GRPC_ADDR", "127.0.0.1:0".to_owned()),
            ("HTTP_ADDR", "127.0.0.1:0".to_owned()),
            ("SHUTDOWN_GRACE_MS", "5000".to_owned()),
            ("DB_MAX_CONNECTIONS", "2".to_owned()),
        ]);
        Self { id, shutdown: Shutdown::new(), source, databases: Mutex::new(Vec::new()) }
    }

    /// Adds or replaces a setting for every service of this test.
    pub fn set(&mut self, key: &str, value: impl Into<String>) {
        self.source = self.source.clone().set(key, value);
    }

    pub fn source(&self) -> &ConfigSource {
        &self.source
    }

    /// Creates (once) and returns this test's database for `service`.
    pub async fn database_url(&self, service: &str) -> String {
        let name = format!("t{}_{service}", self.id);
        let url = shopmesh_platform::testing::database_url(&name).await;
        let mut dbs = self.databases.lock().unwrap();
        if !dbs.contains(&name) {
            dbs.push(name);
        }
        url
    }

    /// This env's settings plus `def`'s own database.
    pub async fn service_source(&self, def: &ServiceDef) -> ConfigSource {
        let name = def.spec.name;
        let mut source = self.source.clone();
        if def.spec.needs.postgres {
            source = source.set(&format!("{name}.DATABASE_URL"), self.database_url(name).await);
        }
        source
    }

    pub async fn config(&self, def: &ServiceDef) -> ServiceConfig {
        let source = self.service_source(def).await;
        ServiceConfig::load(def.spec.name, &source, def.spec.needs).expect("test config is complete")
    }

    /// Starts `def` in-process on ephemeral ports.
    pub async fn launch(&self, def: &'static ServiceDef) -> Launched {
        self.launch_stoppable(def, self.shutdown.child()).await
    }

    /// Starts `def` with its own shutdown (also triggered when the env
    /// drops), so a test can stop it mid-flight and start it again.
    pub async fn launch_stoppable(&self, def: &'static ServiceDef, shutdown: Shutdown) -> Launched {
        let config = self.config(def).await;
        launch(def, config, shutdown).await.expect("service starts")
    }

    /// Points every service launched from now on at `auth`'s JWKS.
    pub fn trust_auth(&mut self, auth: &Launched) {
        self.set("JWKS_URL", format!("http://{}/.well-known/jwks.json", auth.http_addr));
    }

    /// Starts the gateway in front of `backends` (each proto service of a
    /// backend routes to its gRPC address); returns its base URL. Settings
    /// set on this env (rate limits, `GATEWAY_UPSTREAMS`, …) apply.
    pub async fn launch_gateway(&self, backends: &[(&ServiceDef, std::net::SocketAddr)]) -> String {
        let mut source = self.source.clone().set("GATEWAY_LISTEN", "127.0.0.1:0");
        for (def, grpc_addr) in backends {
            source = source.set(&format!("{}_URL", def.spec.name.to_uppercase()), format!("http://{grpc_addr}"));
        }
        let services: Vec<(&str, &[&str])> =
            backends.iter().map(|(d, _)| (d.spec.name, d.spec.grpc_services)).collect();
        let settings = shopmesh_gateway::settings::GatewaySettings::load(&source, &services).expect("gateway config");
        let gateway =
            shopmesh_gateway::settings::launch(settings, self.shutdown.clone()).await.expect("gateway starts");
        format!("http://{}", gateway.addr)
    }

    /// A Kafka handle with this test's prefix.
    pub fn kafka(&self) -> Kafka {
        let cfg = ServiceConfig::load(
            "test",
            &self.source,
            shopmesh_platform::config::Needs { kafka: true, ..Default::default() },
        )
        .expect("kafka config")
        .kafka
        .expect("kafka configured");
        Kafka::connect(cfg, "tests").expect("kafka client")
    }
}

impl Default for TestEnv {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for TestEnv {
    fn drop(&mut self) {
        self.shutdown.trigger();
        let dbs = std::mem::take(&mut *self.databases.lock().unwrap());
        if dbs.is_empty() {
            return;
        }
        // Drop can't await: clean up on a thread with its own runtime.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(async move {
                // Give services a moment to release their pools first.
                tokio::time::sleep(Duration::from_millis(200)).await;
                shopmesh_platform::testing::drop_databases(dbs).await;
            });
        })
        .join();
    }
}

/// Publishes `bytes` (an encoded envelope) on logical `topic` under `key`,
/// as a service's outbox relay would.
pub async fn publish_raw(kafka: &Kafka, topic: &str, key: &str, bytes: &[u8]) {
    let topic = kafka.config.topic(topic);
    let record = rdkafka::producer::FutureRecord::to(&topic).key(key).payload(bytes);
    kafka.producer().send(record, Duration::from_secs(10)).await.expect("broker accepts the event");
}

/// Wraps `event` in a new envelope from `source` and publishes it on its
/// topic, keyed by its aggregate; returns the envelope bytes.
pub async fn publish_event<E: shopmesh_platform::events::DomainEvent>(
    kafka: &Kafka,
    source: &str,
    event: &E,
) -> Vec<u8> {
    let bytes = prost::Message::encode_to_vec(&shopmesh_platform::events::envelope(source, event));
    publish_raw(kafka, E::TOPIC, event.aggregate_id(), &bytes).await;
    bytes
}

/// Payloads arriving on `consumer` until it has been quiet for `quiet`
/// (waiting up to `first_wait` for the first one).
pub async fn drain(
    consumer: &rdkafka::consumer::StreamConsumer,
    first_wait: Duration,
    quiet: Duration,
) -> Vec<Vec<u8>> {
    use rdkafka::Message as _;
    let mut out = Vec::new();
    let mut wait = first_wait;
    while let Ok(Ok(msg)) = tokio::time::timeout(wait, consumer.recv()).await {
        out.push(msg.payload().unwrap_or_default().to_vec());
        wait = quiet;
    }
    out
}

impl TestEnv {
    /// A consumer of its own group reading `topic` (a full, prefixed name)
    /// from the beginning: watches what services publish.
    pub fn observer(&self, topic: &str) -> rdkafka::consumer::StreamConsumer {
        use rdkafka::consumer::Consumer as _;
        let consumer: rdkafka::consumer::StreamConsumer = rdkafka::ClientConfig::new()
            .set("bootstrap.servers", kafka_brokers())
            .set("group.id", format!("t{}.observer", self.id))
            .set("auto.offset.reset", "earliest")
            .set("enable.auto.commit", "false")
            .set("session.timeout.ms", "3000")
            .set("heartbeat.interval.ms", "1000")
            .create()
            .expect("observer consumer");
        consumer.subscribe(&[topic]).expect("subscribe");
        consumer
    }
}

/// Consumer groups of the saga and the logical topics each one reads.
pub const SAGA_CONSUMERS: &[(&str, &[&str])] = &[
    ("inventory", &["order-events", "payment-events"]),
    ("payment", &["inventory-events", "order-events"]),
    ("order", &["inventory-events", "payment-events"]),
    ("notification", &["order-events", "payment-events"]),
    ("cart", &["order-events"]),
];

impl TestEnv {
    /// Waits until each (group, topics) has committed offsets at the end of
    /// every partition: everything published so far has been processed.
    pub async fn wait_consumers_caught_up(&self, consumers: &[(&str, &[&str])], timeout: Duration) {
        use rdkafka::consumer::{BaseConsumer, Consumer};
        use rdkafka::{Offset, TopicPartitionList};
        let kafka = self.kafka();
        let groups: Vec<(String, Vec<String>)> = consumers
            .iter()
            .map(|(g, ts)| (kafka.config.group(g), ts.iter().map(|t| kafka.config.topic(t)).collect()))
            .collect();
        // The broker this env's services use (a test may point them elsewhere).
        let bootstrap = kafka.config.brokers.clone();
        eventually("consumers caught up", timeout, || {
            let (groups, bootstrap) = (groups.clone(), bootstrap.clone());
            async move {
                tokio::task::spawn_blocking(move || {
                    for (group, topics) in &groups {
                        let consumer: BaseConsumer = rdkafka::ClientConfig::new()
                            .set("bootstrap.servers", &bootstrap)
                            .set("group.id", group)
                            .create()
                            .ok()?;
                        let t = Duration::from_secs(5);
                        let mut tpl = TopicPartitionList::new();
                        let mut ends = Vec::new();
                        for topic in topics {
                            let meta = consumer.fetch_metadata(Some(topic), t).ok()?;
                            for p in meta.topics().first()?.partitions() {
                                tpl.add_partition(topic, p.id());
                                ends.push((topic.clone(), p.id(), consumer.fetch_watermarks(topic, p.id(), t).ok()?.1));
                            }
                        }
                        let committed = consumer.committed_offsets(tpl, t).ok()?;
                        for (topic, partition, high) in ends {
                            let at = match committed.find_partition(&topic, partition)?.offset() {
                                Offset::Offset(n) => n,
                                _ => 0,
                            };
                            if at < high {
                                return None;
                            }
                        }
                    }
                    Some(())
                })
                .await
                .ok()?
            }
        })
        .await
    }
}

/// Polls `check` until it returns `Some`, or panics with `what` after `timeout`.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        if tokio::time::Instant::now() > deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
