//! Runs rules: prepare (the plan's numbers), record intent, execute in
//! batches, record the outcome.
//!
//! A refused or failed rule does not stop the others. Cancellation is only
//! ever honoured between batches, so a batch is either committed whole or
//! rolled back, and the outcome record is always written.

mod batches;
mod blob;

use crate::audit::events::{Counts, Planned, RuleRun, RunIntent, RunOutcome};
use crate::audit::record::format_ts;
use crate::audit::{AuditLog, Event};
use crate::config::{Config, Rule};
use crate::plan::{self, Outcome, PlanOptions, RuleReport};
use crate::store::postgres::progress::{self, Totals};
use crate::store::Stores;
use chrono::{DateTime, Utc};
use serde_json::{Map, Value};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

pub use batches::{execute as execute_rule_batches, Executed, Linked, Progress};

/// Set to stop a run after its current batch.
#[derive(Debug, Clone, Default)]
pub struct Cancel(Arc<AtomicBool>);

impl Cancel {
    /// Asks running rules to stop after their current batch.
    pub fn cancel(&self) {
        self.0.store(true, Ordering::SeqCst);
    }

    /// True once cancelled.
    pub fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

/// Everything a run needs.
pub struct Runner<'a> {
    /// The rules file.
    pub config: &'a Config,
    /// Open stores.
    pub stores: &'a Stores,
    /// Where records go.
    pub audit: &'a AuditLog,
    /// `--at`, `--allow-large`.
    pub options: PlanOptions,
    /// Stop between batches.
    pub cancel: Cancel,
    /// Called after every batch.
    pub progress: &'a (dyn Progress + Sync),
}

/// What claiming a rule led to.
#[derive(Debug)]
pub enum Claimed {
    /// This process ran it.
    Ran(Box<RuleReport>),
    /// Another process holds the rule's claim.
    Busy,
    /// Another replica already served this schedule slot.
    AlreadyServed,
}

/// A run of several rules.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RunReport {
    /// When the run started.
    #[serde(serialize_with = "plan::ser_ts")]
    pub at: DateTime<Utc>,
    /// One report per rule.
    pub rules: Vec<RuleReport>,
}

/// Rules [`Runner::run`] runs at once, at most. Small rules spend most of
/// their time waiting for commits (their audit records, their batch), so a
/// few at once overlap those waits (and share the audit log's group
/// commits); more would mostly compete for the store's pooled connections
/// (`max_connections`, default 4) and the claim sessions kept for reuse.
pub const CONCURRENT_RULES: usize = 4;

/// How many of `rules` may run at once: [`CONCURRENT_RULES`], fewer when
/// the smallest PostgreSQL pool could not give every running rule all its
/// workers' connections (a rule holds up to `parallelism` of them while it
/// purges; one left waiting for a connection longer than the pool's
/// acquire timeout would fail). `max_connections = 1` runs rules one by one.
fn concurrency(config: &Config, rules: &[&Rule]) -> usize {
    let pool = config
        .stores
        .values()
        .filter_map(|s| match s {
            crate::config::StoreConfig::Postgres {
                max_connections, ..
            } => Some(*max_connections as usize),
            _ => None,
        })
        .min()
        .unwrap_or(CONCURRENT_RULES);
    let widest = rules
        .iter()
        .map(|r| r.settings.parallelism.max(1) as usize)
        .max()
        .unwrap_or(1);
    (pool / widest).clamp(1, CONCURRENT_RULES)
}

impl Runner<'_> {
    /// Records the config, then runs the rules, up to [`CONCURRENT_RULES`]
    /// at once (see [`concurrency`]); rules that could touch the same data (see [`rule_conflicts`])
    /// run one after another, in the order given. Reports keep that order.
    pub async fn run(&self, rules: &[&Rule]) -> RunReport {
        use futures_util::StreamExt;
        let at = Utc::now();
        let mut reports = Vec::new();
        if let Err(e) = record_config(self.audit, self.config, "run").await {
            // Without a working audit log nothing may run.
            for rule in rules {
                let mut r = RuleReport::new(rule);
                r.outcome = Outcome::Failed;
                r.reason = Some(format!("audit log unavailable, nothing was run: {e}"));
                reports.push(r);
            }
            return RunReport { at, rules: reports };
        }
        let lanes = futures_util::stream::iter(rule_lanes(rules))
            .map(|lane| async move {
                let mut done = Vec::with_capacity(lane.len());
                for i in lane {
                    let rule = rules[i];
                    if self.cancel.is_cancelled() {
                        let mut r = RuleReport::new(rule);
                        r.outcome = Outcome::Interrupted;
                        r.reason = Some("not started: the run was interrupted".into());
                        done.push((i, r));
                        continue;
                    }
                    done.push((i, self.run_rule(rule).await));
                }
                done
            })
            .buffer_unordered(concurrency(self.config, rules))
            .collect::<Vec<_>>()
            .await;
        let mut by_index: Vec<Option<RuleReport>> = rules.iter().map(|_| None).collect();
        for (i, r) in lanes.into_iter().flatten() {
            by_index[i] = Some(r);
        }
        reports.extend(by_index.into_iter().flatten());
        self.write_checkpoint().await;
        RunReport { at, rules: reports }
    }

    /// Appends a signed checkpoint of the head to `[audit] checkpoints`.
    async fn write_checkpoint(&self) {
        let Some(path) = self
            .config
            .audit
            .as_ref()
            .and_then(|a| a.checkpoints.as_ref())
        else {
            return;
        };
        let written = match self.audit.checkpoint().await {
            Ok(Some(line)) => {
                crate::audit::checkpoint::append(path, &line).map_err(|e| e.to_string())
            }
            Ok(None) => Ok(()),
            Err(e) => Err(e.to_string()),
        };
        if let Err(e) = written {
            tracing::error!(path = %path.display(), error = %e, "Could not write the audit checkpoint.");
        }
    }

    /// Runs one rule: intent record, batches, outcome record.
    pub async fn run_rule(&self, rule: &Rule) -> RuleReport {
        match self.run_rule_in_slot(rule, None).await {
            Claimed::Ran(report) => *report,
            Claimed::Busy => {
                let mut r = RuleReport::new(rule);
                r.outcome = Outcome::Refused;
                r.reason = Some(
                    "another retentiond process is running this rule now; nothing was done".into(),
                );
                r
            }
            // Only a daemon passes a slot; a CLI run is never "already served".
            Claimed::AlreadyServed => RuleReport::new(rule),
        }
    }

    /// Runs one rule if this process can claim it. With `slot` (the
    /// scheduled time the daemon is serving), a slot another replica already
    /// served is skipped.
    pub async fn run_rule_in_slot(&self, rule: &Rule, slot: Option<DateTime<Utc>>) -> Claimed {
        let claim = match self.audit.claim(&rule.name).await {
            Ok(Some(c)) => c,
            Ok(None) => return Claimed::Busy,
            Err(e) => {
                let mut r = RuleReport::new(rule);
                r.outcome = Outcome::Failed;
                r.reason = Some(format!("audit log unavailable, nothing was changed: {e}"));
                return Claimed::Ran(Box::new(r));
            }
        };
        if let Some(slot) = slot {
            if matches!(self.audit.ran_since(&rule.name, slot).await, Ok(true)) {
                claim.release().await;
                return Claimed::AlreadyServed;
            }
        }
        self.close_abandoned(rule).await;
        let report = self.run_claimed(rule, &claim).await;
        claim.release().await;
        Claimed::Ran(Box::new(report))
    }

    /// Writes an `abandoned` outcome for every run of `rule` that announced
    /// itself and never finished (its process died). Only called under the
    /// rule's claim, when no other process can be running it.
    async fn close_abandoned(&self, rule: &Rule) {
        let dead = match self.audit.unfinished_runs(&rule.name).await {
            Ok(d) => d,
            Err(e) => {
                tracing::warn!(rule = %rule.name, error = %e, "Could not look for abandoned runs.");
                return;
            }
        };
        let pool = self.progress_pool(rule);
        for intent in dead {
            let run_id = intent.run.run_id.clone();
            let found = match progress::read(pool, &run_id).await {
                Ok(f) => f,
                Err(e) => {
                    // Without its counts the record would understate what
                    // was removed: leave the run open for a later attempt.
                    tracing::warn!(rule = %rule.name, run_id = %run_id, error = %e, "Could not read an abandoned run's progress; will retry.");
                    continue;
                }
            };
            let who = &intent.host;
            let reason = match found.as_ref().and_then(|p| p.unwritten.as_ref()) {
                Some((outcome, error)) => format!(
                    "the run finished ({outcome}) on {who} but its outcome record could not be written ({error}); \
                     recorded by {} with the counts its batches committed",
                    host()
                ),
                None => format!(
                    "the process running it ({who}) stopped before writing an outcome; found by {}; \
                     the counts are those its batches committed",
                    host()
                ),
            };
            let (mut t, in_flight) = found.map(|p| (p.totals, p.in_flight)).unwrap_or_default();
            if !in_flight.is_empty() {
                // Delete calls it had sent: what they removed is counted
                // here, since no later run will list it.
                let Some(store) = self.stores.blob(&rule.store) else {
                    tracing::warn!(rule = %rule.name, run_id = %run_id, "An abandoned run had delete calls in flight, but its store is not open; will retry.");
                    continue;
                };
                let (r, unconfirmed) = blob::recover_in_flight(store, &in_flight).await;
                if unconfirmed > 0 {
                    tracing::info!(rule = %rule.name, run_id = %run_id, unconfirmed, "Items of an abandoned run's last delete calls are still there (or could not be listed); this run selects them again.");
                }
                t.affected += r.objects;
                t.objects += r.objects;
                t.bytes = t
                    .bytes
                    .saturating_add(i64::try_from(r.bytes).unwrap_or(i64::MAX));
                t.batches += r.batches;
                t.versions += r.versions;
            }
            let conflicts =
                (rule.action_name() == "mask").then_some(t.conflicts + t.conflicts_deleted);
            let conflicts_deleted = (t.conflicts_deleted > 0).then_some(t.conflicts_deleted);
            let with_objects = rule.is_blob() || t.objects > 0 || t.bytes > 0;
            let outcome = RunOutcome {
                run: intent.run,
                outcome: "abandoned".into(),
                reason: Some(reason),
                counts: Counts {
                    affected: t.affected,
                    batches: t.batches,
                    cascaded: t.cascaded,
                    skipped: t.skipped,
                    conflicts,
                    conflicts_deleted,
                    partitions_dropped: t.partitions_dropped,
                    objects: with_objects.then_some(t.objects),
                    versions: rule.is_blob().then_some(t.versions),
                    bytes: with_objects.then(|| u64::try_from(t.bytes).unwrap_or(0).min(1 << 53)),
                    ..Counts::default()
                },
                finished: format_ts(Utc::now()),
            };
            if let Err(e) = self.audit.append(&outcome.event()).await {
                tracing::warn!(rule = %rule.name, error = %e, "Could not record an abandoned run.");
            } else {
                tracing::warn!(rule = %rule.name, run_id = %run_id, "Recorded an abandoned run.");
                if let Err(e) = progress::forget(pool, &run_id).await {
                    tracing::warn!(rule = %rule.name, run_id = %run_id, error = %e, "Could not drop the run's progress row (harmless).");
                }
            }
        }
    }

    /// Where `rule`'s runs keep their progress: the governed database for
    /// table rules (same transaction as each batch), the audit database for
    /// blob rules.
    fn progress_pool(&self, rule: &Rule) -> &sqlx::PgPool {
        match self.stores.postgres(&rule.store) {
            Some(pg) if !rule.is_blob() => &pg.pool,
            _ => self.audit.pool(),
        }
    }

    /// Why a table rule on `store` cannot run: its database lacks
    /// `retentiond.run_progress` (run and serve never create schemas).
    async fn progress_missing(&self, store: &str) -> Option<String> {
        let pg = self.stores.postgres(store)?;
        match progress::ready(&pg.pool).await {
            Ok(Ok(())) => None,
            Ok(Err(why)) => Some(format!("store `{store}` {why}")),
            Err(e) => Some(format!(
                "store `{store}`: {}",
                crate::plan::describe_db_error(&e)
            )),
        }
    }

    /// Runs one rule this process has claimed.
    async fn run_claimed(&self, rule: &Rule, claim: &crate::audit::log::Claim) -> RuleReport {
        let run_id = uuid::Uuid::new_v4().to_string();
        // Taken after the claim: the records alone show runs never overlap.
        let started = Utc::now();
        let prepared = plan::prepare(
            self.config,
            self.stores,
            rule,
            PlanOptions {
                for_run: true,
                ..self.options
            },
        )
        .await;
        let mut report = prepared.report;
        report.run_id = Some(run_id.clone());
        if report.outcome == Outcome::Planned && prepared.resolved.is_some() {
            if let Some(why) = self.progress_missing(&rule.store).await {
                report.outcome = Outcome::WouldRefuse;
                report.reason = Some(why);
            }
        }
        let intent = intent_event(self.config, rule, &report, &run_id, started);
        if let Err(e) = self.audit.append(&intent).await {
            report.outcome = Outcome::Failed;
            report.reason = Some(format!("audit log unavailable, nothing was changed: {e}"));
            return report;
        }
        match (report.outcome, prepared.resolved, prepared.blob) {
            (Outcome::Planned, None, Some(mut selection)) => {
                let done = match self.stores.blob(&rule.store) {
                    Some(store) => {
                        blob::execute(
                            store,
                            rule,
                            &mut selection,
                            &self.cancel,
                            Some(claim),
                            self.progress,
                            Some((self.audit.pool(), run_id.as_str())),
                        )
                        .await
                    }
                    None => blob::Deleted::failed(format!("store `{}` is not open", rule.store)),
                };
                report.affected = Some(done.objects);
                report.skipped = done.skipped;
                report.versions = Some(done.versions);
                report.bytes = Some(done.bytes);
                report.batches = done.batches;
                report.outcome = done.outcome;
                report.reason = done.reason;
            }
            (Outcome::Planned, Some(resolved), _) => {
                let pg = self.stores.postgres(&rule.store);
                let cap = plan::cap(
                    report.total,
                    rule.settings.max_fraction,
                    self.options.allow_large,
                );
                // A `blobs` rule deletes each row's objects first; prepare
                // refused it unless this build executes that store.
                let link = match &rule.target {
                    crate::config::Target::Table(t) => t.blobs.as_ref().and_then(|b| {
                        self.stores.blob(&b.store).map(|store| batches::Linked {
                            store,
                            locator: &b.locator,
                        })
                    }),
                    crate::config::Target::Prefix(_) => None,
                };
                // The exact count just found nothing to change (a second
                // pass over masked rows, a rule already kept): walking the
                // heap would find nothing either.
                let nothing = report.matched == 0 && report.conflicts.unwrap_or(0) == 0;
                let done = match pg {
                    Some(_) if nothing => batches::Executed::none(Outcome::Ok, None),
                    Some(pg) => {
                        batches::execute(
                            pg,
                            rule,
                            &resolved,
                            cap,
                            &self.cancel,
                            Some(claim),
                            link.as_ref(),
                            self.progress,
                            // Rows a unique key refuses are found (and
                            // counted) only by walking on.
                            (
                                report.matched,
                                (report.conflicts.unwrap_or(0) == 0).then_some(report.matched),
                            ),
                            Some(run_id.as_str()),
                        )
                        .await
                    }
                    None => {
                        batches::Executed::failed(format!("store `{}` is not open", rule.store))
                    }
                };
                if let (Some(pg), true) = (pg, done.durable) {
                    analyze_changed(pg, rule, &resolved, &done, report.total).await;
                }
                report.affected = Some(done.affected);
                report.cascaded = done.cascaded;
                report.partitions_dropped = done.partitions_dropped;
                report.skipped = done.skipped;
                if report.action == "mask" {
                    report.conflicts = Some(done.conflicts + done.conflicts_deleted);
                    report.conflicts_deleted =
                        (done.conflicts_deleted > 0).then_some(done.conflicts_deleted);
                }
                if link.is_some() {
                    report.objects = Some(done.objects);
                    report.bytes = Some(done.bytes);
                    report.protected += done.kept;
                }
                report.batches = done.batches;
                report.outcome = done.outcome;
                report.reason = done.reason;
                note_shortfall(
                    rule,
                    &mut report,
                    if link.is_some() { done.kept } else { 0 },
                );
                if !done.durable {
                    // Its counts may include batches a server crash undid:
                    // leave the run open; the next run of the rule records
                    // it from the progress row that survived with them.
                    tracing::error!(rule = %rule.name, run_id = %run_id, "Could not confirm the run's last batches are durable; its outcome is left to the next run.");
                    return report;
                }
            }
            (Outcome::WouldRefuse, _, _) => {
                report.outcome = Outcome::Refused;
                report.affected = Some(0);
                report.batches = 0;
            }
            (_, _, _) => {
                report.outcome = Outcome::Failed;
                report.affected = Some(0);
                report.batches = 0;
            }
        }
        let outcome = outcome_event(rule, &report, &run_id, started, Utc::now());
        let progress_pool = self.progress_pool(rule);
        if let Err(e) = self.audit.append(&outcome).await {
            // The changes are committed; say loudly that their record is not,
            // and leave the counts where the next run of the rule finds them.
            tracing::error!(rule = %rule.name, run_id = %run_id, error = %e, "Could not write the outcome record.");
            let outcome_name = serde_json::to_value(report.outcome)
                .ok()
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_default();
            if let Err(e2) = progress::mark_unwritten(
                progress_pool,
                &run_id,
                &rule.name,
                &totals_of(&report),
                &outcome_name,
                &e.to_string(),
            )
            .await
            {
                tracing::error!(rule = %rule.name, run_id = %run_id, error = %e2, "Could not note the unwritten outcome either; the next run records this run as abandoned with the counts its batches left.");
            }
            report.outcome = Outcome::Failed;
            report.reason = Some(format!(
                "{} (and the outcome record could not be written: {e})",
                report.reason.unwrap_or_default()
            ));
        } else if let Err(e) = progress::forget(progress_pool, &run_id).await {
            tracing::warn!(rule = %rule.name, run_id = %run_id, error = %e, "Could not drop the run's progress row (harmless).");
        }
        tracing::info!(
            rule = %rule.name,
            outcome = ?report.outcome,
            matched = report.matched,
            affected = report.affected.unwrap_or(0),
            protected = report.protected,
            batches = report.batches,
            "Rule run finished."
        );
        report
    }
}

/// Says so when a run that ended `ok` changed fewer rows than its count
/// found due, with none kept for a reason it names (refused by a key,
/// conflicts, unparsable values, objects that could not go: `kept`).
/// Others deleting or changing rows since the count explain it; so would
/// a walk that missed pages, which no other check sees.
fn note_shortfall(rule: &Rule, report: &mut RuleReport, kept: i64) {
    if report.outcome != Outcome::Ok {
        return;
    }
    let explained = report.affected.unwrap_or(0)
        + report.skipped.values().sum::<i64>()
        + report.conflicts.unwrap_or(0)
        + report.unparsable.unwrap_or(0)
        + kept;
    let short = report.matched - explained;
    if short <= 0 {
        return;
    }
    tracing::warn!(
        rule = %rule.name,
        matched = report.matched,
        affected = report.affected.unwrap_or(0),
        short,
        "Changed fewer rows than were counted due, none kept for a known reason."
    );
    report.notes.push(format!(
        "{short} of the {} row(s) counted due were not changed and not kept for a known reason: \
         changed or deleted by others since the count, or missed; a rerun takes what is still due",
        report.matched
    ));
}

/// Refreshes the planner's statistics of the tables a run changed by more
/// than a tenth. A failure is only logged: the purge itself is done.
async fn analyze_changed(
    pg: &crate::store::postgres::PgStore,
    rule: &Rule,
    resolved: &crate::store::postgres::resolve::ResolvedRule,
    done: &batches::Executed,
    total: i64,
) {
    // A partitioned table's statistics live in its leaves: analyze the
    // ones batches changed (dropped partitions took theirs along), not the
    // parent, whose ANALYZE would sample and analyze every partition.
    let mut changed = if resolved.table.partitioned {
        done.by_leaf
            .iter()
            .map(|(leaf, n)| (leaf.clone(), *n, None))
            .collect()
    } else {
        vec![(
            resolved.table.quoted.clone(),
            done.affected + done.conflicts_deleted,
            Some(total),
        )]
    };
    for c in &resolved.cascaded {
        if let Some(n) = done.cascaded.get(&c.name.to_string()) {
            changed.push((c.quoted.clone(), *n, None));
        }
    }
    if changed.iter().all(|(_, n, _)| *n == 0) {
        return;
    }
    let analyzed = async {
        let mut conn = pg.pool.acquire().await?;
        crate::store::postgres::batch::analyze_changed(
            &mut conn,
            &changed,
            rule.settings.lock_timeout,
        )
        .await
    };
    match analyzed.await {
        Ok(tables) if !tables.is_empty() => {
            tracing::info!(rule = %rule.name, tables = ?tables, "Analyzed the tables the run changed by more than a tenth.")
        }
        Ok(_) => {}
        Err(e) => {
            tracing::warn!(rule = %rule.name, error = %crate::plan::describe_db_error(&e), "Could not ANALYZE after the purge; the planner's estimates stay stale until autovacuum does.")
        }
    }
}

/// Indexes of `rules` in lanes: rules that conflict (directly or through
/// others) share a lane, in their given order; lanes run concurrently.
fn rule_lanes(rules: &[&Rule]) -> Vec<Vec<usize>> {
    // Union-find over the conflict relation; a lane starts where its first
    // rule stood.
    let mut parent: Vec<usize> = (0..rules.len()).collect();
    fn root(parent: &mut [usize], mut i: usize) -> usize {
        while parent[i] != i {
            parent[i] = parent[parent[i]];
            i = parent[i];
        }
        i
    }
    for i in 0..rules.len() {
        for j in 0..i {
            if rule_conflicts(rules[i], rules[j]) {
                let (a, b) = (root(&mut parent, i), root(&mut parent, j));
                parent[a.max(b)] = a.min(b);
            }
        }
    }
    let mut lanes: Vec<Vec<usize>> = Vec::new();
    let mut lane_of = std::collections::HashMap::new();
    for i in 0..rules.len() {
        let r = root(&mut parent, i);
        let lane = *lane_of.entry(r).or_insert_with(|| {
            lanes.push(Vec::new());
            lanes.len() - 1
        });
        lanes[lane].push(i);
    }
    lanes
}

/// True when two rules may touch the same data, so must not run at once
/// (each would count without the other's effect): tables of the same name
/// (schema, case and store ignored: `t` and `public.T` may be one table, and
/// two stores may name one database), overlapping prefixes (store ignored
/// too: two stores may name one bucket), or a table rule deleting linked objects (`blobs`) from a blob
/// store another rule purges.
fn rule_conflicts(a: &Rule, b: &Rule) -> bool {
    use crate::config::Target;
    fn linked(r: &Rule) -> Option<&str> {
        match &r.target {
            Target::Table(t) => t.blobs.as_ref().map(|b| b.store.as_str()),
            Target::Prefix(_) => None,
        }
    }
    match (&a.target, &b.target) {
        (Target::Table(x), Target::Table(y)) => {
            x.table.name.eq_ignore_ascii_case(&y.table.name)
                || linked(a).is_some_and(|s| Some(s) == linked(b))
        }
        (Target::Prefix(x), Target::Prefix(y)) => {
            x.prefix.starts_with(&y.prefix) || y.prefix.starts_with(&x.prefix)
        }
        (Target::Table(_), Target::Prefix(_)) => linked(a) == Some(b.store.as_str()),
        (Target::Prefix(_), Target::Table(_)) => linked(b) == Some(a.store.as_str()),
    }
}

/// A finished run's totals, for its progress row.
fn totals_of(report: &RuleReport) -> Totals {
    Totals {
        affected: report.affected.unwrap_or(0),
        objects: report.objects.unwrap_or(0),
        bytes: i64::try_from(report.bytes.unwrap_or(0)).unwrap_or(i64::MAX),
        batches: report.batches,
        cascaded: report.cascaded.clone(),
        skipped: report.skipped.clone(),
        // `conflicts` counts the deleted ones too; the row keeps them apart.
        conflicts: report.conflicts.unwrap_or(0) - report.conflicts_deleted.unwrap_or(0),
        conflicts_deleted: report.conflicts_deleted.unwrap_or(0),
        partitions_dropped: report.partitions_dropped.clone(),
        versions: report.versions.unwrap_or(0),
    }
}

fn table_age(rule: &Rule) -> Option<&crate::config::Age> {
    match &rule.target {
        crate::config::Target::Table(t) => Some(&t.age),
        crate::config::Target::Prefix(_) => None,
    }
}

fn rule_run(rule: &Rule, report: &RuleReport, run_id: &str, started: DateTime<Utc>) -> RuleRun {
    RuleRun {
        run_id: run_id.to_string(),
        rule: rule.name.clone(),
        store: rule.store.clone(),
        target: report.target.clone(),
        action: report.action.to_string(),
        keep: rule.keep_text(),
        cutoff: report.cutoff.map(format_ts),
        description: rule.description.clone(),
        policy_ref: rule.policy_ref.clone(),
        age_expr: table_age(rule).and_then(|a| a.expr().map(str::to_string)),
        age_unit: table_age(rule).and_then(|a| a.unit.map(|u| u.as_str().to_string())),
        keep_expr: rule.keep_expr.as_ref().map(|k| k.expr.clone()),
        keep_min: rule.keep_expr.as_ref().map(|k| k.min.to_string()),
        keep_max: rule.keep_expr.as_ref().map(|k| k.max.to_string()),
        started: Some(format_ts(started)),
    }
}

fn intent_event(
    config: &Config,
    rule: &Rule,
    report: &RuleReport,
    run_id: &str,
    started: DateTime<Utc>,
) -> Event {
    RunIntent {
        run: rule_run(rule, report, run_id, started),
        planned: Planned {
            matched: report.matched,
            protected: report.protected,
            protected_by: report.protected_by.clone(),
            total: report.total,
            batches: report.batches,
            cascaded: report.cascaded.clone(),
            skipped: report.skipped.clone(),
            null_age: report.null_age,
            conflicts: report.conflicts,
            partitions_dropped: report.partitions_dropped.clone(),
            // The oldest due item: with the cutoff, how late the promise is.
            oldest: report.oldest.map(format_ts),
        },
        config_sha256: config.source.sha256.clone(),
        host: host(),
    }
    .event()
}

fn outcome_event(
    rule: &Rule,
    report: &RuleReport,
    run_id: &str,
    started: DateTime<Utc>,
    finished: DateTime<Utc>,
) -> Event {
    RunOutcome {
        run: rule_run(rule, report, run_id, started),
        outcome: serde_json::to_value(report.outcome)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default(),
        reason: report.reason.clone(),
        counts: Counts {
            matched: Some(report.matched),
            affected: report.affected.unwrap_or(0),
            protected: Some(report.protected),
            protected_by: report.protected_by.clone(),
            batches: report.batches,
            cascaded: report.cascaded.clone(),
            skipped: report.skipped.clone(),
            unparsable: report.unparsable,
            null_age: report.null_age,
            conflicts: report.conflicts,
            conflicts_deleted: report.conflicts_deleted,
            partitions_dropped: report.partitions_dropped.clone(),
            versions: report.versions,
            objects: report.objects,
            // Integers in records stay within ±2^53 (8 PiB): clamp, never wrap.
            bytes: report.bytes.map(|b| b.min(1 << 53)),
        },
        finished: format_ts(finished),
    }
    .event()
}

/// Records a loaded config (`config_loaded`, with its SHA-256) and the legal
/// holds it adds or releases. `command` says who loaded it (`run`, `serve`).
pub async fn record_config(
    audit: &AuditLog,
    config: &Config,
    command: &str,
) -> Result<(), crate::audit::AuditError> {
    let mut fields = Map::new();
    fields.insert("config_sha256".into(), config.source.sha256.clone().into());
    fields.insert(
        "config_path".into(),
        config.source.path.display().to_string().into(),
    );
    fields.insert("host".into(), host().into());
    fields.insert("command".into(), command.into());
    // The rules in the config's order: a report read without the config
    // lists them so (their runs' records interleave).
    fields.insert(
        "rules".into(),
        config
            .rules
            .iter()
            .map(|r| Value::from(r.name.as_str()))
            .collect::<Vec<_>>()
            .into(),
    );
    // Whether the role writing this log could also rewrite it: an auditor
    // reads here what the chain's integrity rests on.
    let rights = match crate::audit::log::audit_rights(audit.pool()).await {
        Ok(Some(r)) => serde_json::to_value(r).unwrap_or(Value::Null),
        _ => Value::Null,
    };
    fields.insert("audit_rights".into(), rights);
    audit
        .append(&Event {
            kind: "config_loaded",
            fields,
        })
        .await?;
    crate::audit::holds::record_changes(audit, config).await?;
    Ok(())
}

/// This process's host (the pod name under Kubernetes).
pub fn host() -> String {
    std::env::var("POD_NAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "unknown".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Rules `(name, store, target)` in a config with two databases and two
    /// folders; a target with a `/` is a prefix, `files:` before a table
    /// links its rows' objects in store `files`.
    fn rules(specs: &[(&str, &str, &str)]) -> crate::config::Config {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let (key, _, _) = crate::audit::key::generate(dir.path()).unwrap_or_else(|e| panic!("{e}"));
        let mut text = format!(
            "version = 1\n\n[audit]\nstore = \"a\"\nsigning_key = \"{}\"\n\n\
             [stores.a]\ntype = \"postgres\"\nurl = \"postgres://h/a\"\n\n\
             [stores.b]\ntype = \"postgres\"\nurl = \"postgres://h/b\"\n\n\
             [stores.files]\ntype = \"filesystem\"\nroot = \"/srv/f\"\n\n\
             [stores.more]\ntype = \"filesystem\"\nroot = \"/srv/m\"\n\n",
            key.display()
        );
        for (name, store, target) in specs {
            text.push_str(&format!(
                "[[rules]]\nname = \"{name}\"\nstore = \"{store}\"\n"
            ));
            if target.contains('/') {
                text.push_str(&format!("prefix = \"{target}\"\n"));
            } else if let Some(table) = target.strip_prefix("files:") {
                text.push_str(&format!(
                    "table = \"{table}\"\nage = \"at\"\nblobs = {{ store = \"files\", key_column = \"k\" }}\n"
                ));
            } else {
                text.push_str(&format!("table = \"{target}\"\nage = \"at\"\n"));
            }
            text.push_str("keep = \"30d\"\naction = \"delete\"\n\n");
        }
        crate::config::Config::from_text(&dir.path().join("r.toml"), text, &|_| None)
            .unwrap_or_else(|e| panic!("{e:?}"))
    }

    fn lanes(specs: &[(&str, &str, &str)]) -> Vec<Vec<usize>> {
        let config = rules(specs);
        let all: Vec<&Rule> = config.rules.iter().collect();
        rule_lanes(&all)
    }

    #[test]
    fn concurrency_fits_the_smallest_pool() {
        let config = rules(&[("1", "a", "events"), ("2", "b", "users")]);
        let all: Vec<&Rule> = config.rules.iter().collect();
        assert_eq!(concurrency(&config, &all), CONCURRENT_RULES);
        let mut small = config.clone();
        if let Some(crate::config::StoreConfig::Postgres {
            max_connections, ..
        }) = small.stores.get_mut("b")
        {
            *max_connections = 1;
        }
        assert_eq!(concurrency(&small, &all), 1, "one connection: one by one");
        let mut wide = config.clone();
        wide.rules[1].settings.parallelism = 2;
        let all: Vec<&Rule> = wide.rules.iter().collect();
        assert_eq!(concurrency(&wide, &all), 2, "4 connections, 2 per rule");
    }

    #[test]
    fn rules_on_one_table_share_a_lane_in_config_order() {
        assert_eq!(
            lanes(&[
                ("1", "a", "events"),
                ("2", "a", "users"),
                ("3", "a", "public.Events"),
                ("4", "b", "events"),
                ("5", "b", "sessions"),
            ]),
            vec![vec![0, 2, 3], vec![1], vec![4]],
        );
    }

    #[test]
    fn overlapping_prefixes_and_linked_objects_share_a_lane() {
        assert_eq!(
            lanes(&[
                ("1", "files", "tmp/"),
                ("2", "more", "tmp/free/"),
                ("3", "files", "logs/"),
                ("4", "a", "files:uploads"),
                ("5", "b", "files:avatars"),
                ("6", "more", "cache/"),
            ]),
            // 4 and 5 delete objects of `files`, where 1 and 3 purge.
            vec![vec![0, 1, 2, 3, 4], vec![5]],
        );
    }
}
