//! Stores: where data lives. Each kind is one module.
//!
//! PostgreSQL is not a blob store: it has its own module with batched,
//! set-based SQL. Blob stores (S3, Azure Blob, filesystem) are parsed and
//! validated by [`crate::config`] but not executed yet.

pub mod postgres;

use crate::config::{Config, StoreConfig};
use postgres::PgStore;
use std::collections::BTreeMap;

/// Open connections to the stores a command needs, by name.
#[derive(Debug, Default)]
pub struct Stores {
    postgres: BTreeMap<String, PgStore>,
}

/// A store could not be opened.
#[derive(Debug, thiserror::Error)]
#[error("store `{store}`: {source}")]
pub struct OpenError {
    /// Store name.
    pub store: String,
    /// Why.
    pub source: sqlx::Error,
}

impl Stores {
    /// Prepares pools for every postgres store of `config` (connections open
    /// lazily, on first use).
    pub fn open(config: &Config) -> Result<Stores, OpenError> {
        let mut postgres = BTreeMap::new();
        for (name, store) in &config.stores {
            if let StoreConfig::Postgres {
                url,
                max_connections,
            } = store
            {
                let pg =
                    PgStore::connect(name, url, *max_connections).map_err(|source| OpenError {
                        store: name.clone(),
                        source,
                    })?;
                postgres.insert(name.clone(), pg);
            }
        }
        Ok(Stores { postgres })
    }

    /// Every postgres store, by name.
    pub fn all_postgres(&self) -> impl Iterator<Item = (&str, &PgStore)> {
        self.postgres.iter().map(|(n, p)| (n.as_str(), p))
    }

    /// The postgres store `name`.
    pub fn postgres(&self, name: &str) -> Option<&PgStore> {
        self.postgres.get(name)
    }

    /// Closes every pool.
    pub async fn close(&self) {
        for pg in self.postgres.values() {
            pg.pool.close().await;
        }
    }
}
