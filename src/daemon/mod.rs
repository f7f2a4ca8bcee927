//! `retentiond serve`: the long-running service.
//!
//! Each rule runs on its schedule ([`schedule`]); several replicas coordinate
//! through the audit store (a per-rule advisory lock, see
//! [`crate::audit::log::Claim`]); `/healthz`, `/readyz` and `/metrics` are
//! served over HTTP ([`http`], [`metrics`]).
//!
//! At start-up, before it reports ready, the daemon plans every rule and sets
//! its per-rule series from the plan, so they exist from the first scrape;
//! then the rules that are overdue (no `ok` run within their schedule's
//! interval, or never) run once, claimed like scheduled runs, before the
//! schedule takes over. SIGTERM or SIGINT stop the
//! scheduling, let running rules finish their current batch within the grace
//! period and record `interrupted`; SIGHUP reloads the rules file (a bad file
//! keeps the old config). Store outages are retried with capped exponential
//! backoff and reported as not ready; they never end the process.

pub mod http;
pub mod metrics;
pub mod schedule;

use crate::audit::{AuditLog, Signer};
use crate::config::{Config, Rule};
use crate::engine::{Cancel, Claimed, Runner};
use crate::plan::PlanOptions;
use crate::store::Stores;
use chrono::{DateTime, Utc};
use metrics::Metrics;
use schedule::RuleSchedule;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, Semaphore};

/// How `serve` was started.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// The rules file.
    pub config: PathBuf,
    /// HTTP address.
    pub listen: SocketAddr,
    /// How long running rules get to finish their batch after SIGTERM.
    pub grace: Duration,
    /// Rules run at the same time, at most.
    pub max_concurrent_rules: usize,
}

/// State the HTTP handlers read.
pub struct Shared {
    /// The metrics.
    pub metrics: Metrics,
    /// Config loaded and every store answering.
    pub ready: AtomicBool,
}

/// Everything one config generation needs.
struct Generation {
    config: Arc<Config>,
    stores: Arc<Stores>,
    audit: Arc<AuditLog>,
    schedules: Vec<(String, RuleSchedule)>,
}

/// Capped exponential backoff for store outages.
const BACKOFF_START: Duration = Duration::from_secs(1);
const BACKOFF_MAX: Duration = Duration::from_secs(60);

/// Runs the service until a signal stops it; returns the exit code.
///
/// `config` is the loaded rules file (`options.config` is re-read on
/// SIGHUP); `signals` is where stop and reload requests come from: the
/// process's own ([`os_signals`]), or a test's.
pub async fn serve(
    config: Config,
    options: ServeOptions,
    mut signals: mpsc::UnboundedReceiver<Signal>,
) -> Result<(), ServeError> {
    let config = Arc::new(config);
    if config.audit.is_none() {
        return Err(ServeError::Config(
            "serve writes audit records and needs an [audit] section".into(),
        ));
    }
    let metrics = Metrics::new().map_err(|e| ServeError::Failed(format!("metrics: {e}")))?;
    let shared = Arc::new(Shared {
        metrics,
        ready: AtomicBool::new(false),
    });
    let listener = tokio::net::TcpListener::bind(options.listen)
        .await
        .map_err(|e| ServeError::Failed(format!("cannot listen on {}: {e}", options.listen)))?;
    tracing::info!(listen = %options.listen, rules = config.rules.len(), "Serving.");
    let stop = Cancel::default();
    let http_stop = stop.clone();
    let http = tokio::spawn(http::serve(listener, shared.clone(), http_stop));

    let mut generation = match connect(&config, &shared, &stop, &mut signals).await {
        Some(g) => g,
        None => return finish(http).await,
    };
    let concurrency = options.max_concurrent_rules.max(1);
    // Every rule's series before the first ready answer; a stop signal
    // meanwhile ends the process (nothing has run yet).
    let overdue = tokio::select! {
        o = startup(&generation, &shared, concurrency) => o,
        Some(Signal::Stop) = signals.recv() => return finish(http).await,
    };
    let cancel = Cancel::default();
    let limit = Arc::new(Semaphore::new(concurrency));
    let (done_tx, mut done) = mpsc::unbounded_channel::<String>();
    let mut running: HashMap<String, tokio::task::JoinHandle<()>> = HashMap::new();
    for name in overdue {
        let handle = spawn_startup_run(
            &generation,
            &shared,
            &cancel,
            &limit,
            &done_tx,
            name.clone(),
        );
        running.insert(name, handle);
    }
    let mut next = next_runs(&generation, &running);
    let probe = spawn_probe(
        shared.clone(),
        generation.stores.clone(),
        generation.audit.clone(),
    );
    let mut probe = Some(probe);

    loop {
        let due = next
            .iter()
            .filter(|(name, _)| !running.contains_key(*name))
            .map(|(_, (_, start))| *start)
            .min();
        let sleep = due.map_or(Duration::from_secs(3600), |d| {
            (d - Utc::now()).to_std().unwrap_or(Duration::ZERO)
        });
        tokio::select! {
            _ = tokio::time::sleep(sleep) => {
                let now = Utc::now();
                let ready: Vec<(String, chrono::DateTime<Utc>)> = next
                    .iter()
                    .filter(|(name, (_, start))| *start <= now && !running.contains_key(*name))
                    .map(|(name, (slot, _))| (name.clone(), *slot))
                    .collect();
                for (name, slot) in ready {
                    next.remove(&name);
                    let handle = spawn_rule(&generation, &shared, &cancel, &limit, &done_tx, name.clone(), slot);
                    running.insert(name, handle);
                }
            }
            Some(name) = done.recv() => {
                running.remove(&name);
                // From now: a long run delays its next slot rather than stacking.
                if let Some((_, s)) = generation.schedules.iter().find(|(n, _)| n == &name) {
                    if let Some(when) = s.next(Utc::now()) {
                        next.insert(name, when);
                    }
                }
            }
            Some(signal) = signals.recv() => match signal {
                Signal::Stop => break,
                Signal::Reload => {
                    match reload(&options, &generation, &shared).await {
                        Some(g) => {
                            // New rules' series exist before their first run.
                            let added: Vec<String> = g
                                .config
                                .rules
                                .iter()
                                .filter(|r| !generation.config.rules.iter().any(|o| o.name == r.name))
                                .map(|r| r.name.clone())
                                .collect();
                            if !added.is_empty() {
                                spawn_plans(&g, &shared, added, concurrency);
                            }
                            generation = g;
                            next = next_runs(&generation, &running);
                            if let Some(p) = probe.take() {
                                p.abort();
                            }
                            probe = Some(spawn_probe(shared.clone(), generation.stores.clone(), generation.audit.clone()));
                        }
                        None => continue,
                    }
                }
            }
        }
    }

    // Stop: no new runs; running ones finish their current batch.
    tracing::info!(
        running = running.len(),
        grace_seconds = options.grace.as_secs(),
        "Stopping: finishing the current batches."
    );
    cancel.cancel();
    let all = futures_util::future::join_all(running.into_values());
    if tokio::time::timeout(options.grace, all).await.is_err() {
        tracing::error!(
            "Grace period over with a batch still running; exiting (PostgreSQL rolls it back)."
        );
    }
    if let Some(p) = probe {
        p.abort();
    }
    stop.cancel();
    finish(http).await
}

async fn finish(http: tokio::task::JoinHandle<()>) -> Result<(), ServeError> {
    http.abort();
    let _ = http.await;
    Ok(())
}

/// Why `serve` could not run.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The rules file does not allow serving.
    #[error("{0}")]
    Config(String),
    /// Something the process needs failed (the HTTP listener, metrics).
    #[error("{0}")]
    Failed(String),
}

/// What the main loop is asked to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// Finish the running batches and exit (SIGTERM, SIGINT).
    Stop,
    /// Re-read the rules file (SIGHUP).
    Reload,
}

/// The process's SIGTERM and SIGINT (stop) and SIGHUP (reload), as
/// [`Signal`]s for [`serve`].
pub fn os_signals() -> mpsc::UnboundedReceiver<Signal> {
    let (tx, rx) = mpsc::unbounded_channel();
    spawn_signal_handlers(tx);
    rx
}

fn spawn_signal_handlers(tx: mpsc::UnboundedSender<Signal>) {
    let stop = tx.clone();
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            let _ = stop.send(Signal::Stop);
        }
    });
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let stop = tx.clone();
        tokio::spawn(async move {
            if let Ok(mut s) = signal(SignalKind::terminate()) {
                s.recv().await;
                tracing::info!("SIGTERM received.");
                let _ = stop.send(Signal::Stop);
            }
        });
        tokio::spawn(async move {
            if let Ok(mut s) = signal(SignalKind::hangup()) {
                while s.recv().await.is_some() {
                    tracing::info!("SIGHUP received: reloading the rules file.");
                    if tx.send(Signal::Reload).is_err() {
                        break;
                    }
                }
            }
        });
    }
}

/// Opens the stores and the audit log, retrying with capped exponential
/// backoff (not ready meanwhile) until they answer or a stop signal comes.
async fn connect(
    config: &Arc<Config>,
    shared: &Shared,
    stop: &Cancel,
    signals: &mut mpsc::UnboundedReceiver<Signal>,
) -> Option<Generation> {
    let mut backoff = BACKOFF_START;
    loop {
        match open_generation(config).await {
            Ok(g) => {
                record_config(&g, "serve").await;
                shared.metrics.set_intervals(&g.schedules);
                return Some(g);
            }
            Err((store, e)) => {
                shared.ready.store(false, Ordering::SeqCst);
                shared.metrics.set_ready(false);
                shared.metrics.store_error(&store);
                tracing::warn!(store = %store, error = %e, retry_in_seconds = backoff.as_secs(), "Store unavailable; retrying.");
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            Some(Signal::Stop) = signals.recv() => return None,
        }
        if stop.is_cancelled() {
            return None;
        }
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

async fn open_generation(config: &Arc<Config>) -> Result<Generation, (String, String)> {
    let audit_cfg = config
        .audit
        .as_ref()
        .ok_or(("audit".to_string(), "no [audit] section".to_string()))?;
    let stores = Stores::open(config).map_err(|e| (e.store.clone(), e.to_string()))?;
    let pg = stores
        .postgres(&audit_cfg.store)
        .ok_or((audit_cfg.store.clone(), "not a postgres store".to_string()))?;
    let signer =
        Signer::load(&audit_cfg.signing_key).map_err(|e| ("audit".to_string(), e.to_string()))?;
    let audit = AuditLog::open(pg.pool.clone(), signer, audit_cfg.jsonl.clone())
        .await
        .map_err(|e| (audit_cfg.store.clone(), e.to_string()))?;
    let mut schedules = Vec::new();
    for rule in &config.rules {
        match RuleSchedule::new(&rule.name, &rule.settings.schedule, rule.settings.jitter) {
            Ok(s) => schedules.push((rule.name.clone(), s)),
            Err(e) => {
                return Err((
                    "config".to_string(),
                    format!("rule {}: schedule: {e}", rule.name),
                ))
            }
        }
    }
    Ok(Generation {
        config: config.clone(),
        stores: Arc::new(stores),
        audit: Arc::new(audit),
        schedules,
    })
}

async fn record_config(g: &Generation, command: &str) {
    if let Err(e) = crate::engine::record_config(&g.audit, &g.config, command).await {
        tracing::error!(error = %e, "Could not record the loaded config or its holds.");
    }
}

/// Validates the file again; a bad file keeps the running config.
async fn reload(
    options: &ServeOptions,
    current: &Generation,
    shared: &Shared,
) -> Option<Generation> {
    let config = match Config::load(&options.config) {
        Ok(c) => Arc::new(c),
        Err(crate::config::LoadError::Invalid(e)) => {
            let first = e.problems.first().map(|p| {
                let (line, col) = e.line_col(p.span.offset());
                format!("{}:{line}:{col}: {}", e.path, p.message)
            });
            tracing::error!(
                problems = e.problems.len(),
                first = first.unwrap_or_default(),
                "Reload refused: the rules file has problems; keeping the running config."
            );
            return None;
        }
        Err(e) => {
            tracing::error!(error = %e, "Reload refused; keeping the running config.");
            return None;
        }
    };
    if config.source.sha256 == current.config.source.sha256 {
        tracing::info!("Reload: the rules file is unchanged.");
        return None;
    }
    match open_generation(&config).await {
        Ok(g) => {
            record_config(&g, "serve (reload)").await;
            shared.metrics.set_intervals(&g.schedules);
            tracing::info!(rules = g.config.rules.len(), "Reloaded the rules file.");
            Some(g)
        }
        Err((store, e)) => {
            shared.metrics.store_error(&store);
            tracing::error!(store = %store, error = %e, "Reload refused: a store of the new config is unavailable; keeping the running config.");
            None
        }
    }
}

/// The next slot and start time of every rule not running now.
fn next_runs(
    g: &Generation,
    running: &HashMap<String, tokio::task::JoinHandle<()>>,
) -> HashMap<String, (chrono::DateTime<Utc>, chrono::DateTime<Utc>)> {
    let now = Utc::now();
    g.schedules
        .iter()
        .filter(|(name, _)| !running.contains_key(name))
        .filter_map(|(name, s)| s.next(now).map(|n| (name.clone(), n)))
        .collect()
}

fn spawn_rule(
    g: &Generation,
    shared: &Arc<Shared>,
    cancel: &Cancel,
    limit: &Arc<Semaphore>,
    done: &mpsc::UnboundedSender<String>,
    name: String,
    slot: DateTime<Utc>,
) -> tokio::task::JoinHandle<()> {
    let (config, stores, audit) = (g.config.clone(), g.stores.clone(), g.audit.clone());
    let (shared, cancel, limit, done) =
        (shared.clone(), cancel.clone(), limit.clone(), done.clone());
    tokio::spawn(async move {
        let _permit = limit.acquire_owned().await;
        if let Some(rule) = config.rules.iter().find(|r| r.name == name) {
            if !cancel.is_cancelled() {
                run_in_slot(&config, &stores, &audit, &shared, &cancel, rule, slot).await;
            }
        }
        let _ = done.send(name);
    })
}

/// Runs `rule` for `slot` if this process can claim it and no run started
/// at or after `slot`; records the run's metrics.
async fn run_in_slot(
    config: &Config,
    stores: &Stores,
    audit: &AuditLog,
    shared: &Shared,
    cancel: &Cancel,
    rule: &Rule,
    slot: DateTime<Utc>,
) {
    let runner = Runner {
        config,
        stores,
        audit,
        options: PlanOptions {
            for_run: true,
            ..PlanOptions::default()
        },
        cancel: cancel.clone(),
        progress: &(),
    };
    let started = std::time::Instant::now();
    match runner.run_rule_in_slot(rule, Some(slot)).await {
        Claimed::Ran(report) => shared
            .metrics
            .record(&report, started.elapsed().as_secs_f64()),
        Claimed::Busy => {
            tracing::debug!(rule = %rule.name, "Another replica is running this rule.")
        }
        Claimed::AlreadyServed => {
            tracing::debug!(rule = %rule.name, "Another replica already served this slot.")
        }
    }
}

/// How long the start-up plans may hold readiness back; plans still running
/// then go on in the background and set their rule's series when done.
const STARTUP_PLAN_WAIT: Duration = Duration::from_secs(20);

/// The longest a start-up plan may take before its rule is shown as failed.
const STARTUP_PLAN_MAX: Duration = Duration::from_secs(600);

/// Start-up, before ready: plans every rule (at most `concurrency` at once)
/// and sets its series, sets every rule's last success from the audit log,
/// and returns the rules that look overdue (each is checked again under
/// its claim before it runs).
async fn startup(g: &Generation, shared: &Arc<Shared>, concurrency: usize) -> Vec<String> {
    let started = std::time::Instant::now();
    let names = g.config.rules.iter().map(|r| r.name.clone()).collect();
    let mut plans = spawn_plans(g, shared, names, concurrency);
    let now = Utc::now();
    let checks = g.schedules.iter().map(|(name, schedule)| async move {
        let last = tokio::time::timeout(PROBE_TIMEOUT * 5, g.audit.last_success(name)).await;
        let last = match last {
            Ok(Ok(last)) => {
                shared.metrics.set_last_success(name, last);
                Some(last)
            }
            Ok(Err(e)) => {
                tracing::warn!(rule = %name, error = %e, "Could not read the rule's last success.");
                None
            }
            Err(_) => {
                tracing::warn!(rule = %name, "Reading the rule's last success timed out.");
                None
            }
        };
        // Unknown counts as overdue: the check under the claim decides.
        let overdue = last.is_none_or(|last| is_overdue(schedule, last, now));
        overdue.then(|| name.clone())
    });
    let overdue: Vec<String> = futures_util::future::join_all(checks)
        .await
        .into_iter()
        .flatten()
        .collect();
    if tokio::time::timeout(STARTUP_PLAN_WAIT, &mut plans)
        .await
        .is_err()
    {
        tracing::warn!(
            wait_seconds = STARTUP_PLAN_WAIT.as_secs(),
            "Start-up plans still running; ready without the numbers of the rules they have not finished, which follow when they do."
        );
    }
    tracing::info!(
        rules = g.config.rules.len(),
        overdue = overdue.len(),
        seconds = started.elapsed().as_secs_f64(),
        "Start-up plan done."
    );
    overdue
}

/// Plans the rules `names` of `g` in the background (at most `concurrency`
/// at once) and sets their series. Each PostgreSQL store is probed once
/// first: a store that is down fails its rules' plans at once rather than
/// hold each for the pool's whole acquire timeout.
fn spawn_plans(
    g: &Generation,
    shared: &Arc<Shared>,
    names: Vec<String>,
    concurrency: usize,
) -> tokio::task::JoinHandle<()> {
    let (config, stores, shared) = (g.config.clone(), g.stores.clone(), shared.clone());
    tokio::spawn(async move {
        let probes = stores.all_postgres().map(|(name, pg)| async move {
            (!answers(&pg.pool).await).then(|| (name.to_string(), pg.address()))
        });
        let down: HashMap<String, String> = futures_util::future::join_all(probes)
            .await
            .into_iter()
            .flatten()
            .collect();
        let permits = Semaphore::new(concurrency.max(1));
        let plans = config
            .rules
            .iter()
            .filter(|r| names.contains(&r.name))
            .map(|rule| async {
                let _permit = permits.acquire().await;
                startup_plan(&config, &stores, &shared, rule, &down).await;
            });
        futures_util::future::join_all(plans).await;
    })
}

/// Plans `rule` and sets its series; a rule on a store in `down` (name →
/// address), or a plan past [`STARTUP_PLAN_MAX`], shows as
/// `retentiond_rule_plan_failed`.
async fn startup_plan(
    config: &Config,
    stores: &Stores,
    shared: &Shared,
    rule: &Rule,
    down: &HashMap<String, String>,
) {
    let report = match down.get(&rule.store) {
        Some(address) => {
            let mut r = crate::plan::RuleReport::new(rule);
            r.outcome = crate::plan::Outcome::Failed;
            r.reason = Some(format!(
                "store `{}` ({address}) does not answer",
                rule.store
            ));
            r
        }
        _ => {
            let plan = crate::plan::prepare(config, stores, rule, PlanOptions::default());
            match tokio::time::timeout(STARTUP_PLAN_MAX, plan).await {
                Ok(p) => p.report,
                Err(_) => {
                    let mut r = crate::plan::RuleReport::new(rule);
                    r.outcome = crate::plan::Outcome::Failed;
                    r.reason = Some(format!(
                        "the plan took over {}s",
                        STARTUP_PLAN_MAX.as_secs()
                    ));
                    r
                }
            }
        }
    };
    if report.outcome == crate::plan::Outcome::Failed {
        tracing::warn!(rule = %rule.name, reason = report.reason.as_deref().unwrap_or_default(), "Start-up plan failed.");
        shared.metrics.mark_plan_failed(&report);
    } else {
        tracing::debug!(rule = %rule.name, outcome = ?report.outcome, matched = report.matched, "Start-up plan.");
        shared.metrics.planned(&report);
    }
}

/// True when `rule`'s last `ok` run (None: never) is older than its
/// schedule's interval. A schedule with no slot left is never overdue.
fn is_overdue(schedule: &RuleSchedule, last: Option<DateTime<Utc>>, now: DateTime<Utc>) -> bool {
    if schedule.next(now).is_none() {
        return false;
    }
    match (last, schedule.interval(now)) {
        (None, _) => true,
        (Some(last), Some(interval)) => now - last > interval,
        (Some(_), None) => false,
    }
}

/// Runs an overdue rule once at start-up: under the rule's claim, checks it
/// is still overdue (another replica may have run it meanwhile) and reads
/// the audit database's clock; then runs it with that time as its slot, so
/// a replica whose check came before another's run finds the slot served.
fn spawn_startup_run(
    g: &Generation,
    shared: &Arc<Shared>,
    cancel: &Cancel,
    limit: &Arc<Semaphore>,
    done: &mpsc::UnboundedSender<String>,
    name: String,
) -> tokio::task::JoinHandle<()> {
    let (config, stores, audit) = (g.config.clone(), g.stores.clone(), g.audit.clone());
    let schedule = g
        .schedules
        .iter()
        .find(|(n, _)| n == &name)
        .map(|(_, s)| s.clone());
    let (shared, cancel, limit, done) =
        (shared.clone(), cancel.clone(), limit.clone(), done.clone());
    tokio::spawn(async move {
        let _permit = limit.acquire_owned().await;
        let rule = config.rules.iter().find(|r| r.name == name);
        if let (Some(rule), Some(schedule)) = (rule, schedule) {
            if !cancel.is_cancelled() {
                if let Some(slot) = still_overdue(&audit, &name, &schedule).await {
                    tracing::info!(rule = %name, "Overdue at start-up: running it now.");
                    run_in_slot(&config, &stores, &audit, &shared, &cancel, rule, slot).await;
                }
            }
        }
        let _ = done.send(name);
    })
}

/// Under `rule`'s claim: the audit database's time when the rule is still
/// overdue, None when it is not, is claimed elsewhere, or cannot be checked.
async fn still_overdue(
    audit: &AuditLog,
    rule: &str,
    schedule: &RuleSchedule,
) -> Option<DateTime<Utc>> {
    let claim = match audit.claim(rule).await {
        Ok(Some(c)) => c,
        Ok(None) => {
            tracing::info!(rule = %rule, "Overdue at start-up, but another process holds it; skipping.");
            return None;
        }
        Err(e) => {
            tracing::warn!(rule = %rule, error = %e, "Could not claim an overdue rule at start-up; the schedule will run it.");
            return None;
        }
    };
    let checked = async {
        let last = audit.last_success(rule).await?;
        let now: DateTime<Utc> = sqlx::query_scalar("SELECT clock_timestamp()")
            .fetch_one(audit.pool())
            .await
            .map_err(crate::audit::AuditError::from)?;
        Ok::<_, crate::audit::AuditError>((last, now))
    }
    .await;
    claim.release().await;
    match checked {
        Ok((last, db_now)) if is_overdue(schedule, last, Utc::now()) => Some(db_now),
        Ok(_) => {
            tracing::info!(rule = %rule, "Not overdue any more (run by another replica meanwhile); skipping.");
            None
        }
        Err(e) => {
            tracing::warn!(rule = %rule, error = %e, "Could not check an overdue rule at start-up; the schedule will run it.");
            None
        }
    }
}

/// True when the store answers `SELECT 1` within [`PROBE_TIMEOUT`] (a pool
/// waits far longer for a connection when the server is down).
async fn answers(pool: &sqlx::PgPool) -> bool {
    matches!(
        tokio::time::timeout(PROBE_TIMEOUT, sqlx::query("SELECT 1").execute(pool)).await,
        Ok(Ok(_))
    )
}

/// How long a readiness probe waits for a store.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// How often readiness is probed.
const PROBE_INTERVAL: Duration = Duration::from_secs(3);

/// Probes every store every [`PROBE_INTERVAL`]: ready when all answer.
fn spawn_probe(
    shared: Arc<Shared>,
    stores: Arc<Stores>,
    audit: Arc<AuditLog>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            let mut ok = answers(audit.pool()).await;
            for (name, pg) in stores.all_postgres() {
                if !answers(&pg.pool).await {
                    shared.metrics.store_error(name);
                    ok = false;
                }
            }
            if ok != shared.ready.swap(ok, Ordering::SeqCst) {
                tracing::info!(ready = ok, "Readiness changed.");
            }
            shared.metrics.set_ready(ok);
            tokio::time::sleep(PROBE_INTERVAL).await;
        }
    })
}
