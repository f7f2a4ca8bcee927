//! Stores: where data lives. Each kind is one module.
//!
//! PostgreSQL is not a blob store: it has its own module with batched,
//! set-based SQL. Blob stores implement [`blob::BlobStore`]: the filesystem
//! ([`fs`]), S3 ([`s3`]) and Azure Blob ([`azure`]).

pub mod azure;
pub mod blob;
pub mod fs;
pub mod postgres;
pub mod s3;

use crate::config::{Config, StoreConfig};
use postgres::PgStore;
use std::collections::BTreeMap;

/// Open connections to the stores a command needs, by name.
#[derive(Debug, Default)]
pub struct Stores {
    postgres: BTreeMap<String, PgStore>,
    blob: BTreeMap<String, std::sync::Arc<dyn blob::BlobStore>>,
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
        let mut blob: BTreeMap<String, std::sync::Arc<dyn blob::BlobStore>> = BTreeMap::new();
        for (name, store) in &config.stores {
            match store {
                StoreConfig::Postgres {
                    url,
                    max_connections,
                } => {
                    let pg = PgStore::connect(name, url, *max_connections).map_err(|source| {
                        OpenError {
                            store: name.clone(),
                            source,
                        }
                    })?;
                    postgres.insert(name.clone(), pg);
                }
                StoreConfig::Filesystem { root } => {
                    blob.insert(
                        name.clone(),
                        std::sync::Arc::new(fs::FsStore::new(name, root)),
                    );
                }
                StoreConfig::S3 {
                    bucket,
                    region,
                    endpoint,
                    force_path_style,
                    expected_account,
                } => {
                    blob.insert(
                        name.clone(),
                        std::sync::Arc::new(s3::S3Store::new(
                            name,
                            bucket,
                            region.clone(),
                            endpoint.clone(),
                            *force_path_style,
                            expected_account.clone(),
                        )),
                    );
                }
                StoreConfig::AzureBlob {
                    account,
                    container,
                    endpoint,
                    sas_token,
                    access_key,
                    expected_account,
                } => {
                    blob.insert(
                        name.clone(),
                        std::sync::Arc::new(azure::AzureStore::new(
                            name,
                            account,
                            container,
                            endpoint.as_deref(),
                            sas_token.as_deref(),
                            access_key.as_deref(),
                            expected_account.clone(),
                        )),
                    );
                }
            }
        }
        Ok(Stores { postgres, blob })
    }

    /// Every postgres store, by name.
    pub fn all_postgres(&self) -> impl Iterator<Item = (&str, &PgStore)> {
        self.postgres.iter().map(|(n, p)| (n.as_str(), p))
    }

    /// The blob store `name`, when this build executes its kind.
    pub fn blob(&self, name: &str) -> Option<&dyn blob::BlobStore> {
        self.blob.get(name).map(|b| b.as_ref())
    }

    /// The postgres store `name`.
    pub fn postgres(&self, name: &str) -> Option<&PgStore> {
        self.postgres.get(name)
    }

    /// Probes every postgres store at once (a few seconds at most); the
    /// ones that cannot be reached are marked down, and their errors
    /// returned, one per store.
    pub async fn probe_postgres(&self) -> Vec<String> {
        let probes = self.postgres.values().map(|pg| pg.probe());
        futures_util::future::join_all(probes)
            .await
            .into_iter()
            .filter_map(Result::err)
            .collect()
    }

    /// Closes every pool.
    pub async fn close(&self) {
        for pg in self.postgres.values() {
            pg.pool.close().await;
        }
    }
}
