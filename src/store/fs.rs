//! A directory tree as a blob store: keys are `/`-separated paths relative
//! to `root`, the age is the file's mtime.
//!
//! Nothing outside `root` is ever reached: keys with `..` or `.` segments,
//! absolute keys and NUL bytes are refused, and symbolic links are never
//! followed (they are listed as locked, "symbolic link", and never deleted:
//! neither the link nor what it points at). Directories emptied by a delete
//! are removed, up to (not including) the top of the listed prefix.

use super::blob::{BlobMeta, BlobRef, BlobStore, StoreError};
use chrono::{DateTime, Utc};
use futures_util::future::BoxFuture;
use futures_util::stream::{self, BoxStream, StreamExt};
use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

/// Files under a root directory.
#[derive(Debug, Clone)]
pub struct FsStore {
    name: String,
    root: PathBuf,
}

impl FsStore {
    /// A store named `name` over `root`.
    pub fn new(name: &str, root: &Path) -> FsStore {
        FsStore {
            name: name.to_string(),
            root: root.to_path_buf(),
        }
    }

    /// The path of `key`, or why it would leave the root.
    fn path_of(&self, key: &str) -> Result<PathBuf, StoreError> {
        if key.is_empty() || key.contains('\0') || key.starts_with('/') {
            return Err(StoreError::Refused(format!(
                "key {key:?} is not a relative path under the root"
            )));
        }
        // Checked on the text: Path::components drops interior `.` segments,
        // and an empty segment (`a//b`) would alias another key.
        if key
            .split('/')
            .any(|seg| seg.is_empty() || seg == "." || seg == "..")
        {
            return Err(StoreError::Refused(format!(
                "key {key:?} has an empty, `.` or `..` segment"
            )));
        }
        Ok(self.root.join(key))
    }

    fn walk(&self, prefix: &str) -> Result<Vec<BlobMeta>, StoreError> {
        // The deepest directory the prefix names completely; files below it
        // are filtered by the full prefix string.
        let dir_part = match prefix.rfind('/') {
            Some(i) => &prefix[..i],
            None => "",
        };
        let start = if dir_part.is_empty() {
            self.root.clone()
        } else {
            self.path_of(dir_part)?
        };
        let mut out = Vec::new();
        let mut stack = vec![start];
        while let Some(dir) = stack.pop() {
            let entries = match std::fs::read_dir(&dir) {
                Ok(e) => e,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(StoreError::Other(format!("{}: {e}", dir.display()))),
            };
            for entry in entries {
                let entry =
                    entry.map_err(|e| StoreError::Other(format!("{}: {e}", dir.display())))?;
                let path = entry.path();
                // symlink_metadata: never follow a link.
                let meta = std::fs::symlink_metadata(&path)
                    .map_err(|e| StoreError::Other(format!("{}: {e}", path.display())))?;
                let Some(key) = self.key_of(&path) else {
                    continue;
                };
                if meta.is_dir() {
                    if prefix.starts_with(&format!("{key}/"))
                        || key.starts_with(prefix)
                        || format!("{key}/").starts_with(prefix)
                    {
                        stack.push(path);
                    }
                    continue;
                }
                if !key.starts_with(prefix) {
                    continue;
                }
                let last_modified: DateTime<Utc> = meta
                    .modified()
                    .map(DateTime::from)
                    .unwrap_or_else(|_| Utc::now());
                let locked = meta
                    .file_type()
                    .is_symlink()
                    .then(|| "symbolic link: never followed or deleted".to_string());
                out.push(BlobMeta {
                    key,
                    version: None,
                    last_modified,
                    size: meta.len(),
                    is_latest: true,
                    delete_marker: false,
                    metadata: BTreeMap::new(),
                    locked,
                    pending: false,
                });
            }
        }
        Ok(out)
    }

    /// The key of a path under the root (None for a name that is not UTF-8).
    fn key_of(&self, path: &Path) -> Option<String> {
        let rel = path.strip_prefix(&self.root).ok()?;
        let parts: Option<Vec<&str>> = rel.components().map(|c| c.as_os_str().to_str()).collect();
        Some(parts?.join("/"))
    }

    fn delete_one(&self, item: &BlobRef) -> Result<(), StoreError> {
        let path = self.path_of(&item.key)?;
        match std::fs::symlink_metadata(&path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(StoreError::Other(format!("{}: {e}", path.display()))),
            Ok(m) if m.file_type().is_symlink() => {
                return Err(StoreError::Refused(format!(
                    "{} is a symbolic link; links are never deleted",
                    item.key
                )))
            }
            Ok(m) if m.is_dir() => {
                return Err(StoreError::Refused(format!("{} is a directory", item.key)))
            }
            Ok(m) => {
                let modified: DateTime<Utc> = m
                    .modified()
                    .map(DateTime::from)
                    .unwrap_or_else(|_| Utc::now());
                if modified > item.listed_modified {
                    return Err(StoreError::Refused(format!(
                        "{} was modified after it was listed; kept",
                        item.key
                    )));
                }
            }
        }
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(StoreError::Other(format!("{}: {e}", path.display()))),
        }
        // Tidy emptied directories up to the root (remove_dir fails on a
        // non-empty one, which ends the climb).
        let mut dir = path.parent().map(Path::to_path_buf);
        while let Some(d) = dir {
            if d == self.root || !d.starts_with(&self.root) || std::fs::remove_dir(&d).is_err() {
                break;
            }
            dir = d.parent().map(Path::to_path_buf);
        }
        Ok(())
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
        let prefix = prefix.to_string();
        stream::once(async move {
            let store = self.clone();
            tokio::task::spawn_blocking(move || store.walk(&prefix))
                .await
                .unwrap_or_else(|e| Err(StoreError::Other(e.to_string())))
        })
        .flat_map(|r: Result<Vec<BlobMeta>, StoreError>| match r {
            Ok(v) => stream::iter(v.into_iter().map(Ok).collect::<Vec<_>>()),
            Err(e) => stream::iter(vec![Err(e)]),
        })
        .boxed()
    }

    fn delete<'a>(&'a self, items: &'a [BlobRef]) -> BoxFuture<'a, Vec<Result<(), StoreError>>> {
        Box::pin(async move {
            let store = self.clone();
            let items = items.to_vec();
            let n = items.len();
            tokio::task::spawn_blocking(move || items.iter().map(|i| store.delete_one(i)).collect())
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

    #[test]
    fn fs_keys_never_leave_the_root() {
        let s = FsStore::new("s", Path::new("/data"));
        for bad in [
            "../etc/passwd",
            "a/../../b",
            "/etc/passwd",
            "a/./b",
            "a//b",
            "",
            "a\0b",
        ] {
            assert!(s.path_of(bad).is_err(), "{bad:?}");
        }
        assert_eq!(
            s.path_of("workspaces/w1/f.txt").unwrap(),
            Path::new("/data/workspaces/w1/f.txt")
        );
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
        assert!(results[1].is_err(), "a link is never deleted");
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
    }
}
