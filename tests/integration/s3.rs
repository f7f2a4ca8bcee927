//! Blob rules on S3, against a real moto_server: every version and delete
//! marker of an expired key, multipart aborts, Object Lock, metadata,
//! pagination, identity checks and row→object cascades.

use crate::chain;
use crate::emulators::{s3_client, Emulator, AWS_ENV};
use crate::util::*;
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{
    BucketLocationConstraint, BucketVersioningStatus, CreateBucketConfiguration,
    ObjectLockLegalHoldStatus, ObjectLockMode, VersioningConfiguration,
};
use aws_sdk_s3::Client;
use retentiond::audit::key::load_public;

/// A bucket on `moto`: versioned, and with Object Lock when `locked`.
pub async fn bucket(s3: &Client, name: &str, versioned: bool, locked: bool) {
    s3.create_bucket()
        .bucket(name)
        .create_bucket_configuration(
            CreateBucketConfiguration::builder()
                .location_constraint(BucketLocationConstraint::EuWest3)
                .build(),
        )
        .object_lock_enabled_for_bucket(locked)
        .send()
        .await
        .expect("create bucket");
    if versioned && !locked {
        s3.put_bucket_versioning()
            .bucket(name)
            .versioning_configuration(
                VersioningConfiguration::builder()
                    .status(BucketVersioningStatus::Enabled)
                    .build(),
            )
            .send()
            .await
            .expect("enable versioning");
    }
}

async fn put(s3: &Client, bucket: &str, key: &str, body: &str) {
    s3.put_object()
        .bucket(bucket)
        .key(key)
        .body(ByteStream::from(body.as_bytes().to_vec()))
        .send()
        .await
        .expect("put object");
}

async fn delete(s3: &Client, bucket: &str, key: &str) {
    s3.delete_object()
        .bucket(bucket)
        .key(key)
        .send()
        .await
        .expect("delete object");
}

/// Every version and delete marker, as `key@version` lines, sorted:
/// `v` for a version, `dm` for a marker, `*` for the latest.
async fn versions(s3: &Client, bucket: &str) -> Vec<String> {
    let mut out = Vec::new();
    let (mut key_marker, mut version_marker) = (None, None);
    loop {
        let page = s3
            .list_object_versions()
            .bucket(bucket)
            .set_key_marker(key_marker.clone())
            .set_version_id_marker(version_marker.clone())
            .send()
            .await
            .expect("list versions");
        for v in page.versions() {
            let latest = if v.is_latest() == Some(true) { "*" } else { "" };
            out.push(format!("{} v{latest}", v.key().unwrap_or_default()));
        }
        for m in page.delete_markers() {
            let latest = if m.is_latest() == Some(true) { "*" } else { "" };
            out.push(format!("{} dm{latest}", m.key().unwrap_or_default()));
        }
        if page.is_truncated() != Some(true) {
            break;
        }
        key_marker = page.next_key_marker().map(str::to_string);
        version_marker = page.next_version_id_marker().map(str::to_string);
    }
    out.sort();
    out
}

fn s3_store(moto: &Emulator, name: &str, bucket: &str, extra: &str) -> String {
    format!(
        "[stores.{name}]\ntype = \"s3\"\nbucket = \"{bucket}\"\nregion = \"eu-west-3\"\nendpoint = \"{}\"\n{extra}\n",
        moto.url()
    )
}

fn plan(cfg: &std::path::Path, extra: &[&str]) -> Out {
    json_cmd_with("plan", cfg, extra, &AWS_ENV)
}

fn run(cfg: &std::path::Path, extra: &[&str]) -> Out {
    json_cmd_with("run", cfg, extra, &AWS_ENV)
}

const AUDIO_RULE: &str = "[[rules]]\nname = \"no-audio-at-rest\"\nstore = \"media\"\nprefix = \"audio/\"\nkeep = \"1h\"\naction = \"delete\"\nversions = \"all\"\nmax_fraction = 1.0\n";

#[tokio::test]
async fn s3_audio_sweep_removes_every_version_marker_and_upload() {
    let env = Env::new().await;
    let moto = Emulator::moto();
    let s3 = s3_client(&moto);
    bucket(&s3, "media", true, false).await;
    moto.clock("-2h");
    for body in ["take 1", "take 2", "take 3"] {
        put(&s3, "media", "audio/old.wav", body).await;
    }
    put(&s3, "media", "audio/deleted.wav", "gone?").await;
    delete(&s3, "media", "audio/deleted.wav").await;
    put(&s3, "media", "audio/live.wav", "old take").await;
    put(&s3, "media", "audio/keys/a/../b.wav", "a key, not a path").await;
    put(&s3, "media", "images/old.png", "not audio").await;
    s3.create_multipart_upload()
        .bucket("media")
        .key("audio/half.wav")
        .send()
        .await
        .expect("start an upload");
    moto.clock("-10m");
    put(&s3, "media", "audio/live.wav", "new take").await;
    put(&s3, "media", "audio/young.wav", "fresh").await;
    moto.clock("+0");
    let before = versions(&s3, "media").await;
    let cfg = env.config(&format!(
        "{}{AUDIO_RULE}",
        s3_store(&moto, "media", "media", "")
    ));

    let planned = plan(&cfg, &[]);
    assert_eq!(planned.code, 0, "{planned}");
    let p = planned.rule("no-audio-at-rest");
    // Keys: old, deleted, live (its old version) and the a/../b key;
    // versions: 3 + 1 + marker + 1 + 1.
    assert_eq!(
        (
            p["matched"].as_i64(),
            p["versions"].as_i64(),
            p["total"].as_i64()
        ),
        (Some(4), Some(7), Some(5)),
        "{planned}"
    );
    assert_eq!(p["bytes"], 6 * 3 + 5 + 8 + 17);
    assert!(
        p["notes"].to_string().contains("1 incomplete upload"),
        "{planned}"
    );
    assert_eq!(versions(&s3, "media").await, before, "plan deleted nothing");

    let ran = run(&cfg, &[]);
    assert_eq!(ran.code, 0, "{ran}");
    let r = ran.rule("no-audio-at-rest");
    assert_eq!(
        (
            r["affected"].as_i64(),
            r["versions"].as_i64(),
            r["outcome"].as_str()
        ),
        (Some(4), Some(7), Some("ok")),
        "{ran}"
    );
    assert_eq!(
        versions(&s3, "media").await,
        [
            "audio/live.wav v*",
            "audio/young.wav v*",
            "images/old.png v*"
        ],
        "every old version and marker under audio/ is gone; the new take, the young file and other prefixes stay"
    );
    let uploads = s3
        .list_multipart_uploads()
        .bucket("media")
        .send()
        .await
        .expect("list uploads");
    assert!(uploads.uploads().is_empty(), "the half upload was aborted");

    let again = run(&cfg, &[]);
    assert_eq!(again.code, 0, "{again}");
    assert_eq!(again.rule("no-audio-at-rest")["affected"], 0, "{again}");
    let records = chain::assert_valid(&env.db.pool, &load_public(&env.public_key).unwrap()).await;
    let outcome = chain::of(&records, "run_outcome", "no-audio-at-rest")[0];
    assert_eq!(outcome["counts"]["versions"], 7);
    assert_eq!(outcome["counts"]["bytes"], 6 * 3 + 5 + 8 + 17);
}

#[tokio::test]
async fn s3_age_boundary_is_inclusive_to_the_second() {
    let env = Env::new().await;
    let moto = Emulator::moto();
    let s3 = s3_client(&moto);
    bucket(&s3, "media", false, false).await;
    moto.clock("-3h");
    put(&s3, "media", "audio/a.wav", "a").await;
    moto.clock("+0");
    let head = s3
        .head_object()
        .bucket("media")
        .key("audio/a.wav")
        .send()
        .await
        .expect("head");
    let modified = head.last_modified().expect("last modified");
    let modified = chrono::DateTime::from_timestamp(modified.secs(), 0).unwrap();
    let cfg = env.config(&format!(
        "{}{AUDIO_RULE}",
        s3_store(&moto, "media", "media", "")
    ));
    let at =
        |t: chrono::DateTime<chrono::Utc>| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let exactly = at(modified + chrono::Duration::hours(1));
    let before = at(modified + chrono::Duration::hours(1) - chrono::Duration::seconds(1));
    assert_eq!(
        plan(&cfg, &["--at", &exactly]).rule("no-audio-at-rest")["matched"],
        1,
        "an object exactly at the cutoff expires"
    );
    assert_eq!(
        plan(&cfg, &["--at", &before]).rule("no-audio-at-rest")["matched"],
        0,
        "one second younger it does not"
    );
    let ran = run(&cfg, &["--at", &before]);
    assert_eq!(ran.rule("no-audio-at-rest")["affected"], 0, "{ran}");
    assert_eq!(versions(&s3, "media").await, ["audio/a.wav v*"]);
    let ran = run(&cfg, &[]);
    assert_eq!(ran.rule("no-audio-at-rest")["affected"], 1, "{ran}");
    assert!(versions(&s3, "media").await.is_empty());
}

#[tokio::test]
async fn s3_object_lock_and_legal_hold_are_protected_not_failures() {
    let env = Env::new().await;
    let moto = Emulator::moto();
    let s3 = s3_client(&moto);
    bucket(&s3, "media", true, true).await;
    moto.clock("-2h");
    put(&s3, "media", "audio/plain.wav", "p").await;
    s3.put_object()
        .bucket("media")
        .key("audio/held.wav")
        .body(ByteStream::from_static(b"h"))
        .object_lock_legal_hold_status(ObjectLockLegalHoldStatus::On)
        .send()
        .await
        .expect("put with legal hold");
    // A key, not a path: its lock must be read for this very key.
    s3.put_object()
        .bucket("media")
        .key("audio/q/../lone.wav")
        .body(ByteStream::from_static(b"h"))
        .object_lock_legal_hold_status(ObjectLockLegalHoldStatus::On)
        .send()
        .await
        .expect("put with legal hold");
    let until = std::time::SystemTime::now() + std::time::Duration::from_secs(86_400);
    s3.put_object()
        .bucket("media")
        .key("audio/retained.wav")
        .body(ByteStream::from_static(b"r"))
        .object_lock_mode(ObjectLockMode::Compliance)
        .object_lock_retain_until_date(until.into())
        .send()
        .await
        .expect("put with retention");
    moto.clock("+0");
    let cfg = env.config(&format!(
        "{}{AUDIO_RULE}",
        s3_store(&moto, "media", "media", "")
    ));
    let ran = run(&cfg, &[]);
    assert_eq!(ran.code, 0, "locks are not failures: {ran}");
    let r = ran.rule("no-audio-at-rest");
    assert_eq!(
        (
            r["affected"].as_i64(),
            r["protected"].as_i64(),
            r["outcome"].as_str()
        ),
        (Some(1), Some(3), Some("ok")),
        "{ran}"
    );
    assert_eq!(
        versions(&s3, "media").await,
        [
            "audio/held.wav v*",
            "audio/q/../lone.wav v*",
            "audio/retained.wav v*"
        ]
    );
}

#[tokio::test]
async fn s3_versions_current_leaves_a_delete_marker_and_the_history() {
    let env = Env::new().await;
    let moto = Emulator::moto();
    let s3 = s3_client(&moto);
    bucket(&s3, "media", true, false).await;
    moto.clock("-2h");
    put(&s3, "media", "audio/a.wav", "one").await;
    put(&s3, "media", "audio/a.wav", "two").await;
    moto.clock("+0");
    let rule = AUDIO_RULE.replace("versions = \"all\"", "versions = \"current\"");
    let cfg = env.config(&format!("{}{rule}", s3_store(&moto, "media", "media", "")));
    let ran = run(&cfg, &[]);
    assert_eq!(ran.code, 0, "{ran}");
    assert_eq!(ran.rule("no-audio-at-rest")["affected"], 1, "{ran}");
    assert_eq!(
        versions(&s3, "media").await,
        ["audio/a.wav dm*", "audio/a.wav v", "audio/a.wav v"],
        "like a lifecycle expiration: a marker over the kept history"
    );
    let again = run(&cfg, &[]);
    assert_eq!(again.rule("no-audio-at-rest")["affected"], 0, "{again}");
}

#[tokio::test]
async fn s3_metadata_selects_free_uploads() {
    let env = Env::new().await;
    let moto = Emulator::moto();
    let s3 = s3_client(&moto);
    bucket(&s3, "media", false, false).await;
    moto.clock("-2h");
    for (key, tier) in [("up/free.bin", "free"), ("up/paid.bin", "paid")] {
        s3.put_object()
            .bucket("media")
            .key(key)
            .metadata("tier", tier)
            .body(ByteStream::from_static(b"x"))
            .send()
            .await
            .expect("put with metadata");
    }
    put(&s3, "media", "up/untagged.bin", "x").await;
    moto.clock("+0");
    let rule = "[[rules]]\nname = \"free-1h\"\nstore = \"media\"\nprefix = \"up/\"\nmatch_metadata = { tier = \"free\" }\nkeep = \"1h\"\naction = \"delete\"\nmax_fraction = 1.0\n";
    let cfg = env.config(&format!("{}{rule}", s3_store(&moto, "media", "media", "")));
    let ran = run(&cfg, &[]);
    assert_eq!(ran.code, 0, "{ran}");
    assert_eq!(ran.rule("free-1h")["affected"], 1, "{ran}");
    assert_eq!(
        versions(&s3, "media").await,
        ["up/paid.bin v*", "up/untagged.bin v*"]
    );
}

#[tokio::test]
async fn s3_pages_past_1000_keys() {
    let env = Env::new().await;
    let moto = Emulator::moto_with(false);
    let s3 = s3_client(&moto);
    bucket(&s3, "media", false, false).await;
    // 1200 objects: more than one ListObjectVersions page and more than one
    // DeleteObjects call.
    let puts = (0..1200).map(|i| {
        let s3 = s3.clone();
        async move { put(&s3, "media", &format!("bulk/{i:05}"), "b").await }
    });
    futures_util::StreamExt::collect::<Vec<()>>(futures_util::StreamExt::buffer_unordered(
        futures_util::stream::iter(puts),
        4,
    ))
    .await;
    put(&s3, "media", "other/keep", "k").await;
    let rule = "[[rules]]\nname = \"bulk\"\nstore = \"media\"\nprefix = \"bulk/\"\nkeep = \"0s\"\naction = \"delete\"\nmax_fraction = 1.0\nbatch_size = 500\n";
    let cfg = env.config(&format!("{}{rule}", s3_store(&moto, "media", "media", "")));
    let planned = plan(&cfg, &[]);
    assert_eq!(planned.rule("bulk")["matched"], 1200, "{planned}");
    assert_eq!(planned.rule("bulk")["batches"], 3, "{planned}");
    let ran = run(&cfg, &[]);
    assert_eq!(ran.code, 0, "{ran}");
    assert_eq!(
        (
            ran.rule("bulk")["affected"].as_i64(),
            ran.rule("bulk")["batches"].as_i64()
        ),
        (Some(1200), Some(3)),
        "{ran}"
    );
    assert_eq!(versions(&s3, "media").await, ["other/keep v*"]);
}

#[tokio::test]
async fn s3_wrong_owner_and_missing_bucket_are_refused() {
    let env = Env::new().await;
    let moto = Emulator::moto();
    let s3 = s3_client(&moto);
    bucket(&s3, "media", false, false).await;
    moto.clock("-2h");
    put(&s3, "media", "audio/a.wav", "a").await;
    moto.clock("+0");
    let owner = s3
        .get_bucket_acl()
        .bucket("media")
        .send()
        .await
        .expect("acl")
        .owner()
        .and_then(|o| o.id())
        .expect("owner id")
        .to_string();
    let wrong = s3_store(
        &moto,
        "media",
        "media",
        "expected_account = \"123456789012\"",
    );
    let cfg = env.config(&format!("{wrong}{AUDIO_RULE}"));
    let ran = run(&cfg, &[]);
    assert_eq!(ran.code, 3, "{ran}");
    let reason = ran.rule("no-audio-at-rest")["reason"].to_string();
    assert!(
        reason.contains("wrong target") && reason.contains(&owner),
        "{ran}"
    );
    let missing = s3_store(&moto, "media", "no-such-bucket", "");
    let cfg = env.config(&format!("{missing}{AUDIO_RULE}"));
    let check = retentiond(
        &["check", "--online", "-c", &cfg.display().to_string()],
        &AWS_ENV,
    );
    assert_eq!(check.code, 2, "{check}");
    let line = env.header().lines().count() + 1;
    assert!(
        check.stderr.contains(&format!("retention.toml:{line}:"))
            && check
                .stderr
                .contains("bucket no-such-bucket does not exist"),
        "check --online points at the store: {check}"
    );
    let ran = run(&cfg, &[]);
    assert_eq!(ran.code, 3, "{ran}");
    assert!(
        ran.rule("no-audio-at-rest")["reason"]
            .to_string()
            .contains("does not exist"),
        "{ran}"
    );
    let right = s3_store(
        &moto,
        "media",
        "media",
        &format!("expected_account = \"{owner}\""),
    );
    let cfg = env.config(&format!("{right}{AUDIO_RULE}"));
    let ran = run(&cfg, &[]);
    assert_eq!(ran.rule("no-audio-at-rest")["affected"], 1, "{ran}");
}

#[tokio::test]
async fn s3_deleted_data_sources_take_every_version_and_a_rerun_finishes() {
    let env = Env::new().await;
    let moto = Emulator::moto();
    let s3 = s3_client(&moto);
    bucket(&s3, "media", true, false).await;
    env.db
        .exec(
            "CREATE TABLE data_sources (id int primary key, deleted_at timestamptz);
             INSERT INTO data_sources VALUES (10, now() - interval '1 minute'), (11, NULL), (12, now() - interval '1 minute');",
        )
        .await;
    // Fresh objects: a data source's objects go with it whatever their age.
    for key in [
        "sources/10/a.parquet",
        "sources/10/a.parquet",
        "sources/10/deep/b.parquet",
        "sources/11/c.parquet",
        "sources/100/d.parquet",
    ] {
        put(&s3, "media", key, "rows").await;
    }
    delete(&s3, "media", "sources/10/deep/b.parquet").await;
    // Source 12's objects already went, every version, in a run that
    // crashed before deleting its row: the rerun must still delete the row.
    put(&s3, "media", "sources/12/e.parquet", "rows").await;
    let e_versions = s3
        .list_object_versions()
        .bucket("media")
        .prefix("sources/12/")
        .send()
        .await
        .expect("list");
    for v in e_versions.versions() {
        s3.delete_object()
            .bucket("media")
            .key("sources/12/e.parquet")
            .set_version_id(v.version_id().map(str::to_string))
            .send()
            .await
            .expect("delete version");
    }
    let rule = "[[rules]]\nname = \"deleted-data-sources\"\nstore = \"app\"\ntable = \"data_sources\"\nage = \"deleted_at\"\nkeep = \"0s\"\naction = \"delete\"\nmax_fraction = 1.0\n\
                blobs = { store = \"media\", prefix_template = \"sources/{id}/\" }\n";
    let cfg = env.config(&format!("{}{rule}", s3_store(&moto, "media", "media", "")));
    let ran = run(&cfg, &[]);
    assert_eq!(ran.code, 0, "{ran}");
    let r = ran.rule("deleted-data-sources");
    // Objects are keys: a.parquet (two versions), deep/b.parquet (a version
    // and a marker); source 12 had none left.
    assert_eq!(
        (r["affected"].as_i64(), r["objects"].as_i64()),
        (Some(2), Some(2)),
        "{ran}"
    );
    assert_eq!(
        env.db
            .strings("SELECT id::text FROM data_sources ORDER BY id")
            .await,
        ["11"]
    );
    assert_eq!(
        versions(&s3, "media").await,
        ["sources/100/d.parquet v*", "sources/11/c.parquet v*"],
        "every version and marker under sources/10/ went; sources/100/ is another prefix"
    );
}

/// Turns versioning on for a bucket that already holds objects: those keep
/// the version id `null`.
async fn enable_versioning(s3: &Client, bucket: &str) {
    s3.put_bucket_versioning()
        .bucket(bucket)
        .versioning_configuration(
            VersioningConfiguration::builder()
                .status(BucketVersioningStatus::Enabled)
                .build(),
        )
        .send()
        .await
        .expect("enable versioning");
}

/// Like [`versions`], with the version id `null` spelled out (`key@null`),
/// every other id left out: which pre-versioning versions and markers are
/// still there.
async fn null_versions(s3: &Client, bucket: &str) -> Vec<String> {
    let page = s3
        .list_object_versions()
        .bucket(bucket)
        .send()
        .await
        .expect("list versions");
    assert_ne!(page.is_truncated(), Some(true), "one page is enough here");
    let name = |key: Option<&str>, id: Option<&str>, kind: &str, latest: Option<bool>| {
        let id = if id == Some("null") { "@null" } else { "" };
        let latest = if latest == Some(true) { "*" } else { "" };
        format!("{}{id} {kind}{latest}", key.unwrap_or_default())
    };
    let mut out: Vec<String> = page
        .versions()
        .iter()
        .map(|v| name(v.key(), v.version_id(), "v", v.is_latest()))
        .chain(
            page.delete_markers()
                .iter()
                .map(|m| name(m.key(), m.version_id(), "dm", m.is_latest())),
        )
        .collect();
    out.sort();
    out
}

#[tokio::test]
async fn s3_pre_versioning_objects_are_deleted_by_their_null_version() {
    let env = Env::new().await;
    let moto = Emulator::moto();
    let s3 = s3_client(&moto);
    bucket(&s3, "media", false, false).await;
    // Written while the bucket was unversioned: their version id is `null`.
    moto.clock("-2h");
    put(&s3, "media", "audio/pre.wav", "pre").await;
    put(&s3, "media", "audio/mixed.wav", "mixed old").await;
    put(&s3, "media", "audio/gone.wav", "gone").await;
    moto.clock("-10m");
    put(&s3, "media", "audio/pre-young.wav", "young").await;
    enable_versioning(&s3, "media").await;
    moto.clock("-2h");
    delete(&s3, "media", "audio/gone.wav").await;
    put(&s3, "media", "audio/post.wav", "post").await;
    moto.clock("-10m");
    put(&s3, "media", "audio/mixed.wav", "mixed new").await;
    moto.clock("+0");
    assert_eq!(
        null_versions(&s3, "media").await,
        [
            "audio/gone.wav dm*",
            "audio/gone.wav@null v",
            "audio/mixed.wav v*",
            "audio/mixed.wav@null v",
            "audio/post.wav v*",
            "audio/pre-young.wav@null v*",
            "audio/pre.wav@null v*",
        ],
        "the emulator keeps pre-versioning objects as the version `null`"
    );
    let cfg = env.config(&format!(
        "{}{AUDIO_RULE}",
        s3_store(&moto, "media", "media", "")
    ));

    let planned = plan(&cfg, &[]);
    assert_eq!(planned.code, 0, "{planned}");
    let p = planned.rule("no-audio-at-rest");
    // Keys: pre, mixed (its null version), gone, post; versions: pre@null,
    // mixed@null, gone@null and its marker, post's.
    assert_eq!(
        (
            p["matched"].as_i64(),
            p["versions"].as_i64(),
            p["total"].as_i64(),
            p["bytes"].as_i64()
        ),
        (Some(4), Some(5), Some(5), Some(3 + 9 + 4 + 4)),
        "{planned}"
    );

    let ran = run(&cfg, &[]);
    assert_eq!(ran.code, 0, "{ran}");
    let r = ran.rule("no-audio-at-rest");
    assert_eq!(
        (
            r["affected"].as_i64(),
            r["versions"].as_i64(),
            r["outcome"].as_str()
        ),
        (Some(4), Some(5), Some("ok")),
        "{ran}"
    );
    let after = null_versions(&s3, "media").await;
    assert_eq!(
        after,
        ["audio/mixed.wav v*", "audio/pre-young.wav@null v*"],
        "every expired version went, `null` ones included, and no delete marker was added; the young version and the young pre-versioning object stay"
    );

    let again = run(&cfg, &[]);
    assert_eq!(again.code, 0, "{again}");
    let r = again.rule("no-audio-at-rest");
    assert_eq!(
        (r["affected"].as_i64(), r["versions"].as_i64()),
        (Some(0), Some(0)),
        "{again}"
    );
    assert_eq!(
        null_versions(&s3, "media").await,
        after,
        "a rerun changes nothing and adds no delete marker"
    );
    let records = chain::assert_valid(&env.db.pool, &load_public(&env.public_key).unwrap()).await;
    let outcome = chain::of(&records, "run_outcome", "no-audio-at-rest")[0];
    assert_eq!(outcome["counts"]["versions"], 5);
    assert_eq!(outcome["counts"]["bytes"], 3 + 9 + 4 + 4);
}

#[tokio::test]
async fn s3_versions_current_over_a_null_version_leaves_a_marker_and_the_data() {
    let env = Env::new().await;
    let moto = Emulator::moto();
    let s3 = s3_client(&moto);
    bucket(&s3, "media", false, false).await;
    moto.clock("-2h");
    put(&s3, "media", "audio/pre.wav", "pre").await;
    moto.clock("+0");
    enable_versioning(&s3, "media").await;
    let rule = AUDIO_RULE.replace("versions = \"all\"", "versions = \"current\"");
    let cfg = env.config(&format!("{}{rule}", s3_store(&moto, "media", "media", "")));
    let ran = run(&cfg, &[]);
    assert_eq!(ran.code, 0, "{ran}");
    assert_eq!(ran.rule("no-audio-at-rest")["affected"], 1, "{ran}");
    assert_eq!(
        null_versions(&s3, "media").await,
        ["audio/pre.wav dm*", "audio/pre.wav@null v"],
        "a plain delete of the key: a marker over the kept `null` version"
    );
    let again = run(&cfg, &[]);
    assert_eq!(again.rule("no-audio-at-rest")["affected"], 0, "{again}");
    assert_eq!(
        null_versions(&s3, "media").await,
        ["audio/pre.wav dm*", "audio/pre.wav@null v"]
    );
}

#[tokio::test]
async fn s3_metadata_is_read_from_the_null_version_itself() {
    let env = Env::new().await;
    let moto = Emulator::moto();
    let s3 = s3_client(&moto);
    bucket(&s3, "media", false, false).await;
    let tagged = |key: &'static str, tier: &'static str| {
        let s3 = s3.clone();
        async move {
            s3.put_object()
                .bucket("media")
                .key(key)
                .metadata("tier", tier)
                .body(ByteStream::from_static(b"x"))
                .send()
                .await
                .expect("put with metadata");
        }
    };
    moto.clock("-2h");
    // a: a free `null` version under a paid one; b: the other way round.
    tagged("up/a.bin", "free").await;
    tagged("up/b.bin", "paid").await;
    enable_versioning(&s3, "media").await;
    tagged("up/a.bin", "paid").await;
    tagged("up/b.bin", "free").await;
    moto.clock("+0");
    let rule = "[[rules]]\nname = \"free-1h\"\nstore = \"media\"\nprefix = \"up/\"\nmatch_metadata = { tier = \"free\" }\nkeep = \"1h\"\naction = \"delete\"\nversions = \"all\"\nmax_fraction = 1.0\n";
    let cfg = env.config(&format!("{}{rule}", s3_store(&moto, "media", "media", "")));
    let ran = run(&cfg, &[]);
    assert_eq!(ran.code, 0, "{ran}");
    let r = ran.rule("free-1h");
    assert_eq!(
        (r["affected"].as_i64(), r["versions"].as_i64()),
        (Some(2), Some(2)),
        "{ran}"
    );
    assert_eq!(
        null_versions(&s3, "media").await,
        ["up/a.bin v*", "up/b.bin@null v*"],
        "each version is judged by its own metadata: a's free `null` version and b's free latest went, the paid ones stay, no marker was added"
    );
}

#[tokio::test]
async fn s3_row_linked_objects_lose_their_null_version_too() {
    let env = Env::new().await;
    let moto = Emulator::moto();
    let s3 = s3_client(&moto);
    bucket(&s3, "media", false, false).await;
    env.db
        .exec(
            "CREATE TABLE uploaded_files (id int primary key, uploaded_at timestamptz not null, blob_key text);
             INSERT INTO uploaded_files VALUES
               (1, now() - interval '2 hours', 'files/1.pdf'),
               (2, now() - interval '2 hours', 'files/2.pdf'),
               (3, now() - interval '10 minutes', 'files/3.pdf');
             CREATE TABLE data_sources (id int primary key, deleted_at timestamptz);
             INSERT INTO data_sources VALUES (10, now() - interval '1 minute'), (11, NULL);",
        )
        .await;
    // Written before versioning: `null` versions. Blob ages do not matter.
    for key in [
        "files/1.pdf",
        "files/2.pdf",
        "files/3.pdf",
        "files/1.pdf.bak",
        "sources/10/a.parquet",
        "sources/10/b.parquet",
        "sources/11/c.parquet",
    ] {
        put(&s3, "media", key, "data").await;
    }
    enable_versioning(&s3, "media").await;
    put(&s3, "media", "files/1.pdf", "data v2").await;
    put(&s3, "media", "sources/10/b.parquet", "rows v2").await;
    delete(&s3, "media", "files/2.pdf").await;
    let rules = "[[rules]]\nname = \"uploads-1h\"\nstore = \"app\"\ntable = \"uploaded_files\"\nage = \"uploaded_at\"\nkeep = \"1h\"\naction = \"delete\"\nmax_fraction = 1.0\n\
                 blobs = { store = \"media\", key_column = \"blob_key\" }\n\n\
                 [[rules]]\nname = \"deleted-data-sources\"\nstore = \"app\"\ntable = \"data_sources\"\nage = \"deleted_at\"\nkeep = \"0s\"\naction = \"delete\"\nmax_fraction = 1.0\n\
                 blobs = { store = \"media\", prefix_template = \"sources/{id}/\" }\n";
    let cfg = env.config(&format!("{}{rules}", s3_store(&moto, "media", "media", "")));
    let ran = run(&cfg, &[]);
    assert_eq!(ran.code, 0, "{ran}");
    let up = ran.rule("uploads-1h");
    assert_eq!(
        (
            up["affected"].as_i64(),
            up["objects"].as_i64(),
            up["outcome"].as_str()
        ),
        (Some(2), Some(2), Some("ok")),
        "{ran}"
    );
    let ds = ran.rule("deleted-data-sources");
    assert_eq!(
        (
            ds["affected"].as_i64(),
            ds["objects"].as_i64(),
            ds["outcome"].as_str()
        ),
        (Some(1), Some(2), Some("ok")),
        "{ran}"
    );
    assert_eq!(
        env.db
            .strings("SELECT id::text FROM uploaded_files ORDER BY id")
            .await,
        ["3"]
    );
    assert_eq!(
        env.db
            .strings("SELECT id::text FROM data_sources ORDER BY id")
            .await,
        ["11"]
    );
    let after = null_versions(&s3, "media").await;
    assert_eq!(
        after,
        [
            "files/1.pdf.bak@null v*",
            "files/3.pdf@null v*",
            "sources/11/c.parquet@null v*",
        ],
        "a deleted row's objects lose every version, `null` included, and get no delete marker"
    );
    let again = run(&cfg, &[]);
    assert_eq!(again.code, 0, "{again}");
    assert_eq!(again.rule("uploads-1h")["affected"], 0, "{again}");
    assert_eq!(again.rule("deleted-data-sources")["affected"], 0, "{again}");
    assert_eq!(
        null_versions(&s3, "media").await,
        after,
        "a rerun changes nothing"
    );
}

/// A key with more versions than a delete call carries spans calls, and a
/// selection past `RETENTIOND_DUE_IN_MEMORY` goes through a temporary
/// file: every version goes, and each key is counted once, when its last
/// version did.
#[tokio::test]
async fn s3_keys_spanning_delete_calls_through_a_temporary_file_are_counted_once() {
    let env = Env::new().await;
    let moto = Emulator::moto();
    let s3 = s3_client(&moto);
    bucket(&s3, "logs", true, false).await;
    moto.clock("-2h");
    for k in 0..12 {
        for v in 0..3 {
            put(&s3, "logs", &format!("l/{k:02}"), &format!("v{v}")).await;
        }
    }
    for k in [0, 5, 11] {
        delete(&s3, "logs", &format!("l/{k:02}")).await;
    }
    put(&s3, "logs", "l/single", "1").await;
    put(&s3, "logs", "other", "stays").await;
    moto.clock("+0");
    let tmp = env.dir.path().join("tmp");
    std::fs::create_dir_all(&tmp).unwrap();
    let cfg = env.config(&format!(
        "{}[[rules]]\nname = \"logs\"\nstore = \"logs\"\nprefix = \"l/\"\nkeep = \"1h\"\naction = \"delete\"\nmax_fraction = 1.0\nbatch_size = 2\n",
        s3_store(&moto, "logs", "logs", "")
    ));
    let mut envs = AWS_ENV.to_vec();
    envs.push(("RETENTIOND_DUE_IN_MEMORY", "4"));
    envs.push(("TMPDIR", tmp.to_str().unwrap()));
    let ran = json_cmd_with("run", &cfg, &[], &envs);
    assert_eq!(ran.code, 0, "{ran}");
    let r = ran.rule("logs");
    // 13 keys; 36 + 1 versions and 3 markers.
    assert_eq!(
        (
            r["matched"].as_i64(),
            r["affected"].as_i64(),
            r["versions"].as_i64()
        ),
        (Some(13), Some(13), Some(40)),
        "{ran}"
    );
    assert_eq!(versions(&s3, "logs").await, ["other v*"]);
    let records = chain::assert_valid(&env.db.pool, &load_public(&env.public_key).unwrap()).await;
    let outcome = chain::of(&records, "run_outcome", "logs")[0];
    assert_eq!(outcome["counts"]["affected"], 13);
    assert_eq!(outcome["counts"]["versions"], 40);
}
