//! Kafka wiring: an idempotent producer (acks=all), consumers with manual
//! commits, and topic creation. Every topic and group name goes through
//! [`KafkaConfig`]'s prefix so tests can share one broker.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::ClientContext;
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance, StreamConsumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{DeliveryResult, ToBytes};
use rdkafka::producer::{BaseProducer, BaseRecord, FutureRecord, Producer, ProducerContext};
use tokio::sync::oneshot;

use crate::config::KafkaConfig;

/// The logical topics of the platform (before prefixing).
pub mod topics {
    pub const USER: &str = "user-events";
    pub const PRODUCT: &str = "product-events";
    pub const ORDER: &str = "order-events";
    pub const INVENTORY: &str = "inventory-events";
    pub const PAYMENT: &str = "payment-events";
    pub const ALL: &[&str] = &[USER, PRODUCT, ORDER, INVENTORY, PAYMENT];

    /// Where messages that keep failing go.
    pub fn dlq(topic: &str) -> String {
        format!("{topic}.dlq")
    }
}

const PARTITIONS: i32 = 3;

/// How long event topics keep a message: well inside what inboxes remember
/// (`inbox::RETENTION`), so a group that starts over from the oldest
/// offset (its committed offsets expired while it was down) meets only
/// events its inbox still knows, never one it applied and forgot. The
/// broker deletes whole segments, so a message can outlive this by one
/// segment (`EVENT_SEGMENT`). The broker's default could be anything; dead
/// letters keep it (a person reads them, and replay refuses the old ones).
pub const EVENT_RETENTION: Duration = Duration::from_secs(crate::inbox::RETENTION.as_secs() / 2);
pub const EVENT_SEGMENT: Duration = Duration::from_secs(24 * 3600);

/// Logs group membership changes: when a consumer stalls, the first
/// question is whether it holds any partitions.
pub struct GroupLogging {
    group: String,
}

impl ClientContext for GroupLogging {
    /// librdkafka's periodic statistics carry each assigned partition's lag
    /// (high watermark minus position): exported as `kafka_consumer_lag`.
    fn stats(&self, statistics: rdkafka::Statistics) {
        for (topic, t) in &statistics.topics {
            for (partition, p) in &t.partitions {
                // -1 is the internal "unassigned" partition or an unknown lag.
                if *partition < 0 || p.consumer_lag < 0 {
                    continue;
                }
                metrics::gauge!(
                    "kafka_consumer_lag",
                    "consumer" => self.group.clone(),
                    "topic" => topic.clone(),
                    "partition" => partition.to_string(),
                )
                .set(p.consumer_lag as f64);
            }
        }
    }
}

impl ConsumerContext for GroupLogging {
    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(tpl) => {
                let parts: Vec<String> =
                    tpl.elements().iter().map(|e| format!("{}/{}", e.topic(), e.partition())).collect();
                tracing::info!(group = %self.group, partitions = %parts.join(","), "partitions assigned");
            }
            Rebalance::Revoke(tpl) => tracing::info!(group = %self.group, count = tpl.count(), "partitions revoked"),
            Rebalance::Error(e) => tracing::warn!(group = %self.group, error = %e, "rebalance failed"),
        }
    }
}

pub type GroupConsumer = StreamConsumer<GroupLogging>;

/// How soon a consumer must see a new event. Kafka answers a fetch as soon
/// as data arrives, so there both paces are equally prompt; Tansu answers
/// within about half the wait bound, so there the pace trades latency for
/// broker CPU.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pace {
    /// Someone waits on the effect: a saga step, a profile read back after
    /// sign-up, a cache a price change must reach, a cart emptied before
    /// its customer fills it again (`fetch_wait`).
    Prompt,
    /// Follow-up work nobody waits on, e.g. recording a notification
    /// (`relaxed_fetch_wait`).
    Relaxed,
}

/// A cheap-to-clone handle: config plus one shared producer.
#[derive(Clone)]
pub struct Kafka {
    pub config: KafkaConfig,
    client_id: Arc<str>,
    producer: Arc<RwLock<EventProducer>>,
    admin: Arc<AdminClient<DefaultClientContext>>,
}

fn build_producer(config: &KafkaConfig, client_id: &str) -> Result<EventProducer, KafkaError> {
    let producer = ClientConfig::new()
        .set("bootstrap.servers", &config.brokers)
        .set("client.id", client_id)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", config.linger.as_millis().to_string())
        .set("message.timeout.ms", config.message_timeout.as_millis().to_string())
        .set("compression.type", "lz4")
        .create_with_context(DeliveryReports)?;
    EventProducer::start(producer)
}

/// How long one poll of the delivery-report thread lasts. rust-rdkafka's
/// poll spins through the last sub-millisecond of each slice (its timeout
/// rounds down to 0 ms), so slices are long; a stopped producer's thread
/// ends within one.
const DELIVERY_POLL_SLICE: Duration = Duration::from_secs(1);

/// The platform's producer: an idempotent librdkafka producer whose delivery
/// reports are served by one thread that blocks on librdkafka's queue.
/// rust-rdkafka's `FutureProducer` polls in 100 ms slices instead, and each
/// slice's spinning end cost about 1% of a core per producer even when idle
/// (eight producers in `shopmesh dev`).
#[derive(Clone)]
pub struct EventProducer {
    inner: Arc<PolledProducer>,
}

/// Completes each message's delivery channel when librdkafka reports it.
pub struct DeliveryReports;

/// The sending half of one message's [`Delivery`].
type DeliveryReply = Box<oneshot::Sender<Result<(), KafkaError>>>;

impl ClientContext for DeliveryReports {}

impl ProducerContext for DeliveryReports {
    type DeliveryOpaque = DeliveryReply;

    fn delivery(&self, result: &DeliveryResult<'_>, reply: Self::DeliveryOpaque) {
        let _ = reply.send(result.as_ref().map(|_| ()).map_err(|(e, _)| e.clone()));
    }
}

struct PolledProducer {
    producer: Arc<BaseProducer<DeliveryReports>>,
    stop: Arc<AtomicBool>,
}

impl Drop for PolledProducer {
    /// The thread holds the producer until it sees `stop`, then drops it,
    /// so librdkafka's purge and flush usually run there, not on an async
    /// thread (unless the thread saw `stop` before this handle let go).
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// A message's broker acknowledgement, or why it was not delivered. It does
/// not keep the producer alive: await it while holding an [`EventProducer`].
pub struct Delivery(oneshot::Receiver<Result<(), KafkaError>>);

impl std::future::Future for Delivery {
    type Output = Result<(), KafkaError>;

    fn poll(mut self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<Self::Output> {
        std::pin::Pin::new(&mut self.0).poll(cx).map(|r| r.unwrap_or(Err(KafkaError::Canceled)))
    }
}

/// `record` as librdkafka takes it, carrying the channel its delivery
/// report completes.
fn with_delivery<'a, K, P>(record: FutureRecord<'a, K, P>) -> (BaseRecord<'a, K, P, DeliveryReply>, Delivery)
where
    K: ToBytes + ?Sized,
    P: ToBytes + ?Sized,
{
    let (reply, delivery) = oneshot::channel();
    let FutureRecord { topic, partition, payload, key, timestamp, headers } = record;
    (
        BaseRecord { topic, partition, payload, key, timestamp, headers, delivery_opaque: Box::new(reply) },
        Delivery(delivery),
    )
}

impl EventProducer {
    fn start(producer: BaseProducer<DeliveryReports>) -> Result<Self, KafkaError> {
        let producer = Arc::new(producer);
        let stop = Arc::new(AtomicBool::new(false));
        let (polled, stopped) = (producer.clone(), stop.clone());
        std::thread::Builder::new()
            .name("kafka-deliveries".into())
            .spawn(move || {
                while !stopped.load(Ordering::Relaxed) {
                    polled.poll(DELIVERY_POLL_SLICE);
                }
            })
            .map_err(|e| KafkaError::ClientCreation(format!("delivery report thread: {e}")))?;
        Ok(Self { inner: Arc::new(PolledProducer { producer, stop }) })
    }

    /// Queues `record`; the returned [`Delivery`] resolves when the broker
    /// acknowledged it or librdkafka gave up. Fails at once if the local
    /// queue refuses it (full, too large).
    pub fn enqueue<K, P>(&self, record: FutureRecord<'_, K, P>) -> Result<Delivery, KafkaError>
    where
        K: ToBytes + ?Sized,
        P: ToBytes + ?Sized,
    {
        let (base, delivery) = with_delivery(record);
        self.inner.producer.send(base).map(|()| delivery).map_err(|(e, _)| e)
    }

    /// Queues `record`, retrying a full local queue for up to `queue_timeout`,
    /// and waits for its delivery.
    pub async fn send<K, P>(&self, record: FutureRecord<'_, K, P>, queue_timeout: Duration) -> Result<(), KafkaError>
    where
        K: ToBytes + ?Sized,
        P: ToBytes + ?Sized,
    {
        let give_up = Instant::now() + queue_timeout;
        let (mut base, delivery) = with_delivery(record);
        loop {
            // A refused record comes back, so the retry sends that same one.
            match self.inner.producer.send(base) {
                Ok(()) => return delivery.await,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), refused))
                    if Instant::now() < give_up =>
                {
                    base = refused;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err((e, _)) => return Err(e),
            }
        }
    }

    /// The librdkafka client: metadata requests, fatal-error state.
    pub fn client(&self) -> &rdkafka::client::Client<DeliveryReports> {
        self.inner.producer.client()
    }

    /// Blocks until queued messages are delivered or `timeout` passes.
    pub fn flush(&self, timeout: Duration) -> Result<(), KafkaError> {
        self.inner.producer.flush(timeout)
    }
}

impl Kafka {
    pub fn connect(config: KafkaConfig, client_id: &str) -> Result<Self, KafkaError> {
        let producer = build_producer(&config, client_id)?;
        let admin = ClientConfig::new().set("bootstrap.servers", &config.brokers).create()?;
        Ok(Self {
            config,
            client_id: client_id.into(),
            producer: Arc::new(RwLock::new(producer)),
            admin: Arc::new(admin),
        })
    }

    /// The current producer (a cheap handle; it may be replaced, see below).
    pub fn producer(&self) -> EventProducer {
        self.producer.read().expect("producer lock").clone()
    }

    /// Whether `error` means the producer can never deliver again: a fatal
    /// librdkafka error, or a fenced/invalid idempotent epoch (seen after
    /// delivery timeouts during a long broker outage).
    pub fn is_unrecoverable(&self, error: &KafkaError) -> bool {
        use RDKafkaErrorCode::*;
        matches!(
            error.rdkafka_error_code(),
            Some(ProducerFenced | InvalidProducerEpoch | OutOfOrderSequenceNumber | UnknownProducerId | Fatal)
        ) || self.producer().client().fatal_error().is_some()
    }

    /// Swaps in a fresh producer (a new producer id). What it re-sends is an
    /// at-least-once duplicate that consumers' inboxes absorb.
    pub fn replace_producer(&self) -> Result<(), KafkaError> {
        let fresh = build_producer(&self.config, &self.client_id)?;
        *self.producer.write().expect("producer lock") = fresh;
        tracing::warn!(client = %self.client_id, "replaced a Kafka producer that could no longer deliver");
        metrics::counter!("kafka_producer_replaced_total", "client" => self.client_id.to_string()).increment(1);
        Ok(())
    }

    /// Creates each logical topic and its `.dlq` twin if missing. Topics that
    /// exist keep their settings (an operator's to change).
    pub async fn ensure_topics(&self, logical: &[&str]) -> Result<(), rdkafka::error::KafkaError> {
        let (retention, segment) = (EVENT_RETENTION.as_millis().to_string(), EVENT_SEGMENT.as_millis().to_string());
        let events: Vec<String> = logical.iter().map(|t| self.config.topic(t)).collect();
        let letters: Vec<String> = logical.iter().map(|t| self.config.topic(&topics::dlq(t))).collect();
        let new: Vec<NewTopic<'_>> = events
            .iter()
            .map(|n| {
                NewTopic::new(n, PARTITIONS, TopicReplication::Fixed(1))
                    .set("retention.ms", &retention)
                    .set("segment.ms", &segment)
            })
            .chain(letters.iter().map(|n| NewTopic::new(n, PARTITIONS, TopicReplication::Fixed(1))))
            .collect();
        let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
        for result in self.admin.create_topics(&new, &opts).await? {
            match result {
                Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((topic, code)) => {
                    return Err(rdkafka::error::KafkaError::AdminOp(code)).inspect_err(|_| {
                        tracing::error!(%topic, ?code, "creating topic failed");
                    });
                }
            }
        }
        Ok(())
    }

    /// A consumer in group `group` (prefixed) subscribed to `logical` topics.
    /// Only offsets the caller stored (of applied messages) are committed:
    /// every `commit_interval`, on rebalance and on close.
    pub fn consumer(
        &self,
        group: &str,
        logical: &[&str],
        pace: Pace,
    ) -> Result<GroupConsumer, rdkafka::error::KafkaError> {
        let group_id = self.config.group(group);
        let fetch_wait = match pace {
            Pace::Prompt => self.config.fetch_wait,
            Pace::Relaxed => self.config.relaxed_fetch_wait,
        };
        let c: GroupConsumer = ClientConfig::new()
            .set("bootstrap.servers", &self.config.brokers)
            .set("group.id", &group_id)
            .set("enable.auto.commit", "true")
            .set("auto.commit.interval.ms", self.config.commit_interval.as_millis().to_string())
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            .set("session.timeout.ms", self.config.session_timeout.as_millis().to_string())
            .set("heartbeat.interval.ms", self.config.heartbeat_interval.as_millis().to_string())
            .set("max.poll.interval.ms", self.config.max_poll_interval.as_millis().to_string())
            .set("enable.partition.eof", "false")
            .set("fetch.wait.max.ms", fetch_wait.as_millis().to_string())
            .set("statistics.interval.ms", "10000")
            .create_with_context(GroupLogging { group: group_id })?;
        let names: Vec<String> = logical.iter().map(|t| self.config.topic(t)).collect();
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        c.subscribe(&refs)?;
        Ok(c)
    }

    /// Readiness: the broker answers a metadata request.
    pub async fn check(&self) -> Result<(), String> {
        let producer = self.producer();
        tokio::task::spawn_blocking(move || {
            producer.client().fetch_metadata(None, Duration::from_secs(2)).map(|_| ()).map_err(|e| e.to_string())
        })
        .await
        .map_err(|e| e.to_string())?
    }

    /// Waits for in-flight produce requests (shutdown).
    pub async fn flush(&self, timeout: Duration) {
        let producer = self.producer();
        let _ = tokio::task::spawn_blocking(move || producer.flush(timeout)).await;
    }
}

/// Leaves the group promptly so a restarted consumer rejoins fast (closing
/// blocks on the broker, so it runs off the async threads).
pub async fn close_consumer(consumer: GroupConsumer) {
    let _ = tokio::task::spawn_blocking(move || {
        consumer.unsubscribe();
        drop(consumer);
    })
    .await;
}
