//! The consumer loop every service uses: receive → decode envelope → inbox
//! check and handler effect in ONE transaction → store the offset (committed
//! to the broker in the background, every `commit_interval`). Messages that
//! arrived together share that transaction (one commit for the batch); a
//! message that keeps failing goes to `<topic>.dlq` with the error recorded,
//! while one the database is down for waits until it is back.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::FutureExt;
use rdkafka::Message;
use rdkafka::consumer::{CommitMode, Consumer};
use rdkafka::message::{Header, OwnedMessage};
use rdkafka::producer::FutureRecord;
use sqlx::{PgConnection, PgPool};
use tracing::Instrument;

use crate::events::{EventDecodeError, ReceivedEvent};
use crate::kafka::{Kafka, Pace, topics};
use crate::outbox::Outbox;
use crate::shutdown::Shutdown;

/// The `type` label of a message whose payload is not an event envelope.
pub const UNDECODABLE: &str = "undecodable";

#[derive(Debug, thiserror::Error)]
pub enum HandlerError {
    /// The database is unreachable or overloaded: nothing is wrong with the
    /// message, so it is tried again, with back-off, until the database is
    /// back, and never dead-lettered (an outage would otherwise drop every
    /// saga step in flight). The consumer, all its partitions, waits
    /// meanwhile; past `KAFKA_MAX_POLL_INTERVAL_MS` the broker hands them to
    /// another member, and what is redelivered the inbox drops.
    #[error("{0}")]
    Transient(String),
    /// Worth a few more attempts (a dependency down, a failure that may
    /// pass); dead-lettered after `KAFKA_MAX_ATTEMPTS`.
    #[error("{0}")]
    Retryable(String),
    /// Will never succeed (malformed payload, broken invariant): dead-letter now.
    #[error("{0}")]
    Permanent(String),
}

impl From<sqlx::Error> for HandlerError {
    fn from(e: sqlx::Error) -> Self {
        if crate::db::is_transient(&e) {
            HandlerError::Transient(e.to_string())
        } else {
            HandlerError::Retryable(e.to_string())
        }
    }
}

impl HandlerError {
    /// Not getting a transaction at all is never the message's fault
    /// (whatever the server said: not accepting connections, too many, auth).
    fn no_transaction(e: sqlx::Error) -> Self {
        HandlerError::Transient(format!("no database transaction: {e}"))
    }
}

impl From<EventDecodeError> for HandlerError {
    fn from(e: EventDecodeError) -> Self {
        HandlerError::Permanent(e.to_string())
    }
}

/// What a service does with the events it consumes.
#[async_trait::async_trait]
pub trait EventHandler: Send + Sync + 'static {
    /// Event types this handler applies; others are acknowledged untouched.
    fn wants(&self, event_type: &str) -> bool;

    /// Applies the event inside `tx`. The inbox row is already written in the
    /// same transaction; returning an error rolls both back.
    async fn handle(&self, tx: &mut PgConnection, event: &ReceivedEvent) -> Result<(), HandlerError>;

    /// Event types [`handle_set`](Self::handle_set) can apply several at a
    /// time. None by default.
    fn applies_as_set(&self, _event_type: &str) -> bool {
        false
    }

    /// Applies events of one type, each of a different aggregate, inside
    /// `tx`: the same effect as `handle` on each, in fewer statements. Any
    /// error rolls the whole batch back, and its events are then retried one
    /// by one through `handle`. Each event's span parents what it publishes
    /// (see [`Outbox::enqueue_all`]).
    async fn handle_set(&self, tx: &mut PgConnection, events: &[Consumed<'_>]) -> Result<(), HandlerError> {
        for c in events {
            self.handle(tx, c.event).instrument(c.span.clone()).await?;
        }
        Ok(())
    }

    /// Called once, inside `tx`, before a batch applied in more than one
    /// step, with every event about to be applied. A handler whose steps lock
    /// shared rows takes all of those locks here, in its one global order:
    /// each step alone locks in that order, but a transaction running several
    /// would interleave them (one order's rows, then another's) and could
    /// deadlock with a batch applied concurrently elsewhere. Nothing by default.
    async fn lock_batch(&self, _tx: &mut PgConnection, _events: &[&ReceivedEvent]) -> Result<(), HandlerError> {
        Ok(())
    }

    /// Called once the transaction that applied `applied` has committed
    /// (duplicates and skipped events are not among them): the place for
    /// effects outside Postgres, like a cache refresh, that must never show
    /// what a rollback undid. The commit stands whatever happens here, so
    /// failures are the handler's to log. A crash can skip this call: what
    /// it does must also be repaired some other way (a cache entry removed
    /// inside the transaction, say). Nothing by default.
    async fn after_commit(&self, _pool: &PgPool, _applied: &[&ReceivedEvent]) {}
}

/// An event being applied as part of a set, with its consume span.
pub struct Consumed<'a> {
    pub event: &'a ReceivedEvent,
    pub span: tracing::Span,
}

/// How a batch's fresh events are applied: one by one, or as sets of one
/// type.
#[derive(Debug, PartialEq)]
enum Step<T> {
    One(T),
    Set(Vec<T>),
}

/// Orders a batch for applying. Only the events of one aggregate must keep
/// their order (they share a partition; across partitions Kafka promises no
/// order anyway), so events are taken in waves — every aggregate's first
/// event, then every second one, … — and within a wave the events of a type
/// the handler applies as a set are gathered into one step. Without such
/// types the batch keeps its order exactly.
fn plan<'a, T: Copy>(
    events: &[T],
    aggregate: impl Fn(T) -> &'a str,
    kind: impl Fn(T) -> &'a str,
    as_set: impl Fn(&str) -> bool,
) -> Vec<Step<T>> {
    if !events.iter().any(|&e| as_set(kind(e))) {
        return events.iter().map(|&e| Step::One(e)).collect();
    }
    let mut seen: HashMap<&str, usize> = HashMap::new();
    let mut waves: Vec<Vec<T>> = Vec::new();
    for &e in events {
        let n = seen.entry(aggregate(e)).or_default();
        if waves.len() <= *n {
            waves.push(Vec::new());
        }
        waves[*n].push(e);
        *n += 1;
    }
    let mut steps = Vec::with_capacity(events.len());
    for wave in waves {
        // Type → index of its set step, placed where its first event was.
        let mut sets: HashMap<&str, usize> = HashMap::new();
        for e in wave {
            let k = kind(e);
            if !as_set(k) {
                steps.push(Step::One(e));
                continue;
            }
            match sets.get(k) {
                Some(&i) => match &mut steps[i] {
                    Step::Set(members) => members.push(e),
                    Step::One(_) => unreachable!("set indices point at sets"),
                },
                None => {
                    sets.insert(k, steps.len());
                    steps.push(Step::Set(vec![e]));
                }
            }
        }
    }
    steps
        .into_iter()
        .map(|s| match s {
            Step::Set(mut members) if members.len() == 1 => Step::One(members.pop().expect("one member")),
            s => s,
        })
        .collect()
}

/// One consumer group of one service.
pub struct EventConsumer {
    /// Logical group name, also the inbox's consumer name, e.g. "inventory".
    pub name: String,
    pub topics: Vec<&'static str>,
    pub handler: Arc<dyn EventHandler>,
    pub pace: Pace,
}

enum Outcome {
    Applied,
    Duplicate,
    Skipped,
    DeadLettered,
    /// Shutdown interrupted retries: leave the offset so it is redelivered.
    Interrupted,
}

impl EventConsumer {
    /// Consumes until shutdown. Handlers write their events to `outbox`; its
    /// relay is woken after a commit that wrote some (consumers that never
    /// publish, like cart's or notification's, never wake it).
    pub async fn run(self, pool: PgPool, kafka: Kafka, outbox: Outbox, shutdown: Shutdown) {
        let consumer = loop {
            match kafka.consumer(&self.name, &self.topics, self.pace) {
                Ok(c) => break c,
                Err(e) => {
                    tracing::error!(consumer = %self.name, error = %e, "creating consumer failed; retrying");
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                        _ = shutdown.wait() => return,
                    }
                }
            }
        };
        let max_batch = kafka.config.consumer_batch.max(1);
        loop {
            let first = tokio::select! {
                _ = shutdown.wait() => break,
                msg = consumer.recv() => msg,
            };
            let mut batch = match first {
                Ok(m) => vec![m.detach()],
                Err(e) => {
                    self.receive_failed(&e);
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
            };
            // Whatever already arrived joins the same transaction: under load
            // one commit covers many events; idle, a lone event goes at once.
            while batch.len() < max_batch {
                match consumer.recv().now_or_never() {
                    Some(Ok(m)) => batch.push(m.detach()),
                    Some(Err(e)) => {
                        self.receive_failed(&e);
                        break;
                    }
                    None => break,
                }
            }
            let enqueued_before = outbox.enqueued();
            let done = self.process_batch(&pool, &kafka, &batch, &shutdown).await;
            // Stored offsets are committed in the background (commit_interval).
            for msg in &batch[..done] {
                // Stores offset + 1, like store_offset_from_message.
                if let Err(e) = consumer.store_offset(msg.topic(), msg.partition(), msg.offset()) {
                    tracing::warn!(error = %e, "storing offset failed");
                }
            }
            // Moved by other tasks too: at worst one extra relay pass.
            if done > 0 && outbox.enqueued() != enqueued_before {
                outbox.committed();
            }
            if done < batch.len() {
                break; // shutdown interrupted a retry: the rest is redelivered
            }
        }
        if let Err(e) = consumer.commit_consumer_state(CommitMode::Sync) {
            tracing::debug!(consumer = %self.name, error = %e, "final offset commit");
        }
        crate::kafka::close_consumer(consumer).await;
    }

    /// Applies `batch` in order; returns how many leading messages are done
    /// (all of them unless shutdown interrupted). The fast path applies the
    /// whole batch in one transaction; if anything in it fails, that is rolled
    /// back and every message goes through the one-by-one path, which owns
    /// retries and dead-lettering.
    async fn process_batch(&self, pool: &PgPool, kafka: &Kafka, batch: &[OwnedMessage], shutdown: &Shutdown) -> usize {
        if batch.len() > 1 {
            match self.apply_together(pool, batch).await {
                Ok(()) => return batch.len(),
                Err(e) => tracing::debug!(
                    consumer = %self.name, size = batch.len(), error = %e,
                    "batch rolled back; applying its messages one by one"
                ),
            }
        }
        for (done, msg) in batch.iter().enumerate() {
            if let Outcome::Interrupted = self.process(pool, kafka, msg, shutdown).await {
                return done;
            }
        }
        batch.len()
    }

    /// Every message of `batch`: inbox rows (one statement) and effects, one
    /// transaction.
    async fn apply_together(&self, pool: &PgPool, batch: &[OwnedMessage]) -> Result<(), HandlerError> {
        let events = batch
            .iter()
            .map(|msg| {
                ReceivedEvent::decode_envelope(
                    msg.payload().unwrap_or_default(),
                    msg.topic(),
                    msg.partition(),
                    msg.offset(),
                )
            })
            .collect::<Result<Vec<_>, _>>()?;
        let wants: Vec<bool> = events.iter().map(|e| self.handler.wants(e.event_type())).collect();
        let wanted: Vec<&ReceivedEvent> = events.iter().zip(&wants).filter_map(|(e, &w)| w.then_some(e)).collect();
        if wanted.is_empty() {
            // Another service's events on a shared topic: no transaction to open.
            for event in &events {
                self.count(event.event_type(), &Outcome::Skipped, Duration::ZERO);
            }
            return Ok(());
        }
        let mut tx = pool.begin().await.map_err(HandlerError::no_transaction)?;
        let mut fresh = crate::inbox::record_all(&mut tx, &self.name, &wanted).await?;
        let mut outcomes = Vec::with_capacity(batch.len());
        let mut to_apply = Vec::with_capacity(batch.len());
        for (i, event) in events.iter().enumerate() {
            if !wants[i] {
                outcomes.push((event, Outcome::Skipped, Duration::ZERO));
            } else if !fresh.remove(&event.event_id) {
                // `remove`: a second copy of the same event in this batch is a duplicate.
                outcomes.push((event, Outcome::Duplicate, Duration::ZERO));
            } else {
                to_apply.push(i);
            }
        }
        let steps = plan(
            &to_apply,
            |i| events[i].envelope.aggregate_id.as_str(),
            |i| events[i].event_type(),
            |kind| self.handler.applies_as_set(kind),
        );
        if steps.len() > 1 {
            let applying: Vec<&ReceivedEvent> = to_apply.iter().map(|&i| &events[i]).collect();
            self.handler.lock_batch(&mut tx, &applying).await?;
        }
        for step in steps {
            let started = Instant::now();
            match step {
                Step::One(i) => {
                    self.handler
                        .handle(&mut tx, &events[i])
                        .instrument(self.consume_span(&batch[i], &events[i]))
                        .await?;
                    outcomes.push((&events[i], Outcome::Applied, started.elapsed()));
                }
                Step::Set(members) => {
                    let set: Vec<Consumed<'_>> = members
                        .iter()
                        .map(|&i| Consumed { event: &events[i], span: self.consume_span(&batch[i], &events[i]) })
                        .collect();
                    let span = tracing::info_span!(
                        "kafka.consume_set",
                        consumer = %self.name,
                        event_type = %events[members[0]].event_type(),
                        size = members.len(),
                    );
                    self.handler.handle_set(&mut tx, &set).instrument(span).await?;
                    // Each member's share of the set's time.
                    let share = started.elapsed() / members.len() as u32;
                    outcomes.extend(members.iter().map(|&i| (&events[i], Outcome::Applied, share)));
                }
            }
        }
        tx.commit().await?;
        let applied: Vec<&ReceivedEvent> =
            outcomes.iter().filter(|(_, o, _)| matches!(o, Outcome::Applied)).map(|&(e, ..)| e).collect();
        if !applied.is_empty() {
            self.handler.after_commit(pool, &applied).await;
        }
        for (event, outcome, elapsed) in outcomes {
            self.count(event.event_type(), &outcome, elapsed);
        }
        Ok(())
    }

    fn consume_span(&self, msg: &OwnedMessage, event: &ReceivedEvent) -> tracing::Span {
        let span = tracing::info_span!(
            "kafka.consume",
            otel.name = %format!("{} process", event.event_type()),
            otel.kind = "consumer",
            messaging.system = "kafka",
            messaging.destination.name = %msg.topic(),
            messaging.message.id = %event.event_id,
            consumer = %self.name,
            event_type = %event.event_type(),
            trace_id = tracing::field::Empty,
        );
        // The publisher's span (in the record headers) is the parent; events
        // relayed without one fall back to the context of the write.
        let mut trace = msg.headers().map(crate::telemetry::kafka_trace_headers).unwrap_or_default();
        if !trace.contains_key("traceparent") {
            trace = event.trace_headers();
        }
        crate::telemetry::adopt_remote_parent(&span, &crate::telemetry::MapCarrier(&trace));
        span
    }

    /// Counts one message by its event type (`UNDECODABLE` when it has none).
    fn count(&self, event_type: &str, outcome: &Outcome, elapsed: Duration) {
        let label = match outcome {
            Outcome::Applied => "applied",
            Outcome::Duplicate => "duplicate",
            Outcome::Skipped => "skipped",
            Outcome::DeadLettered => "dead_lettered",
            Outcome::Interrupted => "interrupted",
        };
        metrics::counter!("events_consumed_total", "consumer" => self.name.clone(), "type" => event_type.to_owned(), "outcome" => label).increment(1);
        if !matches!(outcome, Outcome::Skipped) {
            metrics::histogram!("event_handling_seconds", "consumer" => self.name.clone())
                .record(elapsed.as_secs_f64());
        }
    }

    /// A receive error: librdkafka may have skipped what it could not read
    /// (a corrupt message set), which no dead letter records, so count it.
    fn receive_failed(&self, e: &rdkafka::error::KafkaError) {
        tracing::warn!(consumer = %self.name, error = %e, "kafka receive error");
        metrics::counter!("consumer_receive_errors_total", "consumer" => self.name.clone()).increment(1);
    }

    /// One message on its own: retries, then dead-letters.
    async fn process(&self, pool: &PgPool, kafka: &Kafka, msg: &OwnedMessage, shutdown: &Shutdown) -> Outcome {
        let payload = msg.payload().unwrap_or_default();
        let event = match ReceivedEvent::decode_envelope(payload, msg.topic(), msg.partition(), msg.offset()) {
            Ok(e) => e,
            Err(e) => {
                let outcome = self.dead_letter(kafka, msg, &e.to_string(), 1, shutdown).await;
                self.count(UNDECODABLE, &outcome, Duration::ZERO);
                return outcome;
            }
        };
        if !self.handler.wants(event.event_type()) {
            self.count(event.event_type(), &Outcome::Skipped, Duration::ZERO);
            return Outcome::Skipped;
        }
        let span = self.consume_span(msg, &event);
        let started = Instant::now();
        let outcome = self.process_with_retries(pool, kafka, msg, &event, shutdown).instrument(span).await;
        self.count(event.event_type(), &outcome, started.elapsed());
        outcome
    }

    async fn process_with_retries(
        &self,
        pool: &PgPool,
        kafka: &Kafka,
        msg: &OwnedMessage,
        event: &ReceivedEvent,
        shutdown: &Shutdown,
    ) -> Outcome {
        let max = kafka.config.max_attempts.max(1);
        // Attempts that count toward the dead-letter topic: a database
        // outage doesn't, however long it lasts.
        let mut attempts = 0;
        let mut backoff = Duration::from_millis(100);
        loop {
            match self.apply(pool, event).await {
                Ok(true) => return Outcome::Applied,
                Ok(false) => {
                    tracing::debug!(event_id = %event.event_id, "duplicate delivery ignored");
                    return Outcome::Duplicate;
                }
                Err(HandlerError::Permanent(e)) => {
                    return self.dead_letter(kafka, msg, &e, attempts + 1, shutdown).await;
                }
                Err(HandlerError::Retryable(e)) => {
                    attempts += 1;
                    if attempts >= max {
                        return self.dead_letter(kafka, msg, &e, attempts, shutdown).await;
                    }
                    tracing::warn!(event_id = %event.event_id, attempt = attempts, error = %e, "handler failed; retrying");
                }
                Err(HandlerError::Transient(e)) => {
                    metrics::counter!("consumer_transient_failures_total", "consumer" => self.name.clone())
                        .increment(1);
                    tracing::warn!(event_id = %event.event_id, error = %e, retry_in_ms = backoff.as_millis() as u64,
                        "database unavailable; retrying until it is back");
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                _ = shutdown.wait() => return Outcome::Interrupted,
            }
            backoff = (backoff * 2).min(Duration::from_secs(5));
        }
    }

    /// Inbox row + effect in one transaction. `Ok(false)`: already applied.
    async fn apply(&self, pool: &PgPool, event: &ReceivedEvent) -> Result<bool, HandlerError> {
        let mut tx = pool.begin().await.map_err(HandlerError::no_transaction)?;
        if !crate::inbox::record(&mut tx, &self.name, event).await? {
            tx.rollback().await?;
            return Ok(false);
        }
        self.handler.handle(&mut tx, event).await?;
        tx.commit().await?;
        self.handler.after_commit(pool, &[event]).await;
        Ok(true)
    }

    async fn dead_letter(
        &self,
        kafka: &Kafka,
        msg: &OwnedMessage,
        error: &str,
        attempts: u32,
        shutdown: &Shutdown,
    ) -> Outcome {
        let logical = msg.topic().strip_prefix(kafka.config.topic_prefix.as_str()).unwrap_or(msg.topic());
        let dlq = kafka.config.topic(&topics::dlq(logical));
        let attempts = attempts.to_string();
        let offset = msg.offset().to_string();
        let partition = msg.partition().to_string();
        // Copied by librdkafka, byte for byte: reading the names in Rust
        // would panic on one that is not UTF-8.
        let headers = msg
            .headers()
            .cloned()
            .unwrap_or_default()
            .insert(Header { key: "dlq_error", value: Some(error.as_bytes()) })
            .insert(Header { key: "dlq_attempts", value: Some(attempts.as_bytes()) })
            .insert(Header { key: "dlq_consumer", value: Some(self.name.as_bytes()) })
            .insert(Header { key: "dlq_original_topic", value: Some(msg.topic().as_bytes()) })
            .insert(Header { key: "dlq_original_partition", value: Some(partition.as_bytes()) })
            .insert(Header { key: "dlq_original_offset", value: Some(offset.as_bytes()) });
        let mut backoff = Duration::from_millis(200);
        loop {
            let mut record = FutureRecord::to(&dlq).payload(msg.payload().unwrap_or_default()).headers(headers.clone());
            if let Some(key) = msg.key() {
                record = record.key(key);
            }
            match kafka.producer().send(record, Duration::from_secs(10)).await {
                Ok(()) => break,
                Err(e) => {
                    tracing::error!(%dlq, error = %e, "dead-letter publish failed; retrying");
                    // The consumer is held until it goes: worth an alert.
                    metrics::counter!("consumer_dead_letter_failures_total", "consumer" => self.name.clone(), "topic" => logical.to_owned())
                        .increment(1);
                    if kafka.is_unrecoverable(&e)
                        && let Err(e) = kafka.replace_producer()
                    {
                        tracing::error!(error = %e, "could not replace the Kafka producer");
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = shutdown.wait() => return Outcome::Interrupted,
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(10));
                }
            }
        }
        tracing::error!(consumer = %self.name, topic = %msg.topic(), offset = msg.offset(), %error, "message dead-lettered");
        metrics::counter!("consumer_dead_lettered_total", "consumer" => self.name.clone(), "topic" => logical.to_owned()).increment(1);
        Outcome::DeadLettered
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// (aggregate, type) per event; steps name events by index.
    fn planned(events: &[(&str, &str)], set_types: &[&str]) -> Vec<Step<usize>> {
        let idx: Vec<usize> = (0..events.len()).collect();
        plan(&idx, |i| events[i].0, |i| events[i].1, |k| set_types.contains(&k))
    }

    #[test]
    fn a_handler_without_set_types_keeps_the_batch_order() {
        let events = [("b", "Created"), ("a", "Created"), ("b", "Confirmed")];
        assert_eq!(planned(&events, &[]), vec![Step::One(0), Step::One(1), Step::One(2)]);
    }

    #[test]
    fn events_of_one_type_and_distinct_aggregates_form_one_set() {
        let events = [("a", "Created"), ("b", "Confirmed"), ("c", "Created"), ("d", "Created")];
        assert_eq!(planned(&events, &["Created", "Confirmed"]), vec![Step::Set(vec![0, 2, 3]), Step::One(1)]);
    }

    #[test]
    fn an_aggregates_later_events_wait_for_its_earlier_ones() {
        // a: Created then Cancelled; c's Created may join a's, but b's
        // second Created must follow its first.
        let events = [("a", "Created"), ("b", "Created"), ("a", "Cancelled"), ("b", "Created"), ("c", "Created")];
        assert_eq!(
            planned(&events, &["Created"]),
            vec![Step::Set(vec![0, 1, 4]), Step::One(2), Step::One(3)],
            "wave 1 holds every aggregate's first event, wave 2 the second ones"
        );
    }

    #[test]
    fn a_set_never_holds_one_aggregate_twice() {
        let events = [("a", "Created"), ("a", "Created"), ("a", "Created")];
        assert_eq!(planned(&events, &["Created"]), vec![Step::One(0), Step::One(1), Step::One(2)]);
    }
}
