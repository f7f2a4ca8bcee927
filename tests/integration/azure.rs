//! Blob rules on Azure Blob, against a real Azurite: snapshots, metadata,
//! uncommitted blocks, identity checks and row→blob cascades; and the same
//! rules on all three blob stores.

use crate::chain;
use crate::emulators::{s3_client, Azure, Emulator, AWS_ENV, AZ_ACCOUNT, AZ_KEY};
use crate::util::*;
use retentiond::audit::key::load_public;

fn az_store(azure: &Azure, name: &str, container: &str, extra: &str) -> String {
    format!(
        "[stores.{name}]\ntype = \"azure_blob\"\naccount = \"{AZ_ACCOUNT}\"\ncontainer = \"{container}\"\nendpoint = \"{}\"\n{extra}\n",
        azure.endpoint
    )
}

/// The account key comes from the environment, as in production.
const AZ_ENV: [(&str, &str); 1] = [("AZURE_STORAGE_KEY", AZ_KEY)];

const FRAMES_RULE: &str = "[[rules]]\nname = \"camera-frames-never-kept\"\nstore = \"uploads\"\nprefix = \"frames/\"\nkeep = \"10m\"\naction = \"delete\"\nversions = \"all\"\nmax_fraction = 1.0\n";

#[tokio::test]
async fn azure_frames_sweep_takes_snapshots_and_abandoned_uploads() {
    let env = Env::new().await;
    let azurite = Emulator::azurite();
    let az = Azure::new(&azurite);
    az.container("uploads").await;
    azurite.clock("-20m");
    az.put("uploads", "frames/old.jpg", "frame", &[]).await;
    az.snapshot("uploads", "frames/old.jpg").await;
    az.put("uploads", "frames/a/../b.jpg", "a key, not a path", &[])
        .await;
    az.uncommitted("uploads", "frames/half.jpg").await;
    az.put("uploads", "other/old.txt", "not a frame", &[]).await;
    azurite.clock("+0");
    az.put("uploads", "frames/new.jpg", "fresh", &[]).await;
    let before = az.list("uploads").await;
    assert_eq!(before.len(), 6, "{before:?}");
    let cfg = env.config(&format!(
        "{}{FRAMES_RULE}",
        az_store(&az, "uploads", "uploads", "")
    ));

    let planned = json_cmd_with("plan", &cfg, &[], &AZ_ENV);
    assert_eq!(planned.code, 0, "{planned}");
    let p = planned.rule("camera-frames-never-kept");
    assert_eq!(
        (
            p["matched"].as_i64(),
            p["versions"].as_i64(),
            p["total"].as_i64()
        ),
        (Some(2), Some(1), Some(3)),
        "old.jpg (and its snapshot) and a/../b.jpg; new.jpg is young: {planned}"
    );
    assert!(
        p["notes"].to_string().contains("1 incomplete upload"),
        "{planned}"
    );
    assert_eq!(az.list("uploads").await, before, "plan deleted nothing");

    let ran = json_cmd_with("run", &cfg, &[], &AZ_ENV);
    assert_eq!(ran.code, 0, "{ran}");
    let r = ran.rule("camera-frames-never-kept");
    assert_eq!(
        (r["affected"].as_i64(), r["outcome"].as_str()),
        (Some(2), Some("ok")),
        "{ran}"
    );
    assert_eq!(
        az.list("uploads").await,
        ["frames/new.jpg", "other/old.txt"],
        "the old frame, its snapshot and the abandoned upload are gone"
    );
    let again = json_cmd_with("run", &cfg, &[], &AZ_ENV);
    assert_eq!(
        again.rule("camera-frames-never-kept")["affected"],
        0,
        "{again}"
    );
    chain::assert_valid(&env.db.pool, &load_public(&env.public_key).unwrap()).await;
}

#[tokio::test]
async fn azure_metadata_selects_and_wrong_targets_are_refused() {
    let env = Env::new().await;
    let azurite = Emulator::azurite();
    let az = Azure::new(&azurite);
    az.container("uploads").await;
    azurite.clock("-2h");
    az.put("uploads", "up/free.bin", "f", &[("tier", "free")])
        .await;
    az.put("uploads", "up/paid.bin", "p", &[("tier", "paid")])
        .await;
    azurite.clock("+0");
    let rule = "[[rules]]\nname = \"free-1h\"\nstore = \"uploads\"\nprefix = \"up/\"\nmatch_metadata = { tier = \"free\" }\nkeep = \"1h\"\naction = \"delete\"\nmax_fraction = 1.0\n";
    for (store, why) in [
        (
            az_store(&az, "uploads", "no-such-container", ""),
            "does not exist",
        ),
        (
            az_store(
                &az,
                "uploads",
                "uploads",
                "expected_account = \"prodaccount\"",
            ),
            "wrong target",
        ),
    ] {
        let cfg = env.config(&format!("{store}{rule}"));
        let ran = json_cmd_with("run", &cfg, &[], &AZ_ENV);
        assert_eq!(ran.code, 3, "{ran}");
        assert!(
            ran.rule("free-1h")["reason"].to_string().contains(why),
            "{why}: {ran}"
        );
    }
    let bad_key = [(
        "AZURE_STORAGE_KEY",
        "AAAAdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==",
    )];
    let cfg = env.config(&format!(
        "{}{rule}",
        az_store(&az, "uploads", "uploads", "")
    ));
    let ran = json_cmd_with("run", &cfg, &[], &bad_key);
    assert_eq!(ran.code, 3, "another account's key is refused: {ran}");
    assert!(
        !ran.stdout.contains(&bad_key[0].1[..20]),
        "no key in output"
    );
    assert_eq!(az.list("uploads").await.len(), 2, "nothing deleted yet");
    let cfg = env.config(&format!(
        "{}{rule}",
        az_store(
            &az,
            "uploads",
            "uploads",
            &format!("expected_account = \"{AZ_ACCOUNT}\"")
        )
    ));
    let ran = json_cmd_with("run", &cfg, &[], &AZ_ENV);
    assert_eq!(ran.rule("free-1h")["affected"], 1, "{ran}");
    assert_eq!(az.list("uploads").await, ["up/paid.bin"]);
}

#[tokio::test]
async fn azure_free_uploads_go_with_their_rows() {
    let env = Env::new().await;
    let azurite = Emulator::azurite();
    let az = Azure::new(&azurite);
    az.container("uploads").await;
    env.db
        .exec(
            "CREATE TABLE users (id int primary key, tier text);
             INSERT INTO users VALUES (1, 'free'), (2, 'paid');
             CREATE TABLE uploaded_files (id int primary key, owner_id int references users(id), uploaded_at timestamptz, blob_key text);
             INSERT INTO uploaded_files VALUES
               (1, 1, now() - interval '2 hours', 'files/1.pdf'),
               (2, 1, now() - interval '2 hours', 'files/2.pdf'),   -- its blob already went (a crashed run)
               (3, 1, now() - interval '10 minutes', 'files/3.pdf'),
               (4, 2, now() - interval '2 hours', 'files/4.pdf');",
        )
        .await;
    // Blob ages do not matter: the row's age decides.
    for key in [
        "files/1.pdf",
        "files/3.pdf",
        "files/4.pdf",
        "files/1.pdf.bak",
    ] {
        az.put("uploads", key, "pdf", &[]).await;
    }
    az.snapshot("uploads", "files/1.pdf").await;
    let rule = "[[rules]]\nname = \"uploads-free-1h\"\nstore = \"app\"\ntable = \"uploaded_files\"\nage = \"uploaded_at\"\n\
                where = \"owner_id IN (SELECT id FROM users WHERE tier = 'free')\"\nkeep = \"1h\"\naction = \"delete\"\nmax_fraction = 1.0\n\
                blobs = { store = \"uploads\", key_column = \"blob_key\" }\n";
    let cfg = env.config(&format!(
        "{}{rule}",
        az_store(&az, "uploads", "uploads", "")
    ));
    let ran = json_cmd_with("run", &cfg, &[], &AZ_ENV);
    assert_eq!(ran.code, 0, "{ran}");
    let r = ran.rule("uploads-free-1h");
    assert_eq!(
        (r["affected"].as_i64(), r["objects"].as_i64()),
        (Some(2), Some(1)),
        "{ran}"
    );
    assert_eq!(
        env.db
            .strings("SELECT id::text FROM uploaded_files ORDER BY id")
            .await,
        ["3", "4"]
    );
    assert_eq!(
        az.list("uploads").await,
        ["files/1.pdf.bak", "files/3.pdf", "files/4.pdf"]
    );
}

/// The same rule text on a filesystem, an S3 bucket and an Azure container
/// with the same keys and ages leaves the same keys behind.
#[tokio::test]
async fn blob_same_rules_on_all_three_stores() {
    let env = Env::new().await;
    let moto = Emulator::moto();
    let s3 = s3_client(&moto);
    crate::s3::bucket(&s3, "same", false, false).await;
    let azurite = Emulator::azurite();
    let az = Azure::new(&azurite);
    az.container("same").await;
    let root = env.dir.path().join("scratch");
    // key, age in minutes
    let objects = [
        ("tmp/old.txt", 180),
        ("tmp/young.txt", 10),
        ("ws/idle/a.txt", 180),
        ("ws/idle/deep/b.txt", 120),
        ("ws/busy/a.txt", 180),
        ("ws/busy/b.txt", 5),
        ("keep/old.txt", 180),
    ];
    for (key, minutes) in objects {
        moto.clock(&format!("-{minutes}m"));
        azurite.clock(&format!("-{minutes}m"));
        s3.put_object()
            .bucket("same")
            .key(key)
            .body(aws_sdk_s3::primitives::ByteStream::from_static(b"data"))
            .send()
            .await
            .expect("put");
        az.put("same", key, "data", &[]).await;
        let path = root.join(key);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, "data").unwrap();
        assert!(std::process::Command::new("touch")
            .args(["-d", &format!("{minutes} minutes ago")])
            .arg(&path)
            .status()
            .unwrap()
            .success());
    }
    moto.clock("+0");
    azurite.clock("+0");
    let rules = |store: &str| {
        format!(
            "[[rules]]\nname = \"{store}-tmp\"\nstore = \"{store}\"\nprefix = \"tmp/\"\nkeep = \"1h\"\naction = \"delete\"\nmax_fraction = 1.0\n\n\
             [[rules]]\nname = \"{store}-ws\"\nstore = \"{store}\"\nprefix = \"ws/\"\ngroup_by_prefix_depth = 2\nkeep = \"1h\"\naction = \"delete\"\nmax_fraction = 1.0\n\n"
        )
    };
    let cfg = env.config(&format!(
        "[stores.fs]\ntype = \"filesystem\"\nroot = \"{}\"\n\n[stores.s3]\ntype = \"s3\"\nbucket = \"same\"\nregion = \"eu-west-3\"\nendpoint = \"{}\"\n\n{}{}{}{}",
        root.display(),
        moto.url(),
        az_store(&az, "az", "same", ""),
        rules("fs"),
        rules("s3"),
        rules("az"),
    ));
    let envs = [AWS_ENV[0], AWS_ENV[1], AZ_ENV[0]];
    let ran = json_cmd_with("run", &cfg, &[], &envs);
    assert_eq!(ran.code, 0, "{ran}");
    let expected = [
        "keep/old.txt",
        "tmp/young.txt",
        "ws/busy/a.txt",
        "ws/busy/b.txt",
    ];
    for store in ["fs", "s3", "az"] {
        assert_eq!(
            ran.rule(&format!("{store}-tmp"))["affected"],
            1,
            "{store}: {ran}"
        );
        assert_eq!(
            ran.rule(&format!("{store}-ws"))["affected"],
            2,
            "{store}: {ran}"
        );
    }
    let mut on_s3: Vec<String> = s3
        .list_objects_v2()
        .bucket("same")
        .send()
        .await
        .expect("list")
        .contents()
        .iter()
        .filter_map(|o| o.key().map(str::to_string))
        .collect();
    on_s3.sort();
    assert_eq!(on_s3, expected);
    assert_eq!(az.list("same").await, expected);
    for key in objects.map(|(k, _)| k) {
        assert_eq!(root.join(key).exists(), expected.contains(&key), "{key}");
    }
}
