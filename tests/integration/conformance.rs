//! One conformance suite for every blob store (after arrow-rs
//! object_store's `integration.rs`): each case is written once against
//! `&dyn BlobStore` and runs on the filesystem, on S3 (moto_server) and on
//! Azure Blob (Azurite), so a new store or a regression fails in one place:
//! `conformance::<case>::<store>`.
//!
//! A [`Fixture`] is one store over a fresh namespace (directory, bucket,
//! container) plus what the case needs done behind the store's back: put
//! objects, versions, delete markers, locks and uploads with the backend's
//! own client, and list what is really there ([`Fixture::raw`]), so the
//! store is always checked against the backend, never against itself. A
//! store that lacks a feature skips the case, saying why
//! ([`Fixture::lacks`]).

use crate::emulators::{s3_client, Azure, Emulator, AZ_ACCOUNT, AZ_KEY};
use crate::proxy::{Flavor, Proxy, Schedule};
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{
    BucketVersioningStatus, ObjectLockLegalHoldStatus, ObjectLockMode, VersioningConfiguration,
};
use chrono::{Duration, Utc};
use futures_util::stream::{self, StreamExt};
use retentiond::store::azure::AzureStore;
use retentiond::store::blob::{BlobMeta, BlobRef, BlobStore, StoreError};
use retentiond::store::fs::FsStore;
use retentiond::store::s3::S3Store;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};

/// What a case may need that not every store has.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Feature {
    /// A listing of more than 1000 keys, over the service's own pages.
    Pages,
    /// A listing forced into small pages (through the proxy).
    SmallPages,
    /// Object versions with ids of their own.
    Versions,
    /// Items the store itself refuses to delete.
    Locks,
    /// Incomplete uploads, listed `pending`.
    Uploads,
    /// Keys that are paths: `..`, empty segments and links are refused.
    PathKeys,
}

/// What a case needs of its namespace (stores without the notion ignore it).
#[derive(Clone, Copy, Default)]
struct Needs {
    /// An S3 bucket with versioning on.
    versioned: bool,
    /// An S3 bucket with Object Lock (and so versioning) on.
    object_lock: bool,
    /// The store talks through a proxy that asks for pages of 2 items.
    small_pages: bool,
}

/// One item as the backend itself lists it (or as the store does).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Raw {
    key: String,
    version: Option<String>,
    marker: bool,
    pending: bool,
    size: u64,
}

impl From<&BlobMeta> for Raw {
    fn from(m: &BlobMeta) -> Raw {
        Raw {
            key: m.key.clone(),
            version: m.version.clone(),
            marker: m.delete_marker,
            pending: m.pending,
            size: m.size,
        }
    }
}

/// One store over a fresh namespace, and the backend behind it.
trait Fixture {
    fn name(&self) -> &'static str;
    fn store(&self) -> &dyn BlobStore;
    /// Why the store cannot take part in a case needing `feature`.
    fn lacks(&self, feature: Feature) -> Option<&'static str>;
    /// Writes `key` with the backend's own client; Err when the backend
    /// (or, for the filesystem, the kernel's path rules) refuses the key.
    async fn put(&self, key: &str, body: &[u8]) -> Result<(), String>;
    /// Everything under `prefix` as the backend lists it, sorted.
    async fn raw(&self, prefix: &str) -> Vec<Raw>;
    /// A new current version of `key`, the old one kept under its own id
    /// (S3: a put on a versioned bucket; Azure: a snapshot, then a put).
    async fn add_version(&self, key: &str, body: &[u8]);
    /// S3 only: a delete marker over `key`.
    async fn delete_marker(&self, key: &str);
    /// S3 only: turns versioning on (objects already there keep `null`).
    async fn enable_versioning(&self);
    /// Puts `key` so that deleting it must fail; returns what the store's
    /// `describe` must call it (None: it does not know; it must still fail).
    async fn put_locked(&self, key: &str) -> Option<&'static str>;
    /// S3 only: puts `key` under a retention period (Object Lock).
    async fn put_retained(&self, key: &str);
    /// Starts an upload of `key` that is never completed.
    async fn start_upload(&self, key: &str);
    /// Requests the store sent through its proxy (`Needs::small_pages`).
    fn proxied(&self) -> u64;
    /// The same store over a namespace that does not exist.
    fn missing(&self) -> Box<dyn BlobStore>;
    /// Whether that namespace exists now.
    async fn missing_exists(&self) -> bool;
}

// ------------------------------------------------------------ helpers

/// Everything `store` lists under `prefix`, or the first error.
async fn list(store: &dyn BlobStore, prefix: &str) -> Result<Vec<BlobMeta>, StoreError> {
    let mut items: Vec<BlobMeta> = Vec::new();
    let mut listing = store.list(prefix);
    while let Some(item) = listing.next().await {
        items.push(item?);
    }
    items.sort_by(|a, b| (&a.key, &a.version).cmp(&(&b.key, &b.version)));
    Ok(items)
}

/// The keys `store` lists under `prefix`, in the order it lists them.
async fn listed_order(fx: &impl Fixture, prefix: &str) -> Vec<String> {
    let mut keys = Vec::new();
    let mut listing = fx.store().list(prefix);
    while let Some(item) = listing.next().await {
        match item {
            Ok(meta) => keys.push(meta.key),
            Err(e) => panic!("{}: list {prefix:?}: {e}", fx.name()),
        }
    }
    keys
}

/// Selection decides a key (or a group) once the listing has passed it,
/// so every store lists in bytewise key order, a key's versions, markers
/// and uploads together.
fn assert_key_order(fx: &impl Fixture, keys: &[String]) {
    let mut sorted = keys.to_vec();
    sorted.sort();
    assert_eq!(keys, sorted, "{}: listed out of key order", fx.name());
}

async fn listed(fx: &impl Fixture, prefix: &str) -> Vec<BlobMeta> {
    list(fx.store(), prefix)
        .await
        .unwrap_or_else(|e| panic!("{}: list {prefix:?}: {e}", fx.name()))
}

fn raws(items: &[BlobMeta]) -> Vec<Raw> {
    let mut out: Vec<Raw> = items.iter().map(Raw::from).collect();
    out.sort();
    out
}

fn keys_sizes(items: &[BlobMeta]) -> Vec<(String, u64)> {
    let mut out: Vec<(String, u64)> = items.iter().map(|m| (m.key.clone(), m.size)).collect();
    out.sort();
    out
}

/// Each item, by the version it was listed with.
fn refs(items: &[BlobMeta]) -> Vec<BlobRef> {
    items
        .iter()
        .map(|m| BlobRef::to(m, m.version.clone()))
        .collect()
}

fn skip(fx: &impl Fixture, case: &str, feature: Feature) -> bool {
    match fx.lacks(feature) {
        Some(why) => {
            eprintln!("conformance::{case}::{}: skipped: {why}", fx.name());
            true
        }
        None => false,
    }
}

fn skip_reason<T>(r: &Result<T, StoreError>) -> Option<&'static str> {
    match r {
        Err(StoreError::Skipped { reason, .. }) => Some(reason),
        _ => None,
    }
}

// -------------------------------------------------------------- cases

/// A prefix is a string prefix: `a/b/` is not `a/bc`, `a/b` is both; sizes
/// are the objects' own.
async fn list_by_prefix(fx: &impl Fixture) {
    let objects = [
        ("a/b/c", 3),
        ("a/b/d/e", 5),
        ("a/bc/x", 1),
        ("a/bcd", 2),
        ("a/b2", 4),
        ("ab", 6),
        ("x/a/b/c", 7),
    ];
    for (key, size) in objects {
        fx.put(key, &vec![b'.'; size]).await.expect("put");
    }
    let expect = |keys: &[&str]| -> Vec<(String, u64)> {
        objects
            .iter()
            .filter(|(k, _)| keys.contains(k))
            .map(|(k, s)| (k.to_string(), *s as u64))
            .collect()
    };
    let cases: [(&str, &[&str]); 8] = [
        ("a/b/", &["a/b/c", "a/b/d/e"]),
        ("a/b", &["a/b/c", "a/b/d/e", "a/bc/x", "a/bcd", "a/b2"]),
        ("a/bc", &["a/bc/x", "a/bcd"]),
        ("a/b/d/", &["a/b/d/e"]),
        ("a/b/c", &["a/b/c"]),
        (
            "",
            &[
                "a/b/c", "a/b/d/e", "a/bc/x", "a/bcd", "a/b2", "ab", "x/a/b/c",
            ],
        ),
        ("zz/", &[]),
        ("a/b/c/", &[]),
    ];
    for (prefix, keys) in cases {
        let items = listed(fx, prefix).await;
        let mut want = expect(keys);
        want.sort();
        assert_eq!(keys_sizes(&items), want, "{}: list {prefix:?}", fx.name());
        let raw: Vec<Raw> = fx.raw(prefix).await;
        assert_eq!(
            raws(&items),
            raw,
            "{}: list {prefix:?} vs the backend",
            fx.name()
        );
        for m in &items {
            assert!(
                m.version.is_none()
                    && m.is_latest
                    && !m.delete_marker
                    && !m.pending
                    && m.locked.is_none(),
                "{}: a plain object: {m:?}",
                fx.name()
            );
        }
    }
}

/// More than one service page (S3: 1000 keys), then one delete call of all
/// of them (the store splits it).
async fn list_past_1000_keys(fx: &impl Fixture) {
    if skip(fx, "list_past_1000_keys", Feature::Pages) {
        return;
    }
    let keys: Vec<String> = (0..1050).map(|i| format!("p/{i:05}")).collect();
    stream::iter(keys.iter().map(|k| fx.put(k, b"p")))
        .buffer_unordered(8)
        .for_each(|r| async { r.expect("put") })
        .await;
    fx.put("p2/sibling", b"s").await.expect("put");
    fx.put("o/other", b"o").await.expect("put");
    let items = listed(fx, "p/").await;
    let got: Vec<&str> = items.iter().map(|m| m.key.as_str()).collect();
    assert_eq!(got.len(), 1050, "{}: every key, once", fx.name());
    assert_eq!(got, keys, "{}: exactly the keys under p/", fx.name());
    let results = fx.store().delete(&refs(&items)).await;
    assert_eq!(results.len(), 1050);
    assert!(results.iter().all(Result::is_ok), "{}", fx.name());
    let left: Vec<String> = fx.raw("").await.into_iter().map(|r| r.key).collect();
    assert_eq!(left, ["o/other", "p2/sibling"], "{}", fx.name());
}

/// Pages of 2 items: versions, markers, snapshots and uploads straddle
/// pages, and every item is listed exactly once.
async fn list_small_pages(fx: &impl Fixture) {
    if skip(fx, "list_small_pages", Feature::SmallPages) {
        return;
    }
    for i in 0..7 {
        let key = format!("s/{i}");
        fx.put(&key, format!("v0 of {i}").as_bytes())
            .await
            .expect("put");
        // Not on Azurite: its page marker is a blob name, and the next page
        // starts after that name, skipping the rest of its snapshots (an
        // emulator bug: Azure's marker is opaque). Azure pages here over
        // names, uncommitted and empty blobs.
        if fx.lacks(Feature::Versions).is_none() && fx.name() != "azure" {
            for v in 0..i % 3 {
                fx.add_version(&key, format!("v{} of {i}", v + 1).as_bytes())
                    .await;
            }
        }
    }
    // Empty committed objects next to uploads: a store telling them apart
    // (Azure lists both with length 0) must do so across pages too.
    for key in ["s/2-empty", "s/5-empty", "s/empty"] {
        fx.put(key, b"").await.expect("put");
    }
    if fx.lacks(Feature::Uploads).is_none() {
        for key in ["s/1", "s/2-half", "s/3x", "s/5-half", "s/9"] {
            fx.start_upload(key).await;
        }
    }
    if fx.name() == "s3" {
        fx.delete_marker("s/4").await;
    }
    fx.put("t/outside", b"t").await.expect("put");
    let items = listed(fx, "s/").await;
    let raw = fx.raw("s/").await;
    assert!(raw.len() > 10, "{}: {raw:?}", fx.name());
    assert!(
        fx.proxied() as usize >= raw.len() / 3,
        "{}: pages of 2 items: {} requests",
        fx.name(),
        fx.proxied()
    );
    assert_eq!(raws(&items), raw, "{}: every item once", fx.name());
    assert_key_order(fx, &listed_order(fx, "s/").await);
}

/// Keys whose order differs from a path walk's (`a.txt` < `a/x` < `a0`),
/// with versions, a delete marker and uploads among them.
async fn list_in_key_order(fx: &impl Fixture) {
    let keys = [
        "o/b", "o/a0", "o/a/x", "o/a.txt", "o/a/y/z", "o/a-b/c", "o/A", "o/a/x0",
    ];
    for key in keys {
        fx.put(key, key.as_bytes()).await.expect("put");
    }
    if fx.lacks(Feature::Versions).is_none() {
        fx.add_version("o/a/x", b"again").await;
        fx.add_version("o/a0", b"again").await;
    }
    if fx.name() == "s3" {
        fx.delete_marker("o/a.txt").await;
    }
    if fx.lacks(Feature::Uploads).is_none() {
        for key in ["o/a/x", "o/0-half", "o/zz-half"] {
            fx.start_upload(key).await;
        }
    }
    let listed = listed_order(fx, "o/").await;
    assert_key_order(fx, &listed);
    let mut distinct = listed.clone();
    distinct.dedup();
    let mut expected: Vec<&str> = keys.to_vec();
    if fx.lacks(Feature::Uploads).is_none() {
        expected.extend(["o/0-half", "o/zz-half"]);
    }
    expected.sort();
    assert_eq!(distinct, expected, "{}: every key, in order", fx.name());
}

/// One result per item, in order; already gone is success; a re-delete too.
async fn delete_results(fx: &impl Fixture) {
    for key in ["d/1", "d/2", "d/3"] {
        fx.put(key, key.as_bytes()).await.expect("put");
    }
    let locked = fx.lacks(Feature::Locks).is_none();
    let mut items = refs(&listed(fx, "d/").await);
    assert_eq!(items.len(), 3, "{}", fx.name());
    // An item whose delete must fail, in the middle: the results must say
    // which one failed.
    let doomed = if locked {
        fx.put_locked("d/0-locked").await;
        let mut it = refs(&listed(fx, "d/0-locked").await);
        assert_eq!(it.len(), 1, "{}", fx.name());
        it.pop()
    } else {
        None
    };
    // Written after it was listed: a store that can tell refuses it.
    fx.put("d/4-stale", b"stale").await.expect("put");
    let mut stale = refs(&listed(fx, "d/4-stale").await).pop().expect("listed");
    stale.listed_modified -= Duration::hours(1);
    let never = BlobRef {
        key: "d/never-was".into(),
        version: None,
        size: 0,
        listed_modified: Utc::now(),
        pending: false,
    };
    // S3's objects cannot be told apart by time (DeleteObjects has no
    // condition), so the stale item is just deleted there; and on a
    // versioned bucket deleting a key that never was writes a delete marker
    // (S3's semantics: it is no no-op), so it is left out there.
    let versioned = fx.name() == "s3";
    let mut batch: Vec<BlobRef> = vec![items[0].clone()];
    batch.extend(doomed.clone());
    batch.push(items[1].clone());
    if !versioned {
        batch.push(never.clone());
    }
    batch.push(stale.clone());
    batch.push(items[0].clone());
    batch.push(items[2].clone());
    let results = fx.store().delete(&batch).await;
    assert_eq!(
        results.len(),
        batch.len(),
        "{}: one result per item",
        fx.name()
    );
    for (item, result) in batch.iter().zip(&results) {
        let must_fail = Some(item) == doomed.as_ref() || (item == &stale && fx.name() != "s3");
        assert_eq!(
            result.is_err(),
            must_fail,
            "{}: {} (in order): {result:?}",
            fx.name(),
            item.key
        );
    }
    if fx.name() == "fs" {
        assert_eq!(
            skip_reason(&results[batch.iter().position(|i| i == &stale).unwrap()]),
            Some("modified")
        );
    }
    let mut left: Vec<String> = fx.raw("d/").await.into_iter().map(|r| r.key).collect();
    left.dedup();
    let mut want: Vec<&str> = Vec::new();
    if doomed.is_some() {
        want.push("d/0-locked");
    }
    if fx.name() != "s3" {
        want.push("d/4-stale");
    }
    assert_eq!(left, want, "{}: exactly the deleted items went", fx.name());
    // Again: everything already gone is success, the refused stay refused.
    if !versioned {
        items.push(never);
    }
    let again = fx.store().delete(&items).await;
    assert!(again.iter().all(Result::is_ok), "{}: {again:?}", fx.name());
    if let Some(doomed) = doomed {
        let again = fx.store().delete(std::slice::from_ref(&doomed)).await;
        assert!(
            again[0].is_err(),
            "{}: a lock holds on every try",
            fx.name()
        );
    }
    assert!(fx.store().delete(&[]).await.is_empty());
}

/// Every version is listed with its own id and deleted by it; on S3 delete
/// markers too, and the `null` version of an object written before
/// versioning is listed as `null` and deleted by it (a version-less delete
/// would only hide it).
async fn versions(fx: &impl Fixture) {
    if skip(fx, "versions", Feature::Versions) {
        return;
    }
    let s3 = fx.name() == "s3";
    if s3 {
        fx.put("v/pre", b"before versioning").await.expect("put");
        fx.put("v/pre-only", b"only before").await.expect("put");
        fx.enable_versioning().await;
        fx.add_version("v/pre", b"after").await;
    }
    fx.put("v/a", b"a0").await.expect("put");
    fx.add_version("v/a", b"a1-").await;
    fx.add_version("v/a", b"a2--").await;
    fx.put("v/b", b"b").await.expect("put");
    if s3 {
        fx.delete_marker("v/b").await;
        fx.put("v/gone", b"gone").await.expect("put");
        fx.delete_marker("v/gone").await;
    }
    let items = listed(fx, "v/").await;
    let raw = fx.raw("v/").await;
    assert_eq!(raws(&items), raw, "{}: every version and marker", fx.name());
    let ids: std::collections::BTreeSet<(&str, Option<&str>)> = items
        .iter()
        .map(|m| (m.key.as_str(), m.version.as_deref()))
        .collect();
    assert_eq!(
        ids.len(),
        items.len(),
        "{}: each with its own id",
        fx.name()
    );
    let of = |key: &str| items.iter().filter(|m| m.key == key).count();
    if s3 {
        assert_eq!(
            (of("v/a"), of("v/b"), of("v/gone"), of("v/pre")),
            (3, 2, 2, 2)
        );
        let null: Vec<&BlobMeta> = items
            .iter()
            .filter(|m| m.version.as_deref() == Some("null"))
            .collect();
        assert_eq!(
            null.iter().map(|m| m.key.as_str()).collect::<Vec<_>>(),
            ["v/pre", "v/pre-only"],
            "pre-versioning objects are the version `null`"
        );
        assert!(null.iter().all(|m| !m.delete_marker && m.size > 0));
        assert!(items.iter().all(|m| m.version.is_some()), "{items:?}");
        assert_eq!(items.iter().filter(|m| m.delete_marker).count(), 2);
    } else {
        // Azure: the base blob is the key itself, snapshots are versions.
        assert_eq!((of("v/a"), of("v/b")), (3, 1));
        assert_eq!(items.iter().filter(|m| m.is_latest).count(), 2);
    }
    let results = fx.store().delete(&refs(&items)).await;
    assert!(
        results.iter().all(Result::is_ok),
        "{}: {results:?}",
        fx.name()
    );
    assert_eq!(
        fx.raw("v/").await,
        [],
        "{}: nothing left, no marker added",
        fx.name()
    );
    let again = fx.store().delete(&refs(&items)).await;
    assert!(again.iter().all(Result::is_ok), "{}: {again:?}", fx.name());
    assert_eq!(
        fx.raw("v/").await,
        [],
        "{}: a re-delete adds nothing",
        fx.name()
    );
}

/// What the store locks is `locked` after `describe`, and deleting it
/// fails, never silently succeeds.
async fn locks(fx: &impl Fixture) {
    if skip(fx, "locks", Feature::Locks) {
        return;
    }
    fx.put("l/free", b"free").await.expect("put");
    let held = fx.put_locked("l/held").await;
    if fx.name() == "s3" {
        fx.put_retained("l/retained").await;
    }
    let mut items = listed(fx, "l/").await;
    fx.store()
        .describe(&mut items, false)
        .await
        .unwrap_or_else(|e| panic!("{}: describe: {e}", fx.name()));
    let lock = |key: &str| {
        items
            .iter()
            .find(|m| m.key == key)
            .and_then(|m| m.locked.clone())
    };
    assert_eq!(lock("l/free"), None, "{}", fx.name());
    if let Some(want) = held {
        assert!(
            lock("l/held").is_some_and(|l| l.contains(want)),
            "{}: {items:?}",
            fx.name()
        );
    }
    if fx.name() == "s3" {
        assert!(
            lock("l/retained").is_some_and(|l| l.contains("COMPLIANCE") && l.contains("retention")),
            "{items:?}"
        );
    }
    let before = fx.raw("l/").await;
    let results = fx.store().delete(&refs(&items)).await;
    for (m, r) in items.iter().zip(&results) {
        assert_eq!(
            r.is_ok(),
            m.key == "l/free",
            "{}: {}: {r:?}",
            fx.name(),
            m.key
        );
    }
    let after = fx.raw("l/").await;
    let kept: Vec<Raw> = before.into_iter().filter(|r| r.key != "l/free").collect();
    assert_eq!(
        after,
        kept,
        "{}: what is locked stays, untouched",
        fx.name()
    );
}

/// Hostile keys: what the backend stores round-trips byte for byte, and a
/// delete removes exactly that key, never a normalised sibling.
async fn hostile_keys(fx: &impl Fixture) {
    let mut long = String::from("h/long");
    while long.len() < 1024 - 201 {
        long.push('/');
        long.push_str(&"x".repeat(200));
    }
    long.push('/');
    long.push_str(&"y".repeat(1024 - long.len()));
    assert_eq!(long.len(), 1024);
    let keys: Vec<String> = [
        "h/a/../b",
        "h/./c",
        "h//d",
        "h/100%25",
        "h/%2F",
        "h/a+b",
        "h/q?x=1",
        "h/hash#frag",
        "h/trail/",
        "/h/lead",
        "h/with space",
        "h/a b",
        "h/b",
        "h/c",
        "h/d",
        "h/100%",
        "h/q",
        "h/hash",
        "h/trail",
        "h/ünïcødé/日本語.txt",
        "h/🦀",
        "h/xml/<tag>&amp;'\"",
        "h/semi;colon=1",
        "h/back\\slash",
        "h/dot/.",
        "h/dot/..",
        long.as_str(),
    ]
    .map(str::to_string)
    .to_vec();
    let mut refused = Vec::new();
    for key in &keys {
        if let Err(e) = fx.put(key, key.as_bytes()).await {
            refused.push(format!("{key}: {e}"));
        }
    }
    let raw = fx.raw("").await;
    let stored: Vec<&str> = raw.iter().map(|r| r.key.as_str()).collect();
    let normalised: Vec<&String> = keys
        .iter()
        .filter(|k| {
            !stored.contains(&k.as_str()) && !refused.iter().any(|r| r.starts_with(k.as_str()))
        })
        .collect();
    eprintln!(
        "conformance::hostile_keys::{}: {} keys stored; refused by the backend: {refused:?}; stored under another name by it: {normalised:?}",
        fx.name(),
        stored.len()
    );
    assert!(stored.len() >= 15, "{}: {stored:?}", fx.name());
    for prefix in ["", "h/", "/h/", "h/a", "h/100%", "h/q?"] {
        if prefix.starts_with('/') && fx.lacks(Feature::PathKeys).is_none() {
            // Not a path below the root: path_keys checks it is refused.
            continue;
        }
        let items = listed(fx, prefix).await;
        let want: Vec<Raw> = raw
            .iter()
            .filter(|r| r.key.starts_with(prefix))
            .cloned()
            .collect();
        assert_eq!(raws(&items), want, "{}: list {prefix:?}", fx.name());
    }
    // One at a time, the keys a sloppy store would confuse first: each
    // delete removes that key and nothing else.
    let all = listed(fx, "").await;
    for item in &all {
        let before = fx.raw("").await;
        let results = fx
            .store()
            .delete(&[BlobRef::to(item, item.version.clone())])
            .await;
        assert!(
            results[0].is_ok(),
            "{}: delete {:?}: {results:?}",
            fx.name(),
            item.key
        );
        let after = fx.raw("").await;
        let want: Vec<Raw> = before.into_iter().filter(|r| r.key != item.key).collect();
        assert_eq!(
            after,
            want,
            "{}: deleting {:?} removed exactly it",
            fx.name(),
            item.key
        );
    }
    let again = fx.store().delete(&refs(&all)).await;
    assert!(again.iter().all(Result::is_ok), "{}: {again:?}", fx.name());
}

/// Keys with characters XML 1.0 cannot carry (U+0001, U+FFFE): the store
/// must still list them exactly (S3 and Azure can only send them encoded:
/// `encoding-type=url`, `Encoded="true"`), and delete exactly them.
async fn unprintable_keys(fx: &impl Fixture) {
    let keys = ["c/ctl\u{1}x", "c/nonchar\u{FFFE}x", "c/plain"];
    for key in keys {
        fx.put(key, key.as_bytes()).await.expect("put");
    }
    let raw = fx.raw("c/").await;
    assert_eq!(raw.len(), 3, "{}: {raw:?}", fx.name());
    let items = list(fx.store(), "c/")
        .await
        .unwrap_or_else(|e| panic!("{}: one odd key fails the whole listing: {e}", fx.name()));
    assert_eq!(raws(&items), raw, "{}", fx.name());
    let results = fx.store().delete(&refs(&items)).await;
    assert!(
        results.iter().all(Result::is_ok),
        "{}: {results:?}",
        fx.name()
    );
    assert_eq!(fx.raw("c/").await, [], "{}", fx.name());
}

/// Keys with a tab, line feed or carriage return next to the same key
/// without it: each is listed as it is, and deleting one removes it, not
/// its sibling (URL parsers drop tabs and line breaks from what they parse;
/// XML parsers turn a CR into a LF).
async fn line_break_keys(fx: &impl Fixture) {
    let keys = [
        "w/a\tb", "w/ab", "w/c\nd", "w/cd", "w/e\rf", "w/ef", "w/e\nf", "w/g\r\nh",
    ];
    let mut stored = Vec::new();
    for (i, key) in keys.iter().enumerate() {
        match fx.put(key, &vec![b'.'; i + 1]).await {
            Ok(()) => stored.push(key.to_string()),
            Err(e) => eprintln!(
                "conformance::line_break_keys::{}: the backend refuses {key:?}: {}",
                fx.name(),
                e.lines()
                    .next()
                    .unwrap_or_default()
                    .chars()
                    .take(120)
                    .collect::<String>()
            ),
        }
    }
    let raw = fx.raw("w/").await;
    stored.sort();
    assert_eq!(
        raw.iter().map(|r| r.key.clone()).collect::<Vec<_>>(),
        stored,
        "{}: the backend keeps what it takes as it is",
        fx.name()
    );
    assert!(stored.len() >= 2, "{}: at least the tab pair", fx.name());
    let items = listed(fx, "w/").await;
    assert_eq!(raws(&items), raw, "{}: listed as they are", fx.name());
    for item in &items {
        let before = fx.raw("w/").await;
        let results = fx
            .store()
            .delete(&[BlobRef::to(item, item.version.clone())])
            .await;
        let after = fx.raw("w/").await;
        // A store may refuse a key it cannot address exactly (kept and
        // counted as skipped); it must never touch another one.
        if let Err(StoreError::Skipped { reason, .. }) = &results[0] {
            assert_eq!(*reason, "bad_key", "{}", fx.name());
            assert_eq!(
                after,
                before,
                "{}: a refused {:?} changed nothing",
                fx.name(),
                item.key
            );
            continue;
        }
        let want: Vec<Raw> = before.into_iter().filter(|r| r.key != item.key).collect();
        assert_eq!(
            (after, results[0].is_ok()),
            (want, true),
            "{}: deleting {:?} removed exactly it",
            fx.name(),
            item.key
        );
    }
}

/// Incomplete uploads are listed `pending`, deleting them aborts them, and
/// nothing committed is taken for one.
async fn uploads(fx: &impl Fixture) {
    if skip(fx, "uploads", Feature::Uploads) {
        return;
    }
    fx.start_upload("u/half").await;
    fx.put("u/done", b"done").await.expect("put");
    fx.put("u/empty", b"").await.expect("put");
    fx.put("u/busy", b"committed").await.expect("put");
    // A committed object with a new upload of it in progress.
    fx.start_upload("u/busy").await;
    let items = listed(fx, "u/").await;
    assert_eq!(raws(&items), fx.raw("u/").await, "{}", fx.name());
    let pending: Vec<&str> = items
        .iter()
        .filter(|m| m.pending)
        .map(|m| m.key.as_str())
        .collect();
    let want: &[&str] = if fx.name() == "s3" {
        // S3 lists every multipart upload, also one over a committed key.
        &["u/busy", "u/half"]
    } else {
        &["u/half"]
    };
    assert_eq!(pending, want, "{}: {items:?}", fx.name());
    let uploads: Vec<BlobRef> = items
        .iter()
        .filter(|m| m.pending)
        .map(|m| BlobRef::to(m, m.version.clone()))
        .collect();
    let results = fx.store().delete(&uploads).await;
    assert!(
        results.iter().all(Result::is_ok),
        "{}: {results:?}",
        fx.name()
    );
    let left: Vec<Raw> = fx.raw("u/").await;
    assert!(
        left.iter().all(|r| !r.pending),
        "{}: aborted: {left:?}",
        fx.name()
    );
    let committed: Vec<(&str, u64)> = left.iter().map(|r| (r.key.as_str(), r.size)).collect();
    assert_eq!(
        committed,
        [("u/busy", 9), ("u/done", 4), ("u/empty", 0)],
        "{}: committed objects stay",
        fx.name()
    );
    let again = fx.store().delete(&uploads).await;
    assert!(again.iter().all(Result::is_ok), "{}: {again:?}", fx.name());
}

/// A missing bucket, container or root is `Missing`, and nothing creates it.
async fn missing_target(fx: &impl Fixture) {
    assert!(
        fx.store().check_identity().await.is_ok(),
        "{}: the fixture's own target exists",
        fx.name()
    );
    let missing = fx.missing();
    let checked = missing.check_identity().await;
    assert!(
        matches!(checked, Err(StoreError::Missing(_))),
        "{}: {checked:?}",
        fx.name()
    );
    // Listing and deleting do not create it either; what they say is
    // `Missing` (a missing root lists nothing and has nothing to delete).
    let listing = list(missing.as_ref(), "").await;
    match &listing {
        Err(StoreError::Missing(_)) => {}
        Ok(items) if fx.name() == "fs" && items.is_empty() => {}
        other => panic!("{}: list: {other:?}", fx.name()),
    }
    let item = BlobRef {
        key: "k".into(),
        version: None,
        size: 1,
        listed_modified: Utc::now(),
        pending: false,
    };
    let deleted = missing.delete(std::slice::from_ref(&item)).await;
    assert_eq!(deleted.len(), 1);
    assert!(
        matches!(deleted[0], Err(StoreError::Missing(_)))
            || (fx.name() == "fs" && deleted[0].is_ok()),
        "{}: {deleted:?}",
        fx.name()
    );
    assert!(
        matches!(missing.check_identity().await, Err(StoreError::Missing(_))),
        "{}",
        fx.name()
    );
    assert!(!fx.missing_exists().await, "{}: never created", fx.name());
}

/// The filesystem store takes keys as paths below its root: a key with a
/// `..`, `.` or empty segment, or absolute, is `Skipped("bad_key")`; a
/// directory link below the root is `Skipped("symlink")`; nothing outside
/// the root, and no normalised sibling, is touched.
async fn path_keys(fx: &FsFixture) {
    let root = fx.root.clone();
    let outside = fx.dir.path().join("outside");
    std::fs::create_dir_all(&outside).unwrap();
    std::fs::write(outside.join("secret"), "secret").unwrap();
    let victim = fx.dir.path().join("victim");
    std::fs::write(&victim, "victim").unwrap();
    for key in ["h/b", "h/c", "h/d", "b", "h/real/f"] {
        fx.put(key, key.as_bytes()).await.expect("put");
    }
    std::os::unix::fs::symlink(&outside, root.join("h/link")).unwrap();
    std::os::unix::fs::symlink(root.join("h/real"), root.join("h/inside")).unwrap();
    let before = fx.raw("").await;
    let bad = [
        "h/a/../b".to_string(),
        "h/../b".into(),
        "h/./c".into(),
        "h//d".into(),
        "/h/b".into(),
        "h/trail/".into(),
        "../victim".into(),
        victim.display().to_string(),
        String::new(),
        "h/..".into(),
        "h/b\0".into(),
    ];
    let items: Vec<BlobRef> = bad
        .iter()
        .map(|k| BlobRef {
            key: k.clone(),
            version: None,
            size: 0,
            listed_modified: Utc::now(),
            pending: false,
        })
        .collect();
    for (key, r) in bad.iter().zip(fx.store().delete(&items).await) {
        assert_eq!(skip_reason(&r), Some("bad_key"), "{key:?}: {r:?}");
    }
    for prefix in ["h/a/../", "../", "/h/", "h//", "./h/"] {
        let listing = list(fx.store(), prefix).await;
        assert!(
            matches!(
                &listing,
                Err(StoreError::Skipped {
                    reason: "bad_key",
                    ..
                })
            ),
            "{prefix:?}: {listing:?}"
        );
    }
    let through = ["h/link/secret", "h/inside/f", "h/link"];
    let items: Vec<BlobRef> = through
        .iter()
        .map(|k| BlobRef {
            key: k.to_string(),
            version: None,
            size: 0,
            listed_modified: Utc::now(),
            pending: false,
        })
        .collect();
    for (key, r) in through.iter().zip(fx.store().delete(&items).await) {
        assert_eq!(skip_reason(&r), Some("symlink"), "{key}: {r:?}");
    }
    for prefix in ["h/link/", "h/inside/", "h/link/se"] {
        let listing = list(fx.store(), prefix).await;
        assert!(
            matches!(
                &listing,
                Err(StoreError::Skipped {
                    reason: "symlink",
                    ..
                })
            ),
            "{prefix:?}: {listing:?}"
        );
    }
    let links: Vec<(String, bool)> = listed(fx, "h/")
        .await
        .into_iter()
        .filter(|m| m.key == "h/link" || m.key == "h/inside")
        .map(|m| (m.key, m.locked.is_some()))
        .collect();
    assert_eq!(
        links,
        [("h/inside".to_string(), true), ("h/link".to_string(), true)],
        "links are listed as locked, never walked into"
    );
    assert_eq!(fx.raw("").await, before, "nothing below the root changed");
    assert_eq!(
        std::fs::read_to_string(outside.join("secret")).unwrap(),
        "secret"
    );
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "victim");
}

// ----------------------------------------------------------- fixtures

/// Files under a fresh root.
struct FsFixture {
    dir: tempfile::TempDir,
    root: PathBuf,
    store: FsStore,
}

impl FsFixture {
    async fn new(_: Needs) -> FsFixture {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().join("root");
        std::fs::create_dir_all(&root).unwrap();
        let store = FsStore::new("fs", &root);
        FsFixture { dir, root, store }
    }
}

impl Fixture for FsFixture {
    fn name(&self) -> &'static str {
        "fs"
    }

    fn store(&self) -> &dyn BlobStore {
        &self.store
    }

    fn lacks(&self, feature: Feature) -> Option<&'static str> {
        match feature {
            Feature::Pages | Feature::SmallPages => {
                Some("a listing is one directory walk, with no pages")
            }
            Feature::Versions => Some("a file has no versions"),
            Feature::Uploads => Some("a file has no incomplete uploads"),
            // Links are its locks: listed as locked, never deleted.
            Feature::Locks | Feature::PathKeys => None,
        }
    }

    async fn put(&self, key: &str, body: &[u8]) -> Result<(), String> {
        // The kernel would resolve these: `a/../b` is written as `b`.
        if key
            .split('/')
            .any(|s| s.is_empty() || s == "." || s == "..")
            || key.contains('\0')
        {
            return Err("not a plain relative path".into());
        }
        let path = self.root.join(key);
        std::fs::create_dir_all(path.parent().unwrap()).map_err(|e| e.to_string())?;
        std::fs::write(&path, body).map_err(|e| e.to_string())
    }

    async fn raw(&self, prefix: &str) -> Vec<Raw> {
        fn walk(dir: &std::path::Path, key: &str, out: &mut Vec<Raw>) {
            for entry in std::fs::read_dir(dir).unwrap() {
                let entry = entry.unwrap();
                let name = entry.file_name().into_string().unwrap();
                let key = if key.is_empty() {
                    name
                } else {
                    format!("{key}/{name}")
                };
                let meta = std::fs::symlink_metadata(entry.path()).unwrap();
                if meta.is_dir() {
                    walk(&entry.path(), &key, out);
                } else {
                    out.push(Raw {
                        key,
                        version: None,
                        marker: false,
                        pending: false,
                        size: meta.len(),
                    });
                }
            }
        }
        let mut out = Vec::new();
        walk(&self.root, "", &mut out);
        out.retain(|r| r.key.starts_with(prefix));
        out.sort();
        out
    }

    async fn add_version(&self, _: &str, _: &[u8]) {
        unreachable!("no versions")
    }

    async fn delete_marker(&self, _: &str) {
        unreachable!("no markers")
    }

    async fn enable_versioning(&self) {
        unreachable!("no versions")
    }

    async fn put_locked(&self, key: &str) -> Option<&'static str> {
        // A link to a file outside the root.
        let target = self.dir.path().join("link-target");
        std::fs::write(&target, "outside").unwrap();
        let path = self.root.join(key);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::os::unix::fs::symlink(&target, &path).unwrap();
        Some("symbolic link")
    }

    async fn put_retained(&self, _: &str) {
        unreachable!("no retention")
    }

    async fn start_upload(&self, _: &str) {
        unreachable!("no uploads")
    }

    fn proxied(&self) -> u64 {
        0
    }

    fn missing(&self) -> Box<dyn BlobStore> {
        Box::new(FsStore::new("fs", &self.dir.path().join("no-such-root")))
    }

    async fn missing_exists(&self) -> bool {
        self.dir.path().join("no-such-root").exists()
    }
}

/// An S3 bucket on its own moto_server.
struct S3Fixture {
    _moto: Emulator,
    proxy: Option<Proxy>,
    s3: aws_sdk_s3::Client,
    store: S3Store,
    endpoint: String,
    /// Versioning was turned on at some point (its listing then says `null`).
    versioned: AtomicBool,
    object_lock: bool,
}

const BUCKET: &str = "conformance";

/// The store reads credentials from the standard AWS chain: moto's dummy
/// ones go into this process's environment once, before any store exists.
fn aws_credentials() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        for (k, v) in crate::emulators::AWS_ENV {
            std::env::set_var(k, v);
        }
        std::env::set_var("AWS_EC2_METADATA_DISABLED", "true");
    });
}

impl S3Fixture {
    async fn new(needs: Needs) -> S3Fixture {
        aws_credentials();
        let moto = Emulator::moto_with(false);
        let s3 = s3_client(&moto);
        crate::s3::bucket(&s3, BUCKET, needs.versioned, needs.object_lock).await;
        let proxy = needs.small_pages.then(|| {
            let proxy = Proxy::start(&moto, Flavor::S3, Schedule::none());
            proxy.page_size(2);
            proxy
        });
        let endpoint = proxy.as_ref().map_or_else(|| moto.url(), Proxy::url);
        let store = S3Store::new(
            "s3",
            BUCKET,
            Some("eu-west-3".into()),
            Some(endpoint.clone()),
            true,
            None,
        );
        S3Fixture {
            _moto: moto,
            proxy,
            s3,
            store,
            endpoint,
            versioned: AtomicBool::new(needs.versioned || needs.object_lock),
            object_lock: needs.object_lock,
        }
    }
}

impl S3Fixture {
    /// Every version and delete marker, by ListObjectVersions.
    async fn raw_versions(&self, prefix: &str) -> Vec<Raw> {
        let mut out = Vec::new();
        let (mut key_marker, mut version_marker) = (None, None);
        loop {
            let page = self
                .s3
                .list_object_versions()
                .bucket(BUCKET)
                .prefix(prefix)
                .set_key_marker(key_marker.clone())
                .set_version_id_marker(version_marker.clone())
                .send()
                .await
                .expect("list versions");
            let version = |v: Option<&str>| v.map(str::to_string);
            for v in page.versions() {
                out.push(Raw {
                    key: v.key().unwrap_or_default().into(),
                    version: version(v.version_id()),
                    marker: false,
                    pending: false,
                    size: v.size().unwrap_or(0) as u64,
                });
            }
            for m in page.delete_markers() {
                out.push(Raw {
                    key: m.key().unwrap_or_default().into(),
                    version: version(m.version_id()),
                    marker: true,
                    pending: false,
                    size: 0,
                });
            }
            if page.is_truncated() != Some(true) {
                return out;
            }
            key_marker = page.next_key_marker().map(str::to_string);
            version_marker = page.next_version_id_marker().map(str::to_string);
        }
    }

    /// The objects of a bucket that never had versioning, by ListObjectsV2
    /// with `encoding-type=url` (so that any key survives the XML).
    async fn raw_objects(&self, prefix: &str) -> Vec<Raw> {
        let mut out = Vec::new();
        let mut token = None;
        loop {
            let page = self
                .s3
                .list_objects_v2()
                .bucket(BUCKET)
                .prefix(prefix)
                .encoding_type(aws_sdk_s3::types::EncodingType::Url)
                .set_continuation_token(token)
                .send()
                .await
                .expect("list objects");
            for o in page.contents() {
                let key = percent_encoding::percent_decode_str(o.key().unwrap_or_default())
                    .decode_utf8()
                    .expect("a UTF-8 key")
                    .into_owned();
                out.push(Raw {
                    key,
                    version: None,
                    marker: false,
                    pending: false,
                    size: o.size().unwrap_or(0) as u64,
                });
            }
            token = page.next_continuation_token().map(str::to_string);
            if page.is_truncated() != Some(true) {
                return out;
            }
        }
    }
}

impl Fixture for S3Fixture {
    fn name(&self) -> &'static str {
        "s3"
    }

    fn store(&self) -> &dyn BlobStore {
        &self.store
    }

    fn lacks(&self, feature: Feature) -> Option<&'static str> {
        match feature {
            Feature::PathKeys => Some("keys are names, not paths: `..` and `//` are plain text (hostile_keys checks they round-trip)"),
            Feature::Locks if !self.object_lock => Some("this bucket has no Object Lock"),
            _ => None,
        }
    }

    async fn put(&self, key: &str, body: &[u8]) -> Result<(), String> {
        self.s3
            .put_object()
            .bucket(BUCKET)
            .key(key)
            .body(ByteStream::from(body.to_vec()))
            .send()
            .await
            .map(|_| ())
            .map_err(|e| format!("{e:?}"))
    }

    async fn raw(&self, prefix: &str) -> Vec<Raw> {
        // A bucket that never had versioning: its objects, without a version
        // (the store lists them by ListObjectsV2 too). Else every version
        // and marker, `null` included.
        let mut out = if self.versioned.load(Ordering::SeqCst) {
            self.raw_versions(prefix).await
        } else {
            self.raw_objects(prefix).await
        };
        let (mut key_marker, mut upload_marker) = (None, None);
        loop {
            let page = self
                .s3
                .list_multipart_uploads()
                .bucket(BUCKET)
                .prefix(prefix)
                .set_key_marker(key_marker.clone())
                .set_upload_id_marker(upload_marker.clone())
                .send()
                .await
                .expect("list uploads");
            for u in page.uploads() {
                out.push(Raw {
                    key: u.key().unwrap_or_default().into(),
                    version: u.upload_id().map(str::to_string),
                    marker: false,
                    pending: true,
                    size: 0,
                });
            }
            if page.is_truncated() != Some(true) {
                break;
            }
            key_marker = page.next_key_marker().map(str::to_string);
            upload_marker = page.next_upload_id_marker().map(str::to_string);
        }
        out.sort();
        out
    }

    async fn add_version(&self, key: &str, body: &[u8]) {
        self.put(key, body).await.expect("put a version");
    }

    async fn delete_marker(&self, key: &str) {
        self.s3
            .delete_object()
            .bucket(BUCKET)
            .key(key)
            .send()
            .await
            .expect("delete marker");
    }

    async fn enable_versioning(&self) {
        self.s3
            .put_bucket_versioning()
            .bucket(BUCKET)
            .versioning_configuration(
                VersioningConfiguration::builder()
                    .status(BucketVersioningStatus::Enabled)
                    .build(),
            )
            .send()
            .await
            .expect("enable versioning");
        self.versioned.store(true, Ordering::SeqCst);
    }

    async fn put_locked(&self, key: &str) -> Option<&'static str> {
        self.s3
            .put_object()
            .bucket(BUCKET)
            .key(key)
            .body(ByteStream::from_static(b"held"))
            .object_lock_legal_hold_status(ObjectLockLegalHoldStatus::On)
            .send()
            .await
            .expect("put with a legal hold");
        Some("legal hold")
    }

    async fn put_retained(&self, key: &str) {
        let until = std::time::SystemTime::now() + std::time::Duration::from_secs(86_400);
        self.s3
            .put_object()
            .bucket(BUCKET)
            .key(key)
            .body(ByteStream::from_static(b"retained"))
            .object_lock_mode(ObjectLockMode::Compliance)
            .object_lock_retain_until_date(until.into())
            .send()
            .await
            .expect("put with retention");
    }

    async fn start_upload(&self, key: &str) {
        let upload = self
            .s3
            .create_multipart_upload()
            .bucket(BUCKET)
            .key(key)
            .send()
            .await
            .expect("start an upload");
        self.s3
            .upload_part()
            .bucket(BUCKET)
            .key(key)
            .set_upload_id(upload.upload_id().map(str::to_string))
            .part_number(1)
            .body(ByteStream::from_static(b"half a part"))
            .send()
            .await
            .expect("upload a part");
    }

    fn proxied(&self) -> u64 {
        self.proxy.as_ref().map_or(0, |p| p.stats().requests)
    }

    fn missing(&self) -> Box<dyn BlobStore> {
        Box::new(S3Store::new(
            "s3",
            "no-such-bucket",
            Some("eu-west-3".into()),
            Some(self.endpoint.clone()),
            true,
            None,
        ))
    }

    async fn missing_exists(&self) -> bool {
        self.s3
            .head_bucket()
            .bucket("no-such-bucket")
            .send()
            .await
            .is_ok()
    }
}

/// An Azure container on its own Azurite.
struct AzFixture {
    _azurite: Emulator,
    proxy: Option<Proxy>,
    az: Azure,
    store: AzureStore,
    endpoint: String,
}

const CONTAINER: &str = "conformance";

/// A key as one URL path segment, sent exactly (a `/` as `%2F`, so no
/// client or server resolves `..` or `//` in it).
fn segment(key: &str) -> String {
    const SET: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
        .remove(b'-')
        .remove(b'_')
        .remove(b'~');
    percent_encoding::utf8_percent_encode(key, SET).to_string()
}

/// Text of an XML element, entities decoded.
fn xml_text(s: &str) -> String {
    let mut out = String::new();
    let mut rest = s;
    while let Some(at) = rest.find('&') {
        out.push_str(&rest[..at]);
        let Some(end) = rest[at..].find(';') else {
            out.push_str(&rest[at..]);
            return out;
        };
        let entity = &rest[at + 1..at + end];
        match entity {
            "amp" => out.push('&'),
            "lt" => out.push('<'),
            "gt" => out.push('>'),
            "quot" => out.push('"'),
            "apos" => out.push('\''),
            e if e.starts_with("#x") => out.extend(
                u32::from_str_radix(&e[2..], 16)
                    .ok()
                    .and_then(char::from_u32),
            ),
            e if e.starts_with('#') => {
                out.extend(e[1..].parse::<u32>().ok().and_then(char::from_u32))
            }
            e => panic!("unknown XML entity &{e};"),
        }
        rest = &rest[at + end + 1..];
    }
    out.push_str(rest);
    out
}

/// The text of `<tag ...>text</tag>` in `xml`, and whether it says
/// `Encoded="true"`.
fn tag(xml: &str, name: &str) -> Option<(String, bool)> {
    let open = format!("<{name}");
    let start = xml.find(&open)?;
    let after = &xml[start + open.len()..];
    let gt = after.find('>')?;
    let attrs = &after[..gt];
    if attrs.ends_with('/') {
        return Some((String::new(), false));
    }
    let body = &after[gt + 1..];
    let end = body.find(&format!("</{name}>"))?;
    Some((xml_text(&body[..end]), attrs.contains("Encoded=\"true\"")))
}

impl AzFixture {
    async fn new(needs: Needs) -> AzFixture {
        let azurite = Emulator::azurite();
        let az = Azure::new(&azurite);
        az.container(CONTAINER).await;
        let proxy = needs.small_pages.then(|| {
            let proxy = Proxy::start(&azurite, Flavor::Azure, Schedule::none());
            proxy.page_size(2);
            proxy
        });
        let endpoint = format!(
            "{}/{AZ_ACCOUNT}",
            proxy.as_ref().map_or_else(|| azurite.url(), Proxy::url)
        );
        let store = AzureStore::new(
            "az",
            AZ_ACCOUNT,
            CONTAINER,
            Some(&endpoint),
            None,
            Some(AZ_KEY),
            None,
        );
        AzFixture {
            _azurite: azurite,
            proxy,
            az,
            store,
            endpoint,
        }
    }

    fn blob_url(&self, key: &str, query: &str) -> String {
        self.az
            .signed_url(&format!("{CONTAINER}/{}", segment(key)), query)
    }

    /// Names (and sizes, snapshots) of one listing with `include`.
    async fn names(&self, prefix: &str, include: &str) -> Vec<(String, Option<String>, u64)> {
        let mut out = Vec::new();
        let mut marker = String::new();
        loop {
            let mut query = url::form_urlencoded::Serializer::new(String::new());
            query
                .append_pair("restype", "container")
                .append_pair("comp", "list")
                .append_pair("include", include);
            if !prefix.is_empty() {
                query.append_pair("prefix", prefix);
            }
            if !marker.is_empty() {
                query.append_pair("marker", &marker);
            }
            let url = self.az.signed_url(CONTAINER, &query.finish());
            let (status, xml) = self.az.send_raw(self.az.http().get(url)).await;
            assert_eq!(status, 200, "list: {xml}");
            for blob in xml.split("<Blob>").skip(1) {
                let (name, encoded) = tag(blob, "Name").expect("a name");
                let name = if encoded {
                    percent_encoding::percent_decode_str(&name)
                        .decode_utf8_lossy()
                        .into_owned()
                } else {
                    name
                };
                let snapshot = tag(blob, "Snapshot").map(|(s, _)| s);
                let size = tag(blob, "Content-Length")
                    .and_then(|(s, _)| s.parse().ok())
                    .unwrap_or(0);
                out.push((name, snapshot, size));
            }
            match tag(&xml, "NextMarker") {
                Some((next, _)) if !next.is_empty() => marker = next,
                _ => return out,
            }
        }
    }
}

impl Fixture for AzFixture {
    fn name(&self) -> &'static str {
        "azure"
    }

    fn store(&self) -> &dyn BlobStore {
        &self.store
    }

    fn lacks(&self, feature: Feature) -> Option<&'static str> {
        match feature {
            // Its pages hold 5000 names and the store asks for no fewer:
            // 5000+ blobs take Azurite too long for this suite;
            // list_small_pages crosses pages through the proxy instead.
            Feature::Pages => Some("a page is 5000 names; list_small_pages covers paging"),
            Feature::PathKeys => Some("keys are names, not paths: `..` and `//` are plain text (hostile_keys checks they round-trip)"),
            // Azurite 3.35 has no legal holds or immutability policies, so
            // nothing can be listed `locked`; a leased blob stands in for
            // "the service refuses the delete" (put_locked).
            Feature::Locks => None,
            _ => None,
        }
    }

    async fn put(&self, key: &str, body: &[u8]) -> Result<(), String> {
        let request = self
            .az
            .http()
            .put(self.blob_url(key, ""))
            .header("x-ms-blob-type", "BlockBlob")
            .header("content-length", body.len())
            .body(body.to_vec());
        match self.az.send_raw(request).await {
            (201, _) => Ok(()),
            (status, body) => Err(format!("{status}: {body}")),
        }
    }

    async fn raw(&self, prefix: &str) -> Vec<Raw> {
        let committed = self.names(prefix, "snapshots").await;
        let mut out: Vec<Raw> = self
            .names(prefix, "snapshots,uncommittedblobs")
            .await
            .into_iter()
            .map(|(key, snapshot, size)| {
                let pending = snapshot.is_none()
                    && !committed.iter().any(|(k, s, _)| *k == key && s.is_none());
                Raw {
                    key,
                    version: snapshot.map(|s| format!("snapshot={s}")),
                    marker: false,
                    pending,
                    size,
                }
            })
            .collect();
        out.sort();
        out
    }

    async fn add_version(&self, key: &str, body: &[u8]) {
        let (status, text) = self
            .az
            .send_raw(self.az.http().put(self.blob_url(key, "comp=snapshot")))
            .await;
        assert_eq!(status, 201, "snapshot: {text}");
        self.put(key, body).await.expect("put");
    }

    async fn delete_marker(&self, _: &str) {
        unreachable!("Azure has no delete markers")
    }

    async fn enable_versioning(&self) {
        unreachable!("Azurite has no blob versioning")
    }

    async fn put_locked(&self, key: &str) -> Option<&'static str> {
        self.put(key, b"leased").await.expect("put");
        let request = self
            .az
            .http()
            .put(self.blob_url(key, "comp=lease"))
            .header("x-ms-lease-action", "acquire")
            .header("x-ms-lease-duration", "-1");
        let (status, text) = self.az.send_raw(request).await;
        assert_eq!(status, 201, "lease: {text}");
        None
    }

    async fn put_retained(&self, _: &str) {
        unreachable!("Azurite has no immutability policies")
    }

    async fn start_upload(&self, key: &str) {
        use base64::Engine;
        let id = base64::engine::general_purpose::STANDARD.encode("block-000001");
        let query = url::form_urlencoded::Serializer::new(String::new())
            .append_pair("comp", "block")
            .append_pair("blockid", &id)
            .finish();
        let request = self
            .az
            .http()
            .put(self.blob_url(key, &query))
            .body("half an upload");
        let (status, text) = self.az.send_raw(request).await;
        assert_eq!(status, 201, "stage a block: {text}");
    }

    fn proxied(&self) -> u64 {
        self.proxy.as_ref().map_or(0, |p| p.stats().requests)
    }

    fn missing(&self) -> Box<dyn BlobStore> {
        Box::new(AzureStore::new(
            "az",
            AZ_ACCOUNT,
            "no-such-container",
            Some(&self.endpoint),
            None,
            Some(AZ_KEY),
            None,
        ))
    }

    async fn missing_exists(&self) -> bool {
        let url = self.az.signed_url("no-such-container", "restype=container");
        self.az.send_raw(self.az.http().get(url)).await.0 != 404
    }
}

// ------------------------------------------------------------- tests

/// `conformance::<case>::{fs,s3,azure}`, each on a fresh namespace.
macro_rules! conformance {
    ($case:ident, $needs:expr) => {
        mod $case {
            use super::*;

            #[tokio::test]
            async fn fs() {
                $case(&FsFixture::new($needs).await).await
            }

            #[tokio::test]
            async fn s3() {
                $case(&S3Fixture::new($needs).await).await
            }

            #[tokio::test]
            async fn azure() {
                $case(&AzFixture::new($needs).await).await
            }
        }
    };
}

const PLAIN: Needs = Needs {
    versioned: false,
    object_lock: false,
    small_pages: false,
};

conformance!(list_by_prefix, PLAIN);
conformance!(
    list_in_key_order,
    Needs {
        versioned: true,
        ..PLAIN
    }
);
conformance!(list_past_1000_keys, PLAIN);
conformance!(
    list_small_pages,
    Needs {
        versioned: true,
        small_pages: true,
        ..PLAIN
    }
);
// S3's failing item is a version under a legal hold: Object Lock.
conformance!(
    delete_results,
    Needs {
        object_lock: true,
        ..PLAIN
    }
);
// Unversioned at first: the case writes `null` versions, then turns
// versioning on.
conformance!(versions, PLAIN);
conformance!(
    locks,
    Needs {
        object_lock: true,
        ..PLAIN
    }
);
conformance!(hostile_keys, PLAIN);
conformance!(uploads, PLAIN);
conformance!(missing_target, PLAIN);

mod line_break_keys {
    use super::*;

    #[tokio::test]
    async fn fs() {
        line_break_keys(&FsFixture::new(PLAIN).await).await
    }

    #[tokio::test]
    async fn s3() {
        line_break_keys(&S3Fixture::new(PLAIN).await).await
    }

    // The Azure store refuses such keys (Skipped bad_key): the `url`
    // crate's path builders drop tabs and line breaks, so sending one would
    // address (and delete) its sibling.
    #[tokio::test]
    async fn azure() {
        line_break_keys(&AzFixture::new(PLAIN).await).await
    }
}

mod unprintable_keys {
    use super::*;

    #[tokio::test]
    async fn fs() {
        unprintable_keys(&FsFixture::new(PLAIN).await).await
    }

    #[tokio::test]
    #[ignore = "bug: src/store/s3.rs lists without encoding-type=url, so a key with a character XML 1.0 cannot carry (U+0001, U+FFFE) makes the SDK reject the whole page: the rule's listing fails on every run and nothing under the prefix is ever deleted (a row naming such a key is kept forever)"]
    async fn s3() {
        unprintable_keys(&S3Fixture::new(PLAIN).await).await
    }

    /// Skipped: Azurite answers 500 to a listing holding such a name (Azure
    /// sends it percent-encoded with `Encoded="true"`, which the store
    /// decodes: unit-tested in src/store/azure/mod.rs).
    #[tokio::test]
    async fn azure() {
        let fx = AzFixture::new(PLAIN).await;
        fx.put("c/ctl\u{1}x", b"x").await.expect("put");
        let (status, _) = fx
            .az
            .send_raw(
                fx.az.http().get(
                    fx.az
                        .signed_url(CONTAINER, "restype=container&comp=list&prefix=c%2F"),
                ),
            )
            .await;
        assert_eq!(status, 500, "Azurite now lists such names: run the case");
        eprintln!("conformance::unprintable_keys::azure: skipped: Azurite answers 500 to a listing holding such a name");
    }
}

mod path_keys {
    use super::*;

    /// Only the filesystem's keys are paths (S3 and Azure: see their
    /// `lacks(Feature::PathKeys)`).
    #[tokio::test]
    async fn fs() {
        let fx = FsFixture::new(PLAIN).await;
        assert!(fx.lacks(Feature::PathKeys).is_none());
        path_keys(&fx).await
    }
}
