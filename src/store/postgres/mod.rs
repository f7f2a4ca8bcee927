//! PostgreSQL: connections, the database clock, and (in submodules) catalog
//! introspection, rule SQL and batch statements.

pub mod age;
pub mod batch;
pub mod partition;
pub mod progress;
pub mod protect;
pub mod resolve;
pub mod schema;
pub mod sql;

use chrono::{DateTime, Utc};
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::{Executor, Row};
use std::str::FromStr;
use std::time::Duration;

/// A connection pool to one postgres store.
#[derive(Debug, Clone)]
pub struct PgStore {
    /// Store name from the config.
    pub name: String,
    /// The pool.
    pub pool: PgPool,
    /// Why the store could not be reached, once [`PgStore::probe`] found
    /// out: every rule on it then fails at once with this one message.
    down: std::sync::Arc<std::sync::OnceLock<String>>,
}

/// How long a probe waits for a connection before calling the store down.
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

/// The database clock read against ours.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    /// `now()` of a fresh transaction on the server.
    pub db_now: DateTime<Utc>,
    /// |server clock − local clock|, corrected for the round trip.
    pub skew: Duration,
}

impl PgStore {
    /// Connects (lazily: the first query opens a connection). Every session
    /// runs in UTC, so `timestamp without time zone` reads as UTC, and gets
    /// the text-to-inet parser masking needs.
    pub fn connect(name: &str, url: &str, max_connections: u32) -> Result<PgStore, sqlx::Error> {
        let options = PgConnectOptions::from_str(url)?
            .application_name("retentiond")
            // A `where` was checked by PostgreSQL's parser with standard
            // conforming strings on; the server must read it the same way
            // (with it off, `'a\'` would not end a string there).
            .options([("TimeZone", "UTC"), ("standard_conforming_strings", "on")]);
        let pool = PgPoolOptions::new()
            .max_connections(max_connections)
            .acquire_timeout(Duration::from_secs(30))
            .after_connect(|conn, _meta| {
                Box::pin(async move {
                    // A read-only standby cannot create it; only text IP
                    // masking needs it, and that fails with its own message.
                    if let Err(e) = conn.execute(sql::PARSE_INET_FUNCTION).await {
                        tracing::debug!(error = %e, "Could not create the session's inet parser.");
                    }
                    for f in [sql::JSON_SET_FUNCTION, sql::JSONB_SET_FUNCTION] {
                        if let Err(e) = conn.execute(f).await {
                            tracing::debug!(error = %e, "Could not create the session's json path setter.");
                        }
                    }
                    if let Err(e) = conn.execute(sql::mask_ip_function().as_str()).await {
                        tracing::debug!(error = %e, "Could not create the session's IP text masker.");
                    }
                    Ok(())
                })
            })
            .connect_lazy_with(options);
        Ok(PgStore {
            name: name.to_string(),
            pool,
            down: Default::default(),
        })
    }

    /// A connection for one more worker of a parallel rule, when the pool
    /// can give one without waiting for a busy one to come back: an idle
    /// one, or a new one while the pool is below `max_connections` (the pool
    /// opens connections lazily, so at a rule's start it often has none
    /// idle). Rules that each hold a connection and wait for more could
    /// deadlock, hence the short bound when another task takes that slot.
    pub async fn spare_connection(&self) -> Option<sqlx::pool::PoolConnection<sqlx::Postgres>> {
        if let Some(c) = self.pool.try_acquire() {
            return Some(c);
        }
        if self.pool.size() >= self.pool.options().get_max_connections() {
            return None;
        }
        tokio::time::timeout(Duration::from_secs(2), self.pool.acquire())
            .await
            .ok()?
            .ok()
    }

    /// `host:port` (or the socket directory) the store connects to.
    pub fn address(&self) -> String {
        let o = self.pool.connect_options();
        format!("{}:{}", o.get_host(), o.get_port())
    }

    /// Opens one connection (at most [`PROBE_TIMEOUT`]) to learn whether the
    /// store is reachable, and why not: refused, DNS, TLS, authentication.
    /// A pool would retry silently until its acquire timeout instead. For
    /// one-shot commands: a store found down stays marked down for the life
    /// of this `PgStore` (the daemon probes on its own, and keeps retrying).
    pub async fn probe(&self) -> Result<(), String> {
        use sqlx::Connection;
        let options = self.pool.connect_options();
        let why =
            match tokio::time::timeout(PROBE_TIMEOUT, sqlx::PgConnection::connect_with(&options))
                .await
            {
                Ok(Ok(conn)) => {
                    let _ = conn.close().await;
                    return Ok(());
                }
                Ok(Err(e)) => connect_error(&e),
                Err(_) => format!("no answer within {}s", PROBE_TIMEOUT.as_secs()),
            };
        let message = format!(
            "store `{}` ({}): cannot connect: {why}",
            self.name,
            self.address()
        );
        let _ = self.down.set(message.clone());
        Err(message)
    }

    /// Why the store is down, when a probe found it so.
    pub fn down(&self) -> Option<&str> {
        self.down.get().map(String::as_str)
    }

    /// Reads the server clock and measures its skew against ours.
    pub async fn clock(&self) -> Result<Clock, sqlx::Error> {
        let before = Utc::now();
        let row = sqlx::query("SELECT now() AS now, clock_timestamp() AS clock")
            .fetch_one(&self.pool)
            .await?;
        let after = Utc::now();
        let db_now: DateTime<Utc> = row.try_get("now")?;
        let clock: DateTime<Utc> = row.try_get("clock")?;
        let local = before + (after - before) / 2;
        let skew = (clock - local).abs().to_std().unwrap_or(Duration::MAX);
        Ok(Clock { db_now, skew })
    }
}

/// Makes the transaction `tx` a plan's: read only, and waiting at most
/// `lock_timeout` for a lock (a counting scan behind an ACCESS EXCLUSIVE
/// lock fails fast instead of hanging the plan or the run).
pub async fn begin_counting(
    tx: &mut sqlx::PgConnection,
    lock_timeout: Duration,
) -> Result<(), sqlx::Error> {
    sqlx::query("SET TRANSACTION READ ONLY")
        .execute(&mut *tx)
        .await?;
    sqlx::query("SELECT set_config('lock_timeout', $1, true)")
        .bind(format!("{}ms", lock_timeout.as_millis().max(1)))
        .execute(&mut *tx)
        .await?;
    Ok(())
}

/// A connection error as the cause an operator can act on.
fn connect_error(e: &sqlx::Error) -> String {
    match e {
        sqlx::Error::Io(io) => match io.kind() {
            std::io::ErrorKind::ConnectionRefused => {
                "connection refused (is PostgreSQL running and listening on this address?)".into()
            }
            std::io::ErrorKind::NotFound => format!("host not found ({io})"),
            _ if io.to_string().contains("lookup address") => {
                format!("cannot resolve the host name ({io})")
            }
            _ => format!("network error: {io}"),
        },
        sqlx::Error::Tls(t) => format!("TLS: {t}"),
        sqlx::Error::Database(d) => match d.code().as_deref() {
            Some("28P01") | Some("28000") => format!("authentication failed: {}", d.message()),
            Some("3D000") => format!("the database does not exist: {}", d.message()),
            _ => d.message().to_string(),
        },
        other => other.to_string(),
    }
}
