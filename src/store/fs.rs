//! A directory tree as a blob store: keys are `/`-separated paths relative
//! to `root`, the age is the file's mtime.
//!
//! Nothing outside `root` may ever be reached, and a symbolic link in any
//! component of a path below it could lead out (or alias another key), so
//! the kernel never resolves a path of more than one name below the root:
//! each directory is opened from its parent's handle, one name at a time,
//! and checked not to be a link. A key or prefix that would cross a link, even
//! one pointing back inside, or that is not a plain relative path, is
//! skipped and never touched. Links found while listing are listed as
//! locked and are never followed or deleted. The root itself is opened by
//! its configured path, which may be a link: that is the operator's choice.
//! Directories emptied by a delete are removed up to (not including) the
//! root, through the same handles.

use super::blob::{BlobMeta, BlobRef, BlobStore, StoreError};
use cap_std::fs::{Dir, Metadata, MetadataExt};
use chrono::{DateTime, Utc};
use futures_util::future::BoxFuture;
use futures_util::stream::{self, BoxStream};
use std::collections::BTreeMap;
use std::fmt;
use std::io::{self, ErrorKind};
use std::path::{Path, PathBuf};

/// Files under a root directory.
#[derive(Debug, Clone)]
pub struct FsStore {
    name: String,
    root: PathBuf,
}

/// What a name in a directory is, seen without following it.
enum Sub {
    /// A directory, opened.
    Dir(Dir),
    /// A symbolic link (or a directory swapped for one while it was opened).
    Link,
    /// Nothing, or not a directory.
    Absent,
}

/// Opens `name` in `dir` if it is a directory, never through a link.
fn open_sub(dir: &Dir, name: &str) -> io::Result<Sub> {
    let before = match dir.symlink_metadata(name) {
        Ok(m) => m,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(Sub::Absent),
        Err(e) => return Err(e),
    };
    if before.is_symlink() {
        return Ok(Sub::Link);
    }
    if !before.is_dir() {
        return Ok(Sub::Absent);
    }
    // `open_dir` stays beneath `dir` but would follow a link swapped in since
    // the look above; finding the same inode proves it did not.
    let sub = match dir.open_dir(name) {
        Ok(d) => d,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(Sub::Absent),
        Err(e) => return Err(e),
    };
    let after = sub.dir_metadata()?;
    if (after.dev(), after.ino()) != (before.dev(), before.ino()) {
        return Ok(Sub::Link);
    }
    Ok(Sub::Dir(sub))
}

fn skipped(reason: &'static str, detail: String) -> StoreError {
    StoreError::Skipped { reason, detail }
}

/// The segments of `key`, or why it is not a plain relative path.
fn segments(key: &str) -> Result<Vec<&str>, StoreError> {
    // Checked on the text: an empty segment (`a//b`, a leading `/`) would
    // alias another key or leave the root.
    if key.contains('\0')
        || key
            .split('/')
            .any(|seg| seg.is_empty() || seg == "." || seg == "..")
    {
        return Err(skipped(
            "bad_key",
            format!("key {key:?} is not a plain relative path (empty, `.` or `..` segment, leading `/` or NUL)"),
        ));
    }
    Ok(key.split('/').collect())
}

fn mtime(meta: &Metadata) -> DateTime<Utc> {
    meta.modified()
        .map(|t| DateTime::from(t.into_std()))
        .unwrap_or_else(|_| Utc::now())
}

impl FsStore {
    /// A store named `name` over `root`.
    pub fn new(name: &str, root: &Path) -> FsStore {
        FsStore {
            name: name.to_string(),
            root: root.to_path_buf(),
        }
    }

    fn io_error(&self, key: &str, e: io::Error) -> StoreError {
        StoreError::Other(format!("{}/{key}: {e}", self.root.display()))
    }

    /// The root, opened by its configured path; None if it does not exist.
    fn open_root(&self) -> Result<Option<Dir>, StoreError> {
        match Dir::open_ambient_dir(&self.root, cap_std::ambient_authority()) {
            Ok(d) => Ok(Some(d)),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
            Err(e) => Err(self.io_error("", e)),
        }
    }

    /// The directories `segs[..=i]` beneath `root`, each opened from the one
    /// before; None if one does not exist or is not a directory.
    fn open_path(&self, root: &Dir, segs: &[&str]) -> Result<Option<Vec<Dir>>, StoreError> {
        let mut dirs: Vec<Dir> = Vec::with_capacity(segs.len());
        for (i, seg) in segs.iter().enumerate() {
            let path = segs[..=i].join("/");
            match open_sub(dirs.last().unwrap_or(root), seg).map_err(|e| self.io_error(&path, e))? {
                Sub::Dir(d) => dirs.push(d),
                Sub::Absent => return Ok(None),
                Sub::Link => {
                    return Err(skipped(
                        "symlink",
                        format!("{path} is a symbolic link; nothing through it is touched"),
                    ))
                }
            }
        }
        Ok(Some(dirs))
    }

    /// The files under `prefix`, in key order, one at a time.
    fn walk(&self, prefix: &str) -> Result<Walk<'_>, StoreError> {
        // The deepest directory the prefix names completely; what is below it
        // is filtered by the full prefix string.
        let base = prefix.rfind('/').map_or("", |i| &prefix[..i]);
        let mut walk = Walk {
            store: self,
            prefix: prefix.to_string(),
            stack: Vec::new(),
        };
        let Some(root) = self.open_root()? else {
            return Ok(walk);
        };
        let start = if base.is_empty() {
            Some(root)
        } else {
            self.open_path(&root, &segments(base)?)?
                .and_then(|mut dirs| dirs.pop())
        };
        if let Some(dir) = start {
            walk.stack
                .push(Frame::read(self, dir, base.to_string(), prefix)?);
        }
        Ok(walk)
    }

    fn delete_all(&self, items: &[BlobRef]) -> Vec<Result<(), StoreError>> {
        match self.open_root() {
            Ok(Some(root)) => items.iter().map(|i| self.delete_one(&root, i)).collect(),
            // No root: everything is already gone.
            Ok(None) => vec![Ok(()); items.len()],
            Err(e) => vec![Err(e); items.len()],
        }
    }

    fn delete_one(&self, root: &Dir, item: &BlobRef) -> Result<(), StoreError> {
        let key = &item.key;
        let segs = segments(key)?;
        let Some((name, parents)) = segs.split_last() else {
            return Err(skipped("bad_key", format!("key {key:?} is empty")));
        };
        // A missing parent means the file is gone too.
        let Some(dirs) = self.open_path(root, parents)? else {
            return Ok(());
        };
        let parent = dirs.last().unwrap_or(root);
        let meta = match parent.symlink_metadata(name) {
            Ok(m) => m,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(self.io_error(key, e)),
        };
        if meta.is_symlink() {
            return Err(skipped(
                "symlink",
                format!("{key} is a symbolic link; links are never deleted"),
            ));
        }
        if meta.is_dir() {
            return Err(StoreError::Refused(format!("{key} is a directory")));
        }
        if mtime(&meta) > item.listed_modified {
            return Err(skipped(
                "modified",
                format!("{key} was modified after it was listed; kept"),
            ));
        }
        match parent.remove_file(name) {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(self.io_error(key, e)),
        }
        // Tidy emptied directories, deepest first, each removed from its
        // parent's handle (remove_dir fails on a non-empty one, or on a link,
        // which ends the climb).
        for i in (0..dirs.len()).rev() {
            let up = if i == 0 { root } else { &dirs[i - 1] };
            if up.remove_dir(parents[i]).is_err() {
                break;
            }
        }
        Ok(())
    }
}

/// Files listed per page by [`FsStore::list`].
const PAGE: usize = 1000;

/// A walk of the tree under a prefix, depth first, every directory's
/// entries in key order: the files come out in bytewise key order, as
/// S3 and Azure list (see [`Frame::read`]).
struct Walk<'a> {
    store: &'a FsStore,
    prefix: String,
    stack: Vec<Frame>,
}

/// One directory of a walk: its names (in one buffer: a directory of a
/// million files costs its names, not a million allocations) and the next
/// to visit.
struct Frame {
    dir: Dir,
    key: String,
    names: String,
    /// (start, length) in `names`, in key order.
    entries: Vec<(u32, u32)>,
    next: usize,
}

impl Frame {
    /// Reads `dir` (whose key is `key`), its entries sorted as their keys
    /// sort: a directory's name with its `/`, since every key below it
    /// starts so (`a.txt` < `a/x` < `a0`).
    ///
    /// Only names under `prefix`, or directories on the way to it, are
    /// kept: listing one key (to confirm a delete) reads its directory but
    /// looks at no other entry.
    fn read(store: &FsStore, dir: Dir, key: String, prefix: &str) -> Result<Frame, StoreError> {
        let mut names = String::new();
        let mut entries: Vec<(u32, u32, bool)> = Vec::new();
        for entry in dir.entries().map_err(|e| store.io_error(&key, e))? {
            let entry = entry.map_err(|e| store.io_error(&key, e))?;
            // A name that is not UTF-8 has no key.
            let Ok(name) = entry.file_name().into_string() else {
                continue;
            };
            if !relevant(&key, &name, prefix) {
                continue;
            }
            let is_dir = entry.file_type().is_ok_and(|t| t.is_dir());
            let (Ok(start), Ok(len)) = (u32::try_from(names.len()), u32::try_from(name.len()))
            else {
                return Err(store.io_error(&key, io::Error::other("directory too large")));
            };
            names.push_str(&name);
            entries.push((start, len, is_dir));
        }
        let text =
            |(start, len, _): &(u32, u32, bool)| &names[*start as usize..(*start + *len) as usize];
        entries.sort_unstable_by(|a, b| {
            let a_key = text(a).bytes().chain(a.2.then_some(b'/'));
            let b_key = text(b).bytes().chain(b.2.then_some(b'/'));
            a_key.cmp(b_key)
        });
        Ok(Frame {
            dir,
            key,
            entries: entries.into_iter().map(|(s, l, _)| (s, l)).collect(),
            names,
            next: 0,
        })
    }
}

/// The key of `name` in the directory whose key is `dir_key`.
fn join(dir_key: &str, name: &str) -> String {
    if dir_key.is_empty() {
        name.to_string()
    } else {
        format!("{dir_key}/{name}")
    }
}

/// Whether `dir_key/name` is under `prefix`, or a directory on the way to
/// it.
fn relevant(dir_key: &str, name: &str, prefix: &str) -> bool {
    let key = join(dir_key, name);
    key.starts_with(prefix)
        || prefix
            .strip_prefix(key.as_str())
            .is_some_and(|rest| rest.starts_with('/'))
}

impl Iterator for Walk<'_> {
    type Item = Result<BlobMeta, StoreError>;

    fn next(&mut self) -> Option<Self::Item> {
        let item = self.step();
        if matches!(item, Some(Err(_))) {
            self.stack.clear();
        }
        item
    }
}

impl Walk<'_> {
    fn step(&mut self) -> Option<Result<BlobMeta, StoreError>> {
        loop {
            let frame = self.stack.last_mut()?;
            let Some(&(start, len)) = frame.entries.get(frame.next) else {
                self.stack.pop();
                continue;
            };
            frame.next += 1;
            let name = &frame.names[start as usize..(start + len) as usize];
            let key = join(&frame.key, name);
            let meta = match frame.dir.symlink_metadata(name) {
                Ok(m) => m,
                Err(e) if e.kind() == ErrorKind::NotFound => continue,
                Err(e) => return Some(Err(self.store.io_error(&key, e))),
            };
            // Frame::read kept only names under the prefix or on the way.
            if meta.is_dir() {
                let sub = match open_sub(&frame.dir, name) {
                    Ok(Sub::Dir(sub)) => sub,
                    Ok(_) => continue,
                    Err(e) => return Some(Err(self.store.io_error(&key, e))),
                };
                match Frame::read(self.store, sub, key, &self.prefix) {
                    Ok(frame) => self.stack.push(frame),
                    Err(e) => return Some(Err(e)),
                }
                continue;
            }
            if !key.starts_with(self.prefix.as_str()) {
                continue;
            }
            let locked = meta
                .is_symlink()
                .then(|| "symbolic link: never followed or deleted".to_string());
            return Some(Ok(BlobMeta {
                key,
                version: None,
                last_modified: mtime(&meta),
                size: meta.len(),
                is_latest: true,
                delete_marker: false,
                metadata: BTreeMap::new(),
                locked,
                pending: false,
            }));
        }
    }
}

impl fmt::Display for FsStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "filesystem store `{}` ({})",
            self.name,
            self.root.display()
        )
    }
}

impl BlobStore for FsStore {
    fn list(&self, prefix: &str) -> BoxStream<'_, Result<BlobMeta, StoreError>> {
        // Walked on a blocking thread, handed over a page at a time: a
        // consumer that stops (or is slow) stops the walk, so memory holds
        // a few pages, not the tree.
        let (pages, received) = tokio::sync::mpsc::channel(2);
        let store = self.clone();
        let prefix = prefix.to_string();
        tokio::task::spawn_blocking(move || {
            let walk = match store.walk(&prefix) {
                Ok(walk) => walk,
                Err(e) => {
                    let _ = pages.blocking_send(Err(e));
                    return;
                }
            };
            let mut page = Vec::with_capacity(PAGE);
            for item in walk {
                match item {
                    Ok(meta) => page.push(meta),
                    Err(e) => {
                        let _ = pages.blocking_send(Err(e));
                        return;
                    }
                }
                if page.len() == PAGE && pages.blocking_send(Ok(std::mem::take(&mut page))).is_err()
                {
                    return;
                }
            }
            let _ = pages.blocking_send(Ok(page));
        });
        super::blob::flatten_pages(stream::unfold(received, |mut received| async move {
            received.recv().await.map(|page| (page, received))
        }))
    }

    fn delete<'a>(&'a self, items: &'a [BlobRef]) -> BoxFuture<'a, Vec<Result<(), StoreError>>> {
        Box::pin(async move {
            let store = self.clone();
            let items = items.to_vec();
            let n = items.len();
            tokio::task::spawn_blocking(move || store.delete_all(&items))
                .await
                .unwrap_or_else(|e| vec![Err(StoreError::Other(e.to_string())); n])
        })
    }

    fn check_identity(&self) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async move {
            match std::fs::metadata(&self.root) {
                Ok(m) if m.is_dir() => Ok(()),
                Ok(_) => Err(StoreError::WrongTarget(format!(
                    "{} is not a directory",
                    self.root.display()
                ))),
                Err(_) => Err(StoreError::Missing(format!("root {}", self.root.display()))),
            }
        })
    }

    fn batch_limit(&self) -> usize {
        1000
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::StreamExt;

    /// The `Skipped` reason of a result, if it is one.
    fn skip_reason<T>(r: &Result<T, StoreError>) -> Option<&'static str> {
        match r {
            Err(StoreError::Skipped { reason, .. }) => Some(reason),
            _ => None,
        }
    }

    fn item(key: &str) -> BlobRef {
        BlobRef {
            key: key.to_string(),
            version: None,
            size: 0,
            listed_modified: Utc::now(),
            pending: false,
        }
    }

    #[tokio::test]
    async fn fs_keys_never_leave_the_root() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        std::fs::create_dir_all(root.join("a/b")).unwrap();
        std::fs::write(dir.path().join("victim"), "precious").unwrap();
        std::fs::write(root.join("a/b/f.txt"), "f").unwrap();
        let s = FsStore::new("s", &root);
        let bad = [
            "../victim",
            "a/../../victim",
            "/etc/passwd",
            "a/./b/f.txt",
            "a//b/f.txt",
            "",
            "a\0b",
            "a/b/",
        ];
        let items: Vec<BlobRef> = bad.iter().map(|k| item(k)).collect();
        for (key, r) in bad.iter().zip(s.delete(&items).await) {
            assert_eq!(skip_reason(&r), Some("bad_key"), "{key:?}: {r:?}");
        }
        for prefix in ["../", "a/../b/", "a//b/", "/etc/", "./a/"] {
            let listed: Vec<_> = s.list(prefix).collect().await;
            assert_eq!(listed.len(), 1, "{prefix:?}: {listed:?}");
            assert_eq!(skip_reason(&listed[0]), Some("bad_key"), "{prefix:?}");
        }
        assert!(dir.path().join("victim").exists());
        assert!(root.join("a/b/f.txt").exists());
    }

    #[tokio::test]
    async fn fs_lists_by_prefix_skips_links_and_deletes_idempotently() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        let outside = dir.path().join("outside.txt");
        std::fs::write(&outside, "precious").unwrap();
        std::fs::create_dir_all(root.join("workspaces/w1/sub")).unwrap();
        std::fs::create_dir_all(root.join("other")).unwrap();
        std::fs::write(root.join("workspaces/w1/sub/a.txt"), "a").unwrap();
        std::fs::write(root.join("workspaces/w1/b.txt"), "bb").unwrap();
        std::fs::write(root.join("other/c.txt"), "c").unwrap();
        std::os::unix::fs::symlink(&outside, root.join("workspaces/w1/link")).unwrap();
        let s = FsStore::new("s", &root);
        let mut listed: Vec<BlobMeta> = s.list("workspaces/").map(|r| r.unwrap()).collect().await;
        listed.sort_by(|a, b| a.key.cmp(&b.key));
        let keys: Vec<&str> = listed.iter().map(|m| m.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "workspaces/w1/b.txt",
                "workspaces/w1/link",
                "workspaces/w1/sub/a.txt"
            ]
        );
        assert!(listed[1].locked.is_some(), "links are listed as locked");
        let items: Vec<BlobRef> = listed.iter().map(|m| BlobRef::to(m, None)).collect();
        let results = s.delete(&items).await;
        assert!(results[0].is_ok() && results[2].is_ok());
        assert_eq!(
            skip_reason(&results[1]),
            Some("symlink"),
            "a link is never deleted"
        );
        assert_eq!(std::fs::read_to_string(&outside).unwrap(), "precious");
        assert!(
            !root.join("workspaces/w1/sub").exists(),
            "emptied directories go"
        );
        assert!(
            s.delete(&items[..1]).await[0].is_ok(),
            "already gone is success"
        );
        assert!(root.join("other/c.txt").exists());
        // A file written after it was listed stays.
        std::fs::write(root.join("other/c.txt"), "c2").unwrap();
        let stale = BlobRef {
            listed_modified: Utc::now() - chrono::Duration::hours(1),
            ..item("other/c.txt")
        };
        assert_eq!(skip_reason(&s.delete(&[stale]).await[0]), Some("modified"));
        assert!(root.join("other/c.txt").exists());
    }

    #[test]
    fn only_names_under_the_prefix_or_on_the_way_are_read() {
        assert!(relevant("", "logs", "logs/01/x"));
        assert!(relevant("logs", "01", "logs/01/x"));
        assert!(relevant("logs/01", "x", "logs/01/x"));
        assert!(
            relevant("logs/01", "x2", "logs/01/x"),
            "a longer key is under it"
        );
        assert!(!relevant("logs/01", "y", "logs/01/x"));
        assert!(!relevant("logs", "02", "logs/01/x"));
        assert!(!relevant("", "logsx", "logs/"));
        assert!(!relevant("", "log", "logs/"), "not a directory on the way");
        assert!(relevant("", "anything", ""));
    }

    #[tokio::test]
    async fn fs_lists_in_bytewise_key_order_a_page_at_a_time() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        // `a/` sorts between `a.txt` and `a0`, as the keys below it do.
        for key in ["b", "a0", "a/x", "a.txt", "a/y/z", "a-b/c", "A"] {
            let path = root.join(key);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, key).unwrap();
        }
        for i in 0..(PAGE + 5) {
            std::fs::create_dir_all(root.join("many")).unwrap();
            std::fs::write(root.join(format!("many/{i:05}")), "").unwrap();
        }
        let s = FsStore::new("s", root);
        let listed: Vec<String> = s.list("").map(|r| r.unwrap().key).collect().await;
        let mut sorted = listed.clone();
        sorted.sort();
        assert_eq!(listed, sorted, "bytewise key order");
        assert_eq!(
            listed[..7],
            ["A", "a-b/c", "a.txt", "a/x", "a/y/z", "a0", "b"]
        );
        assert_eq!(listed.len(), 7 + PAGE + 5, "every page arrives");
    }

    /// `root/docs/out -> outside/` (holding secret.txt) and
    /// `root/docs/in -> root/real/` (holding f.txt).
    fn linked_tree() -> (tempfile::TempDir, PathBuf, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        let outside = dir.path().join("outside");
        std::fs::create_dir_all(root.join("docs")).unwrap();
        std::fs::create_dir_all(root.join("real")).unwrap();
        std::fs::create_dir_all(outside.join("sub")).unwrap();
        std::fs::write(outside.join("secret.txt"), "secret").unwrap();
        std::fs::write(outside.join("sub/deep.txt"), "deep").unwrap();
        std::fs::write(root.join("real/f.txt"), "f").unwrap();
        std::os::unix::fs::symlink(&outside, root.join("docs/out")).unwrap();
        std::os::unix::fs::symlink(root.join("real"), root.join("docs/in")).unwrap();
        (dir, root, outside)
    }

    #[tokio::test]
    async fn fs_never_deletes_through_a_directory_link() {
        let (_dir, root, outside) = linked_tree();
        let s = FsStore::new("s", &root);
        let keys = [
            "docs/out/secret.txt",
            "docs/out/sub/deep.txt",
            "docs/in/f.txt",
            "docs/out",
        ];
        let items: Vec<BlobRef> = keys.iter().map(|k| item(k)).collect();
        for (key, r) in keys.iter().zip(s.delete(&items).await) {
            assert_eq!(skip_reason(&r), Some("symlink"), "{key}: {r:?}");
        }
        assert!(outside.join("secret.txt").exists());
        assert!(outside.join("sub/deep.txt").exists());
        assert!(
            root.join("real/f.txt").exists(),
            "a link inside is not crossed either"
        );
        assert!(root.join("docs/out").symlink_metadata().is_ok());
        assert!(root.join("docs/in").symlink_metadata().is_ok());
    }

    #[tokio::test]
    async fn fs_lists_nothing_through_a_directory_link() {
        let (_dir, root, _outside) = linked_tree();
        let s = FsStore::new("s", &root);
        for prefix in ["docs/out/", "docs/out/sub/", "docs/out/se", "docs/in/"] {
            let listed: Vec<_> = s.list(prefix).collect().await;
            assert_eq!(listed.len(), 1, "{prefix}: {listed:?}");
            assert_eq!(skip_reason(&listed[0]), Some("symlink"), "{prefix}");
        }
        // Walking into docs/ lists the links themselves, never their targets.
        let mut keys: Vec<String> = s.list("docs/").map(|r| r.unwrap().key).collect().await;
        keys.sort();
        assert_eq!(keys, ["docs/in", "docs/out"]);
        let missing: Vec<_> = s.list("nowhere/").collect().await;
        assert!(missing.is_empty(), "a missing directory lists nothing");
    }
}
