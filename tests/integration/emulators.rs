//! Real S3 (moto_server) and Azure Blob (Azurite) emulators on 127.0.0.1,
//! one per test, each on its own free port and in its own directory.
//!
//! Both set an object's last-modified time from their own clock, so each
//! runs under libfaketime with a clock file: [`Emulator::clock`] moves the
//! emulator's time to write objects "hours ago", while retentiond (not
//! faked) judges them by the real clock. `scripts/test` installs all three
//! and exports `RETENTIOND_MOTO`, `RETENTIOND_AZURITE`, `RETENTIOND_FAKETIME`.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running emulator; killed when dropped.
pub struct Emulator {
    child: Child,
    /// Its port on 127.0.0.1.
    pub port: u16,
    dir: tempfile::TempDir,
}

fn tool(var: &str, default: &str) -> String {
    std::env::var(var).unwrap_or_else(|_| default.to_string())
}

fn faketime() -> String {
    if let Ok(lib) = std::env::var("RETENTIOND_FAKETIME") {
        return lib;
    }
    for arch in ["x86_64-linux-gnu", "aarch64-linux-gnu"] {
        let lib = format!("/usr/lib/{arch}/faketime/libfaketime.so.1");
        if std::path::Path::new(&lib).exists() {
            return lib;
        }
    }
    panic!("libfaketime not found: run scripts/test (it installs Debian's faketime) or set RETENTIOND_FAKETIME");
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

impl Emulator {
    fn start(
        program: &str,
        args: impl FnOnce(&std::path::Path) -> Vec<String>,
        name: &str,
        port: u16,
        fake_clock: bool,
    ) -> Emulator {
        let dir = tempfile::tempdir().expect("tempdir");
        let args = args(dir.path());
        let clock = dir.path().join("clock");
        std::fs::write(&clock, "+0\n").expect("clock file");
        let log = std::fs::File::create(dir.path().join("log")).expect("log file");
        let mut command = Command::new(program);
        if fake_clock {
            // Reading the clock file on every call makes moto about 4x
            // slower, hence `fake_clock = false` for bulk tests.
            command
                .env("LD_PRELOAD", faketime())
                .env("FAKETIME_TIMESTAMP_FILE", &clock)
                .env("FAKETIME_NO_CACHE", "1")
                // Node (Azurite) aborts when its monotonic clock jumps back.
                .env("FAKETIME_DONT_FAKE_MONOTONIC", "1");
        }
        let child = command
            .args(args)
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log file"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start {name} ({program}): {e}; run scripts/test, which installs it")
            });
        let mut emulator = Emulator { child, port, dir };
        emulator.wait_listening(name);
        emulator
    }

    fn wait_listening(&mut self, name: &str) {
        let addr = SocketAddr::from(([127, 0, 0, 1], self.port));
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                return;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("{name} exited ({status}):\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!(
            "{name} did not listen on {addr} within 60 s:\n{}",
            self.log()
        );
    }

    /// moto_server, the S3 emulator, with a movable clock.
    pub fn moto() -> Emulator {
        Emulator::moto_with(true)
    }

    /// moto_server on the real clock (faster).
    pub fn moto_with(fake_clock: bool) -> Emulator {
        let port = free_port();
        let args = |_: &std::path::Path| {
            ["-H", "127.0.0.1", "-p", &port.to_string()]
                .map(String::from)
                .to_vec()
        };
        Emulator::start(
            &tool("RETENTIOND_MOTO", "moto_server"),
            args,
            "moto_server",
            port,
            fake_clock,
        )
    }

    /// azurite-blob, the Azure Blob emulator.
    pub fn azurite() -> Emulator {
        let port = free_port();
        let args = |dir: &std::path::Path| {
            [
                "--blobHost",
                "127.0.0.1",
                "--blobPort",
                &port.to_string(),
                "--location",
                &dir.join("data").display().to_string(),
                "--silent",
                "--skipApiVersionCheck",
                "--loose",
                "--disableTelemetry",
            ]
            .map(String::from)
            .to_vec()
        };
        Emulator::start(
            &tool(
                "RETENTIOND_AZURITE",
                concat!(
                    env!("CARGO_MANIFEST_DIR"),
                    "/.tools/azurite/node_modules/.bin/azurite-blob"
                ),
            ),
            args,
            "azurite-blob",
            port,
            true,
        )
    }

    /// `http://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Moves the emulator's clock: `"-2h"`, `"-40d"`, `"+0"` (libfaketime's
    /// relative offsets). Objects written next get that last-modified time.
    pub fn clock(&self, offset: &str) {
        std::fs::write(self.dir.path().join("clock"), format!("{offset}\n")).expect("clock file");
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("log")).unwrap_or_default()
    }

    /// Where the emulator keeps its files.
    #[allow(dead_code)]
    pub fn dir(&self) -> PathBuf {
        self.dir.path().to_path_buf()
    }
}

impl Drop for Emulator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An S3 client for test setup, talking to `moto`.
pub fn s3_client(moto: &Emulator) -> aws_sdk_s3::Client {
    use aws_smithy_http_client::tls;
    let http = aws_smithy_http_client::Builder::new()
        .tls_provider(tls::Provider::Rustls(
            tls::rustls_provider::CryptoMode::Ring,
        ))
        .build_https();
    let config = aws_sdk_s3::config::Builder::new()
        .behavior_version(aws_sdk_s3::config::BehaviorVersion::latest())
        .http_client(http)
        .region(aws_sdk_s3::config::Region::new("eu-west-3"))
        .endpoint_url(moto.url())
        .force_path_style(true)
        .credentials_provider(aws_sdk_s3::config::Credentials::new(
            "test", "test", None, None, "tests",
        ))
        .build();
    aws_sdk_s3::Client::from_conf(config)
}

/// The credentials retentiond gets from the environment for moto.
pub const AWS_ENV: [(&str, &str); 2] = [
    ("AWS_ACCESS_KEY_ID", "test"),
    ("AWS_SECRET_ACCESS_KEY", "test"),
];

/// [`crate::util::contract_vars`] pointed at real blob stores: these
/// emulators' endpoints, a scratch directory, and their credentials.
pub fn contract_vars_on<'a>(
    key: &'a str,
    db_url: &'a str,
    s3_endpoint: &'a str,
    azure_endpoint: &'a str,
    scratch: &'a str,
) -> Vec<(&'a str, &'a str)> {
    let mut vars: Vec<(&str, &str)> = crate::util::contract_vars(key, db_url)
        .into_iter()
        .filter(|(name, _)| !["S3_ENDPOINT", "AZURE_BLOB_ENDPOINT", "SCRATCH_DIR"].contains(name))
        .collect();
    vars.extend([
        ("S3_ENDPOINT", s3_endpoint),
        ("AZURE_BLOB_ENDPOINT", azure_endpoint),
        ("SCRATCH_DIR", scratch),
        AWS_ENV[0],
        AWS_ENV[1],
        ("AZURE_STORAGE_KEY", AZ_KEY),
    ]);
    vars
}

/// Azurite's well-known development account.
pub const AZ_ACCOUNT: &str = "devstoreaccount1";
/// Its key (public: Azurite's documentation prints it).
pub const AZ_KEY: &str =
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";

/// Test setup on Azurite through its REST API, with an account SAS signed
/// here (the layout of version 2021-08-06): independent of the store's
/// own signing, so a mistake there cannot hide in both.
pub struct Azure {
    /// `http://127.0.0.1:<port>/devstoreaccount1`.
    pub endpoint: String,
    sas: String,
    http: reqwest::Client,
}

impl Azure {
    pub fn new(azurite: &Emulator) -> Azure {
        use base64::Engine;
        use hmac::{Hmac, Mac};
        retentiond::store::azure::install_crypto_provider();
        let b64 = base64::engine::general_purpose::STANDARD;
        let expiry = (chrono::Utc::now() + chrono::Duration::days(2))
            .format("%Y-%m-%dT%H:%M:%SZ")
            .to_string();
        let (sp, ss, srt, sv) = ("racwdlx", "b", "sco", "2021-08-06");
        // account, sp, ss, srt, st, se, sip, spr, sv, ses, and a final newline.
        let to_sign = format!("{AZ_ACCOUNT}\n{sp}\n{ss}\n{srt}\n\n{expiry}\n\n\n{sv}\n\n");
        let mut mac = Hmac::<sha2::Sha256>::new_from_slice(&b64.decode(AZ_KEY).unwrap()).unwrap();
        mac.update(to_sign.as_bytes());
        let sig = b64.encode(mac.finalize().into_bytes());
        let sas = url::form_urlencoded::Serializer::new(String::new())
            .append_pair("sv", sv)
            .append_pair("ss", ss)
            .append_pair("srt", srt)
            .append_pair("sp", sp)
            .append_pair("se", &expiry)
            .append_pair("sig", &sig)
            .finish();
        Azure {
            endpoint: format!("{}/{AZ_ACCOUNT}", azurite.url()),
            sas,
            http: reqwest::Client::new(),
        }
    }

    fn url(&self, path: &str, query: &str) -> String {
        let path: String = path
            .split('/')
            .map(|s| {
                percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC)
                    .to_string()
            })
            .collect::<Vec<_>>()
            .join("/");
        let sep = if query.is_empty() { "" } else { "&" };
        format!("{}/{path}?{query}{sep}{}", self.endpoint, self.sas)
    }

    /// `endpoint/<path>?<query>&<sas>` for a `path` already percent-encoded
    /// exactly as it is to be sent (a key as one segment, `/` as `%2F`).
    pub fn signed_url(&self, encoded_path: &str, query: &str) -> String {
        let sep = if query.is_empty() { "" } else { "&" };
        format!("{}/{encoded_path}?{query}{sep}{}", self.endpoint, self.sas)
    }

    /// Sends `request` with the API version this setup speaks; its status
    /// and body, whatever they are.
    pub async fn send_raw(&self, request: reqwest::RequestBuilder) -> (u16, String) {
        let response = request
            .header("x-ms-version", "2021-08-06")
            .send()
            .await
            .expect("azurite answers");
        let status = response.status().as_u16();
        (status, response.text().await.unwrap_or_default())
    }

    /// The HTTP client setup requests go through.
    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    async fn send(&self, request: reqwest::RequestBuilder) -> String {
        let response = request
            .header("x-ms-version", "2021-08-06")
            .send()
            .await
            .expect("azurite answers");
        let status = response.status();
        let body = response.text().await.unwrap_or_default();
        assert!(status.is_success(), "azurite: {status}: {body}");
        body
    }

    pub async fn container(&self, name: &str) {
        self.send(self.http.put(self.url(name, "restype=container")))
            .await;
    }

    /// Uploads `container/key` with user metadata.
    pub async fn put(&self, container: &str, key: &str, body: &str, metadata: &[(&str, &str)]) {
        let mut request = self
            .http
            .put(self.url(&format!("{container}/{key}"), ""))
            .header("x-ms-blob-type", "BlockBlob")
            .body(body.to_string());
        for (k, v) in metadata {
            request = request.header(format!("x-ms-meta-{k}"), *v);
        }
        self.send(request).await;
    }

    pub async fn snapshot(&self, container: &str, key: &str) {
        self.send(
            self.http
                .put(self.url(&format!("{container}/{key}"), "comp=snapshot")),
        )
        .await;
    }

    /// Stages a block that is never committed: an abandoned upload.
    pub async fn uncommitted(&self, container: &str, key: &str) {
        use base64::Engine;
        let id = base64::engine::general_purpose::STANDARD.encode("block-000001");
        let query = url::form_urlencoded::Serializer::new(String::new())
            .append_pair("comp", "block")
            .append_pair("blockid", &id)
            .finish();
        self.send(
            self.http
                .put(self.url(&format!("{container}/{key}"), &query))
                .body("half an upload"),
        )
        .await;
    }

    /// Every blob, snapshot and uncommitted blob, as sorted
    /// `name` / `name@snapshot` / `name (uncommitted)` lines. Uncommitted
    /// blobs are the names only a listing with `uncommittedblobs` shows.
    pub async fn list(&self, container: &str) -> Vec<String> {
        let committed = self.names(container, "snapshots").await;
        let mut out: Vec<String> = self
            .names(container, "snapshots,uncommittedblobs")
            .await
            .into_iter()
            .map(|n| {
                if committed.contains(&n) {
                    n
                } else {
                    format!("{n} (uncommitted)")
                }
            })
            .collect();
        out.sort();
        out
    }

    async fn names(&self, container: &str, include: &str) -> Vec<String> {
        let mut out = Vec::new();
        let mut marker = String::new();
        loop {
            let mut query = format!("restype=container&comp=list&include={include}");
            if !marker.is_empty() {
                query.push_str("&marker=");
                query.push_str(&marker);
            }
            let xml = self.send(self.http.get(self.url(container, &query))).await;
            let tag = |text: &str, t: &str| {
                text.split(&format!("<{t}>"))
                    .nth(1)
                    .and_then(|r| r.split(&format!("</{t}>")).next())
                    .map(str::to_string)
            };
            for blob in xml.split("<Blob>").skip(1) {
                let name = tag(blob, "Name").unwrap_or_default();
                out.push(match tag(blob, "Snapshot") {
                    Some(s) => format!("{name}@{s}"),
                    None => name,
                });
            }
            match tag(&xml, "NextMarker") {
                Some(next) if !next.is_empty() => marker = next,
                _ => break,
            }
        }
        out
    }
}
