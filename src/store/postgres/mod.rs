//! PostgreSQL: connections, the database clock, and (in submodules) catalog
//! introspection, rule SQL and batch statements.

pub mod batch;
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
}

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
            .options([("TimeZone", "UTC")]);
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
                    Ok(())
                })
            })
            .connect_lazy_with(options);
        Ok(PgStore {
            name: name.to_string(),
            pool,
        })
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
