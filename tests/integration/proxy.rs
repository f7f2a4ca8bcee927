//! A fault-injecting HTTP/1.1 proxy on 127.0.0.1, between the real
//! `retentiond` binary and moto_server or Azurite, and the runs it puts
//! through: blob deletes under throttling and dropped connections must end
//! with exactly the expired objects gone, nothing young touched, every
//! removal counted once in the audit log, and no row deleted whose object is
//! still there.
//!
//! The proxy is a raw tokio TCP forwarder that parses just enough HTTP/1.1:
//! one request per client connection (every answer says `Connection:
//! close`), request and answer bodies framed by Content-Length or chunked
//! encoding (or, for an answer, by the end of the connection). Which
//! requests fail is deterministic: a [`Schedule`] is layers of a filter
//! (e.g. only DeleteObjects) and a pattern (seeded places, bursts, a
//! sequence), and the n-th request a layer takes, in arrival order, gets
//! `pattern[n % len]`. A fault is one of
//!
//! * [`Fault::Busy`]: `503 SlowDown` with S3's XML error body, or `503
//!   ServerBusy` with Azure's; the request never reaches the service;
//! * [`Fault::Drop`]: the connection is closed once the request head is
//!   read (mid-request when it has a body); the service never sees it;
//! * [`Fault::Lost`]: the request is forwarded and the service's answer
//!   read and thrown away: it happened, but the client never hears so.
//!
//! The proxy runs on its own thread and runtime, so a test may block on
//! the binary meanwhile. [`Proxy::page_size`] also rewrites listing
//! requests to ask for small pages (S3 `max-keys`, Azure `maxresults`;
//! neither emulator checks signatures over the query), which lets a few
//! objects cross several pages.

use crate::chain;
use crate::emulators::{s3_client, Azure, Emulator, AWS_ENV, AZ_ACCOUNT, AZ_KEY};
use crate::util::*;
use aws_sdk_s3::primitives::ByteStream;
use futures_util::stream::{self, StreamExt};
use retentiond::audit::key::load_public;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Which service a [`Fault::Busy`] answer imitates.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flavor {
    S3,
    Azure,
}

/// What happens to a faulted request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// `503 SlowDown` (S3) / `503 ServerBusy` (Azure); never forwarded.
    Busy,
    /// The connection closes after the request head; never forwarded.
    Drop,
    /// Forwarded and done; the answer is thrown away and the connection closed.
    Lost,
}

/// Which requests fail. A schedule is one or more layers, each a filter
/// and a pattern; a request goes to the first layer whose filter takes it,
/// and the n-th request a layer takes (in arrival order) gets
/// `pattern[n % pattern.len()]`.
#[derive(Clone)]
pub struct Schedule {
    layers: Vec<Layer>,
}

#[derive(Clone)]
struct Layer {
    only: fn(&str, &str) -> bool,
    pattern: Vec<Option<Fault>>,
    taken: usize,
}

fn any_request(_: &str, _: &str) -> bool {
    true
}

/// xorshift64*: deterministic schedules from a seed, no dependency.
fn next(seed: &mut u64) -> u64 {
    *seed ^= *seed >> 12;
    *seed ^= *seed << 25;
    *seed ^= *seed >> 27;
    seed.wrapping_mul(0x2545_f491_4f6c_dd1d)
}

impl Schedule {
    /// `pattern`, cycled.
    pub fn pattern(pattern: Vec<Option<Fault>>) -> Schedule {
        Schedule {
            layers: vec![Layer {
                only: any_request,
                pattern,
                taken: 0,
            }],
        }
    }

    /// No faults.
    pub fn none() -> Schedule {
        Schedule::pattern(vec![None])
    }

    /// Exactly `percent` of every 100 requests fail, at positions a shuffle
    /// seeded with `seed` picks; the faults take `kinds` in turn.
    pub fn seeded(seed: u64, percent: usize, kinds: &[Fault]) -> Schedule {
        let mut pattern: Vec<Option<Fault>> = (0..100)
            .map(|i| (i < percent).then(|| kinds[i % kinds.len()]))
            .collect();
        let mut s = seed | 1;
        for i in (1..pattern.len()).rev() {
            pattern.swap(i, (next(&mut s) % (i as u64 + 1)) as usize);
        }
        Schedule::pattern(pattern)
    }

    /// Of every `every` requests, the first `burst.len()` fail as `burst`
    /// says: a burst longer than a client's retries fails the operations
    /// it lands on.
    pub fn bursts(every: usize, burst: &[Fault]) -> Schedule {
        Schedule::pattern((0..every).map(|i| burst.get(i).copied()).collect())
    }

    /// The given faults, then none for the next `then_clean` requests.
    pub fn sequence(faults: &[Fault], then_clean: usize) -> Schedule {
        let mut pattern: Vec<Option<Fault>> = faults.iter().copied().map(Some).collect();
        pattern.extend(std::iter::repeat_n(None, then_clean));
        Schedule::pattern(pattern)
    }

    /// Only requests for which `only(method, target)` holds go to this
    /// schedule's (last) layer.
    pub fn only(mut self, only: fn(&str, &str) -> bool) -> Schedule {
        if let Some(layer) = self.layers.last_mut() {
            layer.only = only;
        }
        self
    }

    /// Requests no layer of `self` takes go to `other`'s.
    pub fn or(mut self, other: Schedule) -> Schedule {
        self.layers.extend(other.layers);
        self
    }

    /// The most faults in a row any layer's pattern holds (cyclically): a
    /// client whose retries outlast that always gets through.
    pub fn longest_burst(&self) -> usize {
        self.layers
            .iter()
            .map(|l| {
                let (mut best, mut run) = (0, 0);
                for f in l.pattern.iter().chain(&l.pattern) {
                    run = if f.is_some() { run + 1 } else { 0 };
                    best = best.max(run);
                }
                best.min(l.pattern.len())
            })
            .max()
            .unwrap_or(0)
    }

    /// The fault for the next request `(method, target)`, if any, and
    /// whether a layer took it.
    fn take(&mut self, method: &str, target: &str) -> (bool, Option<Fault>) {
        for layer in &mut self.layers {
            if (layer.only)(method, target) {
                let fault = layer.pattern[layer.taken % layer.pattern.len()];
                layer.taken += 1;
                return (true, fault);
            }
        }
        (false, None)
    }
}

/// DeleteObjects: `POST /<bucket>?delete`.
pub fn delete_objects(method: &str, target: &str) -> bool {
    method == "POST"
        && target
            .split_once('?')
            .is_some_and(|(_, q)| q.split('&').any(|p| p == "delete" || p == "delete="))
}

/// What the proxy saw.
#[derive(Debug, Default, Clone)]
pub struct Stats {
    /// Requests whose head was read.
    pub requests: u64,
    /// Requests a layer of the schedule took.
    pub selected: u64,
    pub busy: u64,
    pub dropped: u64,
    pub lost: u64,
}

impl Stats {
    pub fn faults(&self) -> u64 {
        self.busy + self.dropped + self.lost
    }
}

struct State {
    schedule: Schedule,
    stats: Stats,
    page_size: Option<u32>,
}

struct Shared {
    flavor: Flavor,
    upstream: SocketAddr,
    state: Mutex<State>,
}

impl Shared {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The fault for this request, if any, and its number.
    fn decide(&self, method: &str, target: &str) -> (u64, Option<Fault>) {
        let mut st = self.state();
        st.stats.requests += 1;
        let n = st.stats.requests;
        let (taken, fault) = st.schedule.take(method, target);
        if taken {
            st.stats.selected += 1;
        }
        match fault {
            Some(Fault::Busy) => st.stats.busy += 1,
            Some(Fault::Drop) => st.stats.dropped += 1,
            Some(Fault::Lost) => st.stats.lost += 1,
            None => {}
        }
        (n, fault)
    }

    /// `target`, asking for small pages when the proxy is set to.
    fn rewrite(&self, method: &str, target: &str) -> String {
        let Some(size) = self.state().page_size else {
            return target.to_string();
        };
        let Some((_, query)) = target.split_once('?') else {
            return target.to_string();
        };
        let has = |name: &str| {
            query
                .split('&')
                .any(|p| p == name || p.starts_with(&format!("{name}=")))
        };
        let param = match self.flavor {
            Flavor::Azure if has("comp") && query.contains("comp=list") && !has("maxresults") => {
                "maxresults"
            }
            Flavor::S3 if method == "GET" && has("uploads") && !has("max-uploads") => "max-uploads",
            Flavor::S3
                if method == "GET" && (has("versions") || has("list-type")) && !has("max-keys") =>
            {
                "max-keys"
            }
            _ => return target.to_string(),
        };
        format!("{target}&{param}={size}")
    }
}

/// A running proxy to one emulator; stopped when dropped.
pub struct Proxy {
    pub port: u16,
    shared: Arc<Shared>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Proxy {
    /// A proxy on a free port of 127.0.0.1 to `upstream`'s port.
    pub fn start(upstream: &Emulator, flavor: Flavor, schedule: Schedule) -> Proxy {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind the proxy");
        listener.set_nonblocking(true).expect("nonblocking");
        let port = listener.local_addr().expect("proxy address").port();
        let shared = Arc::new(Shared {
            flavor,
            upstream: SocketAddr::from(([127, 0, 0, 1], upstream.port)),
            state: Mutex::new(State {
                schedule,
                stats: Stats::default(),
                page_size: None,
            }),
        });
        let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
        let serving = shared.clone();
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("proxy runtime");
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
                loop {
                    tokio::select! {
                        _ = &mut stopped => break,
                        accepted = listener.accept() => {
                            if let Ok((client, _)) = accepted {
                                let shared = serving.clone();
                                tokio::spawn(async move {
                                    // Never hang a client: whatever is
                                    // unfinished after this is dropped.
                                    let _ = tokio::time::timeout(
                                        Duration::from_secs(30),
                                        exchange(client, &shared),
                                    )
                                    .await;
                                });
                            }
                        }
                    }
                }
            });
            runtime.shutdown_timeout(Duration::from_millis(200));
        });
        Proxy {
            port,
            shared,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    /// `http://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Listing requests ask for pages of `size` items.
    pub fn page_size(&self, size: u32) {
        self.shared.state().page_size = Some(size);
    }

    pub fn stats(&self) -> Stats {
        self.shared.state().stats.clone()
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// A connection and the bytes read from it but not yet consumed.
struct Conn {
    stream: TcpStream,
    buf: Vec<u8>,
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn eof() -> io::Error {
    io::Error::new(
        io::ErrorKind::UnexpectedEof,
        "connection closed mid-message",
    )
}

impl Conn {
    async fn fill(&mut self) -> io::Result<usize> {
        let mut chunk = [0u8; 16 * 1024];
        let n = self.stream.read(&mut chunk).await?;
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(n)
    }

    /// The next message head (through its blank line); None at a clean end.
    async fn head(&mut self) -> io::Result<Option<Vec<u8>>> {
        loop {
            if let Some(at) = find(&self.buf, b"\r\n\r\n") {
                return Ok(Some(self.buf.drain(..at + 4).collect()));
            }
            if self.buf.len() > 1 << 20 {
                return Err(io::Error::new(io::ErrorKind::InvalidData, "head too long"));
            }
            if self.fill().await? == 0 {
                return if self.buf.is_empty() {
                    Ok(None)
                } else {
                    Err(eof())
                };
            }
        }
    }

    async fn exact(&mut self, n: usize) -> io::Result<Vec<u8>> {
        while self.buf.len() < n {
            if self.fill().await? == 0 {
                return Err(eof());
            }
        }
        Ok(self.buf.drain(..n).collect())
    }

    async fn line(&mut self) -> io::Result<Vec<u8>> {
        loop {
            if let Some(at) = find(&self.buf, b"\r\n") {
                return Ok(self.buf.drain(..at + 2).collect());
            }
            if self.fill().await? == 0 {
                return Err(eof());
            }
        }
    }

    /// A chunked body, framing included (it is forwarded as it came).
    async fn chunked(&mut self) -> io::Result<Vec<u8>> {
        let mut out = Vec::new();
        loop {
            let line = self.line().await?;
            out.extend_from_slice(&line);
            let text = String::from_utf8_lossy(&line);
            let size = text.trim().split(';').next().unwrap_or_default().trim();
            let size = usize::from_str_radix(size, 16)
                .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "bad chunk size"))?;
            if size == 0 {
                loop {
                    let trailer = self.line().await?;
                    out.extend_from_slice(&trailer);
                    if trailer == b"\r\n" {
                        return Ok(out);
                    }
                }
            }
            out.extend(self.exact(size + 2).await?);
        }
    }

    async fn read_to_end(&mut self) -> io::Result<Vec<u8>> {
        while self.fill().await? > 0 {}
        Ok(std::mem::take(&mut self.buf))
    }

    /// The body after `head`: chunked, Content-Length, or (an answer
    /// without either) up to the end of the connection.
    async fn body(&mut self, head: &Head, answer: bool) -> io::Result<Vec<u8>> {
        if head
            .header("transfer-encoding")
            .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"))
        {
            return self.chunked().await;
        }
        match head.header("content-length") {
            Some(n) => {
                let n = n
                    .trim()
                    .parse()
                    .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "bad length"))?;
                self.exact(n).await
            }
            None if answer => self.read_to_end().await,
            None => Ok(Vec::new()),
        }
    }
}

/// A parsed message head: its start line's words and its headers.
struct Head {
    start: Vec<String>,
    headers: Vec<(String, String)>,
}

impl Head {
    fn parse(raw: &[u8]) -> io::Result<Head> {
        let text = String::from_utf8_lossy(raw);
        let mut lines = text.split("\r\n");
        let start: Vec<String> = lines
            .next()
            .unwrap_or_default()
            .splitn(3, ' ')
            .map(str::to_string)
            .collect();
        if start.len() < 2 {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "bad start line"));
        }
        let headers = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
            .collect();
        Ok(Head { start, headers })
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The head again, without hop-by-hop headers, closing the connection.
    fn closing(&self, start: &str) -> Vec<u8> {
        let mut out = format!("{start}\r\n");
        for (k, v) in &self.headers {
            let hop = ["connection", "keep-alive", "proxy-connection", "expect"]
                .iter()
                .any(|h| k.eq_ignore_ascii_case(h));
            if !hop {
                out.push_str(&format!("{k}: {v}\r\n"));
            }
        }
        out.push_str("Connection: close\r\n\r\n");
        out.into_bytes()
    }
}

/// The `503` a busy service answers.
fn busy(flavor: Flavor, n: u64, head_request: bool) -> Vec<u8> {
    let (reason, headers, body) = match flavor {
        Flavor::S3 => (
            "Slow Down",
            format!("Content-Type: application/xml\r\nx-amz-request-id: PROXY{n:08}\r\n"),
            format!(
                "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>SlowDown</Code>\
                 <Message>Please reduce your request rate.</Message><RequestId>PROXY{n:08}</RequestId>\
                 <HostId>proxy</HostId></Error>"
            ),
        ),
        Flavor::Azure => (
            "The server is busy.",
            format!(
                "Content-Type: application/xml\r\nx-ms-error-code: ServerBusy\r\n\
                 x-ms-request-id: 00000000-0000-0000-0000-{n:012}\r\n"
            ),
            format!(
                "<?xml version=\"1.0\" encoding=\"utf-8\"?><Error><Code>ServerBusy</Code>\
                 <Message>The server is busy.\nRequestId:00000000-0000-0000-0000-{n:012}\n\
                 Time:2026-01-01T00:00:00.0000000Z</Message></Error>"
            ),
        ),
    };
    let body = if head_request { String::new() } else { body };
    format!(
        "HTTP/1.1 503 {reason}\r\n{headers}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// One request from `client`: faulted, or forwarded and answered.
async fn exchange(client: TcpStream, shared: &Shared) -> io::Result<()> {
    let mut client = Conn {
        stream: client,
        buf: Vec::new(),
    };
    let Some(raw) = client.head().await? else {
        return Ok(());
    };
    let request = Head::parse(&raw)?;
    let (method, target, version) = (
        request.start[0].clone(),
        request.start[1].clone(),
        request.start.get(2).cloned().unwrap_or_default(),
    );
    let (n, fault) = shared.decide(&method, &target);
    if fault == Some(Fault::Drop) {
        // Closing with the body unread: the client sees a reset mid-request.
        return Ok(());
    }
    if request
        .header("expect")
        .is_some_and(|v| v.eq_ignore_ascii_case("100-continue"))
    {
        client
            .stream
            .write_all(b"HTTP/1.1 100 Continue\r\n\r\n")
            .await?;
    }
    let body = client.body(&request, false).await?;
    if fault == Some(Fault::Busy) {
        client
            .stream
            .write_all(&busy(shared.flavor, n, method == "HEAD"))
            .await?;
        return client.stream.shutdown().await;
    }
    let target = shared.rewrite(&method, &target);
    let mut upstream = Conn {
        stream: TcpStream::connect(shared.upstream).await?,
        buf: Vec::new(),
    };
    let mut sent = request.closing(&format!("{method} {target} {version}"));
    sent.extend_from_slice(&body);
    upstream.stream.write_all(&sent).await?;
    let (answer, status) = loop {
        let raw = upstream.head().await?.ok_or_else(eof)?;
        let answer = Head::parse(&raw)?;
        let status: u16 = answer.start[1].parse().unwrap_or(0);
        if !(100..200).contains(&status) {
            break (answer, status);
        }
    };
    let body = if method == "HEAD" || status == 204 || status == 304 {
        Vec::new()
    } else {
        upstream.body(&answer, true).await?
    };
    if fault == Some(Fault::Lost) {
        return Ok(());
    }
    let mut out = answer.closing(&answer.start.join(" "));
    out.extend_from_slice(&body);

    client.stream.write_all(&out).await?;
    client.stream.shutdown().await
}

// ------------------------------------------------------------------ runs

const SEED: u64 = 0x5eed_0ffa_1700_0001;

/// Reruns allowed before a rule must have converged.
const MAX_RUNS: usize = 8;

/// The store's endpoint is the proxy.
fn s3_store(proxy: &Proxy, bucket: &str) -> String {
    format!(
        "[stores.media]\ntype = \"s3\"\nbucket = \"{bucket}\"\nregion = \"eu-west-3\"\nendpoint = \"{}\"\n\n",
        proxy.url()
    )
}

fn az_store(proxy: &Proxy, container: &str) -> String {
    format!(
        "[stores.media]\ntype = \"azure_blob\"\naccount = \"{AZ_ACCOUNT}\"\ncontainer = \"{container}\"\nendpoint = \"{}/{AZ_ACCOUNT}\"\n\n",
        proxy.url()
    )
}

async fn put(s3: &aws_sdk_s3::Client, bucket: &str, key: &str, body: &str) {
    s3.put_object()
        .bucket(bucket)
        .key(key)
        .body(ByteStream::from(body.as_bytes().to_vec()))
        .send()
        .await
        .unwrap_or_else(|e| panic!("put {key}: {e:?}"));
}

/// Every version and delete marker of the bucket, straight from moto, as
/// key -> number of versions (markers included).
async fn s3_versions(s3: &aws_sdk_s3::Client, bucket: &str) -> BTreeMap<String, usize> {
    let mut out: BTreeMap<String, usize> = BTreeMap::new();
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
        for key in page
            .versions()
            .iter()
            .filter_map(|v| v.key())
            .chain(page.delete_markers().iter().filter_map(|m| m.key()))
        {
            *out.entry(key.to_string()).or_default() += 1;
        }
        if page.is_truncated() != Some(true) {
            break;
        }
        key_marker = page.next_key_marker().map(str::to_string);
        version_marker = page.next_version_id_marker().map(str::to_string);
    }
    out
}

/// The newest last-modified time of a version under `prefix` (S3 keeps
/// whole seconds).
async fn newest(
    s3: &aws_sdk_s3::Client,
    bucket: &str,
    prefix: &str,
) -> chrono::DateTime<chrono::Utc> {
    let mut newest = chrono::DateTime::<chrono::Utc>::MIN_UTC;
    let (mut key_marker, mut version_marker) = (None, None);
    loop {
        let page = s3
            .list_object_versions()
            .bucket(bucket)
            .prefix(prefix)
            .set_key_marker(key_marker.clone())
            .set_version_id_marker(version_marker.clone())
            .send()
            .await
            .expect("list versions");
        let times = page
            .versions()
            .iter()
            .filter_map(|v| v.last_modified())
            .chain(
                page.delete_markers()
                    .iter()
                    .filter_map(|m| m.last_modified()),
            );
        for t in times {
            let t = chrono::DateTime::from_timestamp(t.secs(), 0).expect("a time");
            newest = newest.max(t);
        }
        if page.is_truncated() != Some(true) {
            return newest;
        }
        key_marker = page.next_key_marker().map(str::to_string);
        version_marker = page.next_version_id_marker().map(str::to_string);
    }
}

/// One rule's outcome records, and the sums of their counts.
fn sums(records: &[Value], rule: &str, field: &str) -> (usize, i64) {
    let outcomes = chain::of(records, "run_outcome", rule);
    let sum = outcomes
        .iter()
        .filter_map(|o| o["counts"][field].as_i64())
        .sum();
    (outcomes.len(), sum)
}

/// Runs `cfg` once: its output and `rule`'s report. A fault fails a run
/// (exit 1), or refuses it (exit 3: in doubt about the store, e.g. its
/// identity check could not be answered) before anything changed.
fn run_once(
    cfg: &std::path::Path,
    rule: &str,
    extra: &[&str],
    envs: &[(&str, &str)],
    n: usize,
) -> (Out, Value) {
    let out = json_cmd_with("run", cfg, extra, envs);
    let report = out.rule(rule);
    let fine = match (out.code, report["outcome"].as_str()) {
        (0, Some("ok")) | (1, Some("failed")) => true,
        (3, Some("refused")) => report["affected"] == 0,
        _ => false,
    };
    assert!(fine, "run {n}: {out}");
    (out, report)
}

fn converged(out: &Out, report: &Value) -> bool {
    out.code == 0 && report["outcome"] == "ok"
}

#[tokio::test]
async fn proxy_s3_prefix_rule_under_30pct_faults_removes_exactly_the_expired_and_counts_each_once()
{
    let started = Instant::now();
    let env = Env::new().await;
    // The real clock (a faked one makes moto 4x slower): the old objects
    // are written first, the young ones over a second later, and the runs
    // are judged `--at` a time whose cutoff falls between them.
    let moto = Emulator::moto_with(false);
    let s3 = s3_client(&moto);
    crate::s3::bucket(&s3, "media", true, false).await;
    // 200 keys under p/: 150 expired, a third with three versions and every
    // seventh hidden by a delete marker; 50 young ones, some with two
    // versions. Versions of one key straddle delete calls (batch_size 7).
    let old: Vec<String> = (0..150).map(|i| format!("p/old/{i:03}")).collect();
    let young: Vec<String> = (0..50).map(|i| format!("p/young/{i:03}")).collect();
    let puts = old.iter().enumerate().map(|(i, key)| {
        let s3 = s3.clone();
        async move {
            for v in 0..(if i % 3 == 0 { 3 } else { 1 }) {
                put(&s3, "media", key, &format!("v{v}")).await;
            }
            if i % 7 == 0 {
                s3.delete_object()
                    .bucket("media")
                    .key(key)
                    .send()
                    .await
                    .expect("delete marker");
            }
        }
    });
    stream::iter(puts)
        .buffer_unordered(8)
        .collect::<Vec<()>>()
        .await;
    let cutoff = newest(&s3, "media", "p/old/").await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let puts = young.iter().enumerate().map(|(i, key)| {
        let s3 = s3.clone();
        async move {
            for v in 0..(1 + i % 2) {
                put(&s3, "media", key, &format!("v{v}")).await;
            }
        }
    });
    stream::iter(puts)
        .buffer_unordered(8)
        .collect::<Vec<()>>()
        .await;
    put(&s3, "media", "q/old-but-not-in-the-prefix", "q").await;
    let before = s3_versions(&s3, "media").await;
    let old_versions: usize = old.iter().map(|k| before[k]).sum();

    // 30% of the requests fail: 503 SlowDown, or the connection dropped
    // mid-request. Of the DeleteObjects calls, 40 in a row of every 133:
    // with 8 calls in flight, a burst outlasts each one's 5 attempts, so
    // whole delete calls fail and the rule converges over runs; of the
    // other requests, 30 of every 100 at seeded places, which the SDK's
    // retries absorb.
    let mut burst = vec![Fault::Drop; 40];
    for at in (0..40).step_by(4) {
        burst[at] = Fault::Busy;
    }
    let background = Schedule::seeded(SEED, 30, &[Fault::Busy, Fault::Drop, Fault::Drop]);
    assert!(
        background.longest_burst() < 5,
        "the SDK's 5 attempts get through"
    );
    let schedule = Schedule::bursts(133, &burst)
        .only(delete_objects)
        .or(background);
    let proxy = Proxy::start(&moto, Flavor::S3, schedule);
    let rule = "[[rules]]\nname = \"p\"\nstore = \"media\"\nprefix = \"p/\"\nkeep = \"0s\"\naction = \"delete\"\nversions = \"all\"\nmax_fraction = 1.0\nbatch_size = 7\n";
    let cfg = env.config(&format!("{}{rule}", s3_store(&proxy, "media")));
    // `run --at` only moves time back: with keep 0s its cutoff is `at`.
    let at = cutoff.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    assert!(newest(&s3, "media", "p/young/").await > cutoff);
    let mut removed_so_far: BTreeSet<String> = BTreeSet::new();
    let mut trail = Vec::new();
    let mut reports = Vec::new();
    for n in 1..=MAX_RUNS {
        let (out, report) = run_once(&cfg, "p", &["--at", &at], &AWS_ENV, n);
        let now = s3_versions(&s3, "media").await;
        for key in &young {
            assert_eq!(
                now.get(key),
                before.get(key),
                "run {n}: young {key} untouched: {out}"
            );
        }
        assert!(now.contains_key("q/old-but-not-in-the-prefix"), "run {n}");
        let gone: BTreeSet<String> = old
            .iter()
            .filter(|k| !now.contains_key(*k))
            .cloned()
            .collect();
        assert!(
            gone.is_superset(&removed_so_far),
            "run {n}: removed keys never come back"
        );
        removed_so_far = gone;
        trail.push((
            report["affected"].as_i64().unwrap_or(-1),
            removed_so_far.len(),
        ));
        eprintln!("run {n}: {} {}", report["outcome"], report["reason"]);
        reports.push(report.clone());
        if converged(&out, &report) {
            break;
        }
        assert!(
            n < MAX_RUNS,
            "no convergence in {MAX_RUNS} runs: {trail:?}\n{out}"
        );
    }
    let after = s3_versions(&s3, "media").await;
    let expected: BTreeMap<String, usize> = before
        .iter()
        .filter(|(k, _)| !k.starts_with("p/old/"))
        .map(|(k, v)| (k.clone(), *v))
        .collect();
    assert_eq!(
        after, expected,
        "exactly the expired keys went, every version and marker"
    );
    let key = load_public(&env.public_key).unwrap();
    let records = chain::assert_valid(&env.db.pool, &key).await;
    let (outcomes, affected) = sums(&records, "p", "affected");
    let (_, versions) = sums(&records, "p", "versions");
    assert_eq!(outcomes, reports.len(), "one outcome record per run");
    assert_eq!(
        (affected, versions),
        (old.len() as i64, old_versions as i64),
        "every removed key and version counted exactly once over {} runs: {trail:?}",
        reports.len()
    );
    let stats = proxy.stats();
    assert!(stats.faults() > 0, "{stats:?}");
    eprintln!(
        "proxy s3 prefix: {} runs (affected, removed so far) {trail:?}, {stats:?}, {:?}",
        reports.len(),
        started.elapsed()
    );
}

/// Every blob, snapshot and uncommitted blob of `container`, as Azurite
/// lists it (see [`Azure::list`]).
async fn az_names(az: &Azure, container: &str) -> BTreeSet<String> {
    az.list(container).await.into_iter().collect()
}

#[tokio::test]
async fn proxy_azure_prefix_rule_under_30pct_faults_removes_exactly_the_expired_and_counts_each_once(
) {
    let started = Instant::now();
    let env = Env::new().await;
    let azurite = Emulator::azurite();
    let az = Azure::new(&azurite);
    az.container("media").await;
    // 200 blobs under p/: 150 written 2h ago, every fifth with a snapshot,
    // and 50 young ones.
    azurite.clock("-2h");
    let old: Vec<String> = (0..150).map(|i| format!("p/old/{i:03}")).collect();
    let young: Vec<String> = (0..50).map(|i| format!("p/young/{i:03}")).collect();
    let puts = old.iter().enumerate().map(|(i, key)| {
        let az = &az;
        async move {
            az.put("media", key, "old", &[]).await;
            if i % 5 == 0 {
                az.snapshot("media", key).await;
            }
        }
    });
    stream::iter(puts)
        .buffer_unordered(8)
        .collect::<Vec<()>>()
        .await;
    az.put("media", "q/old-but-not-in-the-prefix", "q", &[])
        .await;
    azurite.clock("+0");
    let puts = young.iter().map(|key| az.put("media", key, "young", &[]));
    stream::iter(puts)
        .buffer_unordered(8)
        .collect::<Vec<()>>()
        .await;
    let before = az_names(&az, "media").await;
    assert_eq!(before.len(), 150 + 30 + 50 + 1);

    // 30% of the requests fail, at seeded places: 503 ServerBusy, or the
    // connection dropped mid-request. (A burst outlasting the SDK's six
    // retries would cost it over 25 s of backoff: the S3 test covers runs
    // that fail part way.)
    let schedule = Schedule::seeded(SEED ^ 0xa2, 30, &[Fault::Busy, Fault::Drop, Fault::Drop]);
    assert!(
        schedule.longest_burst() < 7,
        "the SDK's 7 attempts get through"
    );
    let proxy = Proxy::start(&azurite, Flavor::Azure, schedule);
    let rule = "[[rules]]\nname = \"p\"\nstore = \"media\"\nprefix = \"p/\"\nkeep = \"1h\"\naction = \"delete\"\nversions = \"all\"\nmax_fraction = 1.0\nbatch_size = 20\n";
    let cfg = env.config(&format!("{}{rule}", az_store(&proxy, "media")));
    let envs = [("AZURE_STORAGE_KEY", AZ_KEY)];
    let mut trail = Vec::new();
    let mut reports = Vec::new();
    let mut removed_so_far = 0;
    for n in 1..=MAX_RUNS {
        let (out, report) = run_once(&cfg, "p", &[], &envs, n);
        let now = az_names(&az, "media").await;
        for key in young
            .iter()
            .map(String::as_str)
            .chain(["q/old-but-not-in-the-prefix"])
        {
            assert!(now.contains(key), "run {n}: {key} untouched: {out}");
        }
        let removed = old.iter().filter(|k| !now.contains(*k)).count();
        assert!(
            removed >= removed_so_far,
            "run {n}: removed blobs never come back"
        );
        removed_so_far = removed;
        trail.push((report["affected"].as_i64().unwrap_or(-1), removed));
        reports.push(report.clone());
        if converged(&out, &report) {
            break;
        }
        assert!(
            n < MAX_RUNS,
            "no convergence in {MAX_RUNS} runs: {trail:?}\n{out}"
        );
    }
    let after = az_names(&az, "media").await;
    let expected: BTreeSet<String> = before
        .iter()
        .filter(|k| !k.starts_with("p/old/"))
        .cloned()
        .collect();
    assert_eq!(
        after, expected,
        "exactly the expired blobs went, snapshots too"
    );
    let key = load_public(&env.public_key).unwrap();
    let records = chain::assert_valid(&env.db.pool, &key).await;
    let (outcomes, affected) = sums(&records, "p", "affected");
    assert_eq!(outcomes, reports.len(), "one outcome record per run");
    assert_eq!(
        affected,
        old.len() as i64,
        "every removed blob counted exactly once: {trail:?}"
    );
    let stats = proxy.stats();
    assert!(stats.faults() > 0, "{stats:?}");
    eprintln!(
        "proxy azure prefix: {} runs (affected, removed so far) {trail:?}, {stats:?}, {:?}",
        reports.len(),
        started.elapsed()
    );
}

/// `key -> number of versions` under `prefix`, straight from moto.
async fn s3_keys(s3: &aws_sdk_s3::Client, bucket: &str, prefix: &str) -> BTreeMap<String, usize> {
    s3_versions(s3, bucket)
        .await
        .into_iter()
        .filter(|(k, _)| k.starts_with(prefix))
        .collect()
}

#[tokio::test]
async fn proxy_s3_row_linked_rule_under_sustained_throttling_progresses_and_never_orphans_an_object(
) {
    let started = Instant::now();
    let env = Env::new().await;
    let moto = Emulator::moto_with(false);
    let s3 = s3_client(&moto);
    crate::s3::bucket(&s3, "media", false, false).await;
    // Rows 1-20 are due; 1-17 name objects, 18-20 objects already gone;
    // 21-26 are young. docs/1.pdf.bak is no row's object. A row fills a
    // quarter of a heap page, so a batch (batch_size 4) is about a page.
    env.db
        .exec(
            "CREATE TABLE docs (id int primary key, created_at timestamptz not null, blob_key text, pad text);
             ALTER TABLE docs ALTER COLUMN pad SET STORAGE PLAIN;
             INSERT INTO docs SELECT g, now() - interval '2 hours', 'docs/' || g || '.pdf', repeat('x', 1800) FROM generate_series(1, 20) g;
             INSERT INTO docs SELECT g, now() - interval '10 minutes', 'docs/' || g || '.pdf', repeat('x', 1800) FROM generate_series(21, 26) g;
             ANALYZE docs;",
        )
        .await;
    let keys: Vec<String> = (1..=26)
        .filter(|i| !(18..=20).contains(i))
        .map(|i| format!("docs/{i}.pdf"))
        .chain(["docs/1.pdf.bak".to_string()])
        .collect();
    stream::iter(keys.iter().map(|k| put(&s3, "media", k, "pdf")))
        .buffer_unordered(8)
        .collect::<Vec<()>>()
        .await;

    // Sustained throttling of the delete calls: the first five attempts
    // are all 503 SlowDown (as many as the SDK makes), one passes, then
    // five more fail (SlowDown, then dropped mid-request); the other
    // requests fail 10% of the time at seeded places.
    let mut deletes: Vec<Option<Fault>> = vec![Some(Fault::Busy); 5];
    deletes.push(None);
    deletes.extend(
        [
            Fault::Busy,
            Fault::Busy,
            Fault::Drop,
            Fault::Drop,
            Fault::Drop,
        ]
        .map(Some),
    );
    deletes.extend(std::iter::repeat_n(None, 1000));
    // No other request fails 5 times in a row: the identity check always
    // passes and every run gets to its deletes.
    let background = Schedule::seeded(SEED ^ 0x70, 10, &[Fault::Busy, Fault::Drop]);
    assert!(
        background.longest_burst() < 5,
        "the SDK's 5 attempts get through"
    );
    let schedule = Schedule::pattern(deletes)
        .only(delete_objects)
        .or(background);
    let proxy = Proxy::start(&moto, Flavor::S3, schedule);
    let rule = "[[rules]]\nname = \"docs\"\nstore = \"app\"\ntable = \"docs\"\nage = \"created_at\"\nkeep = \"1h\"\naction = \"delete\"\nmax_fraction = 1.0\nbatch_size = 4\n\
                blobs = { store = \"media\", key_column = \"blob_key\" }\n";
    let cfg = env.config(&format!("{}{rule}", s3_store(&proxy, "media")));
    let ids =
        |rows: Vec<String>| -> BTreeSet<i32> { rows.iter().map(|r| r.parse().unwrap()).collect() };
    let mut rows = ids(env.db.strings("SELECT id::text FROM docs").await);
    let mut trail = Vec::new();
    let mut reports = Vec::new();
    for n in 1..=MAX_RUNS {
        let (out, report) = run_once(&cfg, "docs", &[], &AWS_ENV, n);
        let now = ids(env.db.strings("SELECT id::text FROM docs").await);
        let objects = s3_keys(&s3, "media", "docs/").await;
        assert!(
            now.is_subset(&rows),
            "run {n}: deleted rows never come back"
        );
        let due_left: BTreeSet<i32> = now.iter().copied().filter(|i| *i <= 20).collect();
        assert!(
            now.len() < rows.len() || due_left.is_empty(),
            "run {n}: every run removes a row until none is due: {out}"
        );
        for id in rows.difference(&now) {
            assert!(
                !objects.contains_key(&format!("docs/{id}.pdf")),
                "run {n}: row {id} went, its object must have gone first"
            );
        }
        for id in 21..=26 {
            assert!(now.contains(&id), "run {n}: young row {id} stays");
            assert!(objects.contains_key(&format!("docs/{id}.pdf")), "run {n}");
        }
        assert!(objects.contains_key("docs/1.pdf.bak"), "run {n}");
        if report["outcome"] == "failed" {
            // The rows kept are exactly the due rows still there.
            let reason = report["reason"].as_str().unwrap_or_default();
            assert!(
                reason.starts_with(&format!("{} due row(s) kept", due_left.len())),
                "run {n}: {reason}"
            );
        }
        rows = now;
        trail.push((
            report["affected"].as_i64().unwrap_or(-1),
            report["objects"].as_i64().unwrap_or(-1),
            due_left.len(),
        ));
        reports.push(report.clone());
        if converged(&out, &report) {
            break;
        }
        assert!(
            n < MAX_RUNS,
            "no convergence in {MAX_RUNS} runs: {trail:?}\n{out}"
        );
    }
    assert_eq!(
        rows,
        (21..=26).collect::<BTreeSet<i32>>(),
        "every due row went"
    );
    let objects = s3_keys(&s3, "media", "docs/").await;
    let mut left: Vec<&str> = objects.keys().map(String::as_str).collect();
    left.sort();
    let mut want: Vec<String> = (21..=26).map(|i| format!("docs/{i}.pdf")).collect();
    want.push("docs/1.pdf.bak".into());
    want.sort();
    assert_eq!(left, want);
    let key = load_public(&env.public_key).unwrap();
    let records = chain::assert_valid(&env.db.pool, &key).await;
    let (outcomes, affected) = sums(&records, "docs", "affected");
    let (_, deleted_objects) = sums(&records, "docs", "objects");
    assert_eq!(outcomes, reports.len());
    assert_eq!(
        (affected, deleted_objects),
        (20, 17),
        "rows and objects each counted once: {trail:?}"
    );
    assert!(
        reports.len() >= 2,
        "the throttling failed some delete calls: {trail:?}"
    );
    eprintln!(
        "proxy s3 rows: {} runs (affected, objects, due left) {trail:?}, {:?}, {:?}",
        reports.len(),
        proxy.stats(),
        started.elapsed()
    );
}

/// A delete whose answer is lost: DeleteObjects reaches moto and is done,
/// the answer never comes back, and every retry is dropped. The store is
/// asked again what it still has, so the run counts the 10 objects it
/// removed; no later run could (docs/audit-format.md: "the sum of
/// `counts.affected` over its outcome records is the number of rows it
/// removed", objects for a blob rule).
#[tokio::test]
async fn proxy_s3_delete_whose_answer_is_lost_is_still_counted() {
    let env = Env::new().await;
    let moto = Emulator::moto_with(false);
    let s3 = s3_client(&moto);
    crate::s3::bucket(&s3, "media", false, false).await;
    for i in 0..10 {
        put(&s3, "media", &format!("p/{i}"), "p").await;
    }
    let schedule = Schedule::sequence(
        &[
            Fault::Lost,
            Fault::Drop,
            Fault::Drop,
            Fault::Drop,
            Fault::Drop,
        ],
        1000,
    )
    .only(delete_objects);
    let proxy = Proxy::start(&moto, Flavor::S3, schedule);
    let rule = "[[rules]]\nname = \"p\"\nstore = \"media\"\nprefix = \"p/\"\nkeep = \"0s\"\naction = \"delete\"\nmax_fraction = 1.0\n";
    let cfg = env.config(&format!("{}{rule}", s3_store(&proxy, "media")));
    let (first, report) = run_once(&cfg, "p", &[], &AWS_ENV, 0);
    assert_eq!(report["outcome"], "ok", "{first}");
    assert_eq!(report["affected"], 10, "{first}");
    assert!(
        first
            .stderr
            .contains("listing again shows the store did remove"),
        "the doubt is logged: {first}"
    );
    assert!(
        s3_keys(&s3, "media", "p/").await.is_empty(),
        "moto did delete them"
    );
    let (second, report) = run_once(&cfg, "p", &[], &AWS_ENV, 2);
    assert!(converged(&second, &report), "{second}");
    let stats = proxy.stats();
    assert_eq!((stats.lost, stats.dropped), (1, 4), "{stats:?}");
    let key = load_public(&env.public_key).unwrap();
    let records = chain::assert_valid(&env.db.pool, &key).await;
    let (outcomes, affected) = sums(&records, "p", "affected");
    assert_eq!(outcomes, 2);
    assert_eq!(
        affected, 10,
        "10 objects removed, so 10 counted: {first}\n{second}"
    );
}
