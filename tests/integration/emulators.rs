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
    #[allow(dead_code)] // until the Azure tests land
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
            &tool("RETENTIOND_AZURITE", "azurite-blob"),
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
