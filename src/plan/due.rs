//! The items a blob rule will delete, kept with bounded memory.
//!
//! A selection over a prefix of millions of objects is as large as the
//! prefix; holding it in memory would make the process's size follow the
//! bucket's. The first [`MEMORY_ITEMS`] items stay in memory (every small
//! rule), the rest go to an anonymous temporary file (`O_TMPFILE` under
//! `$TMPDIR`: nothing is left behind when the process dies), read back in
//! chunks by the deletion.

use crate::store::blob::BlobRef;
use chrono::DateTime;
use std::collections::VecDeque;
use std::fmt;
use std::fs::File;
use std::io::{self, BufReader, BufWriter, Read, Seek, SeekFrom, Write};

/// Items kept in memory before the list moves to a temporary file: about
/// 6 MB of a typical key.
pub const MEMORY_ITEMS: usize = 50_000;

/// Items kept in memory: [`MEMORY_ITEMS`], or the number in
/// `RETENTIOND_DUE_IN_MEMORY` (a pod with little memory and a writable
/// `$TMPDIR` can lower it; 0 always uses the file).
pub fn memory_items() -> usize {
    static LIMIT: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *LIMIT.get_or_init(|| match std::env::var("RETENTIOND_DUE_IN_MEMORY") {
        Err(_) => MEMORY_ITEMS,
        Ok(v) => v.trim().parse().unwrap_or_else(|_| {
            tracing::warn!(value = %v, default = MEMORY_ITEMS, "RETENTIOND_DUE_IN_MEMORY is not a number; using the default");
            MEMORY_ITEMS
        }),
    })
}

/// An append-only list of [`BlobRef`], in the order the selection made it
/// (every key's items together).
pub struct DueList {
    memory: Vec<BlobRef>,
    file: Option<BufWriter<File>>,
    len: usize,
    limit: usize,
    /// False for a plan's list, which only counts.
    keep: bool,
}

impl Default for DueList {
    fn default() -> Self {
        DueList::with_limit(memory_items())
    }
}

impl fmt::Debug for DueList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DueList")
            .field("len", &self.len)
            .field("spilled", &self.file.is_some())
            .finish()
    }
}

impl DueList {
    /// A list that keeps at most `limit` items in memory.
    pub fn with_limit(limit: usize) -> DueList {
        DueList {
            memory: Vec::new(),
            file: None,
            len: 0,
            limit,
            keep: true,
        }
    }

    /// A list that only counts what is pushed (a plan's).
    pub fn counting() -> DueList {
        DueList {
            keep: false,
            ..DueList::with_limit(0)
        }
    }

    /// How many items it holds.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when it holds none.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// True once the list lives in a temporary file.
    pub fn spilled(&self) -> bool {
        self.file.is_some()
    }

    /// Appends `item`; the error names `$TMPDIR`, where the file would go.
    pub fn push(&mut self, item: BlobRef) -> io::Result<()> {
        if !self.keep {
            self.len += 1;
            return Ok(());
        }
        if self.file.is_none() && self.memory.len() >= self.limit {
            let file = tempfile::tempfile().map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!(
                        "more than {} objects to delete: could not create a temporary file in {} \
                         (set TMPDIR to a writable directory): {e}",
                        self.limit,
                        std::env::temp_dir().display()
                    ),
                )
            })?;
            let mut file = BufWriter::with_capacity(1 << 16, file);
            for held in self.memory.drain(..) {
                encode(&mut file, &held)?;
            }
            self.memory = Vec::new();
            self.file = Some(file);
        }
        match &mut self.file {
            Some(file) => encode(file, &item)?,
            None => self.memory.push(item),
        }
        self.len += 1;
        Ok(())
    }

    /// Reads the list from the start in chunks of at most `size` items,
    /// cut between keys where it can be (see [`Chunks`]).
    pub fn chunks(&mut self, size: usize) -> io::Result<Chunks<'_>> {
        let source = match &mut self.file {
            Some(file) => {
                file.flush()?;
                let mut reader = file.get_ref().try_clone()?;
                reader.seek(SeekFrom::Start(0))?;
                Source::File(BufReader::with_capacity(1 << 16, reader), self.len)
            }
            None => Source::Memory(self.memory.iter()),
        };
        Ok(Chunks {
            source,
            size: size.max(1),
            ahead: VecDeque::new(),
        })
    }
}

enum Source<'a> {
    Memory(std::slice::Iter<'a, BlobRef>),
    /// The reader and the items left in it.
    File(BufReader<File>, usize),
}

impl Source<'_> {
    fn next(&mut self) -> io::Result<Option<BlobRef>> {
        match self {
            Source::Memory(items) => Ok(items.next().cloned()),
            Source::File(_, 0) => Ok(None),
            Source::File(reader, left) => {
                *left -= 1;
                decode(reader).map(Some)
            }
        }
    }
}

/// Chunks of a [`DueList`].
///
/// A chunk ends before a key whose items would not all fit, unless that
/// key's items start the chunk: so a chunk holds whole keys, and only a
/// key with more items than a chunk spans several (consecutive) chunks.
/// The deletion can then count a key as gone when its chunk is done.
pub struct Chunks<'a> {
    source: Source<'a>,
    size: usize,
    /// Items read but handed to the next chunk, in order.
    ahead: VecDeque<BlobRef>,
}

/// One chunk, and whether its last key goes on in the next one.
#[derive(Debug)]
pub struct Chunk {
    /// The items.
    pub items: Vec<BlobRef>,
    /// True when the next chunk starts with more items of the last key.
    pub continues: bool,
}

impl Chunks<'_> {
    fn next_item(&mut self) -> io::Result<Option<BlobRef>> {
        match self.ahead.pop_front() {
            Some(item) => Ok(Some(item)),
            None => self.source.next(),
        }
    }

    /// The next chunk, None at the end.
    pub fn next_chunk(&mut self) -> io::Result<Option<Chunk>> {
        let mut items: Vec<BlobRef> = Vec::new();
        // Where the last key of `items` starts.
        let mut last_key_at = 0;
        while let Some(item) = self.next_item()? {
            let same_key = items.last().is_some_and(|l| l.key == item.key);
            if items.len() == self.size {
                let continues = same_key && last_key_at == 0;
                // Back in front of what is still ahead, in order.
                self.ahead.push_front(item);
                if same_key && last_key_at > 0 {
                    // Hand the unfinished key to the next chunk whole.
                    for carried in items.split_off(last_key_at).into_iter().rev() {
                        self.ahead.push_front(carried);
                    }
                }
                return Ok(Some(Chunk { items, continues }));
            }
            if !same_key {
                last_key_at = items.len();
            }
            items.push(item);
        }
        Ok((!items.is_empty()).then_some(Chunk {
            items,
            continues: false,
        }))
    }
}

fn put_bytes(out: &mut impl Write, bytes: &[u8]) -> io::Result<()> {
    let len = u32::try_from(bytes.len())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "key longer than 4 GiB"))?;
    out.write_all(&len.to_le_bytes())?;
    out.write_all(bytes)
}

fn encode(out: &mut impl Write, item: &BlobRef) -> io::Result<()> {
    put_bytes(out, item.key.as_bytes())?;
    match &item.version {
        Some(v) => {
            out.write_all(&[1])?;
            put_bytes(out, v.as_bytes())?;
        }
        None => out.write_all(&[0])?,
    }
    out.write_all(&item.size.to_le_bytes())?;
    out.write_all(&item.listed_modified.timestamp().to_le_bytes())?;
    out.write_all(&item.listed_modified.timestamp_subsec_nanos().to_le_bytes())?;
    out.write_all(&[u8::from(item.pending)])
}

fn take<const N: usize>(input: &mut impl Read) -> io::Result<[u8; N]> {
    let mut buf = [0u8; N];
    input.read_exact(&mut buf)?;
    Ok(buf)
}

fn get_string(input: &mut impl Read) -> io::Result<String> {
    let len = u32::from_le_bytes(take(input)?) as usize;
    let mut buf = vec![0u8; len];
    input.read_exact(&mut buf)?;
    String::from_utf8(buf).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

fn decode(input: &mut impl Read) -> io::Result<BlobRef> {
    let key = get_string(input)?;
    let version = match take::<1>(input)? {
        [0] => None,
        _ => Some(get_string(input)?),
    };
    let size = u64::from_le_bytes(take(input)?);
    let secs = i64::from_le_bytes(take(input)?);
    let nanos = u32::from_le_bytes(take(input)?);
    let pending = take::<1>(input)? != [0];
    let listed_modified = DateTime::from_timestamp(secs, nanos).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            "corrupt temporary list: bad time",
        )
    })?;
    Ok(BlobRef {
        key,
        version,
        size,
        listed_modified,
        pending,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn item(key: &str, version: Option<&str>) -> BlobRef {
        BlobRef {
            key: key.into(),
            version: version.map(str::to_string),
            size: 7,
            listed_modified: chrono::Utc
                .timestamp_opt(1_700_000_000, 123_456_789)
                .unwrap(),
            pending: key.ends_with("upload"),
        }
    }

    fn read(list: &mut DueList, size: usize) -> Vec<(Vec<String>, bool)> {
        let mut chunks = list.chunks(size).unwrap();
        let mut out = Vec::new();
        while let Some(chunk) = chunks.next_chunk().unwrap() {
            let names = chunk
                .items
                .iter()
                .map(|i| format!("{}{}", i.key, i.version.as_deref().unwrap_or("")))
                .collect();
            out.push((names, chunk.continues));
        }
        out
    }

    fn sample() -> Vec<BlobRef> {
        vec![
            item("a", Some("1")),
            item("a", Some("2")),
            item("b", None),
            item("c", Some("1")),
            item("c", Some("2")),
            item("c", Some("3")),
            item("c", Some("4")),
            item("c", Some("5")),
            item("d-upload", Some("u")),
        ]
    }

    #[test]
    fn a_spilled_list_reads_back_what_was_pushed() {
        let mut memory = DueList::with_limit(100);
        let mut spilled = DueList::with_limit(2);
        for i in sample() {
            memory.push(i.clone()).unwrap();
            spilled.push(i).unwrap();
        }
        assert!(!memory.spilled() && spilled.spilled());
        let all = |list: &mut DueList| {
            let mut chunks = list.chunks(usize::MAX).unwrap();
            chunks.next_chunk().unwrap().unwrap().items
        };
        assert_eq!(all(&mut spilled), sample());
        assert_eq!(all(&mut memory), sample());
        assert_eq!(all(&mut spilled), sample(), "read again from the start");
    }

    #[test]
    fn chunks_hold_whole_keys_unless_a_key_is_longer_than_a_chunk() {
        let mut list = DueList::with_limit(3);
        for i in sample() {
            list.push(i).unwrap();
        }
        let v = |names: &[&str], continues: bool| {
            (
                names.iter().map(|n| n.to_string()).collect::<Vec<_>>(),
                continues,
            )
        };
        assert_eq!(
            read(&mut list, 4),
            [
                v(&["a1", "a2", "b"], false),
                v(&["c1", "c2", "c3", "c4"], true),
                v(&["c5", "d-uploadu"], false),
            ]
        );
        assert_eq!(
            read(&mut list, 2),
            [
                v(&["a1", "a2"], false),
                v(&["b"], false),
                v(&["c1", "c2"], true),
                v(&["c3", "c4"], true),
                v(&["c5", "d-uploadu"], false),
            ]
        );
    }

    #[test]
    fn a_counting_list_keeps_nothing() {
        let mut list = DueList::counting();
        for i in sample() {
            list.push(i).unwrap();
        }
        assert_eq!(list.len(), 9);
        assert!(read(&mut list, 10).is_empty());
    }
}
