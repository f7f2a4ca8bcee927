//! The acceptance bar: the contract file, as written, run end to end on the
//! shipped schema and sample data with every store real: PostgreSQL, moto
//! (S3), Azurite (Azure Blob) and a directory. Each blob promise of the
//! seed policies is checked in the stores afterwards.

use crate::chain;
use crate::emulators::{contract_vars_on, s3_client, Azure, Emulator};
use crate::util::*;
use aws_sdk_s3::primitives::ByteStream;
use retentiond::audit::key::load_public;

async fn put(s3: &aws_sdk_s3::Client, key: &str, body: &str) {
    s3.put_object()
        .bucket("media")
        .key(key)
        .body(ByteStream::from(body.as_bytes().to_vec()))
        .send()
        .await
        .expect("put");
}

/// `key v` / `key dm` lines of every version under `prefix`, sorted.
async fn versions(s3: &aws_sdk_s3::Client, prefix: &str) -> Vec<String> {
    let page = s3
        .list_object_versions()
        .bucket("media")
        .prefix(prefix)
        .send()
        .await
        .expect("list");
    assert_ne!(page.is_truncated(), Some(true), "one page is enough here");
    let mut out: Vec<String> = page
        .versions()
        .iter()
        .map(|v| format!("{} v", v.key().unwrap_or_default()))
        .chain(
            page.delete_markers()
                .iter()
                .map(|m| format!("{} dm", m.key().unwrap_or_default())),
        )
        .collect();
    out.sort();
    out
}

#[tokio::test]
async fn policies_contract_runs_end_to_end_on_every_store() {
    let env = Env::new().await;
    let root = env!("CARGO_MANIFEST_DIR");
    for file in ["examples/schema.sql", "examples/sample-data.sql"] {
        env.db
            .exec(&std::fs::read_to_string(format!("{root}/{file}")).unwrap())
            .await;
    }
    let moto = Emulator::moto();
    let s3 = s3_client(&moto);
    crate::s3::bucket(&s3, "media", true, false).await;
    let azurite = Emulator::azurite();
    let az = Azure::new(&azurite);
    az.container("uploads").await;
    let scratch = env.dir.path().join("scratch");

    // PersonaPlex: no audio at rest beyond an hour, every version.
    moto.clock("-2h");
    put(&s3, "audio/call-1.wav", "take 1").await;
    put(&s3, "audio/call-1.wav", "take 2").await;
    s3.create_multipart_upload()
        .bucket("media")
        .key("audio/call-2.wav")
        .send()
        .await
        .expect("upload");
    // InferLabs: a data source's objects, two versions each.
    for id in 1..=30 {
        for take in ["v1", "v2"] {
            put(&s3, &format!("sources/{id}/data.parquet"), take).await;
        }
    }
    moto.clock("+0");
    put(&s3, "audio/call-3.wav", "live").await;
    // Personaizer: camera frames never kept beyond 10 minutes.
    azurite.clock("-20m");
    az.put("uploads", "frames/cam-1.jpg", "frame", &[]).await;
    az.snapshot("uploads", "frames/cam-1.jpg").await;
    azurite.clock("+0");
    az.put("uploads", "frames/cam-2.jpg", "frame", &[]).await;
    // InferLabs: every uploaded file's blob.
    let keys = env
        .db
        .strings("SELECT blob_key FROM uploaded_files ORDER BY blob_key")
        .await;
    for key in &keys {
        az.put("uploads", key, "file", &[]).await;
    }
    // InferLabs: idle workspaces.
    for (key, when) in [
        ("workspaces/idle/model.bin", "3 hours ago"),
        ("workspaces/busy/old.csv", "3 hours ago"),
        ("workspaces/busy/new.csv", "5 minutes ago"),
    ] {
        let path = scratch.join(key);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, "x").unwrap();
        assert!(std::process::Command::new("touch")
            .args(["-d", when])
            .arg(&path)
            .status()
            .unwrap()
            .success());
    }

    let contract = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/integration/fixtures/contract.toml"
    );
    let key = env.key.display().to_string();
    let s3_endpoint = moto.url();
    let scratch_dir = scratch.display().to_string();
    let vars = contract_vars_on(&key, &env.db.url, &s3_endpoint, &az.endpoint, &scratch_dir);
    let ran = retentiond(&["run", "-c", contract, "--format", "json"], &vars);
    assert_eq!(ran.code, 0, "{ran}");
    for rule in ran.json()["rules"].as_array().unwrap() {
        assert_eq!(rule["outcome"], "ok", "{rule}");
    }

    assert_eq!(
        versions(&s3, "audio/").await,
        ["audio/call-3.wav v"],
        "no audio older than an hour, in any version"
    );
    let uploads = s3
        .list_multipart_uploads()
        .bucket("media")
        .send()
        .await
        .expect("uploads");
    assert!(uploads.uploads().is_empty(), "half an upload is audio too");
    let live_sources = env
        .db
        .strings("SELECT id::text FROM data_sources ORDER BY id")
        .await;
    assert_eq!(live_sources.len(), 25, "five were deleted by their users");
    let mut expected: Vec<String> = live_sources
        .iter()
        .flat_map(|id| vec![format!("sources/{id}/data.parquet v"); 2])
        .collect();
    expected.sort();
    assert_eq!(
        versions(&s3, "sources/").await,
        expected,
        "a deleted data source leaves no version behind"
    );

    let mut blobs = az.list("uploads").await;
    let frames: Vec<String> = blobs
        .iter()
        .filter(|b| b.starts_with("frames/"))
        .cloned()
        .collect();
    assert_eq!(
        frames,
        ["frames/cam-2.jpg"],
        "no frame kept beyond 10 minutes"
    );
    blobs.retain(|b| b.starts_with("files/"));
    let rows = env
        .db
        .strings("SELECT blob_key FROM uploaded_files ORDER BY blob_key")
        .await;
    assert!(rows.len() < keys.len(), "some uploads expired");
    let mut rows_sorted = rows.clone();
    rows_sorted.sort();
    assert_eq!(
        blobs, rows_sorted,
        "exactly the remaining rows' blobs remain"
    );

    assert!(!scratch.join("workspaces/idle").exists());
    assert!(scratch.join("workspaces/busy/old.csv").exists());

    let again = retentiond(&["run", "-c", contract, "--format", "json"], &vars);
    assert_eq!(again.code, 0, "{again}");
    for name in [
        "no-audio-at-rest",
        "camera-frames-never-kept",
        "uploads-free-1h",
        "idle-workspaces-1h",
        "deleted-data-sources",
    ] {
        assert_eq!(again.rule(name)["affected"], 0, "{name}: {again}");
    }
    chain::assert_valid(&env.db.pool, &load_public(&env.public_key).unwrap()).await;
}
