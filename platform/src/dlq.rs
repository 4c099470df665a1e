//! Dead letters: what is in `<topic>.dlq`, and sending it back once its
//! cause is fixed. A dead letter failed for good at one consumer; `replay`
//! publishes it to its original topic as it was (same key, payload and
//! headers; its `dlq_*` headers ride along and the newest of each counts).
//! Every consumer group of that topic sees it again: those that applied it
//! drop it through their inbox, the one that dead-lettered it applies it
//! now, or dead-letters it again. A message several consumers gave up on
//! left a letter from each; one replay sends it back once, to them all.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Headers, Message};
use rdkafka::producer::FutureRecord;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

use crate::events::ReceivedEvent;
use crate::kafka::{Kafka, topics};

/// How long the broker may stay silent before a read gives up.
const READ_TIMEOUT: Duration = Duration::from_secs(15);

/// Inboxes forget an event after `inbox::RETENTION`; a letter older than
/// this (a day's margin) could be applied twice by consumers that applied
/// it long ago, so replay leaves it to a person.
const OLDEST_REPLAYABLE: Duration = crate::inbox::RETENTION.saturating_sub(Duration::from_secs(24 * 3600));

/// One dead letter, as `list` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    pub partition: i32,
    pub offset: i64,
    /// The consumer that gave up on it last, its error and its attempts.
    pub consumer: String,
    pub error: String,
    pub attempts: String,
    /// From the event's envelope; blank if the payload is not one.
    pub event_type: String,
    pub event_id: String,
}

/// What one `replay` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Replayed {
    /// Sent back to their original topic.
    pub replayed: usize,
    /// Passed over: another consumer dead-lettered them.
    pub skipped: usize,
    /// Passed over: older than the inboxes remember (see `OLDEST_REPLAYABLE`).
    pub too_old: usize,
    /// Passed over: another consumer's letter for the same message was
    /// sent back by this replay (every group of the topic sees it).
    pub same_message: usize,
}

/// Every dead letter of `logical_topic`, oldest first per partition.
pub async fn list(kafka: &Kafka, logical_topic: &str) -> anyhow::Result<Vec<DeadLetter>> {
    // A group of its own that never commits: listing moves nothing.
    let group = format!("dlq-list.{}", uuid::Uuid::new_v4());
    let reader = DlqReader::open(kafka, logical_topic, &group, false)?;
    let mut letters = Vec::new();
    reader
        .read(|msg| {
            let header = |name| newest_header(msg, name).unwrap_or_default();
            let event = envelope(msg);
            letters.push(DeadLetter {
                partition: msg.partition(),
                offset: msg.offset(),
                consumer: header("dlq_consumer"),
                error: header("dlq_error"),
                attempts: header("dlq_attempts"),
                event_type: event.as_ref().map(|e| e.event_type().to_owned()).unwrap_or_default(),
                event_id: event.as_ref().map(|e| e.event_id.to_string()).unwrap_or_default(),
            });
            async { Ok(()) }
        })
        .await?;
    Ok(letters)
}

/// Publishes the dead letters of `logical_topic` that no earlier replay
/// with the same `only_consumer` sent, back to their original topic, then
/// remembers how far it got. It reads up to the end the topic had when it
/// started, so letters that fail again and come back are left for the
/// next replay. With `only_consumer`, only the letters that consumer
/// dead-lettered go back; the others are passed over. Letters that name the
/// same original message go back once: sent once per letter, a message
/// every consumer fails on (a payload none can decode) would come back
/// from each of them once per copy, multiplying with every replay.
pub async fn replay(kafka: &Kafka, logical_topic: &str, only_consumer: Option<&str>) -> anyhow::Result<Replayed> {
    let group = kafka.config.group(&format!("dlq-replay.{}", only_consumer.unwrap_or("all")));
    let reader = DlqReader::open(kafka, logical_topic, &group, true)?;
    let default_topic = kafka.config.topic(logical_topic);
    let oldest = chrono::Utc::now() - chrono::Duration::from_std(OLDEST_REPLAYABLE).unwrap_or_default();
    let mut done = Replayed::default();
    let mut sent_back = HashSet::new();
    reader
        .read(|msg| {
            let wanted = only_consumer.is_none_or(|only| newest_header(msg, "dlq_consumer").as_deref() == Some(only));
            let event = envelope(msg);
            let occurred = event.as_ref().and_then(|e| e.occurred_at());
            let send = if !wanted {
                done.skipped += 1;
                None
            } else if occurred.is_some_and(|t| t < oldest) {
                tracing::warn!(
                    partition = msg.partition(),
                    offset = msg.offset(),
                    "dead letter older than the inboxes remember; not replayed"
                );
                done.too_old += 1;
                None
            } else if original(msg, event.as_ref()).is_some_and(|it| !sent_back.insert(it)) {
                done.same_message += 1;
                None
            } else {
                done.replayed += 1;
                let to_topic = newest_header(msg, "dlq_original_topic").unwrap_or_else(|| default_topic.clone());
                // Copied without reading their names (see `newest_header`).
                let headers = msg.headers().map(|h| h.detach());
                Some((to_topic, msg.key().map(<[u8]>::to_vec), msg.payload().unwrap_or_default().to_vec(), headers))
            };
            async move {
                if let Some((topic, key, payload, headers)) = send {
                    let mut record = FutureRecord::to(&topic).payload(&payload);
                    if let Some(key) = &key {
                        record = record.key(key);
                    }
                    if let Some(headers) = headers {
                        record = record.headers(headers);
                    }
                    kafka.producer().send(record, READ_TIMEOUT).await?;
                }
                Ok(())
            }
        })
        .await?;
    Ok(done)
}

/// The message a letter holds: where it was read (topic, partition,
/// offset), as the consumer that dead-lettered it recorded, and its event
/// id if it has one (a topic recreated meanwhile reuses positions);
/// `None` if the position was not recorded.
fn original(msg: &BorrowedMessage<'_>, event: Option<&ReceivedEvent>) -> Option<[String; 4]> {
    let header = |name| newest_header(msg, name);
    let id = event.map(|e| e.event_id.to_string()).unwrap_or_default();
    Some([header("dlq_original_topic")?, header("dlq_original_partition")?, header("dlq_original_offset")?, id])
}

fn envelope(msg: &BorrowedMessage<'_>) -> Option<ReceivedEvent> {
    let payload = msg.payload().unwrap_or_default();
    ReceivedEvent::decode_envelope(payload, msg.topic(), msg.partition(), msg.offset()).ok()
}

/// The last value of header `name`: a letter replayed and dead-lettered
/// again carries each `dlq_*` header twice, the newest last. rust-rdkafka
/// panics reading a header name that is not UTF-8, which any producer can
/// write: such a letter reads as having no headers.
fn newest_header(msg: &BorrowedMessage<'_>, name: &str) -> Option<String> {
    let read = || {
        let value = msg.headers()?.iter().filter(|h| h.key == name).last()?.value?;
        Some(String::from_utf8_lossy(value).into_owned())
    };
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(read)).ok().flatten()
}

/// Reads a `.dlq` topic from the group's committed offsets (or the
/// beginning) up to the end each partition had when it opened, without
/// joining the group.
struct DlqReader {
    consumer: StreamConsumer,
    topic: String,
    /// Per partition still being read: the end it had at `open`.
    ends: HashMap<i32, i64>,
    commit: bool,
}

impl DlqReader {
    fn open(kafka: &Kafka, logical_topic: &str, group: &str, commit: bool) -> anyhow::Result<Self> {
        let topic = kafka.config.topic(&topics::dlq(logical_topic));
        let consumer: StreamConsumer = ClientConfig::new()
            .set("bootstrap.servers", &kafka.config.brokers)
            .set("group.id", group)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            // A committed offset the log no longer holds (retention, a
            // recreated topic) restarts from the oldest letter, never skips
            // to the end: a replayed duplicate is what inboxes absorb.
            .set("auto.offset.reset", "earliest")
            .create()?;
        let metadata = consumer.fetch_metadata(Some(&topic), READ_TIMEOUT)?;
        let partitions: Vec<i32> = metadata
            .topics()
            .iter()
            .filter(|t| t.name() == topic && t.error().is_none())
            .flat_map(|t| t.partitions().iter().map(|p| p.id()))
            .collect();
        anyhow::ensure!(!partitions.is_empty(), "no topic {topic}: no service has created it yet");
        let mut wanted = TopicPartitionList::new();
        for &p in &partitions {
            wanted.add_partition(&topic, p);
        }
        let committed = consumer.committed_offsets(wanted, READ_TIMEOUT)?;
        let mut start = TopicPartitionList::new();
        let mut ends = HashMap::new();
        for e in committed.elements() {
            let (low, high) = consumer.fetch_watermarks(&topic, e.partition(), READ_TIMEOUT)?;
            let from = match e.offset() {
                Offset::Offset(o) if commit && (low..=high).contains(&o) => o,
                _ => low,
            };
            if from < high {
                start.add_partition_offset(&topic, e.partition(), Offset::Offset(from))?;
                ends.insert(e.partition(), high);
            }
        }
        if !ends.is_empty() {
            consumer.assign(&start)?;
        }
        Ok(Self { consumer, topic, ends, commit })
    }

    /// Hands each message to `each` in order until every partition reached
    /// the end it had at `open`; then, if this reader commits, records how
    /// far it got.
    async fn read<F, Fut>(mut self, mut each: F) -> anyhow::Result<()>
    where
        F: FnMut(&BorrowedMessage<'_>) -> Fut,
        Fut: std::future::Future<Output = Result<(), KafkaError>>,
    {
        let mut next: HashMap<i32, i64> = HashMap::new();
        while !self.ends.is_empty() {
            let msg = match tokio::time::timeout(READ_TIMEOUT, self.consumer.recv()).await {
                Err(_) => anyhow::bail!("no answer from the broker reading {}", self.topic),
                Ok(Err(e)) => return Err(e.into()),
                Ok(Ok(msg)) => msg,
            };
            let partition = msg.partition();
            let Some(&end) = self.ends.get(&partition) else { continue };
            if msg.offset() < end {
                each(&msg).await?;
                next.insert(partition, msg.offset() + 1);
            }
            if msg.offset() + 1 >= end {
                self.ends.remove(&partition);
            }
        }
        if self.commit && !next.is_empty() {
            let mut done = TopicPartitionList::new();
            for (partition, offset) in next {
                done.add_partition_offset(&self.topic, partition, Offset::Offset(offset))?;
            }
            self.consumer.commit(&done, CommitMode::Sync)?;
        }
        Ok(())
    }
}
