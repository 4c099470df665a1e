//! Transactional outbox. `Outbox::enqueue` writes an event in the caller's
//! transaction; `OutboxRelay` publishes unsent rows to Kafka in `seq` order,
//! marks them sent, retries with backoff, and — because a row only counts as
//! sent after the broker acknowledged it — re-publishes whatever a crash left
//! unmarked. Consumers dedupe the rare re-publish through their inbox.
//!
//! One relay per database publishes at a time (a Postgres advisory lock), so
//! replicas cannot reorder one aggregate's events between them, and a row
//! waits for the ack of every earlier row of its topic and key, so a failed
//! one is not overtaken.
//!
//! Waking the relay: a transaction that wrote events commits through
//! [`Outbox::commit`] (or calls [`Outbox::committed`] after its commit), which
//! wakes the relay of the same process. A replica that is not the publisher
//! passes the wake-up on as a NOTIFY outside any business transaction, and
//! the publisher polls as a fallback. No trigger NOTIFYs inside the writing
//! transaction: Postgres serialises the commits of notifying transactions on
//! one cluster-wide lock held through the WAL flush, which halved commit
//! throughput here.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::OwnedHeaders;
use rdkafka::producer::FutureRecord;
use sqlx::postgres::{PgListener, PgPool, PgPoolOptions};
use sqlx::{PgConnection, Postgres, Row, Transaction};
use tokio::sync::Notify;
use uuid::Uuid;

use crate::events::{self, DomainEvent};
use crate::kafka::Kafka;
use crate::shutdown::Shutdown;

/// Channel on which non-publishing replicas wake the publishing one.
const NOTIFY_CHANNEL: &str = "shopmesh_outbox";
/// Advisory lock key shared by every relay of one service database.
const RELAY_LOCK_KEY: i64 = 0x5_0b0c_0de1;
const LAG_REPORT_INTERVAL: Duration = Duration::from_secs(5);
/// How many batches of unsent rows one pass reads past rows that must wait
/// (behind a failing row of their key) before it gives up looking.
const WINDOWS_PER_PASS: usize = 16;

/// Writes events into the outbox of the service named `source`.
#[derive(Clone, Debug)]
pub struct Outbox {
    source: Arc<str>,
    /// Shared with the relay built from this outbox: "committed rows wait".
    wake: Arc<Notify>,
    /// Events enqueued through this outbox (and its clones) so far.
    enqueued: Arc<AtomicU64>,
}

impl Outbox {
    pub fn new(source: &str) -> Self {
        Self { source: source.into(), wake: Arc::new(Notify::new()), enqueued: Arc::new(AtomicU64::new(0)) }
    }

    /// How many events have been enqueued so far, committed or not. A caller
    /// that commits on others' behalf compares it before and after, and wakes
    /// the relay only if it moved.
    pub fn enqueued(&self) -> u64 {
        self.enqueued.load(Ordering::Relaxed)
    }

    /// Commits `tx`, which wrote events, and wakes the relay to publish them.
    pub async fn commit(&self, tx: Transaction<'_, Postgres>) -> Result<(), sqlx::Error> {
        tx.commit().await?;
        self.committed();
        Ok(())
    }

    /// Wakes the relay after a transaction that wrote events has committed.
    /// Wake-ups while it is busy coalesce into one more pass.
    pub fn committed(&self) {
        self.wake.notify_one();
    }

    /// Adds `event` to the outbox inside the caller's transaction; it is
    /// published only if that transaction commits. Returns the event id.
    pub async fn enqueue<E: DomainEvent>(&self, conn: &mut PgConnection, event: &E) -> Result<Uuid, sqlx::Error> {
        let ids = self.enqueue_all(conn, &[(event, &tracing::Span::current())]).await?;
        Ok(ids[0])
    }

    /// Adds every event of `events` in one statement, each traced as a child
    /// of the span beside it (the span of the consumed event that caused it).
    /// Returns the event ids in order.
    pub async fn enqueue_all<E: DomainEvent>(
        &self,
        conn: &mut PgConnection,
        events: &[(&E, &tracing::Span)],
    ) -> Result<Vec<Uuid>, sqlx::Error> {
        if events.is_empty() {
            return Ok(vec![]);
        }
        let mut ids = Vec::with_capacity(events.len());
        let mut keys = Vec::with_capacity(events.len());
        let mut envelopes = Vec::with_capacity(events.len());
        let mut traces = Vec::with_capacity(events.len());
        for (event, span) in events {
            let row = self.row(*event, span);
            ids.push(row.event_id);
            keys.push(row.key);
            envelopes.push(row.envelope);
            traces.push(row.trace_headers);
        }
        // In array order, so `seq` (and the relay's publish order) follows `events`.
        sqlx::query(
            "INSERT INTO outbox (event_id, topic, event_key, event_type, envelope, trace_headers)
             SELECT id, $2, key, $3, envelope, trace
             FROM unnest($1::uuid[], $4::text[], $5::bytea[], $6::jsonb[]) AS e(id, key, envelope, trace)",
        )
        .bind(&ids)
        .bind(E::TOPIC)
        .bind(E::TYPE)
        .bind(&keys)
        .bind(&envelopes)
        .bind(&traces)
        .execute(&mut *conn)
        .await?;
        Ok(ids)
    }

    /// `event` as an outbox row, traced as a child of `span`, for a caller
    /// that writes it in a statement of its own: beside the business rows
    /// in one statement, a change needs no transaction. Once that statement
    /// has committed, [`committed`](Self::committed) wakes the relay. Counts
    /// as enqueued.
    pub fn row<E: DomainEvent>(&self, event: &E, span: &tracing::Span) -> OutboxRow {
        use prost::Message;
        self.enqueued.fetch_add(1, Ordering::Relaxed);
        let envelope = events::envelope_in(&self.source, event, span);
        let trace = serde_json::Map::from_iter(
            events::trace_headers(&envelope).into_iter().map(|(k, v)| (k, serde_json::Value::String(v))),
        );
        OutboxRow {
            event_id: Uuid::parse_str(&envelope.id).expect("envelope ids are generated UUIDs"),
            topic: E::TOPIC,
            event_type: E::TYPE,
            key: event.aggregate_id().to_owned(),
            envelope: envelope.encode_to_vec(),
            trace_headers: serde_json::Value::Object(trace),
        }
    }
}

/// The head of an INSERT writing an [`OutboxRow`] inside a caller's
/// statement (as a CTE); the caller follows it with `VALUES` or `SELECT` of
/// the six placeholders [`OutboxRow::bind`] fills, in order.
#[macro_export]
macro_rules! outbox_insert {
    () => {
        "INSERT INTO outbox (event_id, topic, event_key, event_type, envelope, trace_headers) "
    };
}

/// One event as the outbox stores it (see [`Outbox::row`]).
#[derive(Debug, Clone)]
pub struct OutboxRow {
    pub event_id: Uuid,
    pub topic: &'static str,
    pub event_type: &'static str,
    pub key: String,
    pub envelope: Vec<u8>,
    pub trace_headers: serde_json::Value,
}

impl OutboxRow {
    /// Binds the row's values to `query` as six parameters, in the column
    /// order of [`outbox_insert!`](crate::outbox_insert).
    pub fn bind<'q>(
        &'q self,
        query: sqlx::query::Query<'q, Postgres, sqlx::postgres::PgArguments>,
    ) -> sqlx::query::Query<'q, Postgres, sqlx::postgres::PgArguments> {
        query
            .bind(self.event_id)
            .bind(self.topic)
            .bind(self.key.as_str())
            .bind(self.event_type)
            .bind(self.envelope.as_slice())
            .bind(&self.trace_headers)
    }
}

#[derive(Clone, Debug)]
pub struct RelayConfig {
    pub batch_size: i64,
    /// Fallback poll when no notification arrives.
    pub poll_interval: Duration,
    pub max_backoff: Duration,
    /// Published rows older than this are deleted.
    pub retention: Duration,
}

impl Default for RelayConfig {
    fn default() -> Self {
        Self {
            batch_size: 256,
            poll_interval: Duration::from_millis(500),
            max_backoff: Duration::from_secs(30),
            retention: Duration::from_secs(7 * 24 * 3600),
        }
    }
}

/// Publishes the outbox of one service database.
pub struct OutboxRelay {
    pool: PgPool,
    kafka: Kafka,
    service: String,
    config: RelayConfig,
    wake: Arc<Notify>,
}

/// Keys whose oldest unsent row failed to publish, and when to try it
/// again. Their rows wait; every other key goes on without them, so a row
/// the broker keeps refusing (too large, a partition without a leader)
/// holds back its own aggregate only, not the whole outbox.
#[derive(Default)]
struct StalledKeys(HashMap<(String, String), (tokio::time::Instant, u32)>);

impl StalledKeys {
    fn waiting(&self, key: &(String, String), now: tokio::time::Instant) -> bool {
        self.0.get(key).is_some_and(|(retry_at, _)| *retry_at > now)
    }

    fn failed(&mut self, key: (String, String), max_backoff: Duration) {
        let failures = self.0.get(&key).map_or(0, |(_, n)| *n).saturating_add(1);
        let backoff = Duration::from_millis(100).saturating_mul(1 << failures.min(16)).min(max_backoff);
        self.0.insert(key, (tokio::time::Instant::now() + backoff, failures));
    }

    fn sent(&mut self, topic: &str, key: &str) {
        // Nearly always empty: no key built for it then.
        if !self.0.is_empty() {
            self.0.remove(&(topic.to_owned(), key.to_owned()));
        }
    }

    /// Drops keys no pass has retried for a whole back-off past their time:
    /// their rows are gone (an operator removed the one refused, say).
    fn forget_idle(&mut self, now: tokio::time::Instant, max_backoff: Duration) {
        self.0.retain(|_, (retry_at, _)| *retry_at + max_backoff > now);
    }
}

/// What one pass publishes, and what it leaves.
struct Chosen {
    pending: Vec<PendingRow>,
    /// Rows left for a later pass behind an earlier row of their key.
    held: usize,
    /// Whether the last batch read was full: more rows may be waiting.
    full: bool,
}

struct PendingRow {
    seq: i64,
    topic: String,
    key: String,
    envelope: Vec<u8>,
    event_type: String,
    event_id: Uuid,
    trace: HashMap<String, String>,
}

impl OutboxRelay {
    /// A relay for the events `outbox` writes; its commits wake this relay.
    pub fn new(pool: PgPool, kafka: Kafka, outbox: &Outbox, config: RelayConfig) -> Self {
        Self { pool, kafka, service: outbox.source.to_string(), config, wake: outbox.wake.clone() }
    }

    /// Runs until shutdown, then makes a last pass so committed events leave
    /// before the process does.
    pub async fn run(self, shutdown: Shutdown) {
        let mut backoff = Duration::ZERO;
        'leadership: while !shutdown.is_triggered() {
            let mut lock = match self.acquire_leadership(&shutdown).await {
                Some(conn) => conn,
                None => break,
            };
            // The leader's session also reads and marks the outbox. Its marks
            // need not wait for the WAL flush: one lost in a database crash
            // only re-publishes the row, which consumers' inboxes absorb.
            // Plain index scans only: the outbox is a queue whose published
            // rows stay dead in the unpublished index until vacuum. An index
            // scan marks them dead as it passes, so the next read skips them;
            // a bitmap or sequential scan (which the planner picks for a
            // fresh, unanalysed table) revisits every one on every batch.
            let session = "SET synchronous_commit = off; SET enable_seqscan = off; SET enable_bitmapscan = off";
            if let Err(e) = sqlx::raw_sql(session).execute(&mut lock).await {
                tracing::warn!(error = %e, "outbox relay lost its lock connection; re-electing");
                continue 'leadership;
            }
            tracing::info!(service = %self.service, "outbox relay is the active publisher");
            let mut listener = match self.notify_listener().await {
                Ok(l) => Some(l),
                Err(e) => {
                    tracing::warn!(error = %e, "outbox LISTEN failed; polling only");
                    None
                }
            };
            let mut last_cleanup = tokio::time::Instant::now();
            let mut last_lag_report: Option<tokio::time::Instant> = None;
            let mut stalled = StalledKeys::default();
            loop {
                if shutdown.is_triggered() {
                    // Still holding the lock: one publisher, even now.
                    self.final_flush(&mut lock, &mut stalled).await;
                    break 'leadership;
                }
                // Before the pass, which `continue`s while failing or busy:
                // the backlog gauges matter most during a broker outage.
                // The lag is a full scan of the unsent rows: at most every
                // few seconds, not after every batch of a busy relay.
                if last_lag_report.is_none_or(|t| t.elapsed() > LAG_REPORT_INTERVAL) {
                    self.record_lag().await;
                    last_lag_report = Some(tokio::time::Instant::now());
                }
                if last_cleanup.elapsed() > Duration::from_secs(600) {
                    self.cleanup().await;
                    last_cleanup = tokio::time::Instant::now();
                }
                match self.publish_batch_on(&mut lock, &mut stalled).await {
                    Ok(pass) => {
                        // A pass that only found rows waiting out their keys'
                        // back-off keeps the relay's own back-off too.
                        if pass.sent > 0 {
                            backoff = Duration::ZERO;
                        }
                        if pass.more_waiting() {
                            continue;
                        }
                    }
                    Err(e) => {
                        // Every pass reads on the lock connection, so a lost
                        // one (and with it leadership) shows up here.
                        if sqlx::query("SELECT 1").execute(&mut lock).await.is_err() {
                            tracing::warn!(error = %e, "outbox relay lost its lock connection; re-electing");
                            continue 'leadership;
                        }
                        backoff = (backoff * 2).clamp(Duration::from_millis(100), self.config.max_backoff);
                        tracing::warn!(error = %e, retry_in_ms = backoff.as_millis() as u64, "outbox publish failed");
                        tokio::select! {
                            _ = tokio::time::sleep(backoff) => {}
                            _ = shutdown.wait() => {}
                        }
                        continue;
                    }
                }
                let other_replica = async {
                    match listener.as_mut() {
                        Some(l) => {
                            let _ = l.recv().await;
                            // The next batch sees everything already
                            // committed, so one wake-up serves them all.
                            while l.next_buffered().is_some() {}
                        }
                        None => std::future::pending::<()>().await,
                    }
                };
                tokio::select! {
                    _ = self.wake.notified() => {}
                    _ = other_replica => {}
                    _ = tokio::time::sleep(self.config.poll_interval) => {}
                    _ = shutdown.wait() => {}
                }
            }
        }
    }

    /// LISTENs for outbox inserts on a connection of its own: it is held for
    /// as long as the relay leads and must not take one of the service's.
    async fn notify_listener(&self) -> Result<PgListener, sqlx::Error> {
        let own = PgPoolOptions::new()
            .max_connections(1)
            .max_lifetime(None)
            .idle_timeout(None)
            .connect_with((*self.pool.connect_options()).clone())
            .await?;
        let mut listener = PgListener::connect_with(&own).await?;
        listener.listen(NOTIFY_CHANNEL).await?;
        Ok(listener)
    }

    /// Holds the advisory lock on a dedicated connection; waits while another
    /// replica holds it. `None` if shutdown came first.
    async fn acquire_leadership(&self, shutdown: &Shutdown) -> Option<PgConnection> {
        loop {
            let attempt = async {
                let mut conn = self.pool.acquire().await?.detach();
                let got: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
                    .bind(RELAY_LOCK_KEY)
                    .fetch_one(&mut conn)
                    .await?;
                Ok::<_, sqlx::Error>(got.then_some(conn))
            };
            match attempt.await {
                Ok(Some(conn)) => return Some(conn),
                Ok(None) => {}
                Err(e) => tracing::warn!(error = %e, "outbox relay could not reach postgres"),
            }
            let retry = tokio::time::sleep(Duration::from_secs(1));
            tokio::pin!(retry);
            loop {
                tokio::select! {
                    _ = &mut retry => break,
                    _ = shutdown.wait() => return None,
                    _ = self.wake.notified() => self.wake_publisher().await,
                }
            }
        }
    }

    /// Passes a local wake-up on to the publishing replica. Autocommit and
    /// read-only, so the notify lock is not held across a WAL flush.
    async fn wake_publisher(&self) {
        if let Err(e) = sqlx::query("SELECT pg_notify($1, '')").bind(NOTIFY_CHANNEL).execute(&self.pool).await {
            tracing::debug!(error = %e, "waking the publishing relay failed; it will poll");
        }
    }

    /// The oldest unsent row of each key that may go now, reading up to
    /// `windows` batches of unsent rows until one offers any: a row waits
    /// behind an earlier row of its key, or while its key is `stalled`.
    async fn choose_rows(
        &self,
        conn: &mut PgConnection,
        stalled: &StalledKeys,
        now: tokio::time::Instant,
        windows: usize,
    ) -> Result<Chosen, sqlx::Error> {
        let mut keys_in_pass = HashSet::new();
        let mut chosen = Chosen { pending: Vec::new(), held: 0, full: false };
        let mut after = 0i64;
        for _ in 0..windows {
            let rows = sqlx::query(
                "SELECT seq, topic, event_key, envelope, event_type, event_id, trace_headers
                 FROM outbox WHERE published_at IS NULL AND seq > $2 ORDER BY seq LIMIT $1",
            )
            .bind(self.config.batch_size)
            .bind(after)
            .fetch_all(&mut *conn)
            .await?;
            chosen.full = rows.len() as i64 == self.config.batch_size;
            let Some(last) = rows.last() else { break };
            after = last.get("seq");
            for r in rows {
                let key = (r.get::<String, _>("topic"), r.get::<String, _>("event_key"));
                if !keys_in_pass.insert(key.clone()) || stalled.waiting(&key, now) {
                    chosen.held += 1;
                    continue;
                }
                let trace: serde_json::Value = r.get("trace_headers");
                chosen.pending.push(PendingRow {
                    seq: r.get("seq"),
                    topic: key.0,
                    key: key.1,
                    envelope: r.get("envelope"),
                    event_type: r.get("event_type"),
                    event_id: r.get("event_id"),
                    trace: serde_json::from_value(trace).unwrap_or_default(),
                });
            }
            if !chosen.pending.is_empty() || !chosen.full {
                break;
            }
        }
        Ok(chosen)
    }

    /// Publishes up to one batch of unsent rows in order. Rows are marked
    /// sent only after the broker acked them, and a row waits for the ack of
    /// every earlier row with its topic and key: one that fails is retried
    /// (after a back-off of its own, `stalled`) before anything after it on
    /// that key goes out, so each aggregate's events arrive in the order they
    /// were written. Fails only when the pass published nothing.
    async fn publish_batch_on(&self, conn: &mut PgConnection, stalled: &mut StalledKeys) -> anyhow::Result<Pass> {
        let now = tokio::time::Instant::now();
        stalled.forget_idle(now, self.config.max_backoff);
        let mut chosen = self.choose_rows(&mut *conn, stalled, now, 1).await?;
        if chosen.pending.is_empty() && chosen.full {
            // Every row of the oldest batch waits: read past it. Later
            // batches are read in the first one's snapshot: a key's row
            // committed since could otherwise be seen while an earlier row
            // of that key, committed in between, was not.
            let mut snapshot =
                sqlx::Connection::begin_with(&mut *conn, "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY").await?;
            chosen = self.choose_rows(&mut snapshot, stalled, now, WINDOWS_PER_PASS).await?;
            snapshot.commit().await?;
        }
        let Chosen { pending, held, full } = chosen;
        if pending.is_empty() {
            return Ok(Pass { sent: 0, held, full });
        }

        // Enqueue every record before awaiting any, so the producer pipelines
        // them; the idempotent producer keeps per-partition order.
        let producer = self.kafka.producer();
        let mut deliveries = Vec::with_capacity(pending.len());
        let mut enqueue_error: Option<KafkaError> = None;
        let mut failed = Vec::new();
        for row in &pending {
            let topic = self.kafka.config.topic(&row.topic);
            let event_id = row.event_id.to_string();
            // A producer span per event, child of the transaction that wrote
            // it; consumers continue the trace from this span.
            let span = tracing::info_span!(
                "outbox.publish",
                otel.name = %format!("{topic} publish"),
                otel.kind = "producer",
                messaging.system = "kafka",
                messaging.destination.name = %topic,
                messaging.message.id = %event_id,
                event_type = %row.event_type,
                trace_id = tracing::field::Empty,
            );
            crate::telemetry::adopt_remote_parent(&span, &crate::telemetry::MapCarrier(&row.trace));
            let publish_context = span.in_scope(crate::telemetry::current_trace_headers);
            let headers = crate::telemetry::kafka_headers_from(
                &publish_context,
                OwnedHeaders::new()
                    .insert(rdkafka::message::Header { key: "event_type", value: Some(row.event_type.as_bytes()) })
                    .insert(rdkafka::message::Header { key: "event_id", value: Some(event_id.as_bytes()) }),
            );
            let record = FutureRecord::to(&topic).key(&row.key).payload(&row.envelope).headers(headers);
            match producer.enqueue(record) {
                Ok(delivery) => deliveries.push((row, delivery, span)),
                // A full local queue refuses what follows too: stop here.
                Err(e @ KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull)) => {
                    enqueue_error = Some(e);
                    break;
                }
                // Refused for itself (too large, say): the other keys can go.
                Err(e) => failed.push((row, e)),
            }
        }
        let mut sent = Vec::new();
        for (row, delivery, span) in deliveries {
            // The span ends when the broker acknowledged (or refused) the event.
            let _span = span;
            match delivery.await {
                Ok(()) => {
                    stalled.sent(&row.topic, &row.key);
                    sent.push(row.seq);
                }
                Err(e) => failed.push((row, e)),
            }
        }
        for (row, _) in &failed {
            stalled.failed((row.topic.clone(), row.key.clone()), self.config.max_backoff);
        }
        if !sent.is_empty() {
            sqlx::query("UPDATE outbox SET published_at = now(), last_error = NULL WHERE seq = ANY($1)")
                .bind(&sent)
                .execute(&mut *conn)
                .await?;
            metrics::counter!("outbox_published_total", "service" => self.service.clone()).increment(sent.len() as u64);
        }
        for (row, error) in &failed {
            sqlx::query("UPDATE outbox SET attempts = attempts + 1, last_error = $2 WHERE seq = $1")
                .bind(row.seq)
                .bind(error.to_string())
                .execute(&mut *conn)
                .await?;
        }
        let error = enqueue_error.or_else(|| failed.into_iter().next().map(|(_, e)| e));
        if let Some(e) = error {
            // Retrying with a producer that can never deliver again would
            // hold the outbox forever: start a fresh one for the next attempt.
            if self.kafka.is_unrecoverable(&e) {
                self.kafka.replace_producer()?;
            }
            metrics::counter!("outbox_publish_failures_total", "service" => self.service.clone()).increment(1);
            let unsent = pending.len() - sent.len();
            // One row that keeps failing must not slow everything else down
            // to the relay's backoff: its key waits out its own (`stalled`).
            if sent.is_empty() {
                anyhow::bail!("{unsent} of {} events not published: {e}", pending.len());
            }
            tracing::warn!(error = %e, unsent, sent = sent.len(), "some outbox events not published; retrying them");
        }
        Ok(Pass { sent: sent.len(), held, full })
    }

    async fn record_lag(&self) {
        let row = sqlx::query(
            "SELECT count(*) AS pending, COALESCE(EXTRACT(EPOCH FROM now() - min(created_at)), 0)::float8 AS lag
             FROM outbox WHERE published_at IS NULL",
        )
        .fetch_one(&self.pool)
        .await;
        if let Ok(row) = row {
            let pending: i64 = row.get("pending");
            let lag: f64 = row.get("lag");
            metrics::gauge!("outbox_pending", "service" => self.service.clone()).set(pending as f64);
            metrics::gauge!("outbox_lag_seconds", "service" => self.service.clone()).set(lag);
        }
    }

    async fn cleanup(&self) {
        let cutoff = chrono::Utc::now() - chrono::Duration::from_std(self.config.retention).unwrap_or_default();
        if let Err(e) = sqlx::query("DELETE FROM outbox WHERE published_at IS NOT NULL AND published_at < $1")
            .bind(cutoff)
            .execute(&self.pool)
            .await
        {
            tracing::warn!(error = %e, "outbox cleanup failed");
        }
    }

    /// On shutdown, as the leader: publish what is committed (bounded), then
    /// flush the producer.
    async fn final_flush(&self, lock: &mut PgConnection, stalled: &mut StalledKeys) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while tokio::time::Instant::now() < deadline {
            match tokio::time::timeout_at(deadline, self.publish_batch_on(lock, stalled)).await {
                Ok(Ok(pass)) if pass.sent > 0 => continue,
                _ => break,
            }
        }
        self.kafka.flush(Duration::from_secs(5)).await;
    }
}

/// What one relay pass did.
#[derive(Debug, Clone, Copy)]
struct Pass {
    sent: usize,
    /// Rows left for a later pass behind an earlier row of their key.
    held: usize,
    /// Whether the batch was full: more rows may be waiting.
    full: bool,
}

impl Pass {
    /// Whether another pass should follow at once: rows are waiting, and
    /// this one made progress (a pass that sent nothing waits instead).
    fn more_waiting(&self) -> bool {
        self.sent > 0 && (self.full || self.held > 0)
    }
}
