//! Running the real `retentiond` binary against a test database.

use crate::pg::TestDb;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub const BIN: &str = env!("CARGO_BIN_EXE_retentiond");

/// A temp dir with a signing key, and a database.
pub struct Env {
    pub dir: tempfile::TempDir,
    pub db: TestDb,
    pub key: PathBuf,
    pub public_key: PathBuf,
}

/// What the binary did.
#[derive(Debug)]
pub struct Out {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Out {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}):\n{self}"))
    }

    /// The report of rule `name` in a JSON plan/run.
    pub fn rule(&self, name: &str) -> Value {
        let json = self.json();
        json["rules"]
            .as_array()
            .and_then(|rules| rules.iter().find(|r| r["rule"] == name).cloned())
            .unwrap_or_else(|| panic!("no rule {name} in output:\n{self}"))
    }
}

impl std::fmt::Display for Out {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit {}\n--- stdout\n{}\n--- stderr\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

impl Env {
    pub async fn new() -> Env {
        Env::with(TestDb::new().await)
    }

    /// An environment whose database `retentiond migrate` has not prepared.
    pub async fn unmigrated() -> Env {
        Env::with(TestDb::bare().await)
    }

    fn with(db: TestDb) -> Env {
        let dir = tempfile::tempdir().expect("tempdir");
        let (key, public_key, _) =
            retentiond::audit::key::generate(&dir.path().join("keys")).expect("keygen");
        Env {
            dir,
            db,
            key,
            public_key,
        }
    }

    /// The config header: audit + the test database as store `app`.
    pub fn header(&self) -> String {
        format!(
            "version = 1\n\n[audit]\nstore = \"app\"\nsigning_key = \"{}\"\n\n[stores.app]\ntype = \"postgres\"\nurl = \"{}\"\n\n",
            self.key.display(),
            self.db.url
        )
    }

    /// Writes `header() + body` as retention.toml; returns its path.
    pub fn config(&self, body: &str) -> PathBuf {
        self.write("retention.toml", &format!("{}{body}", self.header()))
    }

    pub fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.dir.path().join(name);
        std::fs::write(&path, text).expect("write file");
        path
    }
}

/// Runs the binary with `args` and a clean environment plus `envs`.
pub fn retentiond(args: &[&str], envs: &[(&str, &str)]) -> Out {
    let mut cmd = Command::new(BIN);
    cmd.args(args)
        .env_remove("RETENTIOND_CONFIG")
        .env("RETENTIOND_LOG", "warn");
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let Output {
        status,
        stdout,
        stderr,
    } = cmd.output().expect("run retentiond");
    Out {
        code: status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&stdout).into_owned(),
        stderr: String::from_utf8_lossy(&stderr).into_owned(),
    }
}

/// `retentiond run -c <config>` in the background (output piped, warnings
/// only): for tests that kill or disturb a run.
pub fn spawn_run(config: &Path) -> std::process::Child {
    Command::new(BIN)
        .args([
            "run",
            "-c",
            &config.display().to_string(),
            "--format",
            "json",
        ])
        .env_remove("RETENTIOND_CONFIG")
        .env("RETENTIOND_LOG", "warn")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn retentiond run")
}

/// `retentiond <cmd> -c <config> --format json [extra...]`.
pub fn json_cmd(cmd: &str, config: &Path, extra: &[&str]) -> Out {
    json_cmd_with(cmd, config, extra, &[])
}

/// [`json_cmd`] with more environment variables.
pub fn json_cmd_with(cmd: &str, config: &Path, extra: &[&str], envs: &[(&str, &str)]) -> Out {
    let config = config.display().to_string();
    let mut args = vec![cmd, "-c", config.as_str(), "--format", "json"];
    args.extend_from_slice(extra);
    retentiond(&args, envs)
}

/// The configs the repository ships for users to start from.
pub const SHIPPED_CONFIGS: [&str; 4] = [
    "retention.toml",
    "examples/personaplex.toml",
    "examples/personaizer.toml",
    "examples/inferlabs.toml",
];

/// The environment the contract and the shipped configs refer to with
/// `${VAR}`: the signing key, the app database and the blob endpoints.
pub fn contract_vars<'a>(key: &'a str, db_url: &'a str) -> [(&'a str, &'a str); 6] {
    [
        ("RETENTIOND_SIGNING_KEY", key),
        ("APP_DATABASE_URL", db_url),
        ("S3_ENDPOINT", "http://127.0.0.1:1"),
        ("AZURE_STORAGE_ACCOUNT", "devstoreaccount1"),
        (
            "AZURE_BLOB_ENDPOINT",
            "http://127.0.0.1:10000/devstoreaccount1",
        ),
        ("SCRATCH_DIR", "/tmp"),
    ]
}
