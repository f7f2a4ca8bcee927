//! Which objects under a prefix a blob rule removes: a pure function of the
//! listing, the rule, the cutoff and the holds, so plan and run agree and
//! the rules are unit-tested without a store.
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

use crate::config::{PrefixRule, Versions};
use crate::store::blob::{BlobMeta, BlobRef, BlobStore, StoreError};
use chrono::{DateTime, Utc};
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

/// What a blob rule would remove.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Selection {
    /// Versions (or keys) to delete.
    pub due: Vec<BlobRef>,
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

fn group_of(key: &str, depth: u32) -> String {
    key.split('/')
        .take(depth as usize)
        .collect::<Vec<_>>()
        .join("/")
}

/// The `protected_by` key of versions the store itself locks.
pub const STORE_LOCK: &str = "store lock";

/// Selects what `rule` removes from `listing` at `cutoff`; `held` are the
/// holds on this store, as (name, prefix).
pub fn select(
    listing: &[BlobMeta],
    rule: &PrefixRule,
    cutoff: DateTime<Utc>,
    held: &[(String, String)],
) -> Selection {
    let objects = || listing.iter().filter(|m| !m.delete_marker && !m.pending);
    let keys: BTreeSet<&str> = objects().map(|m| m.key.as_str()).collect();
    let mut s = Selection {
        total: keys.len() as i64,
        ..Selection::default()
    };
    // A group (or, without grouping, a key) expires as a whole when its
    // newest item did; an upload in progress counts as activity.
    let unit = |key: &str| {
        rule.group_by_prefix_depth
            .map_or_else(|| key.to_string(), |d| group_of(key, d))
    };
    // Only groups need it (a key's own age decides otherwise): without
    // grouping it would copy every key.
    let mut newest: BTreeMap<String, Option<DateTime<Utc>>> = BTreeMap::new();
    for m in listing
        .iter()
        .filter(|m| !m.delete_marker && rule.group_by_prefix_depth.is_some())
    {
        let entry = newest
            .entry(unit(&m.key))
            .or_insert(Some(DateTime::<Utc>::MIN_UTC));
        let age = if m.pending {
            Some(m.last_modified)
        } else {
            age(m, rule)
        };
        *entry = match (*entry, age) {
            (Some(a), Some(b)) => Some(a.max(b)),
            // One item of unknown age keeps the whole unit.
            _ => None,
        };
    }
    let expired = |m: &BlobMeta| match (rule.group_by_prefix_depth, rule.versions) {
        (Some(_), _) => newest
            .get(&unit(&m.key))
            .copied()
            .flatten()
            .is_some_and(|n| n <= cutoff),
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
    let is_held =
        |m: &BlobMeta| m.locked.is_some() || held.iter().any(|(_, p)| m.key.starts_with(p));
    let mut matched: BTreeSet<&str> = BTreeSet::new();
    let mut protected: BTreeSet<&str> = BTreeSet::new();
    let mut protected_by: BTreeMap<String, BTreeSet<&str>> = BTreeMap::new();
    let take = |s: &mut Selection, m: &BlobMeta| {
        let version = match rule.versions {
            Versions::All => m.version.clone(),
            Versions::Current if m.pending => m.version.clone(),
            Versions::Current => None,
        };
        s.due.push(BlobRef::to(m, version));
        s.bytes += m.size;
        if m.pending {
            s.uploads += 1;
        } else if m.version.is_some() && rule.versions == Versions::All {
            s.versions += 1;
        }
        s.oldest = s.oldest.min(age(m, rule)).or(age(m, rule));
    };
    for m in listing.iter().filter(|m| !m.delete_marker) {
        if !expired(m) || !(m.pending || matches_metadata(m)) {
            continue;
        }
        if is_held(m) {
            protected.insert(&m.key);
            if m.locked.is_some() {
                protected_by
                    .entry(STORE_LOCK.to_string())
                    .or_default()
                    .insert(&m.key);
            }
            for (name, _) in held.iter().filter(|(_, p)| m.key.starts_with(p)) {
                protected_by
                    .entry(crate::audit::events::hold_label(name))
                    .or_default()
                    .insert(&m.key);
            }
            continue;
        }
        if !m.pending {
            matched.insert(&m.key);
        }
        take(&mut s, m);
    }
    // An expired delete marker goes with its key's versions, or alone when
    // it hides nothing; never alone over versions the rule keeps (that
    // would bring a deleted object back).
    for m in listing.iter().filter(|m| m.delete_marker) {
        let hides_nothing = !keys.contains(m.key.as_str());
        if rule.versions == Versions::All
            && expired(m)
            && !is_held(m)
            && !protected.contains(m.key.as_str())
            && (hides_nothing || matched.contains(m.key.as_str()))
        {
            take(&mut s, m);
        }
    }
    s.due.shrink_to_fit();
    s.matched = matched.len() as i64;
    s.protected = protected.difference(&matched).count() as i64;
    s.protected_by = protected_by
        .into_iter()
        .map(|(label, keys)| (label, keys.difference(&matched).count() as i64))
        .filter(|(_, n)| *n > 0)
        .collect();
    s
}

/// Candidates [`describe_due`] asks the store about at once.
const DESCRIBE_CHUNK: usize = 1000;

/// Asks `store` for the locks of the listed items `selection` would
/// delete, and records them in `listing`. True when it found one: only
/// then must the caller select again.
pub async fn describe_due(
    store: &dyn BlobStore,
    listing: &mut [BlobMeta],
    selection: &Selection,
) -> Result<bool, StoreError> {
    let due: HashSet<(&str, Option<&str>)> = selection
        .due
        .iter()
        .map(|r| (r.key.as_str(), r.version.as_deref()))
        .collect();
    // versions = "current" deletes by key: its candidate is the latest.
    let candidate = |m: &&BlobMeta| {
        due.contains(&(m.key.as_str(), m.version.as_deref()))
            || (m.is_latest && due.contains(&(m.key.as_str(), None)))
    };
    // Asked in chunks: a copy of every candidate at once would be the
    // largest allocation of a large plan. Locks are rare; only they are kept.
    let mut locks: HashMap<String, Vec<(Option<String>, String)>> = HashMap::new();
    let mut candidates = listing.iter().filter(candidate);
    loop {
        let mut chunk: Vec<BlobMeta> = candidates.by_ref().take(DESCRIBE_CHUNK).cloned().collect();
        if chunk.is_empty() {
            break;
        }
        store.describe(&mut chunk, false).await?;
        for m in chunk {
            if let Some(lock) = m.locked {
                locks.entry(m.key).or_default().push((m.version, lock));
            }
        }
    }
    if locks.is_empty() {
        return Ok(false);
    }
    for m in listing.iter_mut() {
        let lock = locks.get(m.key.as_str()).and_then(|versions| {
            versions
                .iter()
                .find(|(v, _)| *v == m.version)
                .map(|(_, lock)| lock.clone())
        });
        if lock.is_some() {
            m.locked = lock;
        }
    }
    Ok(true)
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

    fn keys(s: &Selection) -> Vec<String> {
        s.due
            .iter()
            .map(|r| {
                format!(
                    "{}{}",
                    r.key,
                    r.version
                        .as_ref()
                        .map(|v| format!("@{v}"))
                        .unwrap_or_default()
                )
            })
            .collect()
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
        assert_eq!(keys(&s), ["a/old", "a/at"], "exactly at the cutoff expires");
        assert_eq!((s.matched, s.protected, s.total, s.bytes), (2, 2, 5, 20));
        assert_eq!(
            s.protected_by,
            BTreeMap::from([("hold case-7".to_string(), 1), (STORE_LOCK.to_string(), 1)])
        );
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
        assert_eq!(keys(&all), ["k1@1", "k2@1", "k2@2", "k2@3"]);
        assert_eq!(all.versions, 4);
        let mut current = rule("");
        current.versions = Versions::Current;
        assert_eq!(
            keys(&select(&listing, &current, t(5), &[])),
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
            keys(&select(&listing, &r, t(5), &[])),
            ["free@1", "free@2", "lone@1"],
            "removing paid's marker alone would bring paid back"
        );
        let mut locked = listing.clone();
        locked[2].locked = Some("legal hold".into());
        assert_eq!(
            keys(&select(&locked, &r, t(5), &[])),
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
        assert_eq!(keys(&s), ["a/x", "a/half@upload-a/half"]);
        assert_eq!((s.matched, s.total, s.uploads, s.versions), (1, 1, 1, 0));
        let mut current = rule("a/");
        current.versions = Versions::Current;
        assert_eq!(
            keys(&select(&listing, &current, t(5), &[])),
            ["a/x", "a/half@upload-a/half"],
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
        assert_eq!(keys(&s), ["ws/a/1", "ws/a/2"], "ws/b was active at 09:00");
    }

    #[test]
    fn select_metadata_filter_and_age() {
        let mut free = obj("u/1", 1);
        free.metadata.insert("tier".into(), "free".into());
        let mut paid = obj("u/2", 1);
        paid.metadata.insert("tier".into(), "paid".into());
        let mut r = rule("u/");
        r.match_metadata.insert("tier".into(), "free".into());
        assert_eq!(keys(&select(&[free.clone(), paid], &r, t(5), &[])), ["u/1"]);
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
