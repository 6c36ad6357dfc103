//! The durable embedded store of `tocsin dev`: incidents, the applied-event
//! marks, ignored events and the queues with their dead letters, in one
//! SQLite file (`<dir>/tocsin.db`).
//!
//! Durability: WAL with `synchronous=NORMAL`. A committed write survives the
//! process being killed (kill -9, panic=abort); a power loss or OS crash may
//! lose the last few commits, never corrupt the file. Good enough for one
//! machine; AWS is the production store.
//!
//! The queues follow SQS FIFO: messages of one group are delivered strictly
//! in order, one at a time (only the oldest remaining message of a group is
//! receivable), different groups in parallel; delivery is at least once,
//! with a visibility timeout, a receive count and a dead-letter table.
//!
//! Writes are group-committed: every write waiting while one transaction
//! runs goes into the next, and each caller hears back only once its
//! transaction has committed. Under load one commit carries many writes
//! (ingest requests, the processor's events, queue deletes) instead of one
//! each. Should one write of a group fail, the group is rolled back and
//! each of its writes runs again in a transaction of its own, so each
//! succeeds or fails alone.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, SecondsFormat, Utc};
use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};
use serde::Serialize;
use tokio::sync::{oneshot, Notify};

use tocsin_core::auth::KeyHash;
use tocsin_core::config::Integration;
use tocsin_core::event::{DedupKey, Event, EventId, HeartbeatId, IntegrationId, ServiceId};
use tocsin_core::heartbeat::{Heartbeat, HeartbeatMonitor, HeartbeatState};
use tocsin_core::incident::{Incident, IncidentId};
use tocsin_core::notify::NotificationJob;
use tocsin_core::ports::{
    BackendError, Commit, CommitOutcome, EventQueue, Heartbeats, IgnoredEvent, IncidentFilter, IncidentStore,
    NotificationQueue, RateCounter, Timeline,
};
use tocsin_core::records::IntegrationRecord;
use tocsin_core::timeline::TimelineEntry;

/// The database file inside the store's directory.
pub const DB_FILE: &str = "tocsin.db";

/// No message is received more often than this. A message that reaches it
/// without being deleted or failed (its consumer died on it, or timed out
/// every time) is dead-lettered by the next receive instead of looping
/// forever. Consumers normally dead-letter earlier through [`Store::fail`].
pub const RECEIVE_LIMIT: u32 = 10;

const DEFAULT_LIST_LIMIT: usize = 100;
const MAX_LIST_LIMIT: usize = 1000;

/// How long a call waits for another process holding the write lock (the
/// `tocsin` CLI reading or writing while `tocsin dev` runs).
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// How often the checkpointer thread copies the write-ahead log into the
/// database file (see [`spawn_checkpointer`]).
const CHECKPOINT_EVERY: Duration = Duration::from_millis(200);

/// The write-ahead log's size, in pages, at which the store's own connection
/// checkpoints after a commit, should the checkpointer thread fall behind
/// (SQLite's default is 1,000 pages, 4 MB): a safety net, not the rule.
const AUTOCHECKPOINT_PAGES: i64 = 16_384;

/// Separates service and dedup key in an event's group key; cannot occur in
/// a service id.
const GROUP_SEPARATOR: char = '\u{1f}';

/// At most this many writes share one transaction, so that a long queue of
/// writers does not hold the connection from readers for long.
const MAX_GROUP: usize = 256;

/// The schema, one migration per entry; `PRAGMA user_version` records how
/// many have run. Never edit a released entry: append a new one.
const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE incidents (
    id          TEXT PRIMARY KEY,
    service     TEXT NOT NULL,
    dedup_key   TEXT NOT NULL,
    status      TEXT NOT NULL CHECK (status IN ('open', 'acknowledged', 'resolved')),
    created_at  TEXT NOT NULL,  -- RFC 3339, UTC, microseconds: sorts as text
    updated_at  TEXT NOT NULL,
    version     INTEGER NOT NULL,
    body        TEXT NOT NULL   -- the Incident as JSON
);
CREATE INDEX incidents_by_key ON incidents (service, dedup_key, created_at DESC);
CREATE INDEX incidents_by_status ON incidents (status, created_at DESC);
CREATE INDEX incidents_by_service ON incidents (service, created_at DESC);
CREATE INDEX incidents_by_created ON incidents (created_at DESC);
-- At most one open incident per key, enforced by the database itself.
CREATE UNIQUE INDEX incidents_one_open_per_key ON incidents (service, dedup_key)
    WHERE status != 'resolved';

CREATE TABLE applied_events (
    event_id    TEXT PRIMARY KEY,
    applied_at  TEXT NOT NULL
) WITHOUT ROWID;

CREATE TABLE ignored_events (
    id          INTEGER PRIMARY KEY,
    event_id    TEXT NOT NULL,
    incident_id TEXT,
    reason      TEXT NOT NULL,
    at          TEXT NOT NULL,
    body        TEXT NOT NULL   -- the IgnoredEvent as JSON
);

CREATE TABLE messages (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,  -- never reused: a stale delivery never names a new message
    queue         TEXT NOT NULL,
    group_key     TEXT NOT NULL,
    dedup_id      TEXT,
    body          TEXT NOT NULL,
    receive_count INTEGER NOT NULL DEFAULT 0,
    visible_at    INTEGER NOT NULL,  -- unix milliseconds
    enqueued_at   INTEGER NOT NULL,  -- unix milliseconds
    last_error    TEXT,
    UNIQUE (queue, dedup_id)
);
CREATE INDEX messages_by_group ON messages (queue, group_key, id);
CREATE INDEX messages_by_visibility ON messages (queue, visible_at, id);

CREATE TABLE dead_letters (
    id            INTEGER PRIMARY KEY,
    queue         TEXT NOT NULL,
    group_key     TEXT NOT NULL,
    dedup_id      TEXT,
    body          TEXT NOT NULL,
    error         TEXT NOT NULL,
    receive_count INTEGER NOT NULL,
    enqueued_at   INTEGER NOT NULL,
    dead_at       INTEGER NOT NULL
);
"#,
    r#"
-- Receiving walks a queue in id order and stops at the first heads of
-- group it finds; finding exhausted messages looks at receive counts. Both
-- scanned every visible message before, which made a backlog of 50,000
-- events cost 50 ms per batch.
CREATE INDEX messages_in_order ON messages (queue, id);
CREATE INDEX messages_by_receives ON messages (queue, receive_count);
"#,
    r#"
-- The ingest rate limit: requests per integration per one-minute window.
-- Only the current window is kept (older rows are deleted as it moves).
CREATE TABLE rate_windows (
    integration TEXT NOT NULL,
    window      INTEGER NOT NULL,  -- minutes since the Unix epoch
    count       INTEGER NOT NULL,
    PRIMARY KEY (integration, window)
) WITHOUT ROWID;
"#,
    r#"
-- Receiving walked a queue in id order, skipping every message with an
-- older one in its group: with few groups (the notifications queue has one
-- per recipient) and a backlog, each receive read the whole backlog. Each
-- message now says whether it is its group's oldest: push sets it, and
-- deleting a head hands it to the next message of the group.
ALTER TABLE messages ADD COLUMN head INTEGER NOT NULL DEFAULT 0;
UPDATE messages SET head = 1 WHERE NOT EXISTS (
    SELECT 1 FROM messages AS older
    WHERE older.queue = messages.queue AND older.group_key = messages.group_key AND older.id < messages.id);
CREATE INDEX messages_heads ON messages (queue, id) WHERE head = 1;
CREATE TRIGGER messages_next_head AFTER DELETE ON messages WHEN OLD.head = 1
BEGIN
    UPDATE messages SET head = 1 WHERE id = (
        SELECT min(id) FROM messages WHERE queue = OLD.queue AND group_key = OLD.group_key);
END;
-- Nothing reads these any more; every write paid for them.
DROP INDEX messages_by_visibility;
DROP INDEX messages_in_order;
"#,
    r#"
-- Each incident's timeline (tocsin_core::timeline): one row per event applied
-- or ignored, written in the event's commit, and per delivery attempt.
CREATE TABLE timeline (
    incident_id TEXT NOT NULL,
    id          TEXT NOT NULL,  -- unique within the incident: a rewrite is a no-op
    sort_key    TEXT NOT NULL,  -- RFC 3339 time, then id: sorts as text
    body        TEXT NOT NULL,  -- the TimelineEntry as JSON
    PRIMARY KEY (incident_id, id)
) WITHOUT ROWID;
CREATE INDEX timeline_in_order ON timeline (incident_id, sort_key);
"#,
    r#"
-- Ingest counters per integration for GET /integrations/health
-- (tocsin_core::health): one upsert per request.
CREATE TABLE ingest_stats (
    integration        TEXT PRIMARY KEY,
    service            TEXT NOT NULL,
    provider           TEXT NOT NULL,
    received           INTEGER NOT NULL,
    success            INTEGER NOT NULL,
    errors             INTEGER NOT NULL,
    latency_ms         INTEGER NOT NULL,  -- the sum over every counted request
    last_event_at      TEXT NOT NULL,     -- RFC 3339
    last_error_at      TEXT,
    last_error_status  INTEGER,
    last_error_message TEXT
) WITHOUT ROWID;
"#,
    r#"
-- Heartbeat monitors (tocsin_core::heartbeat): the config, replaced at every
-- start from the config file, and the state of their beats, which survives.
CREATE TABLE heartbeats (
    id           TEXT PRIMARY KEY,
    body         TEXT NOT NULL,  -- the Heartbeat as JSON
    last_beat_at TEXT,           -- RFC 3339; none: never beaten (inactive)
    missed_since TEXT
) WITHOUT ROWID;
"#,
    r#"
-- Maintenance windows (tocsin_core::maintenance). released_at is kept out
-- of body: rewriting a window (a config applied again) keeps the mark.
CREATE TABLE maintenance_windows (
    id          TEXT PRIMARY KEY,
    service     TEXT NOT NULL,
    start       TEXT NOT NULL,  -- RFC 3339, UTC, microseconds: sorts as text
    body        TEXT NOT NULL,  -- the MaintenanceWindow as JSON, released_at left out
    released_at TEXT
) WITHOUT ROWID;
CREATE INDEX maintenance_by_service ON maintenance_windows (service, start, id);
"#,
    r#"
-- Integrations made with `tocsin integrations --data` (the config file's
-- are never stored): looked up by key hash on every request they carry.
CREATE TABLE integrations (
    key_hash TEXT PRIMARY KEY,
    id       TEXT NOT NULL UNIQUE,
    body     TEXT NOT NULL  -- tocsin_core::records::IntegrationRecord as JSON
) WITHOUT ROWID;
"#,
    r#"
-- Notification throttling (tocsin_core::throttle): sends per recipient per
-- window, and the jobs held for each recipient's bundle message.
CREATE TABLE throttle_windows (
    channel   TEXT NOT NULL,
    recipient TEXT NOT NULL,
    seconds   INTEGER NOT NULL,  -- the window's length
    window    INTEGER NOT NULL,  -- windows of that length since the Unix epoch
    count     INTEGER NOT NULL,
    ends_at   INTEGER NOT NULL,  -- seconds since the Unix epoch; deleted after
    PRIMARY KEY (channel, recipient, seconds, window)
) WITHOUT ROWID;
CREATE TABLE throttle_bundles (
    channel     TEXT NOT NULL,
    recipient   TEXT NOT NULL,
    incident_id TEXT NOT NULL,
    at_micros   INTEGER NOT NULL,
    body        TEXT NOT NULL,  -- tocsin_core::throttle::Suppressed as JSON
    PRIMARY KEY (channel, recipient, incident_id)
) WITHOUT ROWID;
"#,
    r#"
-- Pending escalations (tocsin_core::escalation), taken in due order by the
-- scheduler; a restart keeps them.
CREATE TABLE escalations (
    sort_key TEXT PRIMARY KEY,  -- PendingEscalation::sort_key: due time first
    body     TEXT NOT NULL      -- the PendingEscalation as JSON
) WITHOUT ROWID;
"#,
    r#"
-- The first Slack message of each incident per configured channel
-- (tocsin_core::slack::threads): later transitions reply in its thread.
CREATE TABLE slack_threads (
    incident_id TEXT NOT NULL,
    channel     TEXT NOT NULL,  -- as configured, e.g. #checkout
    channel_id  TEXT NOT NULL,  -- as Slack answered, e.g. C0123ABCD
    ts          TEXT NOT NULL,
    PRIMARY KEY (incident_id, channel)
) WITHOUT ROWID;
"#,
    r#"
-- Email contacts' bounces and complaints (tocsin_core::contacts), and
-- suppressions set or cleared by hand (`tocsin contacts`).
CREATE TABLE contacts (
    address          TEXT PRIMARY KEY,            -- lowercased
    last_feedback_id TEXT NOT NULL DEFAULT '',    -- skips a redelivery
    body             TEXT NOT NULL                -- the ContactRow as JSON
) WITHOUT ROWID;
"#,
];

/// The queues of the local stack.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum QueueName {
    /// Events from ingest to the processor, grouped by service and dedup key.
    Events,
    /// Committed incident transitions to the dispatcher, grouped by incident.
    Transitions,
    /// Notification jobs to the notifiers, grouped by channel and recipient.
    Notifications,
}

impl QueueName {
    pub const ALL: [QueueName; 3] = [QueueName::Events, QueueName::Transitions, QueueName::Notifications];

    pub fn as_str(self) -> &'static str {
        match self {
            QueueName::Events => "events",
            QueueName::Transitions => "transitions",
            QueueName::Notifications => "notifications",
        }
    }

    pub fn parse(value: &str) -> Option<Self> {
        QueueName::ALL.into_iter().find(|q| q.as_str() == value)
    }

    fn index(self) -> usize {
        match self {
            QueueName::Events => 0,
            QueueName::Transitions => 1,
            QueueName::Notifications => 2,
        }
    }
}

impl std::fmt::Display for QueueName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A received message. Until it is deleted or failed, or its visibility
/// timeout expires, no one else receives it or any later message of its
/// group. `receive_count` doubles as the receipt: once the message has been
/// received again, this delivery is stale and can no longer delete or fail it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Delivery {
    pub queue: QueueName,
    pub id: i64,
    pub group_key: String,
    pub body: String,
    /// How often the message has been received, this time included.
    pub receive_count: u32,
    pub enqueued_at: DateTime<Utc>,
    /// Why the previous attempt failed, if one did.
    pub last_error: Option<String>,
}

/// What [`Store::fail`] did with a message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Failed {
    /// It becomes visible again after the retry delay. Also the answer for a
    /// stale delivery: the message was received again since, and that newer
    /// receive decides what becomes of it.
    Retrying,
    /// It reached its maximum receives and moved to the dead letters.
    DeadLettered,
}

/// A message that failed too often, kept with its last error until it is
/// redriven.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct DeadLetter {
    pub id: i64,
    pub queue: String,
    pub group_key: String,
    pub body: String,
    pub error: String,
    pub receive_count: u32,
    pub enqueued_at: DateTime<Utc>,
    pub dead_at: DateTime<Utc>,
}

/// The SQLite store. Cheap to clone: clones share one connection.
#[derive(Clone, Debug)]
pub struct Store {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    path: PathBuf,
    /// One connection: SQLite has one writer anyway, and the calls are short.
    conn: Mutex<Connection>,
    /// One per queue, indexed by [`QueueName::index`].
    wakeups: [Notify; 3],
    /// Writes waiting for the next group commit.
    writes: Mutex<PendingWrites>,
    /// Checkpoints made by the checkpointer thread.
    checkpoints: std::sync::atomic::AtomicU64,
}

#[derive(Default)]
struct PendingWrites {
    waiting: Vec<Box<dyn GroupedWrite>>,
    /// A blocking task is committing groups until `waiting` is empty.
    committing: bool,
}

impl std::fmt::Debug for PendingWrites {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PendingWrites")
            .field("waiting", &self.waiting.len())
            .field("committing", &self.committing)
            .finish()
    }
}

/// One caller's write inside a group, answered after the group's commit.
trait GroupedWrite: Send {
    /// Runs the write (again, if its group was rolled back); false when it
    /// failed.
    fn execute(&mut self, conn: &Connection) -> bool;
    /// Answers the caller with the write's result, or the commit's error.
    fn settle(self: Box<Self>, committed: Result<(), Arc<rusqlite::Error>>);
}

struct Write<T, F> {
    run: F,
    result: Option<Result<T, StoreError>>,
    reply: oneshot::Sender<Result<T, StoreError>>,
}

impl<T, F> GroupedWrite for Write<T, F>
where
    T: Send,
    F: FnMut(&Connection) -> Result<T, StoreError> + Send,
{
    fn execute(&mut self, conn: &Connection) -> bool {
        let result = (self.run)(conn);
        let ok = result.is_ok();
        self.result = Some(result);
        ok
    }

    fn settle(self: Box<Self>, committed: Result<(), Arc<rusqlite::Error>>) {
        let answer = match (self.result, committed) {
            // A failed write's transaction was rolled back: its own error.
            (Some(Err(error)), _) => Err(error),
            (Some(Ok(value)), Ok(())) => Ok(value),
            // Written, but the group's transaction did not commit (or never
            // began): nothing of it stays.
            (_, Err(error)) => Err(StoreError::Commit(error)),
            (None, Ok(())) => Err(StoreError::NotRun),
        };
        // A caller that stopped waiting does not need the answer.
        let _ = self.reply.send(answer);
    }
}

/// What can go wrong inside the store; reported as a [`BackendError`].
#[derive(Debug, thiserror::Error)]
enum StoreError {
    #[error(transparent)]
    Sqlite(#[from] rusqlite::Error),
    #[error("a stored value is not valid JSON of its type")]
    Json(#[from] serde_json::Error),
    #[error("{0} does not fit the database's 64-bit integers")]
    OutOfRange(u64),
    #[error("a dead letter names an unknown queue '{0}'")]
    UnknownQueue(String),
    #[error("the database has schema version {found}, newer than this build's {known}: upgrade tocsin")]
    NewerSchema { found: i64, known: usize },
    #[error("the transaction carrying this write did not commit")]
    Commit(#[source] Arc<rusqlite::Error>),
    #[error("the write was never run (its transaction was abandoned)")]
    NotRun,
    #[error("the stored contact '{0}' is not one this build wrote")]
    Contact(String),
}

impl Store {
    /// Opens (creating if needed) the store in `dir` and brings its schema up
    /// to date. Blocks briefly: call it at startup, before serving.
    pub fn open(dir: &Path) -> Result<Store, BackendError> {
        std::fs::create_dir_all(dir).map_err(|e| BackendError::new("create the store directory", e))?;
        let path = dir.join(DB_FILE);
        let mut conn = Connection::open(&path).map_err(|e| BackendError::new("open the store", e))?;
        configure(&conn).map_err(|e| BackendError::new("configure the store", e))?;
        migrate(&mut conn).map_err(|e| BackendError::new("migrate the store", e))?;
        let checkpointer = Connection::open(&path).map_err(|e| BackendError::new("open the store", e))?;
        checkpointer
            .busy_timeout(BUSY_TIMEOUT)
            .map_err(|e| BackendError::new("configure the store", e))?;
        let inner = Arc::new(Inner {
            path,
            conn: Mutex::new(conn),
            wakeups: [Notify::new(), Notify::new(), Notify::new()],
            writes: Mutex::new(PendingWrites::default()),
            checkpoints: std::sync::atomic::AtomicU64::new(0),
        });
        spawn_checkpointer(checkpointer, Arc::downgrade(&inner))
            .map_err(|e| BackendError::new("start the store's checkpointer", e))?;
        Ok(Store { inner })
    }

    /// How many checkpoints the checkpointer thread has made.
    pub fn checkpoints(&self) -> u64 {
        self.inner.checkpoints.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// Signalled whenever a message of `queue` may have become receivable
    /// (enqueue, a group's head deleted or dead-lettered, redrive). A
    /// consumer waits on it with a poll interval as fallback: expired
    /// visibility timeouts and retry delays are only found by polling.
    pub fn wakeup(&self, queue: QueueName) -> &Notify {
        &self.inner.wakeups[queue.index()]
    }

    fn wake(&self, queue: QueueName) {
        let notify = self.wakeup(queue);
        // Wake every waiting consumer, and leave one permit for a consumer
        // between an empty receive and its wait, so the wake-up is not lost.
        notify.notify_waiters();
        notify.notify_one();
    }

    /// Runs `f` on the connection on the blocking pool: SQLite calls never
    /// block the async runtime.
    async fn run<T, F>(&self, operation: &'static str, f: F) -> Result<T, BackendError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let inner = Arc::clone(&self.inner);
        tokio::task::spawn_blocking(move || {
            // A panic while holding the lock left no open transaction behind
            // (dropping one rolls it back), so the connection is still sound.
            let mut conn = inner.conn.lock().unwrap_or_else(PoisonError::into_inner);
            f(&mut conn)
        })
        .await
        .map_err(|e| BackendError::new(operation, e))?
        .map_err(|e| BackendError::new(operation, e))
    }

    /// Runs the write `f` in the next group commit (see the module doc) and
    /// answers once that transaction has committed. `f` may run twice (when
    /// another write of its group failed), so it must do nothing but its
    /// SQL. An `Ok` keeps what it wrote, so a write that decides to change
    /// nothing must return before its first change.
    async fn write<T, F>(&self, operation: &'static str, f: F) -> Result<T, BackendError>
    where
        T: Send + 'static,
        F: FnMut(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let (write, answer) = grouped(f);
        let lead = {
            let mut pending = self.inner.writes.lock().unwrap_or_else(PoisonError::into_inner);
            pending.waiting.push(write);
            !std::mem::replace(&mut pending.committing, true)
        };
        if lead {
            let inner = Arc::clone(&self.inner);
            // Not awaited: the callers wait on their answers, and a write
            // that arrives while this runs joins a later group of it.
            drop(tokio::task::spawn_blocking(move || commit_groups(&inner)));
        }
        answer
            .await
            .map_err(|e| BackendError::new(operation, e))?
            .map_err(|e| BackendError::new(operation, e))
    }

    /// Claims up to `max` receivable messages: the oldest remaining message
    /// of each group, if it is visible. Each stays invisible for
    /// `visibility`, then is delivered again unless deleted or failed.
    pub async fn receive(
        &self,
        queue: QueueName,
        max: usize,
        visibility: Duration,
    ) -> Result<Vec<Delivery>, BackendError> {
        if max == 0 {
            return Ok(Vec::new());
        }
        let (deliveries, buried) = self
            .write("receive messages", move |tx| {
                let now = now_ms();
                let buried = bury_exhausted(tx, queue, now)?;
                let mut deliveries = Vec::new();
                {
                    let mut heads = tx.prepare_cached(
                        "SELECT id, group_key, body, receive_count, enqueued_at, last_error
                         FROM messages INDEXED BY messages_heads
                         WHERE queue = ?1 AND head = 1 AND visible_at <= ?2
                         ORDER BY id
                         LIMIT ?3",
                    )?;
                    let rows = heads.query_map(params![queue.as_str(), now, clamp_i64(max)], |row| {
                        Ok(Delivery {
                            queue,
                            id: row.get(0)?,
                            group_key: row.get(1)?,
                            body: row.get(2)?,
                            receive_count: row.get::<_, u32>(3)?.saturating_add(1),
                            enqueued_at: from_ms(row.get(4)?),
                            last_error: row.get(5)?,
                        })
                    })?;
                    for delivery in rows {
                        deliveries.push(delivery?);
                    }
                    let mut claim = tx.prepare_cached(
                        "UPDATE messages SET visible_at = ?2, receive_count = receive_count + 1 WHERE id = ?1",
                    )?;
                    let until = now.saturating_add(duration_ms(visibility));
                    for delivery in &deliveries {
                        claim.execute(params![delivery.id, until])?;
                    }
                }
                Ok((deliveries, buried))
            })
            .await?;
        if buried > 0 {
            tracing::warn!(queue = %queue, count = buried, "messages dead-lettered after {RECEIVE_LIMIT} receives without an answer");
            self.wake(queue);
        }
        Ok(deliveries)
    }

    /// Acknowledges a delivery: the message is gone and the next one of its
    /// group becomes receivable. False when the delivery is stale (the
    /// message was received again since, or is already gone).
    pub async fn delete(&self, delivery: &Delivery) -> Result<bool, BackendError> {
        let (id, receive_count) = (delivery.id, delivery.receive_count);
        let deleted = self
            .write("delete a message", move |conn| {
                let n = conn
                    .prepare_cached("DELETE FROM messages WHERE id = ?1 AND receive_count = ?2")?
                    .execute(params![id, receive_count])?;
                Ok(n == 1)
            })
            .await?;
        if deleted {
            self.wake(delivery.queue);
        }
        Ok(deleted)
    }

    /// Reports that handling a delivery failed. Once the message has been
    /// received `max_receives` times it moves to the dead letters with
    /// `error`; before that it is delivered again after `retry_after`.
    pub async fn fail(
        &self,
        delivery: &Delivery,
        error: &str,
        max_receives: u32,
        retry_after: Duration,
    ) -> Result<Failed, BackendError> {
        let (id, receive_count, error) = (delivery.id, delivery.receive_count, error.to_owned());
        let failed = self
            .write("fail a message", move |tx| {
                let now = now_ms();
                let held = tx
                    .query_row(
                        "SELECT 1 FROM messages WHERE id = ?1 AND receive_count = ?2",
                        params![id, receive_count],
                        |_| Ok(()),
                    )
                    .optional()?
                    .is_some();
                let failed = if !held {
                    Failed::Retrying
                } else if receive_count >= max_receives {
                    bury(tx, id, &error, now)?;
                    Failed::DeadLettered
                } else {
                    tx.execute(
                        "UPDATE messages SET visible_at = ?2, last_error = ?3 WHERE id = ?1",
                        params![id, now.saturating_add(duration_ms(retry_after)), error],
                    )?;
                    Failed::Retrying
                };
                Ok(failed)
            })
            .await?;
        if failed == Failed::DeadLettered || retry_after.is_zero() {
            self.wake(delivery.queue);
        }
        Ok(failed)
    }

    /// Every dead letter, newest first.
    pub async fn dead_letters(&self) -> Result<Vec<DeadLetter>, BackendError> {
        self.run("list dead letters", |conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT id, queue, group_key, body, error, receive_count, enqueued_at, dead_at
                 FROM dead_letters ORDER BY id DESC",
            )?;
            let rows = stmt.query_map([], |row| {
                Ok(DeadLetter {
                    id: row.get(0)?,
                    queue: row.get(1)?,
                    group_key: row.get(2)?,
                    body: row.get(3)?,
                    error: row.get(4)?,
                    receive_count: row.get(5)?,
                    enqueued_at: from_ms(row.get(6)?),
                    dead_at: from_ms(row.get(7)?),
                })
            })?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
        .await
    }

    /// Moves a dead letter back to the end of its queue, with a fresh receive
    /// count. False when there is no such dead letter.
    pub async fn redrive(&self, id: i64) -> Result<bool, BackendError> {
        let queue = self
            .write("redrive a dead letter", move |tx| {
                let letter = tx
                    .query_row(
                        "SELECT queue, group_key, dedup_id, body FROM dead_letters WHERE id = ?1",
                        params![id],
                        |row| {
                            Ok((
                                row.get::<_, String>(0)?,
                                row.get::<_, String>(1)?,
                                row.get::<_, Option<String>>(2)?,
                                row.get::<_, String>(3)?,
                            ))
                        },
                    )
                    .optional()?;
                let Some((queue, group_key, dedup_id, body)) = letter else {
                    return Ok(None);
                };
                let queue = QueueName::parse(&queue).ok_or(StoreError::UnknownQueue(queue))?;
                // Were the same message enqueued again meanwhile, the two merge.
                push(tx, queue, &group_key, dedup_id.as_deref(), &body, now_ms())?;
                tx.execute("DELETE FROM dead_letters WHERE id = ?1", params![id])?;
                Ok(Some(queue))
            })
            .await?;
        match queue {
            Some(queue) => {
                self.wake(queue);
                Ok(true)
            }
            None => Ok(false),
        }
    }

    /// Messages in `queue`, in flight or not.
    pub async fn depth(&self, queue: QueueName) -> Result<u64, BackendError> {
        self.run("count messages", move |conn| {
            let n: i64 = conn.query_row(
                "SELECT COUNT(*) FROM messages WHERE queue = ?1",
                params![queue.as_str()],
                |row| row.get(0),
            )?;
            Ok(u64::try_from(n).unwrap_or(0))
        })
        .await
    }

    /// The most recent events that changed nothing, newest first.
    pub async fn ignored_events(&self, limit: usize) -> Result<Vec<IgnoredEvent>, BackendError> {
        self.run("list ignored events", move |conn| {
            let mut stmt = conn.prepare_cached("SELECT body FROM ignored_events ORDER BY id DESC LIMIT ?1")?;
            let bodies = stmt
                .query_map(params![clamp_i64(limit)], |row| row.get::<_, String>(0))?
                .collect::<Result<Vec<_>, _>>()?;
            bodies
                .iter()
                .map(|body| serde_json::from_str(body).map_err(StoreError::from))
                .collect()
        })
        .await
    }

    /// Enqueues (group key, dedup id, body) messages all or none, then wakes
    /// the queue's consumers.
    async fn enqueue_messages(
        &self,
        operation: &'static str,
        queue: QueueName,
        messages: Vec<(String, String, String)>,
    ) -> Result<(), BackendError> {
        if messages.is_empty() {
            return Ok(());
        }
        let added = self
            .write(operation, move |tx| {
                let now = now_ms();
                let mut added = false;
                for (group_key, dedup_id, body) in &messages {
                    added |= push(tx, queue, group_key, Some(dedup_id), body, now)?;
                }
                Ok(added)
            })
            .await?;
        if added {
            self.wake(queue);
        }
        Ok(())
    }
}

#[async_trait]
impl IncidentStore for Store {
    async fn latest(&self, service: &ServiceId, dedup_key: &DedupKey) -> Result<Option<Incident>, BackendError> {
        let (service, dedup_key) = (service.as_str().to_owned(), dedup_key.as_str().to_owned());
        self.run("read the latest incident", move |conn| {
            // The open incident, if any, is by construction the newest; asking
            // for it first keeps the answer right even if the clock went back.
            let body = conn
                .prepare_cached(
                    "SELECT body FROM incidents WHERE service = ?1 AND dedup_key = ?2
                     ORDER BY status != 'resolved' DESC, created_at DESC, id DESC
                     LIMIT 1",
                )?
                .query_row(params![service, dedup_key], |row| row.get::<_, String>(0))
                .optional()?;
            Ok(body.map(|b| serde_json::from_str(&b)).transpose()?)
        })
        .await
    }

    async fn get(&self, id: &IncidentId) -> Result<Option<Incident>, BackendError> {
        let id = id.as_str().to_owned();
        self.run("read an incident", move |conn| {
            let body = conn
                .query_row("SELECT body FROM incidents WHERE id = ?1", params![id], |row| {
                    row.get::<_, String>(0)
                })
                .optional()?;
            Ok(body.map(|b| serde_json::from_str(&b)).transpose()?)
        })
        .await
    }

    async fn list(&self, filter: &IncidentFilter) -> Result<Vec<Incident>, BackendError> {
        let status = filter.status.map(|s| s.as_str());
        let service = filter.service.as_ref().map(|s| s.as_str().to_owned());
        let limit = filter.limit.unwrap_or(DEFAULT_LIST_LIMIT).min(MAX_LIST_LIMIT);
        self.run("list incidents", move |conn| {
            // Only the filters given appear in the query, so each shape uses
            // its own index.
            let mut conditions = Vec::new();
            let mut values: Vec<&dyn rusqlite::ToSql> = Vec::new();
            if let Some(status) = &status {
                values.push(status);
                conditions.push(format!("status = ?{}", values.len()));
            }
            if let Some(service) = &service {
                values.push(service);
                conditions.push(format!("service = ?{}", values.len()));
            }
            let limit = clamp_i64(limit);
            values.push(&limit);
            let filter = if conditions.is_empty() {
                String::new()
            } else {
                format!("WHERE {}", conditions.join(" AND "))
            };
            let sql = format!(
                "SELECT body FROM incidents {filter} ORDER BY created_at DESC, id DESC LIMIT ?{}",
                values.len()
            );
            let mut stmt = conn.prepare_cached(&sql)?;
            let bodies = stmt
                .query_map(values.as_slice(), |row| row.get::<_, String>(0))?
                .collect::<Result<Vec<_>, _>>()?;
            bodies
                .iter()
                .map(|body| serde_json::from_str(body).map_err(StoreError::from))
                .collect()
        })
        .await
    }

    async fn is_applied(&self, event: &EventId) -> Result<bool, BackendError> {
        let event = event.as_str().to_owned();
        self.run("check an applied event", move |conn| {
            Ok(conn.query_row(
                "SELECT EXISTS (SELECT 1 FROM applied_events WHERE event_id = ?1)",
                params![event],
                |row| row.get::<_, bool>(0),
            )?)
        })
        .await
    }

    async fn commit(&self, commit: &Commit) -> Result<CommitOutcome, BackendError> {
        let write = CommitRows::of(commit)?;
        let (outcome, transition_added) = self.write("commit an event", move |tx| write.apply(tx)).await?;
        if transition_added {
            self.wake(QueueName::Transitions);
        }
        Ok(outcome)
    }
}

/// A commit turned into the rows it writes, ready to move to the blocking
/// pool.
enum CommitRows {
    Incident {
        event_id: String,
        id: String,
        service: String,
        dedup_key: String,
        status: &'static str,
        created_at: String,
        updated_at: String,
        version: i64,
        body: String,
        expected_version: Option<i64>,
        /// dedup id and body of the transition message.
        transition: Option<(String, String)>,
        timeline: Option<TimelineRow>,
    },
    Ignored {
        event_id: String,
        incident_id: Option<String>,
        reason: &'static str,
        at: String,
        body: String,
        timeline: Option<TimelineRow>,
    },
}

/// A timeline entry as its row.
struct TimelineRow {
    incident_id: String,
    id: String,
    sort_key: String,
    body: String,
}

impl TimelineRow {
    fn of(entry: &TimelineEntry) -> Result<Self, serde_json::Error> {
        Ok(TimelineRow {
            incident_id: entry.incident.as_str().to_owned(),
            id: entry.id.clone(),
            sort_key: entry.sort_key(),
            body: serde_json::to_string(entry)?,
        })
    }

    fn insert(&self, conn: &Connection) -> rusqlite::Result<usize> {
        conn.prepare_cached(
            "INSERT INTO timeline (incident_id, id, sort_key, body) VALUES (?1, ?2, ?3, ?4) \
             ON CONFLICT (incident_id, id) DO NOTHING",
        )?
        .execute(params![self.incident_id, self.id, self.sort_key, self.body])
    }
}

impl CommitRows {
    fn of(commit: &Commit) -> Result<Self, BackendError> {
        fn encode(e: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> BackendError {
            BackendError::new("encode a commit", e)
        }
        let timeline = commit
            .timeline_entry()
            .map(|entry| TimelineRow::of(&entry))
            .transpose()
            .map_err(encode)?;
        Ok(match commit {
            Commit::Incident {
                event_id,
                incident,
                expected_version,
                transition,
                ..
            } => CommitRows::Incident {
                event_id: event_id.as_str().to_owned(),
                id: incident.id.as_str().to_owned(),
                service: incident.service.as_str().to_owned(),
                dedup_key: incident.dedup_key.as_str().to_owned(),
                status: incident.status.as_str(),
                created_at: stamp(incident.created_at),
                updated_at: stamp(incident.updated_at),
                version: to_i64(incident.version).map_err(encode)?,
                body: serde_json::to_string(incident).map_err(encode)?,
                expected_version: expected_version.map(to_i64).transpose().map_err(encode)?,
                transition: transition
                    .as_ref()
                    .map(|t| Ok::<_, serde_json::Error>((t.id(), serde_json::to_string(t)?)))
                    .transpose()
                    .map_err(encode)?,
                timeline,
            },
            Commit::Ignored(ignored) => CommitRows::Ignored {
                event_id: ignored.event.id.as_str().to_owned(),
                incident_id: ignored.incident.as_ref().map(|i| i.as_str().to_owned()),
                reason: ignored.reason.as_str(),
                at: stamp(ignored.at),
                body: serde_json::to_string(ignored).map_err(encode)?,
                timeline,
            },
        })
    }

    /// Writes the commit, all or nothing (inside its savepoint of a group
    /// commit). Also tells whether a transition message was added. Refusals
    /// (already applied, conflict) return before the first change, since
    /// an `Ok` keeps what was written.
    fn apply(&self, tx: &Connection) -> Result<(CommitOutcome, bool), StoreError> {
        let now = Utc::now();
        let event_id = match self {
            CommitRows::Incident { event_id, .. } | CommitRows::Ignored { event_id, .. } => event_id,
        };
        let applied: bool = tx
            .prepare_cached("SELECT EXISTS (SELECT 1 FROM applied_events WHERE event_id = ?1)")?
            .query_row(params![event_id], |row| row.get(0))?;
        if applied {
            return Ok((CommitOutcome::AlreadyApplied, false));
        }
        let mark_applied = || {
            tx.prepare_cached("INSERT INTO applied_events (event_id, applied_at) VALUES (?1, ?2)")?
                .execute(params![event_id, stamp(now)])
        };
        let mut transition_added = false;
        match self {
            CommitRows::Incident {
                id,
                service,
                dedup_key,
                status,
                created_at,
                updated_at,
                version,
                body,
                expected_version,
                transition,
                timeline,
                ..
            } => {
                let written = match expected_version {
                    None => tx
                        .prepare_cached(
                            "INSERT INTO incidents (id, service, dedup_key, status, created_at, updated_at, version, body)
                             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                        )?
                        .execute(params![id, service, dedup_key, status, created_at, updated_at, version, body]),
                    // An incident's service, key and creation time never
                    // change: leaving them out of the SET spares the
                    // indexes on them an update per repeat.
                    Some(expected) => tx
                        .prepare_cached(
                            "UPDATE incidents SET status = ?2, updated_at = ?3, version = ?4, body = ?5
                             WHERE id = ?1 AND version = ?6",
                        )?
                        .execute(params![id, status, updated_at, version, body, expected]),
                };
                match written {
                    Ok(1) => {}
                    // No row at that version, or the key's open slot (or the
                    // id) is taken: someone else wrote first.
                    Ok(_) => return Ok((CommitOutcome::Conflict, false)),
                    Err(e) if is_unique_violation(&e) => return Ok((CommitOutcome::Conflict, false)),
                    Err(e) => return Err(e.into()),
                }
                mark_applied()?;
                if let Some(row) = timeline {
                    row.insert(tx)?;
                }
                if let Some((dedup_id, body)) = transition {
                    transition_added = push(
                        tx,
                        QueueName::Transitions,
                        id,
                        Some(dedup_id),
                        body,
                        now.timestamp_millis(),
                    )?;
                }
            }
            CommitRows::Ignored {
                event_id,
                incident_id,
                reason,
                at,
                body,
                timeline,
            } => {
                mark_applied()?;
                tx.prepare_cached(
                    "INSERT INTO ignored_events (event_id, incident_id, reason, at, body) VALUES (?1, ?2, ?3, ?4, ?5)",
                )?
                .execute(params![event_id, incident_id, reason, at, body])?;
                if let Some(row) = timeline {
                    row.insert(tx)?;
                }
            }
        }
        Ok((CommitOutcome::Written, transition_added))
    }
}

impl Store {
    /// Makes the configured heartbeats exactly `heartbeats`, keeping the beat
    /// state of those that stay.
    pub async fn set_heartbeats(&self, heartbeats: &[Heartbeat]) -> Result<(), BackendError> {
        let rows = heartbeats
            .iter()
            .map(|h| Ok((h.id.as_str().to_owned(), serde_json::to_string(h)?)))
            .collect::<Result<Vec<_>, serde_json::Error>>()
            .map_err(|e| BackendError::new("encode heartbeats", e))?;
        self.run("set heartbeats", move |conn| {
            let tx = conn.transaction()?;
            tx.execute("CREATE TEMP TABLE IF NOT EXISTS keep (id TEXT PRIMARY KEY)", [])?;
            tx.execute("DELETE FROM keep", [])?;
            for (id, body) in &rows {
                tx.prepare_cached(
                    "INSERT INTO heartbeats (id, body) VALUES (?1, ?2) ON CONFLICT (id) DO UPDATE SET body = ?2",
                )?
                .execute(params![id, body])?;
                tx.prepare_cached("INSERT INTO keep (id) VALUES (?1)")?
                    .execute(params![id])?;
            }
            tx.execute("DELETE FROM heartbeats WHERE id NOT IN (SELECT id FROM keep)", [])?;
            tx.commit()?;
            Ok(())
        })
        .await
    }
}

fn monitor_of(
    body: &str,
    last_beat_at: Option<String>,
    missed_since: Option<String>,
) -> Result<HeartbeatMonitor, StoreError> {
    let time = |value: Option<String>| -> Result<Option<DateTime<Utc>>, StoreError> {
        value
            .map(|v| DateTime::parse_from_rfc3339(&v).map(|t| t.with_timezone(&Utc)))
            .transpose()
            .map_err(|_| StoreError::Json(serde::de::Error::custom("a heartbeat time is not RFC 3339")))
    };
    Ok(HeartbeatMonitor {
        heartbeat: serde_json::from_str(body)?,
        state: HeartbeatState {
            last_beat_at: time(last_beat_at)?,
            missed_since: time(missed_since)?,
        },
    })
}

#[async_trait]
impl Heartbeats for Store {
    async fn monitors(&self) -> Result<Vec<HeartbeatMonitor>, BackendError> {
        self.run("read heartbeats", |conn| {
            let mut statement =
                conn.prepare_cached("SELECT body, last_beat_at, missed_since FROM heartbeats ORDER BY id")?;
            let rows = statement
                .query_map([], |row| Ok((row.get::<_, String>(0)?, row.get(1)?, row.get(2)?)))?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            rows.into_iter()
                .map(|(body, last, missed)| monitor_of(&body, last, missed))
                .collect()
        })
        .await
    }

    async fn monitor(&self, id: &HeartbeatId) -> Result<Option<HeartbeatMonitor>, BackendError> {
        let id = id.as_str().to_owned();
        self.run("read a heartbeat", move |conn| {
            let row = conn
                .prepare_cached("SELECT body, last_beat_at, missed_since FROM heartbeats WHERE id = ?1")?
                .query_row(params![id], |row| {
                    Ok((row.get::<_, String>(0)?, row.get::<_, Option<String>>(1)?, row.get(2)?))
                })
                .optional()?;
            row.map(|(body, last, missed)| monitor_of(&body, last, missed))
                .transpose()
        })
        .await
    }

    async fn record_beat(
        &self,
        id: &HeartbeatId,
        seen: &HeartbeatState,
        last_beat_at: DateTime<Utc>,
    ) -> Result<bool, BackendError> {
        let id = id.as_str().to_owned();
        let (seen_last, seen_missed) = (seen.last_beat_at.map(stamp), seen.missed_since.map(stamp));
        self.run("record a beat", move |conn| {
            // IS: NULL-safe, as "never beaten" and "not missed" are NULL.
            let changed = conn
                .prepare_cached(
                    "UPDATE heartbeats SET last_beat_at = ?4, missed_since = NULL \
                     WHERE id = ?1 AND last_beat_at IS ?2 AND missed_since IS ?3",
                )?
                .execute(params![id, seen_last, seen_missed, stamp(last_beat_at)])?;
            Ok(changed == 1)
        })
        .await
    }

    async fn mark_missed(
        &self,
        id: &HeartbeatId,
        last_beat_at: DateTime<Utc>,
        at: DateTime<Utc>,
    ) -> Result<bool, BackendError> {
        let id = id.as_str().to_owned();
        self.run("mark a heartbeat missed", move |conn| {
            let changed = conn
                .prepare_cached(
                    "UPDATE heartbeats SET missed_since = ?3 \
                     WHERE id = ?1 AND last_beat_at = ?2 AND missed_since IS NULL",
                )?
                .execute(params![id, stamp(last_beat_at), stamp(at)])?;
            Ok(changed == 1)
        })
        .await
    }
}

#[async_trait]
impl Timeline for Store {
    async fn record(&self, entry: &TimelineEntry) -> Result<(), BackendError> {
        let row = TimelineRow::of(entry).map_err(|e| BackendError::new("encode a timeline entry", e))?;
        self.run("record a timeline entry", move |conn| {
            row.insert(conn)?;
            Ok(())
        })
        .await
    }

    async fn timeline(&self, incident: &IncidentId) -> Result<Vec<TimelineEntry>, BackendError> {
        let incident = incident.as_str().to_owned();
        self.run("read a timeline", move |conn| {
            let mut statement =
                conn.prepare_cached("SELECT body FROM timeline WHERE incident_id = ?1 ORDER BY sort_key")?;
            let bodies = statement
                .query_map(params![incident], |row| row.get::<_, String>(0))?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            bodies
                .iter()
                .map(|body| serde_json::from_str(body).map_err(StoreError::from))
                .collect()
        })
        .await
    }
}

#[async_trait]
impl RateCounter for Store {
    async fn hit(&self, integration: &IntegrationId, window: i64) -> Result<u64, BackendError> {
        let integration = integration.as_str().to_owned();
        self.run("count a request", move |conn| {
            let count: i64 = conn
                .prepare_cached(
                    "INSERT INTO rate_windows (integration, window, count) VALUES (?1, ?2, 1) \
                     ON CONFLICT (integration, window) DO UPDATE SET count = count + 1 RETURNING count",
                )?
                .query_row(params![integration, window], |row| row.get(0))?;
            if count == 1 {
                // A new window: the integration's older ones are done with.
                conn.prepare_cached("DELETE FROM rate_windows WHERE integration = ?1 AND window < ?2")?
                    .execute(params![integration, window])?;
            }
            Ok(u64::try_from(count).unwrap_or(0))
        })
        .await
    }
}

/// Counters and bundles of the notification throttle, in one transaction
/// per call (the connection is shared, so a take is atomic).
#[async_trait]
impl tocsin_core::throttle::ThrottleStore for Store {
    async fn take(
        &self,
        channel: tocsin_core::notify::Channel,
        to: &str,
        slots: &[tocsin_core::throttle::Slot],
        force: bool,
    ) -> Result<bool, BackendError> {
        let (channel, to, slots) = (channel.as_str(), to.to_owned(), slots.to_vec());
        self.run("count a notification", move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            if !force {
                for slot in &slots {
                    let count: i64 = tx
                        .prepare_cached(
                            "SELECT count FROM throttle_windows \
                             WHERE channel = ?1 AND recipient = ?2 AND seconds = ?3 AND window = ?4",
                        )?
                        .query_row(params![channel, to, slot.seconds, slot.index], |row| row.get(0))
                        .optional()?
                        .unwrap_or(0);
                    if count >= i64::from(slot.limit) {
                        return Ok(false);
                    }
                }
            }
            for slot in &slots {
                tx.prepare_cached(
                    "INSERT INTO throttle_windows (channel, recipient, seconds, window, count, ends_at) \
                     VALUES (?1, ?2, ?3, ?4, 1, ?5) \
                     ON CONFLICT (channel, recipient, seconds, window) DO UPDATE SET count = count + 1",
                )?
                .execute(params![channel, to, slot.seconds, slot.index, slot.ends_at()])?;
            }
            // Ended windows are done with.
            let now = slots.iter().map(|s| s.index * i64::from(s.seconds)).min().unwrap_or(0);
            tx.prepare_cached("DELETE FROM throttle_windows WHERE channel = ?1 AND recipient = ?2 AND ends_at <= ?3")?
                .execute(params![channel, to, now])?;
            tx.commit()?;
            Ok(true)
        })
        .await
    }

    async fn suppress(&self, item: &tocsin_core::throttle::Suppressed) -> Result<(), BackendError> {
        let body = serde_json::to_string(item).map_err(|e| BackendError::new("bundle a notification", e))?;
        let (channel, to, incident, at) = (
            item.channel.as_str(),
            item.to.clone(),
            item.incident.as_str().to_owned(),
            item.at.timestamp_micros(),
        );
        self.run("bundle a notification", move |conn| {
            conn.prepare_cached(
                "INSERT INTO throttle_bundles (channel, recipient, incident_id, at_micros, body) \
                 VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT DO NOTHING",
            )?
            .execute(params![channel, to, incident, at, body])?;
            Ok(())
        })
        .await
    }

    async fn bundled(
        &self,
        channel: tocsin_core::notify::Channel,
    ) -> Result<Vec<tocsin_core::throttle::Suppressed>, BackendError> {
        let channel = channel.as_str();
        self.run("read the bundles", move |conn| {
            let mut statement = conn.prepare_cached(
                "SELECT body FROM throttle_bundles WHERE channel = ?1 ORDER BY at_micros, recipient, incident_id",
            )?;
            let bodies = statement
                .query_map(params![channel], |row| row.get::<_, String>(0))?
                .collect::<Result<Vec<_>, _>>()?;
            Ok(bodies
                .iter()
                .map(|body| serde_json::from_str(body))
                .collect::<Result<Vec<_>, _>>()?)
        })
        .await
    }

    async fn clear(&self, items: &[tocsin_core::throttle::Suppressed]) -> Result<(), BackendError> {
        let keys: Vec<(&'static str, String, String)> = items
            .iter()
            .map(|i| (i.channel.as_str(), i.to.clone(), i.incident.as_str().to_owned()))
            .collect();
        self.run("clear a bundle", move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            for (channel, to, incident) in &keys {
                tx.prepare_cached(
                    "DELETE FROM throttle_bundles WHERE channel = ?1 AND recipient = ?2 AND incident_id = ?3",
                )?
                .execute(params![channel, to, incident])?;
            }
            tx.commit()?;
            Ok(())
        })
        .await
    }
}

/// One upsert per request, following `IntegrationStats::apply`.
#[async_trait]
impl tocsin_core::ports::IngestStats for Store {
    async fn record(
        &self,
        integration: &IntegrationId,
        service: &ServiceId,
        provider: tocsin_core::providers::ProviderKind,
        outcome: &tocsin_core::health::IngestOutcome,
    ) -> Result<(), BackendError> {
        use tocsin_core::health::OutcomeKind;
        let (received, success, errors, latency, failure) = match &outcome.kind {
            OutcomeKind::Success => (1, 1, 0, outcome.latency_ms, None),
            OutcomeKind::Error(failure) => (1, 0, 1, outcome.latency_ms, Some(failure.clone())),
            OutcomeKind::FailedAfterSuccess(failure) => (0, -1, 1, 0, Some(failure.clone())),
        };
        let latency = to_i64(latency).map_err(|e| BackendError::new("count a request for health", e))?;
        let integration = integration.as_str().to_owned();
        let service = service.as_str().to_owned();
        let at = stamp(outcome.at);
        self.run("count a request for health", move |conn| {
            let (error_at, status, message) = match &failure {
                Some(failure) => (Some(at.as_str()), Some(failure.status), Some(failure.message.as_str())),
                None => (None, None, None),
            };
            conn.prepare_cached(
                "INSERT INTO ingest_stats (integration, service, provider, received, success, errors, latency_ms, \
                 last_event_at, last_error_at, last_error_status, last_error_message) \
                 VALUES (?1, ?2, ?3, ?4, max(?5, 0), ?6, ?7, ?8, ?9, ?10, ?11) \
                 ON CONFLICT (integration) DO UPDATE SET service = excluded.service, provider = excluded.provider, \
                 received = received + ?4, success = max(success + ?5, 0), errors = errors + ?6, \
                 latency_ms = latency_ms + ?7, last_event_at = excluded.last_event_at, \
                 last_error_at = coalesce(?9, last_error_at), \
                 last_error_status = CASE WHEN ?9 IS NULL THEN last_error_status ELSE ?10 END, \
                 last_error_message = CASE WHEN ?9 IS NULL THEN last_error_message ELSE ?11 END",
            )?
            .execute(params![
                integration,
                service,
                provider.as_str(),
                received,
                success,
                errors,
                latency,
                at,
                error_at,
                status,
                message
            ])?;
            Ok(())
        })
        .await
    }

    async fn snapshot(&self) -> Result<Vec<tocsin_core::health::IntegrationStats>, BackendError> {
        self.run("read the health counters", |conn| {
            let mut statement = conn.prepare_cached(
                "SELECT integration, service, provider, received, success, errors, latency_ms, last_event_at, \
                 last_error_at, last_error_status, last_error_message FROM ingest_stats",
            )?;
            let rows = statement.query_map([], |row| {
                Ok((
                    row.get::<_, String>(0)?,
                    row.get::<_, String>(1)?,
                    row.get::<_, String>(2)?,
                    [
                        row.get::<_, i64>(3)?,
                        row.get::<_, i64>(4)?,
                        row.get::<_, i64>(5)?,
                        row.get::<_, i64>(6)?,
                    ],
                    row.get::<_, String>(7)?,
                    row.get::<_, Option<String>>(8)?,
                    row.get::<_, Option<u16>>(9)?,
                    row.get::<_, Option<String>>(10)?,
                ))
            })?;
            let text = |value: String| serde_json::Value::String(value);
            let mut all = Vec::new();
            for row in rows {
                let (integration, service, provider, counts, last_event_at, error_at, status, message) = row?;
                let [received, success, errors, latency] = counts.map(|n| u64::try_from(n).unwrap_or(0));
                let last_error = match (error_at, status, message) {
                    (Some(at), Some(status), Some(message)) => Some(tocsin_core::health::LastError {
                        at: serde_json::from_value(text(at))?,
                        status,
                        message,
                    }),
                    _ => None,
                };
                all.push(tocsin_core::health::IntegrationStats {
                    integration: serde_json::from_value(text(integration))?,
                    service: serde_json::from_value(text(service))?,
                    provider: serde_json::from_value(text(provider))?,
                    received,
                    success,
                    errors,
                    latency_ms_total: latency,
                    last_event_at: Some(serde_json::from_value(text(last_event_at))?),
                    last_error,
                });
            }
            Ok(all)
        })
        .await
    }
}

#[async_trait]
impl EventQueue for Store {
    async fn enqueue(&self, events: &[Event]) -> Result<(), BackendError> {
        let messages = events
            .iter()
            .map(|event| {
                let group_key = format!("{}{GROUP_SEPARATOR}{}", event.service, event.dedup_key());
                Ok((group_key, event.id.as_str().to_owned(), serde_json::to_string(event)?))
            })
            .collect::<Result<Vec<_>, serde_json::Error>>()
            .map_err(|e| BackendError::new("encode events", e))?;
        self.enqueue_messages("enqueue events", QueueName::Events, messages)
            .await
    }
}

#[async_trait]
impl NotificationQueue for Store {
    async fn enqueue(&self, jobs: &[NotificationJob]) -> Result<(), BackendError> {
        let messages = jobs
            .iter()
            .map(|job| {
                let group_key = format!("{}:{}", job.channel, job.to);
                Ok((group_key, job.id.clone(), serde_json::to_string(job)?))
            })
            .collect::<Result<Vec<_>, serde_json::Error>>()
            .map_err(|e| BackendError::new("encode notification jobs", e))?;
        self.enqueue_messages("enqueue notification jobs", QueueName::Notifications, messages)
            .await
    }
}

/// A write ready to join a group, and where its answer will arrive.
#[allow(clippy::type_complexity)]
fn grouped<T, F>(f: F) -> (Box<dyn GroupedWrite>, oneshot::Receiver<Result<T, StoreError>>)
where
    T: Send + 'static,
    F: FnMut(&Connection) -> Result<T, StoreError> + Send + 'static,
{
    let (reply, answer) = oneshot::channel();
    let write = Box::new(Write {
        run: f,
        result: None,
        reply,
    });
    (write, answer)
}

/// Commits groups of waiting writes until none is left (runs on the
/// blocking pool; see [`Store::write`]).
fn commit_groups(inner: &Inner) {
    // Should a write panic (tests; release builds abort), the next write
    // starts a new committer instead of waiting for this one forever.
    struct Release<'a>(&'a Inner);
    impl Drop for Release<'_> {
        fn drop(&mut self) {
            if std::thread::panicking() {
                self.0.writes.lock().unwrap_or_else(PoisonError::into_inner).committing = false;
            }
        }
    }
    let _release = Release(inner);
    loop {
        let group: Vec<Box<dyn GroupedWrite>> = {
            let mut pending = inner.writes.lock().unwrap_or_else(PoisonError::into_inner);
            if pending.waiting.is_empty() {
                pending.committing = false;
                return;
            }
            let take = pending.waiting.len().min(MAX_GROUP);
            pending.waiting.drain(..take).collect()
        };
        let mut conn = inner.conn.lock().unwrap_or_else(PoisonError::into_inner);
        commit_group(&mut conn, group);
    }
}

/// One transaction for the whole group, then every caller answered. A
/// failed write rolls the group back; each write then runs again alone.
/// (Savepoints would spare the others the rerun, but copy every page they
/// touch to a statement journal: a tenth of the processor's time.)
fn commit_group(conn: &mut Connection, mut group: Vec<Box<dyn GroupedWrite>>) {
    let outcome = transaction(conn, &mut group);
    if matches!(outcome, Ok(false)) && group.len() > 1 {
        for mut write in group {
            let outcome = transaction(conn, std::slice::from_mut(&mut write));
            write.settle(outcome.map(|_| ()));
        }
        return;
    }
    // Ok(false) is left only for a group of one, whose write reports its
    // own error.
    let committed = outcome.map(|_| ());
    for write in group {
        write.settle(committed.clone());
    }
}

/// Runs `writes` in one transaction: true when all succeeded and it
/// committed, false when one failed and it was rolled back (the writes
/// after it not run).
fn transaction(conn: &mut Connection, writes: &mut [Box<dyn GroupedWrite>]) -> Result<bool, Arc<rusqlite::Error>> {
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(Arc::new)?;
    for write in writes.iter_mut() {
        if !write.execute(&tx) {
            // Dropping the transaction rolls it back.
            return Ok(false);
        }
    }
    tx.commit().map_err(Arc::new)?;
    Ok(true)
}

/// Copies the write-ahead log into the database file every
/// [`CHECKPOINT_EVERY`], on a thread and a connection of its own, until the
/// store is dropped. With `synchronous=NORMAL` a commit only appends to the
/// log; the checkpoint is where SQLite writes the database file and syncs
/// both. Left to SQLite it runs inside whichever commit crosses the log's
/// size threshold, holding the store's one connection (every read, every
/// group of writes, so every ingest request then waiting) through the sync:
/// the latency tail of the local stack under load. A PASSIVE checkpoint
/// here runs beside the writer instead, and never waits for it.
fn spawn_checkpointer(conn: Connection, store: std::sync::Weak<Inner>) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("tocsin-checkpoint".into())
        .spawn(move || loop {
            std::thread::sleep(CHECKPOINT_EVERY);
            let Some(inner) = store.upgrade() else {
                return;
            };
            match conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())) {
                Ok(()) => {
                    inner.checkpoints.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
                // The commit's own checkpoint (AUTOCHECKPOINT_PAGES) is the
                // safety net; the next round tries again.
                Err(error) => tracing::debug!(%error, "checkpoint failed"),
            }
        })
        .map(drop)
}

fn configure(conn: &Connection) -> Result<(), rusqlite::Error> {
    conn.busy_timeout(BUSY_TIMEOUT)?;
    let mode: String = conn.pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        // Some filesystems (network mounts) refuse WAL; the rollback journal
        // is as durable, only slower with a concurrent reader.
        tracing::warn!(journal_mode = %mode, "SQLite refused WAL mode");
    }
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    // The checkpointer thread checkpoints (spawn_checkpointer).
    conn.pragma_update(None, "wal_autocheckpoint", AUTOCHECKPOINT_PAGES)?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    // The queues churn through pages (every message is written, claimed and
    // deleted): a page cache larger than the default 2 MB, and reads of the
    // database file through a memory map, save a system call and a copy
    // per page read; statement journals of savepoints stay in memory.
    conn.pragma_update(None, "cache_size", -16_384)?;
    conn.pragma_update(None, "mmap_size", 256 * 1024 * 1024)?;
    conn.pragma_update(None, "temp_store", "MEMORY")?;
    // Each hot statement is prepared once (the default cache holds 16).
    conn.set_prepared_statement_cache_capacity(64);
    Ok(())
}

fn migrate(conn: &mut Connection) -> Result<(), StoreError> {
    // IMMEDIATE: two processes opening a new store at once migrate it once.
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let found: i64 = tx.pragma_query_value(None, "user_version", |row| row.get(0))?;
    let done = usize::try_from(found).unwrap_or(usize::MAX);
    if done > MIGRATIONS.len() {
        return Err(StoreError::NewerSchema {
            found,
            known: MIGRATIONS.len(),
        });
    }
    for (n, sql) in MIGRATIONS.iter().enumerate().skip(done) {
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", clamp_i64(n + 1))?;
    }
    tx.commit()?;
    Ok(())
}

/// Inserts a message unless one with the same dedup id is in the queue.
/// True when it was inserted. The only way in: it marks the message as its
/// group's head when the group has no other.
fn push(
    conn: &Connection,
    queue: QueueName,
    group_key: &str,
    dedup_id: Option<&str>,
    body: &str,
    now: i64,
) -> Result<bool, rusqlite::Error> {
    let n = conn
        .prepare_cached(
            "INSERT INTO messages (queue, group_key, dedup_id, body, receive_count, visible_at, enqueued_at, head)
             VALUES (?1, ?2, ?3, ?4, 0, ?5, ?5,
                     NOT EXISTS (SELECT 1 FROM messages WHERE queue = ?1 AND group_key = ?2))
             ON CONFLICT (queue, dedup_id) DO NOTHING",
        )?
        .execute(params![queue.as_str(), group_key, dedup_id, body, now])?;
    Ok(n == 1)
}

/// Moves a message to the dead letters.
fn bury(conn: &Connection, id: i64, error: &str, now: i64) -> Result<(), rusqlite::Error> {
    conn.execute(
        "INSERT INTO dead_letters (queue, group_key, dedup_id, body, error, receive_count, enqueued_at, dead_at)
         SELECT queue, group_key, dedup_id, body, ?2, receive_count, enqueued_at, ?3 FROM messages WHERE id = ?1",
        params![id, error, now],
    )?;
    conn.execute("DELETE FROM messages WHERE id = ?1", params![id])?;
    Ok(())
}

/// Dead-letters the visible group heads that reached [`RECEIVE_LIMIT`].
/// Only a group's head is ever received, so only heads can have reached it.
fn bury_exhausted(conn: &Connection, queue: QueueName, now: i64) -> Result<usize, rusqlite::Error> {
    let exhausted = {
        let mut stmt = conn.prepare_cached(
            "SELECT id, last_error FROM messages INDEXED BY messages_by_receives
             WHERE queue = ?1 AND receive_count >= ?3 AND visible_at <= ?2",
        )?;
        let rows = stmt.query_map(params![queue.as_str(), now, RECEIVE_LIMIT], |row| {
            Ok((row.get::<_, i64>(0)?, row.get::<_, Option<String>>(1)?))
        })?;
        rows.collect::<Result<Vec<_>, _>>()?
    };
    for (id, last_error) in &exhausted {
        let mut error = format!("received {RECEIVE_LIMIT} times without being deleted (did its consumer crash on it?)");
        if let Some(last) = last_error {
            error.push_str("; last error: ");
            error.push_str(last);
        }
        bury(conn, *id, &error, now)?;
    }
    Ok(exhausted.len())
}

fn is_unique_violation(error: &rusqlite::Error) -> bool {
    matches!(
        error,
        rusqlite::Error::SqliteFailure(e, _)
            if e.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_UNIQUE
                || e.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_PRIMARYKEY
    )
}

fn now_ms() -> i64 {
    Utc::now().timestamp_millis()
}

fn from_ms(ms: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(ms).unwrap_or(DateTime::UNIX_EPOCH)
}

fn duration_ms(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}

fn clamp_i64(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

fn to_i64(n: u64) -> Result<i64, StoreError> {
    i64::try_from(n).map_err(|_| StoreError::OutOfRange(n))
}

/// Maintenance windows: one row each, `released_at` beside the body.
#[async_trait]
impl tocsin_core::escalation::Escalations for Store {
    async fn schedule(&self, pending: &tocsin_core::escalation::PendingEscalation) -> Result<(), BackendError> {
        let body = serde_json::to_string(pending).map_err(|e| BackendError::new("encode an escalation", e))?;
        let key = pending.sort_key();
        self.run("record an escalation", move |conn| {
            conn.prepare_cached("INSERT OR IGNORE INTO escalations (sort_key, body) VALUES (?1, ?2)")?
                .execute(params![key, body])?;
            Ok(())
        })
        .await
    }

    async fn due(
        &self,
        now: DateTime<Utc>,
        limit: usize,
    ) -> Result<Vec<tocsin_core::escalation::PendingEscalation>, BackendError> {
        let bound = tocsin_core::escalation::PendingEscalation::due_bound(now);
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.run("read the due escalations", move |conn| {
            let mut statement =
                conn.prepare_cached("SELECT body FROM escalations WHERE sort_key <= ?1 ORDER BY sort_key LIMIT ?2")?;
            let rows = statement
                .query_map(params![bound, limit], |row| row.get::<_, String>(0))?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            rows.iter().map(|body| Ok(serde_json::from_str(body)?)).collect()
        })
        .await
    }

    async fn remove(&self, pending: &tocsin_core::escalation::PendingEscalation) -> Result<(), BackendError> {
        let key = pending.sort_key();
        self.run("forget an escalation", move |conn| {
            conn.prepare_cached("DELETE FROM escalations WHERE sort_key = ?1")?
                .execute(params![key])?;
            Ok(())
        })
        .await
    }
}

#[async_trait]
impl tocsin_core::slack::threads::SlackThreads for Store {
    async fn remember(
        &self,
        incident: &IncidentId,
        channel: &str,
        thread: &tocsin_core::slack::threads::SlackThread,
    ) -> Result<(), BackendError> {
        let (incident, channel) = (incident.as_str().to_owned(), channel.to_owned());
        let (channel_id, ts) = (thread.channel_id.clone(), thread.ts.clone());
        self.run("remember a Slack thread", move |conn| {
            // The first message stays: a redelivered trigger never moves the thread.
            conn.prepare_cached(
                "INSERT OR IGNORE INTO slack_threads (incident_id, channel, channel_id, ts) VALUES (?1, ?2, ?3, ?4)",
            )?
            .execute(params![incident, channel, channel_id, ts])?;
            Ok(())
        })
        .await
    }

    async fn thread(
        &self,
        incident: &IncidentId,
        channel: &str,
    ) -> Result<Option<tocsin_core::slack::threads::SlackThread>, BackendError> {
        let (incident, channel) = (incident.as_str().to_owned(), channel.to_owned());
        self.run("read a Slack thread", move |conn| {
            Ok(conn
                .prepare_cached("SELECT channel_id, ts FROM slack_threads WHERE incident_id = ?1 AND channel = ?2")?
                .query_row(params![incident, channel], |row| {
                    Ok(tocsin_core::slack::threads::SlackThread {
                        channel_id: row.get(0)?,
                        ts: row.get(1)?,
                    })
                })
                .optional()?)
        })
        .await
    }
}

#[async_trait]
impl tocsin_core::ports::MaintenanceStore for Store {
    async fn put_window(&self, window: &tocsin_core::maintenance::MaintenanceWindow) -> Result<(), BackendError> {
        let mut body = window.clone();
        body.released_at = None;
        let body = serde_json::to_string(&body).map_err(|e| BackendError::new("encode a maintenance window", e))?;
        let (id, service, start) = (window.id.to_string(), window.service.to_string(), stamp(window.start));
        self.run("write a maintenance window", move |conn| {
            conn.prepare_cached(
                "INSERT INTO maintenance_windows (id, service, start, body) VALUES (?1, ?2, ?3, ?4) \
                 ON CONFLICT (id) DO UPDATE SET service = excluded.service, start = excluded.start, body = excluded.body",
            )?
            .execute(params![id, service, start, body])?;
            Ok(())
        })
        .await
    }

    async fn delete_window(&self, id: &tocsin_core::maintenance::WindowId) -> Result<bool, BackendError> {
        let id = id.to_string();
        self.run("delete a maintenance window", move |conn| {
            Ok(conn
                .prepare_cached("DELETE FROM maintenance_windows WHERE id = ?1")?
                .execute(params![id])?
                > 0)
        })
        .await
    }

    async fn windows(
        &self,
        service: Option<&ServiceId>,
    ) -> Result<Vec<tocsin_core::maintenance::MaintenanceWindow>, BackendError> {
        let service = service.map(|s| s.to_string());
        self.run("read the maintenance windows", move |conn| {
            let mut statement = conn.prepare_cached(
                "SELECT body, released_at FROM maintenance_windows WHERE ?1 IS NULL OR service = ?1 \
                 ORDER BY service, start, id",
            )?;
            let rows = statement
                .query_map(params![service], |row| {
                    Ok((row.get::<_, String>(0)?, row.get::<_, Option<String>>(1)?))
                })?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            rows.into_iter()
                .map(|(body, released_at)| {
                    let mut window: tocsin_core::maintenance::MaintenanceWindow = serde_json::from_str(&body)?;
                    window.released_at = released_at
                        .map(|at| serde_json::from_value(serde_json::Value::String(at)))
                        .transpose()?;
                    Ok(window)
                })
                .collect()
        })
        .await
    }

    async fn mark_released(
        &self,
        id: &tocsin_core::maintenance::WindowId,
        at: DateTime<Utc>,
    ) -> Result<(), BackendError> {
        let (id, at) = (id.to_string(), stamp(at));
        self.run("mark a maintenance window released", move |conn| {
            conn.prepare_cached(
                "UPDATE maintenance_windows SET released_at = ?2 WHERE id = ?1 AND released_at IS NULL",
            )?
            .execute(params![id, at])?;
            Ok(())
        })
        .await
    }

    async fn end_window(
        &self,
        id: &tocsin_core::maintenance::WindowId,
        end: DateTime<Utc>,
    ) -> Result<bool, BackendError> {
        let id = id.to_string();
        self.run("end a maintenance window", move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let row = tx
                .prepare_cached("SELECT body FROM maintenance_windows WHERE id = ?1 AND released_at IS NULL")?
                .query_row(params![id], |row| row.get::<_, String>(0))
                .optional()?;
            let Some(body) = row else {
                return Ok(false);
            };
            let window: tocsin_core::maintenance::MaintenanceWindow = serde_json::from_str(&body)?;
            let Some(ended) = window.ended_at(end) else {
                return Ok(false);
            };
            tx.prepare_cached("UPDATE maintenance_windows SET body = ?2 WHERE id = ?1")?
                .execute(params![id, serde_json::to_string(&ended)?])?;
            tx.commit()?;
            Ok(true)
        })
        .await
    }
}

/// Integrations made at run time by `tocsin integrations --data`, read by
/// the running stack through `crate::layered::LayeredConfig`.
impl Store {
    /// Creates or replaces the integration of `integration.id`. A key
    /// rotation replaces the row of the same id, old key hash and all, in
    /// one transaction: the old key stops working as the new one starts.
    pub async fn put_integration(&self, integration: &Integration) -> Result<(), BackendError> {
        let key_hash = integration.key_hash.as_str().to_owned();
        let id = integration.id.as_str().to_owned();
        let body = serde_json::to_string(&IntegrationRecord::from(integration))
            .map_err(|e| BackendError::new("encode an integration", e))?;
        self.run("put an integration", move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            tx.prepare_cached("DELETE FROM integrations WHERE id = ?1")?
                .execute(params![id])?;
            // A key hash of another integration fails the primary key: keys
            // are never shared.
            tx.prepare_cached("INSERT INTO integrations (key_hash, id, body) VALUES (?1, ?2, ?3)")?
                .execute(params![key_hash, id, body])?;
            tx.commit()?;
            Ok(())
        })
        .await
    }

    /// Removes the integration of this key hash; false when there was none.
    pub async fn delete_integration(&self, key_hash: &KeyHash) -> Result<bool, BackendError> {
        let key_hash = key_hash.as_str().to_owned();
        self.run("delete an integration", move |conn| {
            let deleted = conn
                .prepare_cached("DELETE FROM integrations WHERE key_hash = ?1")?
                .execute(params![key_hash])?;
            Ok(deleted > 0)
        })
        .await
    }

    /// Every stored integration, by id.
    pub async fn list_integrations(&self) -> Result<Vec<Integration>, BackendError> {
        self.run("list integrations", |conn| {
            let mut stmt = conn.prepare_cached("SELECT body FROM integrations ORDER BY id")?;
            let bodies = stmt
                .query_map([], |row| row.get::<_, String>(0))?
                .collect::<Result<Vec<_>, _>>()?;
            bodies
                .iter()
                .map(|body| Ok(Integration::from(serde_json::from_str::<IntegrationRecord>(body)?)))
                .collect()
        })
        .await
    }

    pub async fn integration_by_key(&self, key_hash: &KeyHash) -> Result<Option<Integration>, BackendError> {
        let key_hash = key_hash.as_str().to_owned();
        self.run("read an integration", move |conn| {
            let body: Option<String> = conn
                .prepare_cached("SELECT body FROM integrations WHERE key_hash = ?1")?
                .query_row(params![key_hash], |row| row.get(0))
                .optional()?;
            let record: Option<IntegrationRecord> = body.map(|b| serde_json::from_str(&b)).transpose()?;
            Ok(record.map(Integration::from))
        })
        .await
    }
}

/// Incident times as text that sorts chronologically: fixed width, UTC,
/// microseconds.
fn stamp(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Micros, true)
}

/// A contact's [`ContactState`](tocsin_core::contacts::ContactState) as
/// stored in the `contacts` table; the address is the row's key.
#[derive(Serialize, serde::Deserialize)]
struct ContactRow {
    permanent_bounces: u64,
    transient_bounces: u64,
    complaints: u64,
    last_bounce: Option<LastFeedbackRow>,
    last_complaint: Option<LastFeedbackRow>,
    suppressed: bool,
    #[serde(default)]
    last_change: Option<SuppressionChangeRow>,
}

#[derive(Serialize, serde::Deserialize)]
struct LastFeedbackRow {
    at: DateTime<Utc>,
    kind: String,
    message_id: String,
}

#[derive(Serialize, serde::Deserialize)]
struct SuppressionChangeRow {
    suppressed: bool,
    at: DateTime<Utc>,
    by: String,
}

impl ContactRow {
    fn of(state: &tocsin_core::contacts::ContactState) -> Self {
        let last = |last: &tocsin_core::contacts::LastFeedback| LastFeedbackRow {
            at: last.at,
            kind: last.kind.as_str().to_owned(),
            message_id: last.message_id.clone(),
        };
        ContactRow {
            permanent_bounces: state.permanent_bounces,
            transient_bounces: state.transient_bounces,
            complaints: state.complaints,
            last_bounce: state.last_bounce.as_ref().map(last),
            last_complaint: state.last_complaint.as_ref().map(last),
            suppressed: state.suppressed,
            last_change: state.last_change.as_ref().map(|change| SuppressionChangeRow {
                suppressed: change.suppressed,
                at: change.at,
                by: change.by.clone(),
            }),
        }
    }

    fn state(self, address: &str) -> Result<tocsin_core::contacts::ContactState, StoreError> {
        use tocsin_core::contacts::{ContactState, FeedbackKind, LastFeedback, SuppressionChange};
        let last = |row: LastFeedbackRow| -> Result<LastFeedback, StoreError> {
            let kind = match row.kind.as_str() {
                "permanent_bounce" => FeedbackKind::PermanentBounce,
                "transient_bounce" => FeedbackKind::TransientBounce,
                "complaint" => FeedbackKind::Complaint,
                _ => return Err(StoreError::Contact(address.to_owned())),
            };
            Ok(LastFeedback {
                at: row.at,
                kind,
                message_id: row.message_id,
            })
        };
        Ok(ContactState {
            address: tocsin_core::config::EmailAddress::parse(address)
                .map_err(|_| StoreError::Contact(address.to_owned()))?,
            permanent_bounces: self.permanent_bounces,
            transient_bounces: self.transient_bounces,
            complaints: self.complaints,
            last_bounce: self.last_bounce.map(last).transpose()?,
            last_complaint: self.last_complaint.map(last).transpose()?,
            suppressed: self.suppressed,
            last_change: self.last_change.map(|change| SuppressionChange {
                suppressed: change.suppressed,
                at: change.at,
                by: change.by,
            }),
        })
    }
}

/// The stored state of `address` (lowercased) and its latest feedback id.
fn contact_row(
    conn: &Connection,
    address: &str,
) -> Result<Option<(tocsin_core::contacts::ContactState, String)>, StoreError> {
    let row = conn
        .prepare_cached("SELECT body, last_feedback_id FROM contacts WHERE address = ?1")?
        .query_row(params![address], |row| {
            Ok((row.get::<_, String>(0)?, row.get::<_, String>(1)?))
        })
        .optional()?;
    row.map(|(body, feedback_id)| Ok((serde_json::from_str::<ContactRow>(&body)?.state(address)?, feedback_id)))
        .transpose()
}

fn put_contact_row(
    conn: &Connection,
    state: &tocsin_core::contacts::ContactState,
    feedback_id: &str,
) -> Result<(), StoreError> {
    let body = serde_json::to_string(&ContactRow::of(state))?;
    conn.prepare_cached(
        "INSERT INTO contacts (address, last_feedback_id, body) VALUES (?1, ?2, ?3) \
         ON CONFLICT (address) DO UPDATE SET last_feedback_id = excluded.last_feedback_id, body = excluded.body",
    )?
    .execute(params![state.address.as_str(), feedback_id, body])?;
    Ok(())
}

/// The local stack's bounces and complaints, and the suppressions
/// `tocsin contacts --data` sets: the email notifier skips a suppressed
/// address as notify-email does.
#[async_trait]
impl tocsin_core::contacts::ContactHealth for Store {
    async fn record(&self, feedback: &tocsin_core::contacts::ContactFeedback) -> Result<bool, BackendError> {
        let feedback = feedback.clone();
        self.run("record a contact's feedback", move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let address = feedback.address.as_str().to_lowercase();
            let (mut state, last_id) = match contact_row(&tx, &address)? {
                Some(found) => found,
                None => (
                    tocsin_core::contacts::ContactState::new(
                        tocsin_core::config::EmailAddress::parse(&address)
                            .map_err(|_| StoreError::Contact(address.clone()))?,
                    ),
                    String::new(),
                ),
            };
            if !feedback.feedback_id.is_empty() && last_id == feedback.feedback_id {
                return Ok(false);
            }
            state.apply(&feedback);
            put_contact_row(&tx, &state, &feedback.feedback_id)?;
            tx.commit()?;
            Ok(true)
        })
        .await
    }

    async fn contact(
        &self,
        address: &tocsin_core::config::EmailAddress,
    ) -> Result<Option<tocsin_core::contacts::ContactState>, BackendError> {
        let address = address.as_str().to_lowercase();
        self.run("read a contact", move |conn| {
            Ok(contact_row(conn, &address)?.map(|(state, _)| state))
        })
        .await
    }

    async fn contacts(&self) -> Result<Vec<tocsin_core::contacts::ContactState>, BackendError> {
        self.run("list contacts", move |conn| {
            let mut statement = conn.prepare_cached("SELECT address, body FROM contacts ORDER BY address")?;
            let rows = statement
                .query_map([], |row| Ok((row.get::<_, String>(0)?, row.get::<_, String>(1)?)))?
                .collect::<Result<Vec<_>, _>>()?;
            rows.into_iter()
                .map(|(address, body)| serde_json::from_str::<ContactRow>(&body)?.state(&address))
                .collect()
        })
        .await
    }

    async fn change_suppression(
        &self,
        address: &tocsin_core::config::EmailAddress,
        change: &tocsin_core::contacts::SuppressionChange,
    ) -> Result<tocsin_core::contacts::ContactState, BackendError> {
        let address = address.as_str().to_lowercase();
        let change = change.clone();
        self.run("change a contact's suppression", move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let (mut state, last_id) = match contact_row(&tx, &address)? {
                Some(found) => found,
                None => (
                    tocsin_core::contacts::ContactState::new(
                        tocsin_core::config::EmailAddress::parse(&address)
                            .map_err(|_| StoreError::Contact(address.clone()))?,
                    ),
                    String::new(),
                ),
            };
            state.change(&change);
            put_contact_row(&tx, &state, &last_id)?;
            tx.commit()?;
            Ok(state)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use tocsin_core::event::{Action, Alert, Origin, Payload, Severity};
    use tocsin_core::incident::{decide, Decision, IgnoreReason, IncidentStatus, Transition, TransitionKind};
    use tocsin_core::notify::Channel;

    use super::*;

    const LONG: Duration = Duration::from_secs(60);

    fn temp() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().expect("a temp dir");
        let store = Store::open(dir.path()).expect("the store opens");
        (dir, store)
    }

    fn event(key: &str, action: Action) -> Event {
        let now = Utc::now();
        Event {
            id: EventId::generate(),
            service: ServiceId::parse("checkout").unwrap(),
            origin: Origin::Api { actor: "test".into() },
            received_at: now,
            alert: Alert {
                event_action: action,
                dedup_key: DedupKey::parse(key).unwrap(),
                payload: (action == Action::Trigger).then(|| Payload {
                    summary: format!("{key} is down"),
                    source: "host-1".into(),
                    severity: Severity::Critical,
                    timestamp: Some(now),
                    component: None,
                    group: None,
                    class: None,
                    custom_details: None,
                }),
                links: Vec::new(),
                images: Vec::new(),
                client: None,
                client_url: None,
            },
        }
    }

    fn job(id: &str, to: &str) -> NotificationJob {
        let trigger = event("disk", Action::Trigger);
        let Decision::Open { incident } = decide(None, &trigger, Utc::now()) else {
            panic!("a first trigger opens");
        };
        NotificationJob {
            id: id.into(),
            channel: Channel::Email,
            to: to.into(),
            transition: TransitionKind::Triggered,
            service_name: "Checkout".into(),
            incident,
            planned_at: Utc::now(),
        }
    }

    /// Reads, decides and commits one event, as the processor does.
    async fn apply(store: &Store, event: &Event) -> (Decision, CommitOutcome) {
        let latest = store.latest(&event.service, event.dedup_key()).await.unwrap();
        let now = Utc::now();
        let decision = decide(latest.as_ref(), event, now);
        let commit = Commit::of(&decision, event, now);
        let outcome = store.commit(&commit).await.unwrap();
        (decision, outcome)
    }

    fn event_ids(deliveries: &[Delivery]) -> Vec<EventId> {
        deliveries
            .iter()
            .map(|d| serde_json::from_str::<Event>(&d.body).unwrap().id)
            .collect()
    }

    async fn events(store: &Store, events: &[Event]) -> Result<(), BackendError> {
        EventQueue::enqueue(store, events).await
    }

    #[tokio::test]
    async fn store_passes_the_port_contracts() {
        let (_dir, store) = temp();
        tocsin_core::contract::incident_store(&store).await;
        tocsin_core::contract::timeline(&store, &store).await;
        let heartbeat = tocsin_core::contract::sample_heartbeat("sqlite");
        store.set_heartbeats(std::slice::from_ref(&heartbeat)).await.unwrap();
        tocsin_core::contract::heartbeats(&store, &heartbeat).await;
        tocsin_core::contract::event_queue(&store).await;
        tocsin_core::contract::notification_queue(&store).await;
        tocsin_core::contract::ingest_stats(&store).await;
        tocsin_core::contract::ingest_stats_count_concurrent_requests_exactly(&store).await;
        tocsin_core::contacts::contract(&store).await;
        tocsin_core::contract::maintenance_store(&store).await;
        tocsin_core::contract::escalations(&store).await;
        tocsin_core::contract::throttle_store(&store).await;
        tocsin_core::contract::slack_threads(&store).await;
    }

    #[tokio::test]
    async fn a_group_is_delivered_in_order_one_message_at_a_time() {
        let (_dir, store) = temp();
        let a1 = event("disk", Action::Trigger);
        let a2 = event("disk", Action::Resolve);
        let b1 = event("cpu", Action::Trigger);
        events(&store, &[a1.clone(), a2.clone(), b1.clone()]).await.unwrap();

        let first = store.receive(QueueName::Events, 10, LONG).await.unwrap();
        assert_eq!(
            event_ids(&first),
            [a1.id.clone(), b1.id.clone()],
            "one head per group, oldest first"
        );
        assert_eq!(first[0].group_key, format!("checkout{GROUP_SEPARATOR}disk"));
        assert_eq!(first[0].receive_count, 1);
        assert!(
            store.receive(QueueName::Events, 10, LONG).await.unwrap().is_empty(),
            "a2 waits while a1 is in flight"
        );

        assert!(store.delete(&first[0]).await.unwrap());
        let next = store.receive(QueueName::Events, 10, LONG).await.unwrap();
        assert_eq!(event_ids(&next), [a2.id]);
        assert_eq!(store.depth(QueueName::Events).await.unwrap(), 2);
    }

    #[tokio::test]
    async fn receive_takes_at_most_max_messages() {
        let (_dir, store) = temp();
        let batch: Vec<Event> = (0..5).map(|n| event(&format!("k{n}"), Action::Trigger)).collect();
        events(&store, &batch).await.unwrap();
        assert!(store.receive(QueueName::Events, 0, LONG).await.unwrap().is_empty());
        assert_eq!(store.receive(QueueName::Events, 2, LONG).await.unwrap().len(), 2);
        assert_eq!(store.receive(QueueName::Events, 10, LONG).await.unwrap().len(), 3);
        assert!(
            store
                .receive(QueueName::Transitions, 10, LONG)
                .await
                .unwrap()
                .is_empty(),
            "queues are separate"
        );
    }

    #[tokio::test]
    async fn an_unanswered_message_is_delivered_again_after_its_visibility_timeout() {
        let (_dir, store) = temp();
        events(&store, &[event("disk", Action::Trigger)]).await.unwrap();
        let first = store
            .receive(QueueName::Events, 1, Duration::from_millis(100))
            .await
            .unwrap();
        assert_eq!(first.len(), 1);
        assert!(store.receive(QueueName::Events, 1, LONG).await.unwrap().is_empty());

        tokio::time::sleep(Duration::from_millis(150)).await;
        let second = store.receive(QueueName::Events, 1, LONG).await.unwrap();
        assert_eq!(second.len(), 1);
        assert_eq!(second[0].id, first[0].id);
        assert_eq!(second[0].receive_count, 2);

        assert!(
            !store.delete(&first[0]).await.unwrap(),
            "a stale delivery cannot delete"
        );
        assert_eq!(store.depth(QueueName::Events).await.unwrap(), 1);
        assert!(store.delete(&second[0]).await.unwrap());
        assert_eq!(store.depth(QueueName::Events).await.unwrap(), 0);
    }

    #[tokio::test]
    async fn an_enqueue_of_a_queued_dedup_id_is_a_no_op() {
        let (_dir, store) = temp();
        let e = event("disk", Action::Trigger);
        events(&store, std::slice::from_ref(&e)).await.unwrap();
        events(&store, &[e.clone(), e.clone()]).await.unwrap();
        assert_eq!(store.depth(QueueName::Events).await.unwrap(), 1);

        let jobs = [job("t:1:email:a", "a@example.com"), job("t:1:email:b", "b@example.com")];
        NotificationQueue::enqueue(&store, &jobs).await.unwrap();
        NotificationQueue::enqueue(&store, &jobs[..1]).await.unwrap();
        assert_eq!(store.depth(QueueName::Notifications).await.unwrap(), 2);
        let received = store.receive(QueueName::Notifications, 10, LONG).await.unwrap();
        let groups: Vec<&str> = received.iter().map(|d| d.group_key.as_str()).collect();
        assert_eq!(groups, ["email:a@example.com", "email:b@example.com"]);

        // The id only dedups while its message is queued, as SQS's window.
        let delivered = store.receive(QueueName::Events, 1, LONG).await.unwrap();
        assert!(store.delete(&delivered[0]).await.unwrap());
        events(&store, &[e]).await.unwrap();
        assert_eq!(store.depth(QueueName::Events).await.unwrap(), 1);
    }

    #[tokio::test]
    async fn a_failing_message_is_retried_then_dead_lettered_and_unblocks_its_group() {
        let (_dir, store) = temp();
        let a1 = event("disk", Action::Trigger);
        let a2 = event("disk", Action::Resolve);
        events(&store, &[a1.clone(), a2.clone()]).await.unwrap();

        for attempt in 1..=2 {
            let d = store.receive(QueueName::Events, 10, LONG).await.unwrap();
            assert_eq!(event_ids(&d), std::slice::from_ref(&a1.id));
            assert_eq!(d[0].receive_count, attempt);
            let failed = store
                .fail(&d[0], &format!("boom {attempt}"), 3, Duration::ZERO)
                .await
                .unwrap();
            assert_eq!(failed, Failed::Retrying);
        }
        let d = store.receive(QueueName::Events, 10, LONG).await.unwrap();
        assert_eq!(d[0].last_error.as_deref(), Some("boom 2"));
        assert_eq!(
            store.fail(&d[0], "boom 3", 3, Duration::ZERO).await.unwrap(),
            Failed::DeadLettered
        );

        let next = store.receive(QueueName::Events, 10, LONG).await.unwrap();
        assert_eq!(event_ids(&next), [a2.id], "the group moves on past its dead letter");
        let dead = store.dead_letters().await.unwrap();
        assert_eq!(dead.len(), 1);
        assert_eq!(dead[0].queue, "events");
        assert_eq!(dead[0].error, "boom 3");
        assert_eq!(dead[0].receive_count, 3);
        assert_eq!(serde_json::from_str::<Event>(&dead[0].body).unwrap().id, a1.id);
    }

    #[tokio::test]
    async fn a_failed_message_waits_out_its_retry_delay() {
        let (_dir, store) = temp();
        events(&store, &[event("disk", Action::Trigger)]).await.unwrap();
        let d = store.receive(QueueName::Events, 1, LONG).await.unwrap();
        assert_eq!(store.fail(&d[0], "later", 5, LONG).await.unwrap(), Failed::Retrying);
        assert!(store
            .receive(QueueName::Events, 1, Duration::ZERO)
            .await
            .unwrap()
            .is_empty());
    }

    #[tokio::test]
    async fn a_stale_delivery_cannot_fail_the_message() {
        let (_dir, store) = temp();
        events(&store, &[event("disk", Action::Trigger)]).await.unwrap();
        let old = store.receive(QueueName::Events, 1, Duration::ZERO).await.unwrap();
        let new = store.receive(QueueName::Events, 1, LONG).await.unwrap();
        assert_eq!(new[0].receive_count, 2);
        assert_eq!(
            store.fail(&old[0], "late", 1, Duration::ZERO).await.unwrap(),
            Failed::Retrying
        );
        assert!(store.dead_letters().await.unwrap().is_empty());
        assert!(
            store.receive(QueueName::Events, 1, LONG).await.unwrap().is_empty(),
            "the newer receive still holds it"
        );
        assert_eq!(
            store.fail(&new[0], "boom", 2, Duration::ZERO).await.unwrap(),
            Failed::DeadLettered
        );
    }

    #[tokio::test]
    async fn a_message_never_answered_is_dead_lettered_at_the_receive_limit() {
        let (_dir, store) = temp();
        events(&store, &[event("disk", Action::Trigger)]).await.unwrap();
        for _ in 0..RECEIVE_LIMIT {
            assert_eq!(
                store.receive(QueueName::Events, 1, Duration::ZERO).await.unwrap().len(),
                1
            );
        }
        assert!(store
            .receive(QueueName::Events, 1, Duration::ZERO)
            .await
            .unwrap()
            .is_empty());
        let dead = store.dead_letters().await.unwrap();
        assert_eq!(dead.len(), 1);
        assert_eq!(dead[0].receive_count, RECEIVE_LIMIT);
        assert!(dead[0].error.contains("without being deleted"), "{}", dead[0].error);
        assert_eq!(store.depth(QueueName::Events).await.unwrap(), 0);
    }

    #[tokio::test]
    async fn redrive_moves_a_dead_letter_to_the_end_of_its_queue() {
        let (_dir, store) = temp();
        let a1 = event("disk", Action::Trigger);
        let a2 = event("disk", Action::Resolve);
        events(&store, &[a1.clone(), a2.clone()]).await.unwrap();
        let d = store.receive(QueueName::Events, 1, LONG).await.unwrap();
        assert_eq!(
            store.fail(&d[0], "boom", 1, Duration::ZERO).await.unwrap(),
            Failed::DeadLettered
        );
        let dead = store.dead_letters().await.unwrap();

        assert!(store.redrive(dead[0].id).await.unwrap());
        assert!(store.dead_letters().await.unwrap().is_empty());
        assert!(
            !store.redrive(dead[0].id).await.unwrap(),
            "a dead letter is redriven once"
        );
        assert!(!store.redrive(999_999).await.unwrap());
        assert_eq!(store.depth(QueueName::Events).await.unwrap(), 2);

        let d = store.receive(QueueName::Events, 10, LONG).await.unwrap();
        assert_eq!(event_ids(&d), [a2.id], "the redriven message queues behind newer ones");
        assert!(store.delete(&d[0]).await.unwrap());
        let d = store.receive(QueueName::Events, 10, LONG).await.unwrap();
        assert_eq!(event_ids(&d), [a1.id]);
        assert_eq!(d[0].receive_count, 1, "a redriven message starts afresh");
    }

    #[tokio::test]
    async fn an_enqueue_is_all_or_nothing() {
        let (_dir, store) = temp();
        store
            .inner
            .conn
            .lock()
            .unwrap()
            .execute_batch(
                "CREATE TEMP TRIGGER refuse_poison BEFORE INSERT ON messages
                 WHEN NEW.group_key LIKE '%poison%'
                 BEGIN SELECT RAISE(ABORT, 'poisoned'); END;",
            )
            .unwrap();
        let batch = [event("disk", Action::Trigger), event("poison", Action::Trigger)];
        let err = events(&store, &batch).await.unwrap_err();
        assert_eq!(err.operation, "enqueue events");
        assert_eq!(
            store.depth(QueueName::Events).await.unwrap(),
            0,
            "nothing of a failed batch stays"
        );
        events(&store, &batch[..1]).await.unwrap();
        assert_eq!(store.depth(QueueName::Events).await.unwrap(), 1);
    }

    fn message_dedup_ids(store: &Store) -> Vec<String> {
        let conn = store.inner.conn.lock().unwrap();
        let mut stmt = conn.prepare("SELECT dedup_id FROM messages ORDER BY id").unwrap();
        let ids = stmt.query_map([], |row| row.get(0)).unwrap();
        ids.collect::<Result<_, _>>().unwrap()
    }

    #[test]
    fn a_group_commits_its_writes_together_and_a_failed_write_alone_rolls_back() {
        let (_dir, store) = temp();
        let queued =
            |id: &'static str| move |conn: &Connection| Ok(push(conn, QueueName::Events, id, Some(id), "{}", 0)?);
        let (first, first_answer) = grouped(queued("first"));
        let (failing, failing_answer) = grouped(|conn: &Connection| -> Result<bool, StoreError> {
            push(conn, QueueName::Events, "failing", Some("failing"), "{}", 0)?;
            Err(StoreError::OutOfRange(u64::MAX))
        });
        let (last, last_answer) = grouped(queued("last"));
        commit_group(&mut store.inner.conn.lock().unwrap(), vec![first, failing, last]);

        assert!(matches!(first_answer.blocking_recv(), Ok(Ok(true))));
        assert!(matches!(
            failing_answer.blocking_recv(),
            Ok(Err(StoreError::OutOfRange(_)))
        ));
        assert!(matches!(last_answer.blocking_recv(), Ok(Ok(true))));
        assert_eq!(
            message_dedup_ids(&store),
            ["first", "last"],
            "only the failed write is undone"
        );
    }

    #[test]
    fn the_checkpointer_thread_copies_the_log_into_the_database_file() {
        let (dir, store) = temp();
        let db = dir.path().join(DB_FILE);
        let size = || std::fs::metadata(&db).map(|m| m.len()).unwrap_or(0);
        // Let the migrations' log be checkpointed first.
        let start = std::time::Instant::now();
        while store.checkpoints() < 2 {
            assert!(start.elapsed() < Duration::from_secs(10), "no checkpoint in 10 s");
            std::thread::sleep(Duration::from_millis(20));
        }
        let before = size();
        {
            let conn = store.inner.conn.lock().unwrap();
            for n in 0..500 {
                let id = format!("m{n}");
                push(&conn, QueueName::Events, &id, Some(&id), &"x".repeat(2_000), 0).unwrap();
            }
        }
        // The store's own connection checkpoints only past
        // AUTOCHECKPOINT_PAGES (about 1 MB written here is 250 pages): the
        // database file grows only if the thread checkpoints.
        let start = std::time::Instant::now();
        while size() <= before {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "the database file stayed at {before} bytes: nothing checkpointed"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        assert_eq!(message_dedup_ids(&store).len(), 500);
    }

    #[test]
    fn a_group_that_cannot_commit_answers_every_write_with_the_error() {
        let (dir, store) = temp();
        // Another process holds the write lock, and this one does not wait.
        let other = Connection::open(dir.path().join(DB_FILE)).unwrap();
        other.execute_batch("BEGIN IMMEDIATE").unwrap();
        let mut conn = store.inner.conn.lock().unwrap();
        conn.busy_timeout(Duration::ZERO).unwrap();
        let (write, answer) = grouped(|conn: &Connection| Ok(push(conn, QueueName::Events, "a", Some("a"), "{}", 0)?));
        commit_group(&mut conn, vec![write]);
        drop(conn);
        assert!(matches!(answer.blocking_recv(), Ok(Err(StoreError::Commit(_)))));
        other.execute_batch("ROLLBACK").unwrap();
        assert!(message_dedup_ids(&store).is_empty());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn events_of_one_key_applied_at_once_open_one_incident_and_count_every_event() {
        let (_dir, store) = temp();
        let process = tocsin_core::process::ProcessService::new(Arc::new(store.clone()));
        let triggers: Vec<Event> = (0..24).map(|_| event("disk", Action::Trigger)).collect();
        let mut applying = tokio::task::JoinSet::new();
        // Each event twice: a redelivery racing its first delivery.
        for trigger in triggers.iter().chain(&triggers) {
            let (process, trigger) = (process.clone(), trigger.clone());
            applying.spawn(async move {
                // As the queue would: a message that lost every race comes back.
                loop {
                    match process.apply(&trigger, Utc::now()).await {
                        Err(tocsin_core::process::ProcessError::Contention { .. }) => continue,
                        other => return other.map(|_| ()),
                    }
                }
            });
        }
        while let Some(applied) = applying.join_next().await {
            applied.unwrap().unwrap();
        }
        let incidents = store.list(&IncidentFilter::default()).await.unwrap();
        assert_eq!(incidents.len(), 1, "one open incident per key");
        assert_eq!(incidents[0].occurrences, 24, "every event counted once");
        assert_eq!(
            store.depth(QueueName::Transitions).await.unwrap(),
            1,
            "one trigger notified"
        );
        for trigger in &triggers {
            assert!(store.is_applied(&trigger.id).await.unwrap());
        }
    }

    #[tokio::test]
    async fn a_commit_publishes_its_transition_once() {
        let (_dir, store) = temp();
        let trigger = event("disk", Action::Trigger);
        let (decision, outcome) = apply(&store, &trigger).await;
        assert_eq!(outcome, CommitOutcome::Written);
        let Decision::Open { incident } = decision else {
            panic!("expected an open, got {decision:?}");
        };
        tokio::time::timeout(Duration::from_secs(1), store.wakeup(QueueName::Transitions).notified())
            .await
            .expect("the dispatcher is woken");

        let (_, outcome) = apply(&store, &event("disk", Action::Trigger)).await;
        assert_eq!(outcome, CommitOutcome::Written);
        assert_eq!(
            store.depth(QueueName::Transitions).await.unwrap(),
            1,
            "a repeat notifies no one"
        );

        let d = store.receive(QueueName::Transitions, 10, LONG).await.unwrap();
        assert_eq!(d.len(), 1);
        assert_eq!(d[0].group_key, incident.id.as_str());
        let transition: Transition = serde_json::from_str(&d[0].body).unwrap();
        assert_eq!(transition.kind, TransitionKind::Triggered);
        assert_eq!(transition.incident, incident);
        assert_eq!(transition.event_id, trigger.id);
    }

    #[tokio::test]
    async fn an_enqueue_wakes_a_waiting_consumer() {
        let (_dir, store) = temp();
        let waiting = store.wakeup(QueueName::Events).notified();
        tokio::pin!(waiting);
        waiting.as_mut().enable();
        let worker = store.clone();
        events(&worker, &[event("disk", Action::Trigger)]).await.unwrap();
        tokio::time::timeout(Duration::from_secs(1), waiting)
            .await
            .expect("woken by the enqueue");
        // A consumer that starts waiting just after is not left asleep either.
        tokio::time::timeout(Duration::from_secs(1), store.wakeup(QueueName::Events).notified())
            .await
            .expect("the wake-up is kept for it");
    }

    #[tokio::test]
    async fn ignored_events_are_kept_newest_first() {
        let (_dir, store) = temp();
        let ghost = event("ghost", Action::Resolve);
        let ghost_ack = event("ghost", Action::Acknowledge);
        assert_eq!(apply(&store, &ghost).await.1, CommitOutcome::Written);
        assert_eq!(apply(&store, &ghost_ack).await.1, CommitOutcome::Written);
        let ignored = store.ignored_events(10).await.unwrap();
        assert_eq!(ignored.len(), 2);
        assert_eq!(ignored[0].event, ghost_ack);
        assert_eq!(ignored[1].event, ghost);
        assert_eq!(ignored[1].reason, IgnoreReason::UnknownKey);
        assert_eq!(store.ignored_events(1).await.unwrap().len(), 1);
    }

    #[tokio::test]
    async fn everything_survives_closing_and_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let trigger = event("disk", Action::Trigger);
        let queued = event("cpu", Action::Trigger);
        let incident = {
            let store = Store::open(dir.path()).unwrap();
            let (Decision::Open { incident }, CommitOutcome::Written) = apply(&store, &trigger).await else {
                panic!("expected an open");
            };
            events(&store, &[queued.clone(), event("mem", Action::Trigger)])
                .await
                .unwrap();
            let d = store.receive(QueueName::Events, 1, LONG).await.unwrap();
            assert_eq!(event_ids(&d), std::slice::from_ref(&queued.id));
            incident
        };

        let store = Store::open(dir.path()).unwrap();
        assert_eq!(store.get(&incident.id).await.unwrap(), Some(incident.clone()));
        assert!(store.is_applied(&trigger.id).await.unwrap());
        assert_eq!(store.depth(QueueName::Events).await.unwrap(), 2);
        assert_eq!(store.depth(QueueName::Transitions).await.unwrap(), 1);
        let d = store.receive(QueueName::Events, 10, LONG).await.unwrap();
        assert_eq!(d.len(), 1, "the in-flight message stays in flight across the restart");
        assert_ne!(event_ids(&d), [queued.id]);
    }

    #[tokio::test]
    async fn commits_survive_a_process_that_never_closed_the_store() {
        let dir = tempfile::tempdir().unwrap();
        let trigger = event("disk", Action::Trigger);
        let store = Store::open(dir.path()).unwrap();
        let (Decision::Open { incident }, CommitOutcome::Written) = apply(&store, &trigger).await else {
            panic!("expected an open");
        };
        // As after kill -9: the connection is never closed nor checkpointed;
        // the commits are in the WAL file.
        std::mem::forget(store);

        let store = Store::open(dir.path()).unwrap();
        assert_eq!(
            store.latest(&incident.service, &incident.dedup_key).await.unwrap(),
            Some(incident)
        );
        assert!(store.is_applied(&trigger.id).await.unwrap());
    }

    const KILL_DIR_VAR: &str = "TOCSIN_STORE_KILL_TEST_DIR";

    /// Run in a child process by `commits_survive_kill_9`: commits, says so,
    /// then waits to be killed.
    #[tokio::test]
    #[ignore = "run in a child process by commits_survive_kill_9"]
    async fn store_child_commits_then_waits_to_be_killed() {
        let Ok(dir) = std::env::var(KILL_DIR_VAR) else {
            return;
        };
        let store = Store::open(Path::new(&dir)).unwrap();
        let trigger = event("disk", Action::Trigger);
        let (Decision::Open { incident }, CommitOutcome::Written) = apply(&store, &trigger).await else {
            panic!("expected an open");
        };
        events(&store, &[event("cpu", Action::Trigger)]).await.unwrap();
        println!("committed {} {}", incident.id, trigger.id);
        // Exits on its own if never killed, so a broken parent cannot hang.
        tokio::time::sleep(LONG).await;
        panic!("the parent test never killed this process");
    }

    #[tokio::test]
    async fn commits_survive_kill_9() {
        use std::io::BufRead;

        let dir = tempfile::tempdir().unwrap();
        let mut child = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "store::tests::store_child_commits_then_waits_to_be_killed",
                "--exact",
                "--ignored",
            ])
            .args(["--nocapture", "--test-threads=1"])
            .env(KILL_DIR_VAR, dir.path())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = std::io::BufReader::new(child.stdout.take().unwrap());
        // libtest prints the test's name on the same line before it.
        let line = stdout
            .lines()
            .map(Result::unwrap)
            .find_map(|line| line.split_once("committed ").map(|(_, ids)| ids.to_owned()))
            .expect("the child commits");
        child.kill().unwrap(); // SIGKILL: no destructor, no close, no checkpoint
        child.wait().unwrap();

        let mut words = line.split_whitespace();
        let incident = IncidentId::parse(words.next().unwrap()).unwrap();
        let event = EventId::new(words.next().unwrap());
        let store = Store::open(dir.path()).unwrap();
        let found = store.get(&incident).await.unwrap().expect("the incident survived");
        assert_eq!(found.status, IncidentStatus::Open);
        assert!(store.is_applied(&event).await.unwrap());
        assert_eq!(store.depth(QueueName::Events).await.unwrap(), 1);
        assert_eq!(store.depth(QueueName::Transitions).await.unwrap(), 1);
    }

    #[tokio::test]
    async fn the_database_allows_one_open_incident_per_key() {
        let (_dir, store) = temp();
        let conn = store.inner.conn.lock().unwrap();
        let insert = |id: &str, key: &str, status: &str| {
            conn.execute(
                "INSERT INTO incidents (id, service, dedup_key, status, created_at, updated_at, version, body)
                 VALUES (?1, 'checkout', ?2, ?3, '2024-01-01T00:00:00.000000Z', '2024-01-01T00:00:00.000000Z', 1, '{}')",
                params![id, key, status],
            )
        };
        insert("inc_a", "disk", "open").unwrap();
        let err = insert("inc_b", "disk", "acknowledged").unwrap_err();
        assert!(is_unique_violation(&err), "{err}");
        insert("inc_c", "disk", "resolved").unwrap();
        insert("inc_d", "cpu", "open").unwrap();
        conn.execute("UPDATE incidents SET status = 'resolved' WHERE id = 'inc_a'", [])
            .unwrap();
        insert("inc_b", "disk", "open").unwrap();
        assert!(
            insert("inc_b", "mem", "resolved").is_err_and(|e| is_unique_violation(&e)),
            "ids are unique"
        );
    }

    #[tokio::test]
    async fn latest_prefers_the_open_incident_even_if_the_clock_went_back() {
        let (_dir, store) = temp();
        let trigger = event("disk", Action::Trigger);
        apply(&store, &trigger).await;
        apply(&store, &event("disk", Action::Resolve)).await;
        // A new incident whose clock reads earlier than the resolved one's.
        let again = event("disk", Action::Trigger);
        let latest = store.latest(&again.service, again.dedup_key()).await.unwrap();
        let Decision::Open { mut incident } = decide(latest.as_ref(), &again, Utc::now()) else {
            panic!("a trigger after resolve opens");
        };
        incident.created_at -= chrono::TimeDelta::hours(1);
        let commit = Commit::Incident {
            event_id: again.id.clone(),
            incident: incident.clone(),
            expected_version: None,
            transition: None,
            timeline: None,
        };
        assert_eq!(store.commit(&commit).await.unwrap(), CommitOutcome::Written);
        let latest = store.latest(&again.service, again.dedup_key()).await.unwrap().unwrap();
        assert_eq!(latest.id, incident.id);
        assert_eq!(latest.status, IncidentStatus::Open);
    }

    #[tokio::test]
    async fn the_schema_is_migrated_once_and_a_newer_one_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let version: i64 = store
            .inner
            .conn
            .lock()
            .unwrap()
            .pragma_query_value(None, "user_version", |row| row.get(0))
            .unwrap();
        assert_eq!(version, MIGRATIONS.len() as i64);
        let mode: String = store
            .inner
            .conn
            .lock()
            .unwrap()
            .pragma_query_value(None, "journal_mode", |row| row.get(0))
            .unwrap();
        assert_eq!(mode, "wal");
        drop(store);

        let store = Store::open(dir.path()).expect("reopening runs no migration again");
        store
            .inner
            .conn
            .lock()
            .unwrap()
            .pragma_update(None, "user_version", 99)
            .unwrap();
        drop(store);
        let err = Store::open(dir.path()).unwrap_err();
        assert_eq!(err.operation, "migrate the store");
        assert!(err.source.to_string().contains("newer"), "{}", err.source);
    }

    #[tokio::test]
    async fn rate_windows_count_per_integration_and_forget_old_windows() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).expect("the store opens");
        let a = IntegrationId::parse("a").unwrap();
        let b = IntegrationId::parse("b").unwrap();
        assert_eq!(store.hit(&a, 100).await.unwrap(), 1);
        assert_eq!(store.hit(&a, 100).await.unwrap(), 2);
        assert_eq!(store.hit(&b, 100).await.unwrap(), 1);
        assert_eq!(store.hit(&a, 101).await.unwrap(), 1);
        let rows: i64 = store
            .inner
            .conn
            .lock()
            .unwrap()
            .query_row("SELECT COUNT(*) FROM rate_windows", [], |row| row.get(0))
            .unwrap();
        assert_eq!(rows, 2, "a's window 100 is gone, b's stays until b moves on");
        drop(store);
        // Counts are durable: a restart within the window does not reset them.
        let store = Store::open(dir.path()).expect("the store reopens");
        assert_eq!(store.hit(&a, 101).await.unwrap(), 2);
    }

    fn integration(id: &str, key: &str) -> Integration {
        Integration {
            id: IntegrationId::parse(id).unwrap(),
            service: ServiceId::parse("checkout").unwrap(),
            provider: tocsin_core::providers::ProviderKind::Webhook,
            key_hash: KeyHash::of(key),
            secret: None,
            secret_ref: None,
            enabled: true,
            fields: tocsin_core::config::FieldMapping::default(),
            cloudwatch: tocsin_core::config::CloudWatchSettings::default(),
            dedup_key: None,
            rate_limit_per_minute: Some(60),
        }
    }

    #[tokio::test]
    async fn integrations_are_found_by_key_and_listed_by_id() {
        let (_dir, store) = temp();
        assert!(store.list_integrations().await.unwrap().is_empty());
        let b = integration("b-webhook", "key-b");
        let a = integration("a-webhook", "key-a");
        store.put_integration(&b).await.unwrap();
        store.put_integration(&a).await.unwrap();
        assert_eq!(
            store.integration_by_key(&KeyHash::of("key-b")).await.unwrap(),
            Some(b.clone())
        );
        assert_eq!(store.integration_by_key(&KeyHash::of("key-c")).await.unwrap(), None);
        assert_eq!(store.list_integrations().await.unwrap(), vec![a, b]);
    }

    #[tokio::test]
    async fn a_rotation_replaces_the_row_of_the_same_id() {
        let (_dir, store) = temp();
        let old = integration("checkout-webhook", "old-key");
        store.put_integration(&old).await.unwrap();
        let rotated = Integration {
            key_hash: KeyHash::of("new-key"),
            enabled: false,
            ..old.clone()
        };
        store.put_integration(&rotated).await.unwrap();
        assert_eq!(store.integration_by_key(&old.key_hash).await.unwrap(), None);
        assert_eq!(
            store.integration_by_key(&rotated.key_hash).await.unwrap(),
            Some(rotated.clone())
        );
        assert_eq!(store.list_integrations().await.unwrap(), vec![rotated]);
    }

    #[tokio::test]
    async fn a_key_hash_is_never_shared_between_integrations() {
        let (_dir, store) = temp();
        store.put_integration(&integration("one", "same-key")).await.unwrap();
        assert!(store.put_integration(&integration("two", "same-key")).await.is_err());
        let listed = store.list_integrations().await.unwrap();
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].id.as_str(), "one");
    }

    #[tokio::test]
    async fn deleting_an_integration_stops_its_key() {
        let (dir, store) = temp();
        let kept = integration("kept", "key-1");
        store.put_integration(&kept).await.unwrap();
        store.put_integration(&integration("gone", "key-2")).await.unwrap();
        assert!(store.delete_integration(&KeyHash::of("key-2")).await.unwrap());
        assert!(!store.delete_integration(&KeyHash::of("key-2")).await.unwrap());
        // Another process (the CLI) sees the same rows.
        let other = Store::open(dir.path()).unwrap();
        assert_eq!(other.integration_by_key(&KeyHash::of("key-2")).await.unwrap(), None);
        assert_eq!(other.list_integrations().await.unwrap(), vec![kept]);
    }
}
