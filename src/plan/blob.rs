//! Which objects under a prefix a blob rule removes, decided while the
//! listing streams by, so memory follows the largest key (or group), not
//! the prefix: plan and run agree, and the rules are unit-tested without a
//! store.
//!
//! * `versions = "all"`: every version and delete marker whose own age is
//!   at or before the cutoff goes, so old noncurrent versions of a key that
//!   is still live go too.
//! * `versions = "current"`: a key whose current version expired gets a
//!   plain delete (a delete marker on a versioned bucket); history stays.
//! * `group_by_prefix_depth = N`: the first N `/`-segments name a group; its
//!   age is its newest object, and when that expired the whole group goes.
//! * Versions the store locks, and keys under a hold's prefix, are kept and
//!   counted as protected.
//!
//! Stores list in key order (bytewise, every key's versions together), as
//! S3 and Azure do and the filesystem store is made to. A key's versions,
//! and a group's keys, are then complete once the listing has passed them,
//! and only they are held. A listing that goes back fails the rule before
//! anything is deleted: a group closed too early could lose its newest
//! object. What is due goes to a [`DueList`] (memory, then a temporary
//! file).

use super::due::DueList;
use crate::config::{PrefixRule, Versions};
use crate::store::blob::{BlobMeta, BlobRef, BlobStore, StoreError};
use chrono::{DateTime, Utc};
use futures_util::StreamExt;
use std::collections::{BTreeMap, BTreeSet};

/// What a blob rule would remove.
#[derive(Debug, Default)]
pub struct Selection {
    /// Versions (or keys) to delete, every key's together.
    pub due: DueList,
    /// Keys with something to delete.
    pub matched: i64,
    /// Keys kept back by a store lock or a hold.
    pub protected: i64,
    /// Of `protected`, the keys each hold (`hold <name>`) or store lock
    /// (`store lock`) keeps; a key kept by both counts for both.
    pub protected_by: BTreeMap<String, i64>,
    /// Keys under the prefix (the `max_fraction` base).
    pub total: i64,
    /// Versions and delete markers in `due`.
    pub versions: i64,
    /// Bytes in `due`.
    pub bytes: u64,
    /// Incomplete uploads in `due` (aborted, not counted as objects).
    pub uploads: i64,
    /// The oldest age among due items.
    pub oldest: Option<DateTime<Utc>>,
}

/// Why a prefix could not be selected from.
#[derive(Debug, thiserror::Error)]
pub enum SelectError {
    /// The prefix itself cannot be walked safely (see
    /// [`StoreError::Skipped`]): nothing under it is touched.
    #[error("{detail}")]
    Skipped {
        /// The `skipped` reason.
        reason: &'static str,
        /// What and why.
        detail: String,
    },
    /// Listing, describing or keeping the selection failed.
    #[error("{0}")]
    Failed(String),
}

/// The age of a version: a metadata timestamp when the rule names one (an
/// unparsable or missing one never expires: refusal on doubt), else its
/// last-modified time.
fn age(meta: &BlobMeta, rule: &PrefixRule) -> Option<DateTime<Utc>> {
    match &rule.age_metadata {
        Some(key) => meta
            .metadata
            .get(key)
            .and_then(|v| DateTime::parse_from_rfc3339(v).ok())
            .map(|d| d.with_timezone(&Utc)),
        None => Some(meta.last_modified),
    }
}

/// The first `depth` segments of `key` (the whole key when it has fewer).
fn group_of(key: &str, depth: u32) -> &str {
    if depth == 0 {
        return "";
    }
    match key.match_indices('/').nth(depth as usize - 1) {
        Some((at, _)) => &key[..at],
        None => key,
    }
}

/// Whether a listing now at `key` has passed every key of unit `name`: a
/// key unit holds only itself; a group `g` holds `g` and `g/…`, all of
/// which sort before `g0` (`'0'` follows `'/'`). Only called with `key`
/// at or after `name`.
fn passed(name: &str, grouped: bool, key: &str) -> bool {
    if !grouped {
        return key != name;
    }
    match key.strip_prefix(name) {
        Some(rest) => rest.as_bytes().first().is_some_and(|b| *b > b'/'),
        None => true,
    }
}

/// The `protected_by` key of versions the store itself locks.
pub const STORE_LOCK: &str = "store lock";

/// A key, or a group, whose items are held until the listing passes it.
#[derive(Debug)]
struct Unit {
    name: String,
    /// In listing order, so every key's together.
    items: Vec<BlobMeta>,
    /// Groups: the newest age of an object (or upload) so far.
    newest: Option<DateTime<Utc>>,
    /// Groups: an object was too young, or of unknown age: nothing of the
    /// group goes, and its items are no longer held.
    kept: bool,
}

/// What one unit gives up.
#[derive(Debug, Default)]
struct Verdict {
    /// Indexes into the unit's items.
    take: Vec<usize>,
    matched: i64,
    protected: i64,
    protected_by: BTreeMap<String, i64>,
}

/// Candidates asked about at once, and closed units held before they are.
const DESCRIBE_CHUNK: usize = 1000;

/// The streaming selection: [`Selector::push`] each listed item in key
/// order, then [`Selector::finish`].
pub struct Selector<'a> {
    rule: &'a PrefixRule,
    cutoff: DateTime<Utc>,
    held: &'a [(String, String)],
    /// The last key pushed (a listing may not go back).
    last: Option<String>,
    /// The last key counted in `total`.
    counted: Option<String>,
    /// Units the listing is still inside: one key, or a few nested groups.
    open: Vec<Unit>,
    /// Units complete but not yet decided (waiting for their locks).
    ready: Vec<Unit>,
    selection: Selection,
}

impl<'a> Selector<'a> {
    /// Selects for `rule` at `cutoff`; `held` are the holds on this store,
    /// as (name, prefix); what is due goes to `due`.
    pub fn new(
        rule: &'a PrefixRule,
        cutoff: DateTime<Utc>,
        held: &'a [(String, String)],
        due: DueList,
    ) -> Selector<'a> {
        Selector {
            rule,
            cutoff,
            held,
            last: None,
            counted: None,
            open: Vec::new(),
            ready: Vec::new(),
            selection: Selection {
                due,
                ..Selection::default()
            },
        }
    }

    /// Takes the next listed item; fails when the listing went back.
    pub fn push(&mut self, meta: BlobMeta) -> Result<(), SelectError> {
        if let Some(last) = &self.last {
            if meta.key < *last {
                return Err(SelectError::Failed(format!(
                    "the store listed {:?} after {last:?}: a listing out of key order cannot be \
                     grouped safely; nothing is deleted",
                    meta.key
                )));
            }
        }
        set(&mut self.last, &meta.key);
        if !meta.delete_marker && !meta.pending && self.counted.as_deref() != Some(&meta.key) {
            self.selection.total += 1;
            set(&mut self.counted, &meta.key);
        }
        let depth = self.rule.group_by_prefix_depth;
        let mut i = 0;
        while i < self.open.len() {
            if passed(&self.open[i].name, depth.is_some(), &meta.key) {
                let unit = self.open.remove(i);
                self.ready.push(unit);
            } else {
                i += 1;
            }
        }
        let name = depth.map_or(meta.key.as_str(), |d| group_of(&meta.key, d));
        let at = match self.open.iter().position(|u| u.name == name) {
            Some(at) => at,
            None => {
                self.open.push(Unit {
                    name: name.to_string(),
                    items: Vec::new(),
                    newest: None,
                    kept: false,
                });
                self.open.len() - 1
            }
        };
        let unit = &mut self.open[at];
        if depth.is_some() {
            add_to_group(unit, meta, self.rule, self.cutoff);
        } else {
            unit.items.push(meta);
        }
        Ok(())
    }

    /// Items held in units that are complete.
    fn ready_items(&self) -> usize {
        self.ready.iter().map(|u| u.items.len()).sum()
    }

    /// Every unit is complete: the listing ended.
    fn close_all(&mut self) {
        self.ready.append(&mut self.open);
    }

    /// Decides the complete units, asking `store` first for the locks of
    /// what they would give up (when `locks`).
    async fn settle(&mut self, store: &dyn BlobStore, locks: bool) -> Result<(), SelectError> {
        let mut units = std::mem::take(&mut self.ready);
        let mut verdicts: Vec<Verdict> = units.iter().map(|u| self.evaluate(u)).collect();
        if locks && verdicts.iter().any(|v| !v.take.is_empty()) {
            let found = describe_taken(store, &mut units, &verdicts)
                .await
                .map_err(|e| SelectError::Failed(format!("{store}: reading object locks: {e}")))?;
            // A lock changes what else of its key may go (a delete marker
            // over a kept version stays): decide those units again.
            for at in found {
                verdicts[at] = self.evaluate(&units[at]);
            }
        }
        for (unit, verdict) in units.into_iter().zip(verdicts) {
            self.commit(unit, verdict)?;
        }
        Ok(())
    }

    /// Decides the complete units as they are listed, without asking the
    /// store (unit tests, and stores whose listing carries locks).
    #[cfg(test)]
    fn settle_listed(&mut self) -> Result<(), SelectError> {
        for unit in std::mem::take(&mut self.ready) {
            let verdict = self.evaluate(&unit);
            self.commit(unit, verdict)?;
        }
        Ok(())
    }

    /// The selection, once every item was pushed and settled.
    pub fn finish(self) -> Selection {
        self.selection
    }

    fn is_held(&self, m: &BlobMeta) -> bool {
        m.locked.is_some() || self.held.iter().any(|(_, p)| m.key.starts_with(p))
    }

    fn evaluate(&self, unit: &Unit) -> Verdict {
        let rule = self.rule;
        let cutoff = self.cutoff;
        let group_expired = !unit.kept && unit.newest.is_some_and(|n| n <= cutoff);
        let expired = |m: &BlobMeta| match (rule.group_by_prefix_depth, rule.versions) {
            (Some(_), _) => group_expired,
            // An upload has no metadata: it goes only when the rule asks for
            // none (refusal on doubt), aged by when it began.
            _ if m.pending => rule.match_metadata.is_empty() && m.last_modified <= cutoff,
            (None, Versions::All) => age(m, rule).is_some_and(|a| a <= cutoff),
            (None, Versions::Current) => {
                m.is_latest && !m.delete_marker && age(m, rule).is_some_and(|a| a <= cutoff)
            }
        };
        let matches_metadata = |m: &BlobMeta| {
            rule.match_metadata
                .iter()
                .all(|(k, v)| m.metadata.get(k) == Some(v))
        };
        let mut verdict = Verdict::default();
        let items = &unit.items;
        let mut start = 0;
        while start < items.len() {
            let key = &items[start].key;
            let end = start + items[start..].iter().take_while(|m| m.key == *key).count();
            let run = items[start..end]
                .iter()
                .enumerate()
                .map(|(i, m)| (start + i, m));
            let has_objects = items[start..end]
                .iter()
                .any(|m| !m.delete_marker && !m.pending);
            let (mut matched, mut protected) = (false, false);
            let mut labels: BTreeSet<String> = BTreeSet::new();
            for (at, m) in run.clone().filter(|(_, m)| !m.delete_marker) {
                if !expired(m) || !(m.pending || matches_metadata(m)) {
                    continue;
                }
                if self.is_held(m) {
                    protected = true;
                    if m.locked.is_some() {
                        labels.insert(STORE_LOCK.to_string());
                    }
                    for (name, _) in self.held.iter().filter(|(_, p)| m.key.starts_with(p)) {
                        labels.insert(crate::audit::events::hold_label(name));
                    }
                    continue;
                }
                matched |= !m.pending;
                verdict.take.push(at);
            }
            // An expired delete marker goes with its key's versions, or
            // alone when it hides nothing; never alone over versions the
            // rule keeps (that would bring a deleted object back).
            for (at, m) in run.filter(|(_, m)| m.delete_marker) {
                if rule.versions == Versions::All
                    && expired(m)
                    && !self.is_held(m)
                    && !protected
                    && (!has_objects || matched)
                {
                    verdict.take.push(at);
                }
            }
            if matched {
                verdict.matched += 1;
            } else if protected {
                verdict.protected += 1;
                for label in labels {
                    *verdict.protected_by.entry(label).or_default() += 1;
                }
            }
            start = end;
        }
        verdict
    }

    fn commit(&mut self, unit: Unit, verdict: Verdict) -> Result<(), SelectError> {
        let s = &mut self.selection;
        s.matched += verdict.matched;
        s.protected += verdict.protected;
        for (label, n) in verdict.protected_by {
            *s.protected_by.entry(label).or_default() += n;
        }
        for at in verdict.take {
            let m = &unit.items[at];
            let version = match self.rule.versions {
                Versions::All => m.version.clone(),
                Versions::Current if m.pending => m.version.clone(),
                Versions::Current => None,
            };
            s.bytes += m.size;
            if m.pending {
                s.uploads += 1;
            } else if m.version.is_some() && self.rule.versions == Versions::All {
                s.versions += 1;
            }
            let a = age(m, self.rule);
            s.oldest = s.oldest.min(a).or(a);
            s.due
                .push(BlobRef::to(m, version))
                .map_err(|e| SelectError::Failed(e.to_string()))?;
        }
        Ok(())
    }
}

/// `slot = Some(key)`, reusing its allocation.
fn set(slot: &mut Option<String>, key: &str) {
    match slot {
        Some(s) => {
            s.clear();
            s.push_str(key);
        }
        None => *slot = Some(key.to_string()),
    }
}

/// Adds `meta` to group `unit`. A group expires as a whole when its newest
/// object did (an upload in progress counts as activity); once it cannot,
/// its items are dropped.
fn add_to_group(unit: &mut Unit, meta: BlobMeta, rule: &PrefixRule, cutoff: DateTime<Utc>) {
    if unit.kept {
        return;
    }
    if !meta.delete_marker {
        let a = if meta.pending {
            Some(meta.last_modified)
        } else {
            age(&meta, rule)
        };
        match a {
            // One object of unknown age keeps the whole group.
            None => unit.kept = true,
            Some(a) if a > cutoff => unit.kept = true,
            Some(a) => unit.newest = unit.newest.max(Some(a)),
        }
    }
    if unit.kept {
        unit.items = Vec::new();
    } else {
        unit.items.push(meta);
    }
}

/// Asks `store` for the locks of the items `verdicts` take, and records
/// them in `units`; the indexes of the units where it found one.
async fn describe_taken(
    store: &dyn BlobStore,
    units: &mut [Unit],
    verdicts: &[Verdict],
) -> Result<Vec<usize>, StoreError> {
    let wanted: Vec<(usize, usize)> = verdicts
        .iter()
        .enumerate()
        .flat_map(|(u, v)| v.take.iter().map(move |&i| (u, i)))
        .collect();
    let mut found = BTreeSet::new();
    for chunk in wanted.chunks(DESCRIBE_CHUNK) {
        let mut metas: Vec<BlobMeta> = chunk
            .iter()
            .map(|&(u, i)| units[u].items[i].clone())
            .collect();
        store.describe(&mut metas, false).await?;
        for (&(u, i), m) in chunk.iter().zip(metas) {
            if m.locked.is_some() {
                units[u].items[i].locked = m.locked;
                found.insert(u);
            }
        }
    }
    Ok(found.into_iter().collect())
}

/// Lists `rule`'s prefix in `store` and selects what goes at `cutoff`,
/// holding only the key or group being listed, and sending what is due to
/// `due`. Metadata the listing lacks is read for every item when the rule
/// needs it to select at all; locks only for what would go.
pub async fn select_listed(
    store: &dyn BlobStore,
    rule: &PrefixRule,
    cutoff: DateTime<Utc>,
    held: &[(String, String)],
    due: DueList,
) -> Result<Selection, SelectError> {
    let wants_metadata = !rule.match_metadata.is_empty() || rule.age_metadata.is_some();
    let mut selector = Selector::new(rule, cutoff, held, due);
    let mut listing = store.list(&rule.prefix);
    let mut page: Vec<BlobMeta> = Vec::with_capacity(DESCRIBE_CHUNK);
    loop {
        let next = listing.next().await;
        let end = next.is_none();
        match next {
            Some(Ok(meta)) => page.push(meta),
            Some(Err(StoreError::Skipped { reason, detail })) => {
                return Err(SelectError::Skipped { reason, detail })
            }
            Some(Err(e)) => {
                return Err(SelectError::Failed(format!(
                    "{store}: listing {}: {e}",
                    rule.prefix
                )))
            }
            None => {}
        }
        if page.len() < DESCRIBE_CHUNK && !end {
            continue;
        }
        if wants_metadata && !page.is_empty() {
            store
                .describe(&mut page, true)
                .await
                .map_err(|e| SelectError::Failed(format!("{store}: reading metadata: {e}")))?;
        }
        for meta in page.drain(..) {
            selector.push(meta)?;
        }
        if end {
            selector.close_all();
        }
        if end || selector.ready_items() >= DESCRIBE_CHUNK {
            selector.settle(store, !wants_metadata).await?;
        }
        if end {
            return Ok(selector.finish());
        }
    }
}

/// Selects from a listing in memory, in any order (unit tests).
#[cfg(test)]
pub fn select(
    listing: &[BlobMeta],
    rule: &PrefixRule,
    cutoff: DateTime<Utc>,
    held: &[(String, String)],
) -> Selection {
    let mut sorted = listing.to_vec();
    sorted.sort_by(|a, b| a.key.cmp(&b.key));
    let mut selector = Selector::new(rule, cutoff, held, DueList::default());
    for meta in sorted {
        selector.push(meta).expect("sorted");
    }
    selector.close_all();
    selector.settle_listed().expect("in memory");
    selector.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn t(h: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 23, h, 0, 0).unwrap()
    }

    fn obj(key: &str, h: u32) -> BlobMeta {
        BlobMeta {
            key: key.into(),
            version: None,
            last_modified: t(h),
            size: 10,
            is_latest: true,
            delete_marker: false,
            metadata: BTreeMap::new(),
            locked: None,
            pending: false,
        }
    }

    fn rule(prefix: &str) -> PrefixRule {
        PrefixRule {
            prefix: prefix.into(),
            versions: Versions::All,
            group_by_prefix_depth: None,
            match_metadata: BTreeMap::new(),
            age_metadata: None,
        }
    }

    fn keys(mut s: Selection) -> Vec<String> {
        let mut chunks = s.due.chunks(usize::MAX).unwrap();
        let mut out = Vec::new();
        while let Some(chunk) = chunks.next_chunk().unwrap() {
            out.extend(chunk.items.iter().map(|r| {
                format!(
                    "{}{}",
                    r.key,
                    r.version
                        .as_ref()
                        .map(|v| format!("@{v}"))
                        .unwrap_or_default()
                )
            }));
        }
        out
    }

    #[test]
    fn select_age_boundary_and_locks() {
        let mut locked = obj("a/locked", 1);
        locked.locked = Some("legal hold".into());
        let listing = vec![
            obj("a/old", 1),
            obj("a/at", 5),
            obj("a/young", 6),
            locked,
            obj("a/held/x", 1),
        ];
        let held = [("case-7".to_string(), "a/held/".to_string())];
        let s = select(&listing, &rule("a/"), t(5), &held);
        assert_eq!((s.matched, s.protected, s.total, s.bytes), (2, 2, 5, 20));
        assert_eq!(
            s.protected_by,
            BTreeMap::from([("hold case-7".to_string(), 1), (STORE_LOCK.to_string(), 1)])
        );
        assert_eq!(keys(s), ["a/at", "a/old"], "exactly at the cutoff expires");
    }

    #[test]
    fn select_versions_all_ages_each_version() {
        let v = |key: &str, id: &str, h: u32, latest: bool, marker: bool| BlobMeta {
            version: Some(id.into()),
            is_latest: latest,
            delete_marker: marker,
            ..obj(key, h)
        };
        // k1: live current version, one old noncurrent. k2: deleted (a marker
        // over two old versions).
        let listing = vec![
            v("k1", "1", 1, false, false),
            v("k1", "2", 8, true, false),
            v("k2", "1", 1, false, false),
            v("k2", "2", 2, false, false),
            v("k2", "3", 3, true, true),
        ];
        let all = select(&listing, &rule(""), t(5), &[]);
        assert_eq!(all.versions, 4);
        assert_eq!(keys(all), ["k1@1", "k2@1", "k2@2", "k2@3"]);
        let mut current = rule("");
        current.versions = Versions::Current;
        assert_eq!(
            keys(select(&listing, &current, t(5), &[])),
            Vec::<String>::new(),
            "k1's current version is young; k2 is already deleted"
        );
    }

    #[test]
    fn select_keeps_a_marker_over_versions_it_keeps() {
        let v = |key: &str, id: &str, h: u32, tier: &str, marker: bool| {
            let mut m = BlobMeta {
                version: Some(id.into()),
                is_latest: marker,
                delete_marker: marker,
                ..obj(key, h)
            };
            m.metadata.insert("tier".into(), tier.into());
            m
        };
        // paid: an old version under an old marker; free: the same; lone:
        // a marker over nothing.
        let listing = vec![
            v("paid", "1", 1, "paid", false),
            v("paid", "2", 2, "", true),
            v("free", "1", 1, "free", false),
            v("free", "2", 2, "", true),
            v("lone", "1", 2, "", true),
        ];
        let mut r = rule("");
        r.match_metadata.insert("tier".into(), "free".into());
        assert_eq!(
            keys(select(&listing, &r, t(5), &[])),
            ["free@1", "free@2", "lone@1"],
            "removing paid's marker alone would bring paid back"
        );
        let mut locked = listing.clone();
        locked[2].locked = Some("legal hold".into());
        assert_eq!(
            keys(select(&locked, &r, t(5), &[])),
            ["lone@1"],
            "a marker over a locked version stays too"
        );
    }

    #[test]
    fn select_aborts_old_uploads_unless_metadata_is_asked() {
        let upload = |key: &str, h: u32| BlobMeta {
            version: Some(format!("upload-{key}")),
            pending: true,
            is_latest: false,
            size: 0,
            ..obj(key, h)
        };
        let listing = vec![obj("a/x", 1), upload("a/half", 1), upload("a/new", 8)];
        let s = select(&listing, &rule("a/"), t(5), &[]);
        assert_eq!((s.matched, s.total, s.uploads, s.versions), (1, 1, 1, 0));
        assert_eq!(keys(s), ["a/half@upload-a/half", "a/x"]);
        let mut current = rule("a/");
        current.versions = Versions::Current;
        assert_eq!(
            keys(select(&listing, &current, t(5), &[])),
            ["a/half@upload-a/half", "a/x"],
            "an upload is aborted by its id whatever `versions` says"
        );
        let mut tiered = rule("a/");
        tiered.match_metadata.insert("tier".into(), "free".into());
        assert!(select(&listing, &tiered, t(5), &[]).due.is_empty());
        let mut grouped = rule("");
        grouped.group_by_prefix_depth = Some(1);
        assert!(
            select(&listing, &grouped, t(5), &[]).due.is_empty(),
            "an upload in progress keeps its group active"
        );
    }

    #[test]
    fn select_groups_expire_by_their_newest_object() {
        let listing = vec![
            obj("ws/a/1", 1),
            obj("ws/a/2", 2),
            obj("ws/b/1", 1),
            obj("ws/b/deep/2", 9),
        ];
        let mut r = rule("ws/");
        r.group_by_prefix_depth = Some(2);
        let s = select(&listing, &r, t(5), &[]);
        assert_eq!(keys(s), ["ws/a/1", "ws/a/2"], "ws/b was active at 09:00");
    }

    #[test]
    fn select_groups_interleaved_in_key_order_close_only_when_passed() {
        // In key order `ws/a-b/1` comes between the object `ws/a` and the
        // rest of its group `ws/a`: the group must wait for `ws/a/1`.
        let mut r = rule("ws/");
        r.group_by_prefix_depth = Some(2);
        let young = vec![obj("ws/a", 1), obj("ws/a-b/1", 1), obj("ws/a/1", 9)];
        assert_eq!(keys(select(&young, &r, t(5), &[])), ["ws/a-b/1"]);
        let old = vec![obj("ws/a", 1), obj("ws/a-b/1", 1), obj("ws/a/1", 2)];
        let s = select(&old, &r, t(5), &[]);
        assert_eq!((s.matched, s.total), (3, 3));
        assert_eq!(keys(s), ["ws/a-b/1", "ws/a", "ws/a/1"]);
    }

    #[test]
    fn select_refuses_a_listing_that_goes_back() {
        let r = rule("");
        let mut selector = Selector::new(&r, t(5), &[], DueList::default());
        selector.push(obj("b", 1)).unwrap();
        selector.push(obj("b", 1)).unwrap();
        let err = selector.push(obj("a", 1)).unwrap_err();
        assert!(err.to_string().contains("out of key order"), "{err}");
    }

    #[test]
    fn select_keeps_only_the_open_unit() {
        // 10,000 keys of which none is due: nothing is held but one key.
        let r = rule("");
        let mut selector = Selector::new(&r, t(5), &[], DueList::default());
        for i in 0..10_000 {
            selector.push(obj(&format!("k{i:05}"), 9)).unwrap();
            selector.settle_listed().unwrap();
            assert!(selector.open.len() + selector.ready.len() <= 1);
        }
        selector.close_all();
        selector.settle_listed().unwrap();
        let s = selector.finish();
        assert_eq!((s.total, s.matched, s.due.len()), (10_000, 0, 0));
    }

    #[test]
    fn select_metadata_filter_and_age() {
        let mut free = obj("u/1", 1);
        free.metadata.insert("tier".into(), "free".into());
        let mut paid = obj("u/2", 1);
        paid.metadata.insert("tier".into(), "paid".into());
        let mut r = rule("u/");
        r.match_metadata.insert("tier".into(), "free".into());
        assert_eq!(keys(select(&[free.clone(), paid], &r, t(5), &[])), ["u/1"]);
        let mut r = rule("u/");
        r.age_metadata = Some("uploaded".into());
        let mut stamped = obj("u/3", 1);
        stamped
            .metadata
            .insert("uploaded".into(), "2026-11-23T09:00:00Z".into());
        assert!(
            select(&[stamped, free], &r, t(5), &[]).due.is_empty(),
            "a young stamp, and a missing one, never expire"
        );
    }
}
