//! The interface every blob store implements, and what it lists.
//!
//! Deliberately narrow (after object_store's contract): list a prefix as a
//! stream of object versions, delete a batch with one result per item,
//! check the target's identity. Everything else (age filters, groups, caps,
//! audit) is the engine's, so a new store is one new file.

use chrono::{DateTime, Utc};
use futures_util::future::BoxFuture;
use futures_util::stream::BoxStream;
use std::collections::BTreeMap;
use std::fmt;

/// One listed object version (a store without versions lists one per key).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlobMeta {
    /// The key, exactly as the store has it: never normalised.
    pub key: String,
    /// The version (S3 version id, Azure version or snapshot), if any.
    pub version: Option<String>,
    /// When this version was written: its age.
    pub last_modified: DateTime<Utc>,
    /// Size in bytes.
    pub size: u64,
    /// True for the current version of its key.
    pub is_latest: bool,
    /// True for an S3 delete marker.
    pub delete_marker: bool,
    /// User metadata (or tags), for `match_metadata` and `age_metadata`.
    pub metadata: BTreeMap<String, String>,
    /// Why the store itself forbids deleting it (object lock, legal hold,
    /// immutability policy), if it does.
    pub locked: Option<String>,
    /// Not an object yet: an incomplete S3 multipart upload (`version` is
    /// its upload id) or an Azure blob with only uncommitted blocks. Its
    /// age is when the upload began.
    pub pending: bool,
}

/// One thing to delete: a key, or one version of it. Serialized for the
/// delete calls a run has in flight (`run_progress.in_flight`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct BlobRef {
    /// The key.
    pub key: String,
    /// The version, or None for the key itself (a delete marker on a
    /// versioned S3 bucket).
    pub version: Option<String>,
    /// Size in bytes (for the `bytes` count).
    pub size: u64,
    /// Its last-modified time when listed: a store whose objects can be
    /// overwritten in place refuses to delete one modified since.
    pub listed_modified: DateTime<Utc>,
    /// An upload to abort rather than an object to delete.
    pub pending: bool,
}

impl BlobRef {
    /// What deleting `meta` means: that version (`versions = "all"`), or
    /// the key itself (None: `versions = "current"`).
    pub fn to(meta: &BlobMeta, version: Option<String>) -> BlobRef {
        BlobRef {
            key: meta.key.clone(),
            version,
            size: meta.size,
            listed_modified: meta.last_modified,
            pending: meta.pending,
        }
    }
}

/// A store operation failed.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The bucket, container or root does not exist.
    #[error("{0} does not exist")]
    Missing(String),
    /// It exists but belongs to another account than `expected_account`.
    #[error("wrong target: {0}")]
    WrongTarget(String),
    /// The store refused (permissions, a lock it did not list).
    #[error("refused by the store: {0}")]
    Refused(String),
    /// This one key or prefix is never touched, for a reason about the item
    /// itself (a key that is not a plain relative path, a path that crosses
    /// a symbolic link). The item, and a row naming it, is kept; the rest
    /// of the work goes on, and the item is counted in the rule's `skipped`
    /// under `reason`.
    #[error("{detail}")]
    Skipped {
        /// A short, stable reason: the key in `skipped` (`bad_key`,
        /// `symlink`, `modified`, ...).
        reason: &'static str,
        /// The item and why, for logs.
        detail: String,
    },
    /// Anything else (I/O, network, service errors after retries).
    #[error("{0}")]
    Other(String),
}

/// A stream of listing pages as a stream of items (an error ends it).
pub fn flatten_pages<'a, S>(pages: S) -> BoxStream<'a, Result<BlobMeta, StoreError>>
where
    S: futures_util::Stream<Item = Result<Vec<BlobMeta>, StoreError>> + Send + 'a,
{
    use futures_util::stream::{self, StreamExt};
    pages
        .flat_map(|page| match page {
            Ok(items) => stream::iter(items.into_iter().map(Ok).collect::<Vec<_>>()),
            Err(e) => stream::iter(vec![Err(e)]),
        })
        .boxed()
}

/// Which of `items` the store no longer has, by listing each key again.
///
/// A delete call whose answer was lost (a dropped connection after the
/// store acted, every retry dropped too) cannot say what it did; the next
/// run would list nothing and count nothing, and the signed log would miss
/// removals. Asking the store what is left turns that doubt into a count.
/// An item whose key cannot be listed stays unconfirmed (`false`): only
/// what the store shows gone is counted.
pub async fn confirm_gone(store: &dyn BlobStore, items: &[&BlobRef]) -> Vec<bool> {
    use futures_util::stream::StreamExt;
    let mut listed: BTreeMap<&str, Option<Vec<BlobMeta>>> = BTreeMap::new();
    for item in items {
        if listed.contains_key(item.key.as_str()) {
            continue;
        }
        let mut metas = Vec::new();
        let mut stream = store.list(&item.key);
        let mut ok = true;
        while let Some(meta) = stream.next().await {
            match meta {
                // A prefix listing also returns longer keys.
                Ok(meta) if meta.key == item.key => metas.push(meta),
                Ok(_) => {}
                Err(_) => {
                    ok = false;
                    break;
                }
            }
        }
        listed.insert(&item.key, ok.then_some(metas));
    }
    items
        .iter()
        .map(|item| match listed.get(item.key.as_str()) {
            Some(Some(metas)) => !metas.iter().any(|m| still_there(item, m)),
            _ => false,
        })
        .collect()
}

/// Whether listed `meta` shows that deleting `item` has not happened.
fn still_there(item: &BlobRef, meta: &BlobMeta) -> bool {
    if item.pending || meta.pending {
        return item.pending && meta.pending && item.version == meta.version;
    }
    match &item.version {
        Some(v) => meta.version.as_ref() == Some(v),
        // The key itself: gone when its current version is gone or is a
        // delete marker.
        None => meta.is_latest && !meta.delete_marker,
    }
}

/// A blob store.
pub trait BlobStore: fmt::Display + fmt::Debug + Send + Sync {
    /// Every object version under `prefix`, in bytewise key order, every
    /// key's versions (and uploads) together; versions of one key in any
    /// order. Selection relies on it (a group is complete once the listing
    /// has passed it) and refuses a listing that goes back.
    fn list(&self, prefix: &str) -> BoxStream<'_, Result<BlobMeta, StoreError>>;

    /// Deletes `items`; one result per item, in order. An item that is
    /// already gone is a success.
    fn delete<'a>(&'a self, items: &'a [BlobRef]) -> BoxFuture<'a, Vec<Result<(), StoreError>>>;

    /// Checks that the target exists (never creating it) and belongs to the
    /// expected account, before anything is deleted from it.
    fn check_identity(&self) -> BoxFuture<'_, Result<(), StoreError>>;

    /// How many items one delete call should carry (S3: 1000, Azure: 256).
    fn batch_limit(&self) -> usize;

    /// How many delete calls may be in flight at once.
    fn parallelism(&self) -> usize {
        1
    }

    /// Fills in what a listing leaves out, for `items` only: locks (always)
    /// and user metadata (when `metadata`). Stores whose listing already
    /// carries both keep this default, which does nothing. The engine asks
    /// only about what it is about to delete, so a large prefix costs one
    /// extra request per candidate, not per object.
    fn describe<'a>(
        &'a self,
        items: &'a mut [BlobMeta],
        metadata: bool,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        let _ = (items, metadata);
        Box::pin(async { Ok(()) })
    }
}
