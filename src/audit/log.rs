//! The audit log in PostgreSQL (`retentiond.audit_log`), with an optional
//! JSONL mirror.
//!
//! Appends are serialised by a transaction-scoped advisory lock, so several
//! writers (replicas, a CLI run beside the daemon) still produce one gapless
//! chain: each takes the lock, reads the head, inserts `head.seq + 1` with
//! `prev = head.hash`, and commits. Within one process, appends that arrive
//! while one is being written share the next transaction (group commit):
//! one lock, one head read, one INSERT of all their records, one commit.

use super::key::Signer;
use super::record::{seal, Event, RecordError, Sealed, GENESIS};
use chrono::{DateTime, Utc};
use sqlx::postgres::PgPool;
use sqlx::{Connection, Executor, Row};
use std::io::Write;
use std::path::PathBuf;

/// The migrations in `migrations/`, embedded.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

// Any fixed number: all writers of one database agree on it.
const APPEND_LOCK: i64 = 0x7265_7465_6e74_696f; // "retentio"

/// Appends signed records.
#[derive(Debug)]
pub struct AuditLog {
    pool: PgPool,
    signer: Signer,
    jsonl: Option<PathBuf>,
    /// Claim sessions released with their lock unlocked, for the next
    /// claim: a run of many rules opens one, not one per rule.
    idle_claims: IdleClaims,
    /// Appends not yet written, in the order they arrived.
    pending: std::sync::Mutex<Vec<Waiting>>,
    /// Numbers the appends.
    tickets: std::sync::atomic::AtomicU64,
    /// Held by the append writing a group (see [`AuditLog::append`]).
    writer: tokio::sync::Mutex<()>,
    /// True once this process has checked the mirror against the log and
    /// every group since reached it: only then may a group skip reading
    /// the mirror's tail (see [`catch_up_mirror`]).
    mirror_in_step: std::sync::atomic::AtomicBool,
}

/// The columns of a group's records, for one INSERT.
#[derive(Default)]
struct Columns {
    seq: Vec<i64>,
    ts: Vec<DateTime<Utc>>,
    kind: Vec<&'static str>,
    rule: Vec<Option<String>>,
    run_id: Vec<Option<String>>,
    prev: Vec<String>,
    hash: Vec<String>,
    record: Vec<String>,
}

/// An append waiting for the writer.
#[derive(Debug)]
struct Waiting {
    /// Tells the leader's own append from the others.
    ticket: u64,
    event: Event,
    /// Where its result goes.
    reply: tokio::sync::oneshot::Sender<Result<Sealed, AuditError>>,
}

/// Released claim connections (each holds no advisory lock).
type IdleClaims = std::sync::Arc<std::sync::Mutex<Vec<sqlx::PgConnection>>>;

/// The audit log failed.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    /// The database refused or failed.
    #[error("audit store: {0}")]
    Db(#[from] sqlx::Error),
    /// Migrations failed.
    #[error("audit schema migration: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// The schema is missing or out of date. `run` and `serve` never create
    /// it: a role that could would own the log and could rewrite it.
    #[error("the audit schema `retentiond` is missing or out of date in the audit store; run `retentiond migrate -c FILE` as an admin role, then grant the runtime role what the README's \"Grants\" lists")]
    NotMigrated,
    /// The role may not use schema `retentiond`.
    #[error("{0}: this role lacks its rights on schema `retentiond`; as an admin role, run `retentiond migrate -c FILE --grant-to <this role>` (the grants are docs/runtime-grants.sql)")]
    NoGrants(String),
    /// A record could not be built.
    #[error(transparent)]
    Record(#[from] RecordError),
    /// This record was to be stored with others in one transaction, and
    /// that failed (the error, as text).
    #[error("{0}")]
    Group(String),
    /// The JSONL mirror could not be written.
    #[error("audit JSONL mirror {}: {source}", path.display())]
    Mirror {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
}

/// Applies the embedded migrations. The bookkeeping table lives in schema
/// `retentiond` too, so it never mixes with the application's migrations.
pub async fn migrate(pool: &PgPool) -> Result<(), AuditError> {
    // A connection of its own: the session lock and search_path must not
    // leak into the pool. The lock serialises first-time migrations of
    // replicas starting together (CREATE SCHEMA IF NOT EXISTS is not safe
    // under concurrency); the lock ends with the connection.
    let mut conn = sqlx::PgConnection::connect_with(&pool.connect_options()).await?;
    conn.execute(format!("SELECT pg_advisory_lock({MIGRATE_LOCK})").as_str())
        .await?;
    conn.execute("CREATE SCHEMA IF NOT EXISTS retentiond")
        .await?;
    conn.execute("SET search_path TO retentiond").await?;
    let result = MIGRATOR.run_direct(&mut conn).await;
    let _ = conn.close().await;
    result?;
    Ok(())
}

/// The runtime role's rights on schema `retentiond`: the one list, which
/// the README, compose file and migrations repeat (a test checks them).
pub const RUNTIME_GRANTS: &str = include_str!("../../docs/runtime-grants.sql");

fn is_permission_denied(e: &sqlx::Error) -> bool {
    e.as_database_error()
        .and_then(|d| d.code())
        .is_some_and(|c| c == "42501")
}

/// Grants `role` exactly [`RUNTIME_GRANTS`] (idempotent).
pub async fn grant_runtime(pool: &PgPool, role: &str) -> Result<(), AuditError> {
    let quoted = format!("\"{}\"", role.replace('"', "\"\""));
    let mut tx = pool.begin().await?;
    for line in RUNTIME_GRANTS.lines().filter(|l| l.starts_with("GRANT")) {
        let statement = line.replace("retentiond_runtime", &quoted);
        sqlx::query(statement.trim_end_matches(';'))
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await?;
    Ok(())
}

// Any fixed number, distinct from APPEND_LOCK.
const MIGRATE_LOCK: i64 = 0x7265_7465_6e74_6d67; // "retentmg"

/// True when every embedded migration has been applied.
pub async fn is_migrated(pool: &PgPool) -> Result<bool, AuditError> {
    let exists: bool =
        sqlx::query_scalar("SELECT to_regclass('retentiond._sqlx_migrations') IS NOT NULL")
            .fetch_one(pool)
            .await?;
    if !exists {
        return Ok(false);
    }
    let applied: Vec<i64> =
        sqlx::query_scalar("SELECT version FROM retentiond._sqlx_migrations WHERE success")
            .fetch_all(pool)
            .await?;
    Ok(MIGRATOR.iter().all(|m| applied.contains(&m.version)))
}

/// What the connected role could do to the audit log beyond appending.
/// Any `true` means the log's integrity rests on the signatures alone: the
/// runtime role should hold none of these (docs/runtime-grants.sql).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct AuditRights {
    /// UPDATE on audit_log (the trigger still rejects it).
    pub update: bool,
    /// DELETE on audit_log (the trigger still rejects it).
    pub delete: bool,
    /// TRUNCATE on audit_log (the trigger still rejects it).
    pub truncate: bool,
    /// Owns the table or schema, or is a superuser: can disable the
    /// triggers, or drop and recreate the log.
    pub disable_triggers: bool,
}

impl AuditRights {
    /// True when the role could rewrite the log.
    pub fn any(&self) -> bool {
        self.update || self.delete || self.truncate || self.disable_triggers
    }
}

/// The connected role's rights on `retentiond.audit_log` (None when the
/// schema does not exist yet).
pub async fn audit_rights(pool: &PgPool) -> Result<Option<AuditRights>, AuditError> {
    let row = sqlx::query(
        "SELECT has_table_privilege(c.oid, 'UPDATE') AS upd, \
                has_table_privilege(c.oid, 'DELETE') AS del, \
                has_table_privilege(c.oid, 'TRUNCATE') AS trunc, \
                (r.rolsuper OR pg_has_role(c.relowner, 'USAGE') OR pg_has_role(n.nspowner, 'USAGE')) AS owner \
         FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
         JOIN pg_roles r ON r.rolname = current_user \
         WHERE c.oid = to_regclass('retentiond.audit_log')",
    )
    .fetch_optional(pool)
    .await?;
    let Some(row) = row else {
        return Ok(None);
    };
    Ok(Some(AuditRights {
        update: row.try_get("upd")?,
        delete: row.try_get("del")?,
        truncate: row.try_get("trunc")?,
        disable_triggers: row.try_get("owner")?,
    }))
}

impl AuditLog {
    /// Opens the log. Never creates or alters the schema (that is
    /// `retentiond migrate`, as an admin role): the runtime role must not
    /// own the log it writes.
    pub async fn open(
        pool: PgPool,
        signer: Signer,
        jsonl: Option<PathBuf>,
    ) -> Result<AuditLog, AuditError> {
        match is_migrated(&pool).await {
            Ok(true) => {}
            Ok(false) => return Err(AuditError::NotMigrated),
            Err(AuditError::Db(e)) if is_permission_denied(&e) => {
                return Err(AuditError::NoGrants(e.to_string()))
            }
            Err(e) => return Err(e),
        }
        Ok(AuditLog {
            pool,
            signer,
            jsonl,
            idle_claims: IdleClaims::default(),
            pending: Default::default(),
            tickets: Default::default(),
            writer: tokio::sync::Mutex::new(()),
            mirror_in_step: Default::default(),
        })
    }

    /// The signing key's id.
    pub fn key_id(&self) -> &str {
        self.signer.key_id()
    }

    /// A signed checkpoint of the current head (None when the log is empty).
    pub async fn checkpoint(&self) -> Result<Option<String>, AuditError> {
        let head: Option<(i64, String)> =
            sqlx::query_as("SELECT seq, hash FROM retentiond.audit_log ORDER BY seq DESC LIMIT 1")
                .fetch_optional(&self.pool)
                .await?;
        match head {
            Some((seq, hash)) => Ok(Some(super::checkpoint::make(&self.signer, seq, &hash)?)),
            None => Ok(None),
        }
    }

    /// Seals `event` as the next record and stores it (and mirrors it).
    ///
    /// Appends of one process that arrive while another is being written
    /// are written together after it: one transaction (one lock, one head
    /// read, one INSERT, one commit) seals and stores them in the order they
    /// were enqueued, and the mirror gets their lines in that order with one
    /// fsync. An error storing the group fails every append in it (an event
    /// that cannot be sealed fails only its own).
    pub async fn append(&self, event: &Event) -> Result<Sealed, AuditError> {
        let (reply, mut result) = tokio::sync::oneshot::channel();
        let ticket = self
            .tickets
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.pending().push(Waiting {
            ticket,
            event: event.clone(),
            reply,
        });
        let _writer = self.writer.lock().await;
        // A leader that took our event sent its result before it let go of
        // the writer lock.
        match result.try_recv() {
            Ok(r) => return r,
            Err(tokio::sync::oneshot::error::TryRecvError::Closed) => {
                return Err(AuditError::Group(
                    "the append writing this record with others was cancelled; whether it was stored is unknown".into(),
                ))
            }
            Err(tokio::sync::oneshot::error::TryRecvError::Empty) => {}
        }
        // Still queued: lead. The group is everything queued so far, ours
        // included (only the writer lock's holder drains the queue).
        let group = std::mem::take(&mut *self.pending());
        let events: Vec<&Event> = group.iter().map(|w| &w.event).collect();
        let written = self.write_group(&events).await;
        let mut own = None;
        match written {
            Ok(results) => {
                for (w, r) in group.into_iter().zip(results) {
                    let r = r.map_err(AuditError::from);
                    if w.ticket == ticket {
                        own = Some(r);
                    } else {
                        let _ = w.reply.send(r);
                    }
                }
            }
            Err(e) => {
                let text = e.to_string();
                for w in group.into_iter().filter(|w| w.ticket != ticket) {
                    let _ = w.reply.send(Err(AuditError::Group(text.clone())));
                }
                own = Some(Err(e));
            }
        }
        own.unwrap_or_else(|| {
            Err(AuditError::Group(
                "this record was not in the group written".into(),
            ))
        })
    }

    /// The appends waiting for the writer (a poisoned lock only means a
    /// panic elsewhere; the queue itself is consistent).
    fn pending(&self) -> std::sync::MutexGuard<'_, Vec<Waiting>> {
        self.pending
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Seals `events` as the next records, in order, and stores them in one
    /// transaction; then mirrors their lines (one fsync). An event that
    /// cannot be sealed (its own fault) is skipped with its error; any other
    /// error fails them all.
    async fn write_group(
        &self,
        events: &[&Event],
    ) -> Result<Vec<Result<Sealed, RecordError>>, AuditError> {
        // The mirror is opened first: a mirror that cannot be written stops
        // the records before the database has them, so the two never diverge.
        let mirror = self.open_mirror()?;
        let mut conn = self.pool.acquire().await?;
        let mut tx = conn.begin().await?;
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(APPEND_LOCK)
            .execute(&mut *tx)
            .await?;
        // Read after the lock: in READ COMMITTED this statement's snapshot
        // includes every record committed before we got the lock. One
        // clock_timestamp() per record, each read as it is sealed would be.
        let n = i32::try_from(events.len()).unwrap_or(i32::MAX);
        let rows = sqlx::query(
            "SELECT clock_timestamp() AS ts, \
                    (SELECT seq FROM retentiond.audit_log ORDER BY seq DESC LIMIT 1) AS seq, \
                    (SELECT hash FROM retentiond.audit_log ORDER BY seq DESC LIMIT 1) AS hash \
             FROM generate_series(1, $1) AS i ORDER BY i",
        )
        .bind(n)
        .fetch_all(&mut *tx)
        .await?;
        let Some(head) = rows.first() else {
            return Ok(Vec::new());
        };
        let mut seq = head.try_get::<Option<i64>, _>("seq")?.unwrap_or(0);
        let mut prev = head
            .try_get::<Option<String>, _>("hash")?
            .unwrap_or_else(|| GENESIS.to_string());
        // Only the writer lock's holder gets here, so no other group runs
        // between this swap and the store below; a group that stops early
        // (an error, a cancelled future) leaves it false for the next.
        let in_step = self
            .mirror_in_step
            .swap(false, std::sync::atomic::Ordering::AcqRel);
        if let Some((path, file)) = mirror.as_ref().filter(|_| !in_step) {
            catch_up_mirror(&mut tx, path, file, seq).await?;
        }
        let mut results = Vec::with_capacity(events.len());
        let mut columns = Columns::default();
        for (event, row) in events.iter().zip(&rows) {
            let ts: DateTime<Utc> = row.try_get("ts")?;
            let record = match seal(event, seq + 1, ts, &prev, &self.signer) {
                Ok(r) => r,
                Err(e) => {
                    results.push(Err(e));
                    continue;
                }
            };
            seq += 1;
            let text = |key: &str| {
                event
                    .fields
                    .get(key)
                    .and_then(|v| v.as_str())
                    .map(str::to_string)
            };
            columns.seq.push(seq);
            columns.ts.push(ts);
            columns.kind.push(event.kind);
            columns.rule.push(text("rule"));
            columns.run_id.push(text("run_id"));
            columns
                .prev
                .push(std::mem::replace(&mut prev, record.hash.clone()));
            columns.hash.push(record.hash.clone());
            columns.record.push(record.line.clone());
            results.push(Ok(record));
        }
        if columns.seq.is_empty() {
            return Ok(results);
        }
        sqlx::query(
            "INSERT INTO retentiond.audit_log (seq, ts, kind, rule, run_id, prev, key_id, hash, record) \
             SELECT seq, ts, kind, rule, run_id, prev, $7, hash, record \
             FROM UNNEST($1::bigint[], $2::timestamptz[], $3::text[], $4::text[], $5::text[], $6::text[], \
                         $8::text[], $9::text[]) \
                  AS r(seq, ts, kind, rule, run_id, prev, hash, record)",
        )
        .bind(&columns.seq)
        .bind(&columns.ts)
        .bind(&columns.kind)
        .bind(&columns.rule)
        .bind(&columns.run_id)
        .bind(&columns.prev)
        .bind(self.signer.key_id())
        .bind(&columns.hash)
        .bind(&columns.record)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        if let Some((path, file)) = &mirror {
            let lines = results.iter().flatten().map(|s| s.line.as_str());
            append_lines(path, file, lines)?;
        }
        self.mirror_in_step
            .store(true, std::sync::atomic::Ordering::Release);
        Ok(results)
    }

    /// The JSONL mirror opened for appending, when one is configured.
    fn open_mirror(&self) -> Result<Option<(PathBuf, std::fs::File)>, AuditError> {
        let Some(path) = &self.jsonl else {
            return Ok(None);
        };
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map(|f| Some((path.clone(), f)))
            .map_err(|source| AuditError::Mirror {
                path: path.clone(),
                source,
            })
    }
}

/// The most records [`catch_up_mirror`] copies: a kill leaves at most one
/// group unmirrored; a mirror further behind was started on another log.
const MIRROR_CATCH_UP_MAX: i64 = 10_000;

/// Copies to the JSONL mirror the records up to `head` it lacks, under the
/// append lock: a process killed between its commit and its mirror write
/// leaves them out, and the next line written would otherwise leave a gap
/// that `audit verify --file` rightly reports as removed records. A torn
/// last line (a write cut short) is cut off first and copied again whole.
/// An empty mirror starts at the next record, as it always has. Run by a
/// process's first group, and by the next after one that did not finish.
async fn catch_up_mirror(
    tx: &mut sqlx::PgConnection,
    path: &std::path::Path,
    file: &std::fs::File,
    head: i64,
) -> Result<(), AuditError> {
    let err = |source| AuditError::Mirror {
        path: path.to_path_buf(),
        source,
    };
    let Some(last) = mirror_last_seq(path, file).map_err(err)? else {
        return Ok(());
    };
    if last >= head {
        return Ok(());
    }
    if head - last > MIRROR_CATCH_UP_MAX {
        tracing::warn!(path = %path.display(), last, head, "The audit JSONL mirror is far behind the log; not filled in (was it started on another log?).");
        return Ok(());
    }
    let lines: Vec<String> = sqlx::query_scalar(
        "SELECT record FROM retentiond.audit_log WHERE seq > $1 AND seq <= $2 ORDER BY seq",
    )
    .bind(last)
    .bind(head)
    .fetch_all(&mut *tx)
    .await?;
    append_lines(path, file, lines.iter().map(String::as_str))?;
    tracing::warn!(path = %path.display(), from = last + 1, to = head, "The audit JSONL mirror lacked records the log has (a process stopped between storing and mirroring them); copied them from the log.");
    Ok(())
}

/// Appends `lines` to the mirror, each with its newline, in one write and
/// one fsync.
fn append_lines<'a>(
    path: &std::path::Path,
    mut file: &std::fs::File,
    lines: impl Iterator<Item = &'a str>,
) -> Result<(), AuditError> {
    let mut text = String::new();
    for line in lines {
        text.push_str(line);
        text.push('\n');
    }
    file.write_all(text.as_bytes())
        .and_then(|()| file.sync_data())
        .map_err(|source| AuditError::Mirror {
            path: path.to_path_buf(),
            source,
        })
}

/// The `seq` of the mirror's last complete line, after cutting off a torn
/// last line (one without its newline); None for an empty mirror or a last
/// line that is not a record.
fn mirror_last_seq(path: &std::path::Path, file: &std::fs::File) -> std::io::Result<Option<i64>> {
    use std::io::{Read, Seek, SeekFrom};
    let mut reader = std::fs::File::open(path)?;
    let len = reader.metadata()?.len();
    let mut window = 64 * 1024u64;
    loop {
        let start = len.saturating_sub(window);
        reader.seek(SeekFrom::Start(start))?;
        let mut tail = Vec::new();
        reader.read_to_end(&mut tail)?;
        // Bytes after the last newline are a torn line.
        let complete = tail.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
        if complete == 0 && start > 0 {
            window = window.saturating_mul(4);
            continue;
        }
        if complete < tail.len() {
            file.set_len(start + complete as u64)?;
            tail.truncate(complete);
        }
        let body = tail.strip_suffix(b"\n").unwrap_or(&tail);
        let last = match body.iter().rposition(|b| *b == b'\n') {
            Some(i) => &body[i + 1..],
            // The whole window is one line: it may start before it.
            None if start > 0 => {
                window = window.saturating_mul(4);
                continue;
            }
            None => body,
        };
        if last.is_empty() {
            return Ok(None);
        }
        return Ok(serde_json::from_slice::<serde_json::Value>(last)
            .ok()
            .and_then(|v| v.get("seq").and_then(serde_json::Value::as_i64)));
    }
}

/// A rule claimed by this process: a session advisory lock on a connection
/// of its own, opened for the claim (a long run must not hold a pooled
/// connection). [`Claim::release`] unlocks it; if the process dies the
/// connection closes and PostgreSQL releases the lock, so another replica can
/// take the rule over.
pub struct Claim {
    conn: tokio::sync::Mutex<Option<sqlx::PgConnection>>,
    key: i64,
    idle: IdleClaims,
}

impl Claim {
    /// True while the claim's session is alive. The claim is one dedicated
    /// connection (never a reconnecting pool), so a live session still holds
    /// the lock; after a database restart it does not, and another replica
    /// may claim the rule.
    pub async fn held(&self) -> bool {
        let mut guard = self.conn.lock().await;
        let Some(conn) = guard.as_mut() else {
            return false;
        };
        let alive = tokio::time::timeout(
            std::time::Duration::from_secs(5),
            sqlx::query("SELECT 1").execute(&mut *conn),
        )
        .await;
        matches!(alive, Ok(Ok(_)))
    }

    /// Unlocks, and keeps the session for the next claim when the unlock
    /// is confirmed (else closes it, which unlocks too).
    pub async fn release(self) {
        if let Some(mut conn) = self.conn.into_inner() {
            let unlocked = sqlx::query_scalar::<_, bool>("SELECT pg_advisory_unlock($1)")
                .bind(self.key)
                .fetch_one(&mut conn)
                .await;
            let conn = match (unlocked, self.idle.lock()) {
                (Ok(true), Ok(mut idle)) if idle.len() < MAX_IDLE_CLAIMS => {
                    idle.push(conn);
                    None
                }
                _ => Some(conn),
            };
            if let Some(conn) = conn {
                let _ = conn.close().await;
            }
        }
    }
}

/// Claim sessions kept for reuse: enough for the rules one process runs at
/// once.
const MAX_IDLE_CLAIMS: usize = 4;

/// The advisory lock key of a rule: 8 bytes of SHA-256 of its name.
pub fn claim_key(rule: &str) -> i64 {
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(format!("retentiond rule {rule}").as_bytes());
    let mut bytes = [0u8; 8];
    bytes.copy_from_slice(&digest[..8]);
    i64::from_be_bytes(bytes)
}

impl AuditLog {
    /// Claims `rule` for this process, or None when another process holds it.
    pub async fn claim(&self, rule: &str) -> Result<Option<Claim>, AuditError> {
        let key = claim_key(rule);
        let idle = self.idle_claims.lock().ok().and_then(|mut i| i.pop());
        let try_lock = |mut conn: sqlx::PgConnection| async move {
            let got = sqlx::query_scalar::<_, bool>("SELECT pg_try_advisory_lock($1)")
                .bind(key)
                .fetch_one(&mut conn)
                .await;
            got.map(|g| (g, conn))
        };
        let reused = match idle {
            // A session kept idle may have ended (a database restart).
            Some(conn) => try_lock(conn).await.ok(),
            None => None,
        };
        let (got, conn) = match reused {
            Some(r) => r,
            None => {
                let conn = sqlx::PgConnection::connect_with(&self.pool.connect_options()).await?;
                try_lock(conn).await?
            }
        };
        if !got {
            let _ = conn.close().await;
            return Ok(None);
        }
        Ok(Some(Claim {
            conn: tokio::sync::Mutex::new(Some(conn)),
            key,
            idle: self.idle_claims.clone(),
        }))
    }

    /// Intents of `rule` with no outcome. Called while holding the rule's
    /// claim: nobody else can be running it, so these runs died.
    pub async fn unfinished_runs(
        &self,
        rule: &str,
    ) -> Result<Vec<super::events::RunIntent>, AuditError> {
        let lines: Vec<String> = sqlx::query_scalar(
            "SELECT i.record FROM retentiond.audit_log i \
             WHERE i.kind = 'run_intent' AND i.rule = $1 \
               AND NOT EXISTS (SELECT 1 FROM retentiond.audit_log o WHERE o.kind = 'run_outcome' AND o.run_id = i.run_id) \
             ORDER BY i.seq",
        )
        .bind(rule)
        .fetch_all(&self.pool)
        .await?;
        Ok(lines
            .iter()
            .filter_map(|l| match serde_json::from_str(l) {
                Ok(intent) => Some(intent),
                Err(e) => {
                    tracing::error!(error = %e, record = %l, "An unfinished run's intent record does not parse; it stays open.");
                    None
                }
            })
            .collect())
    }

    /// True when a run of `rule` started at or after `since` (another
    /// replica already served that schedule slot).
    pub async fn ran_since(&self, rule: &str, since: DateTime<Utc>) -> Result<bool, AuditError> {
        Ok(sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM retentiond.audit_log WHERE kind = 'run_intent' AND rule = $1 AND ts >= $2)",
        )
        .bind(rule)
        .bind(since)
        .fetch_one(&self.pool)
        .await?)
    }

    /// When the newest `ok` run of `rule` finished (its `run_outcome`'s
    /// `finished`), or None when it never ended ok. Abandoned, failed,
    /// refused and interrupted runs do not count.
    pub async fn last_success(&self, rule: &str) -> Result<Option<DateTime<Utc>>, AuditError> {
        // Newest first along the (rule, ts) index: stops at the first ok.
        let row: Option<(DateTime<Utc>, Option<String>)> = sqlx::query_as(
            "SELECT ts, record::jsonb ->> 'finished' FROM retentiond.audit_log \
             WHERE rule = $1 AND kind = 'run_outcome' AND record::jsonb ->> 'outcome' = 'ok' \
             ORDER BY ts DESC, seq DESC LIMIT 1",
        )
        .bind(rule)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(|(ts, finished)| {
            finished
                .and_then(|f| DateTime::parse_from_rfc3339(&f).ok())
                .map_or(ts, |f| f.with_timezone(&Utc))
        }))
    }

    /// The pool (for readiness probes).
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }
}
