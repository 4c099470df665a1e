//! Dead letters: what is in `<topic>.dlq`, and sending it back once its
//! cause is fixed. A dead letter failed for good at one consumer; `replay`
//! publishes it to its original topic as it was (same key, payload and
//! headers, less the `dlq_*` ones). Every consumer group of that topic sees
//! it again: those that applied it drop it through their inbox, the one
//! that dead-lettered it applies it now, or dead-letters it again.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::FutureRecord;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

use crate::events::ReceivedEvent;
use crate::kafka::{Kafka, topics};

/// How long the broker may stay silent before a read gives up.
const READ_TIMEOUT: Duration = Duration::from_secs(15);

/// One dead letter, as `list` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    pub partition: i32,
    pub offset: i64,
    /// The consumer that gave up on it, its last error and its attempts.
    pub consumer: String,
    pub error: String,
    pub attempts: String,
    pub event_type: String,
    pub event_id: String,
}

/// What one `replay` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Replayed {
    /// Sent back to their original topic.
    pub replayed: usize,
    /// Left alone: another consumer dead-lettered them.
    pub skipped: usize,
}

/// Every dead letter of `logical_topic`, oldest first per partition.
pub async fn list(kafka: &Kafka, logical_topic: &str) -> anyhow::Result<Vec<DeadLetter>> {
    // A group of its own that never commits: listing moves nothing.
    let group = format!("dlq-list.{}", uuid::Uuid::new_v4());
    let reader = DlqReader::open(kafka, logical_topic, &group, false)?;
    let mut letters = Vec::new();
    reader
        .read_to_end(|msg| {
            let header = |name| header(msg, name).unwrap_or_default();
            // From the envelope, not the headers: whatever wrote the event
            // may not have set them; blank if even the envelope is unreadable.
            let payload = msg.payload().unwrap_or_default();
            let event = ReceivedEvent::decode_envelope(payload, msg.topic(), msg.partition(), msg.offset()).ok();
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
/// sent (with the same `only_consumer`) back to their original topic,
/// then remembers how far it got. With `only_consumer`, only the letters
/// that consumer dead-lettered go back; the others are passed over.
pub async fn replay(kafka: &Kafka, logical_topic: &str, only_consumer: Option<&str>) -> anyhow::Result<Replayed> {
    let group = kafka.config.group(&format!("dlq-replay.{}", only_consumer.unwrap_or("all")));
    let reader = DlqReader::open(kafka, logical_topic, &group, true)?;
    let default_topic = kafka.config.topic(logical_topic);
    let mut done = Replayed::default();
    reader
        .read_to_end(|msg| {
            let wanted = only_consumer.is_none_or(|only| header(msg, "dlq_consumer").as_deref() == Some(only));
            let original = header(msg, "dlq_original_topic").unwrap_or_else(|| default_topic.clone());
            let mut headers = OwnedHeaders::new();
            for h in msg.headers().into_iter().flat_map(|hs| hs.iter()) {
                if !h.key.starts_with("dlq_") {
                    headers = headers.insert(Header { key: h.key, value: h.value });
                }
            }
            let (key, payload) = (msg.key().map(<[u8]>::to_vec), msg.payload().unwrap_or_default().to_vec());
            if wanted {
                done.replayed += 1;
            } else {
                done.skipped += 1;
            }
            async move {
                if wanted {
                    let mut record = FutureRecord::to(&original).payload(&payload).headers(headers);
                    if let Some(key) = &key {
                        record = record.key(key);
                    }
                    kafka.producer().send(record, READ_TIMEOUT).await?;
                }
                Ok(())
            }
        })
        .await?;
    Ok(done)
}

fn header(msg: &BorrowedMessage<'_>, name: &str) -> Option<String> {
    let value = msg.headers()?.iter().find(|h| h.key == name)?.value?;
    Some(String::from_utf8_lossy(value).into_owned())
}

/// Reads a `.dlq` topic from the group's committed offsets (or the
/// beginning) to its end, without joining the group.
struct DlqReader {
    consumer: StreamConsumer,
    topic: String,
    partitions: usize,
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
            .set("enable.partition.eof", "true")
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
        for e in committed.elements() {
            let from = match e.offset() {
                Offset::Offset(o) if commit => Offset::Offset(o),
                _ => Offset::Beginning,
            };
            start.add_partition_offset(&topic, e.partition(), from)?;
        }
        consumer.assign(&start)?;
        Ok(Self { consumer, topic, partitions: partitions.len(), commit })
    }

    /// Hands each message to `each` in order, until every partition is at
    /// its end; then, if this reader commits, records how far it got.
    async fn read_to_end<F, Fut>(self, mut each: F) -> anyhow::Result<()>
    where
        F: FnMut(&BorrowedMessage<'_>) -> Fut,
        Fut: std::future::Future<Output = Result<(), KafkaError>>,
    {
        let mut at_end = HashSet::new();
        let mut next: HashMap<i32, i64> = HashMap::new();
        while at_end.len() < self.partitions {
            let msg = match tokio::time::timeout(READ_TIMEOUT, self.consumer.recv()).await {
                Err(_) => anyhow::bail!("no answer from the broker reading {}", self.topic),
                Ok(Err(KafkaError::PartitionEOF(p))) => {
                    at_end.insert(p);
                    continue;
                }
                Ok(Err(e)) => return Err(e.into()),
                Ok(Ok(msg)) => msg,
            };
            at_end.remove(&msg.partition());
            each(&msg).await?;
            next.insert(msg.partition(), msg.offset() + 1);
        }
        if self.commit && !next.is_empty() {
            let mut done = TopicPartitionList::new();
            for (p, o) in next {
                done.add_partition_offset(&self.topic, p, Offset::Offset(o))?;
            }
            self.consumer.commit(&done, CommitMode::Sync)?;
        }
        Ok(())
    }
}
