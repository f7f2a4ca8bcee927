//! A throwaway PostgreSQL cluster for the whole test process, and a fresh
//! database per test.
//!
//! `initdb` and `postgres` refuse to run as root, and CI runs as root, so
//! they run as the `postgres` user then (via `setpriv`, which execs without
//! an intermediate process). A watchdog shell stops the server and removes
//! its data directory when the test process exits, however it exits.

use sqlx::postgres::PgPoolOptions;
use sqlx::PgPool;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

pub struct Cluster {
    pub port: u16,
}

static CLUSTER: OnceLock<Cluster> = OnceLock::new();
static NEXT_DB: AtomicUsize = AtomicUsize::new(0);

fn is_root() -> bool {
    // SAFETY-free: read the effective uid from /proc.
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(2) == Some("0"))
        })
        .unwrap_or(false)
}

fn find_bin() -> PathBuf {
    if let Ok(dir) = std::env::var("PG_BIN") {
        return PathBuf::from(dir);
    }
    let mut candidates: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| e.path().join("bin"))
                .filter(|p| p.join("initdb").exists())
                .collect()
        })
        .unwrap_or_default();
    candidates.sort();
    if let Some(best) = candidates.pop() {
        return best;
    }
    if let Ok(out) = Command::new("sh")
        .args(["-c", "command -v initdb"])
        .output()
    {
        let p = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if let Some(dir) = p.parent().filter(|_| out.status.success()) {
            return dir.to_path_buf();
        }
    }
    panic!("no PostgreSQL server binaries: install the `postgresql` package (scripts/test does) or set PG_BIN");
}

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    l.local_addr().expect("local addr").port()
}

/// `cmd` as the postgres user when we are root.
fn as_server_user(bin: &std::path::Path, prog: &str) -> Vec<String> {
    let exe = bin.join(prog).display().to_string();
    if is_root() {
        vec![
            "setpriv".into(),
            "--reuid=postgres".into(),
            "--regid=postgres".into(),
            "--init-groups".into(),
            exe,
        ]
    } else {
        vec![exe]
    }
}

fn shell_quote(args: &[String]) -> String {
    args.iter()
        .map(|a| format!("'{}'", a.replace('\'', "'\\''")))
        .collect::<Vec<_>>()
        .join(" ")
}

pub fn cluster() -> &'static Cluster {
    CLUSTER.get_or_init(|| {
        let bin = find_bin();
        let dir = std::env::temp_dir().join(format!("retentiond-test-pg-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create data dir");
        if is_root() {
            let ok = Command::new("chown").args(["-R", "postgres:postgres"]).arg(&dir).status().map(|s| s.success());
            assert_eq!(ok.ok(), Some(true), "chown the data dir to postgres");
        }
        let data = dir.join("data");
        let mut initdb = as_server_user(&bin, "initdb");
        initdb.extend(["-D".into(), data.display().to_string(), "-U".into(), "postgres".into(), "-A".into(), "trust".into(), "--no-sync".into(), "-E".into(), "UTF8".into()]);
        let out = Command::new(&initdb[0]).args(&initdb[1..]).output().expect("run initdb");
        assert!(out.status.success(), "initdb failed: {}", String::from_utf8_lossy(&out.stderr));
        let port = free_port();
        let mut server = as_server_user(&bin, "postgres");
        server.extend(
            [
                "-D", &data.display().to_string(), "-p", &port.to_string(), "-k", &dir.display().to_string(),
                "-c", "listen_addresses=127.0.0.1", "-c", "fsync=off", "-c", "synchronous_commit=off",
                "-c", "full_page_writes=off", "-c", "max_connections=200", "-c", "shared_buffers=256MB",
            ]
            .map(String::from),
        );
        // The watchdog outlives nothing: when our pid disappears it stops the
        // server and deletes the directory.
        let script = format!(
            "{server} >{log} 2>&1 & pg=$!; while kill -0 {me} 2>/dev/null && kill -0 $pg 2>/dev/null; do sleep 0.3; done; \
             kill -INT $pg 2>/dev/null; wait $pg; rm -rf {dir}",
            server = shell_quote(&server),
            log = shell_quote(&[dir.join("server.log").display().to_string()]),
            me = std::process::id(),
            dir = shell_quote(&[dir.display().to_string()]),
        );
        // Not waited for: it lives as long as this process, by design.
        #[allow(clippy::zombie_processes)]
        Command::new("sh")
            .args(["-c", &script])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start postgres");
        let start = Instant::now();
        loop {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                let ready = Command::new(bin.join("pg_isready")).args(["-h", "127.0.0.1", "-p", &port.to_string(), "-U", "postgres"]).output();
                if ready.map(|o| o.status.success()).unwrap_or(false) {
                    break;
                }
            }
            assert!(start.elapsed() < Duration::from_secs(60), "postgres did not start: {}", std::fs::read_to_string(dir.join("server.log")).unwrap_or_default());
            std::thread::sleep(Duration::from_millis(100));
        }
        Cluster { port }
    })
}

/// A fresh database in the shared cluster.
pub struct TestDb {
    pub name: String,
    pub url: String,
    pub pool: PgPool,
}

impl TestDb {
    /// A database `retentiond migrate` has prepared.
    pub async fn new() -> TestDb {
        let db = TestDb::bare().await;
        // As `retentiond migrate` would (run and serve never do).
        retentiond::audit::log::migrate(&db.pool)
            .await
            .expect("migrate test db");
        db
    }

    /// A database without the `retentiond` schema.
    pub async fn bare() -> TestDb {
        let c = cluster();
        let name = format!(
            "t_{}_{}",
            std::process::id(),
            NEXT_DB.fetch_add(1, Ordering::SeqCst)
        );
        let admin_url = format!("postgres://postgres@127.0.0.1:{}/postgres", c.port);
        let admin = PgPoolOptions::new()
            .max_connections(1)
            .connect(&admin_url)
            .await
            .expect("connect admin");
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&admin)
            .await
            .expect("create database");
        admin.close().await;
        let url = format!("postgres://postgres@127.0.0.1:{}/{name}", c.port);
        let pool = PgPoolOptions::new()
            .max_connections(4)
            .after_connect(|conn, _| {
                Box::pin(async move {
                    sqlx::Executor::execute(conn, "SET TimeZone = 'UTC'").await?;
                    Ok(())
                })
            })
            .connect(&url)
            .await
            .expect("connect test db");
        TestDb { name, url, pool }
    }

    /// Runs a script of several statements.
    pub async fn exec(&self, sql: &str) {
        sqlx::raw_sql(sql)
            .execute(&self.pool)
            .await
            .unwrap_or_else(|e| panic!("{e}\nin:\n{sql}"));
    }

    pub async fn count(&self, sql: &str) -> i64 {
        sqlx::query_scalar(sql)
            .fetch_one(&self.pool)
            .await
            .unwrap_or_else(|e| panic!("{e}\nin:\n{sql}"))
    }

    pub async fn strings(&self, sql: &str) -> Vec<String> {
        sqlx::query_scalar(sql)
            .fetch_all(&self.pool)
            .await
            .unwrap_or_else(|e| panic!("{e}\nin:\n{sql}"))
    }
}

/// A cluster of its own, for a test that stops and starts the server.
/// Managed with `pg_ctl`; a watchdog stops it and removes its directory if
/// the test process dies, and `Drop` does so when the test ends.
pub struct PrivateCluster {
    pub port: u16,
    bin: PathBuf,
    dir: PathBuf,
}

impl PrivateCluster {
    pub fn start() -> PrivateCluster {
        let bin = find_bin();
        let dir = std::env::temp_dir().join(format!(
            "retentiond-test-pgp-{}-{}",
            std::process::id(),
            NEXT_DB.fetch_add(1, Ordering::SeqCst)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create dir");
        if is_root() {
            let ok = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(&dir)
                .status()
                .map(|s| s.success());
            assert_eq!(ok.ok(), Some(true));
        }
        let data = dir.join("data").display().to_string();
        let mut initdb = as_server_user(&bin, "initdb");
        initdb.extend(
            [
                "-D",
                &data,
                "-U",
                "postgres",
                "-A",
                "trust",
                "--no-sync",
                "-E",
                "UTF8",
            ]
            .map(String::from),
        );
        let out = Command::new(&initdb[0])
            .args(&initdb[1..])
            .output()
            .expect("initdb");
        assert!(
            out.status.success(),
            "initdb: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let cluster = PrivateCluster {
            port: free_port(),
            bin,
            dir,
        };
        let watchdog = format!(
            "while kill -0 {me} 2>/dev/null; do sleep 0.5; done; {stop}; rm -rf {dir}",
            me = std::process::id(),
            stop = shell_quote(&cluster.pg_ctl(&["-m", "immediate", "stop"])),
            dir = shell_quote(&[cluster.dir.display().to_string()]),
        );
        #[allow(clippy::zombie_processes)]
        Command::new("sh")
            .args(["-c", &watchdog])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("watchdog");
        cluster.up();
        cluster
    }

    fn pg_ctl(&self, args: &[&str]) -> Vec<String> {
        let mut cmd = as_server_user(&self.bin, "pg_ctl");
        cmd.extend([
            "-D".to_string(),
            self.dir.join("data").display().to_string(),
            "-w".to_string(),
        ]);
        cmd.extend(args.iter().map(|s| s.to_string()));
        cmd
    }

    fn run(&self, args: &[&str]) {
        let cmd = self.pg_ctl(args);
        let out = Command::new(&cmd[0])
            .args(&cmd[1..])
            .output()
            .expect("pg_ctl");
        assert!(
            out.status.success(),
            "pg_ctl {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Starts the server (waits until it accepts connections).
    pub fn up(&self) {
        let opts = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off",
            self.port,
            self.dir.display()
        );
        let log = self.dir.join("server.log").display().to_string();
        self.run(&["-l", &log, "-o", &opts, "start"]);
    }

    /// Stops the server (fast: open sessions are ended).
    pub fn down(&self) {
        self.run(&["-m", "fast", "stop"]);
    }

    pub fn url(&self, db: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{db}", self.port)
    }
}

impl Drop for PrivateCluster {
    fn drop(&mut self) {
        let cmd = self.pg_ctl(&["-m", "immediate", "stop"]);
        let _ = Command::new(&cmd[0]).args(&cmd[1..]).output();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
