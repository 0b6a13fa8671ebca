//! Where Titanic keeps requests and replies: the [`Store`] trait, written in transactions of
//! [`Op`]s, with [`RedbStore`] (one redb file: ACID, crash-safe) and [`MemoryStore`] (for tests).
//!
//! One table maps a request's UUID (16 bytes) to its [`Entry`]: the request while it is pending,
//! then its reply. A reply replaces its request in the same transaction that stores it, so a
//! request is marked done only once its reply is durable, and `close` removes both at once.

use std::collections::BTreeMap;
use std::path::Path;

use bytes::Bytes;
use redb::{ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};

use crate::tsp::Uuid;

/// A stored request or reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry {
    /// A request not yet answered.
    Pending {
        /// When it was stored, in milliseconds since the Unix epoch.
        stored_ms: u64,
        /// The service it is for.
        service: Bytes,
        /// Its body.
        body: Vec<Bytes>,
    },
    /// A request's reply.
    Done {
        /// When the reply was stored, in milliseconds since the Unix epoch.
        done_ms: u64,
        /// The reply's body.
        body: Vec<Bytes>,
    },
}

/// One change in a transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// Store a new request.
    Request(Uuid, Entry),
    /// Store the reply to a request, replacing it; nothing happens if the request is gone
    /// (closed while it was being served).
    Reply(Uuid, Entry),
    /// Forget a request and its reply.
    Remove(Uuid),
}

/// Why the store failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The database could not be opened (not a redb file, another version, locked, ...).
    #[error("cannot open the store {path}: {source}")]
    Open {
        /// Its path.
        path: String,
        /// What redb said.
        #[source]
        source: redb::DatabaseError,
    },
    /// A read or write failed (disk full, I/O error, a transaction redb refused).
    #[error(transparent)]
    Redb(#[from] redb::Error),
    /// An entry could not be read back: the file was not written by Titanic.
    #[error("store entry {0} is corrupt")]
    Corrupt(Uuid),
    /// A key is not a 16-byte UUID: the file was not written by Titanic.
    #[error("a store key is not a UUID")]
    BadKey,
    /// The task committing a transaction ended without finishing it (it panicked): the
    /// transaction's writes are taken as not durable.
    #[error("the store's commit did not finish")]
    CommitAborted,
}

fn io(error: impl Into<redb::Error>) -> StoreError {
    StoreError::Redb(error.into())
}

/// A transactional store of entries keyed by UUID.
pub trait Store: Send + Sync + 'static {
    /// Applies `ops` in one transaction: all of them are durable when it returns `Ok`, none if
    /// it fails.
    fn commit(&self, ops: &[Op]) -> Result<(), StoreError>;
    /// The entry of `uuid`, if any.
    fn get(&self, uuid: &Uuid) -> Result<Option<Entry>, StoreError>;
    /// Every entry, for rebuilding the index at start.
    fn load(&self) -> Result<Vec<(Uuid, Entry)>, StoreError>;
}

const ENTRIES: TableDefinition<'_, &[u8], &[u8]> = TableDefinition::new("titanic.entries");

const PENDING: u8 = 1;
const DONE: u8 = 2;

/// `kind (u8), time (u64), frame count (u32)`, then each frame as its length (u32) and its
/// bytes; a pending request's first frame is its service.
fn encode(entry: &Entry) -> Vec<u8> {
    let (kind, ms, service, body) = match entry {
        Entry::Pending {
            stored_ms,
            service,
            body,
        } => (PENDING, *stored_ms, Some(service), body),
        Entry::Done { done_ms, body } => (DONE, *done_ms, None, body),
    };
    let frames: Vec<&Bytes> = service.into_iter().chain(body).collect();
    let size: usize = frames.iter().map(|f| f.len() + 4).sum();
    let mut out = Vec::with_capacity(13 + size);
    out.push(kind);
    out.extend_from_slice(&ms.to_be_bytes());
    out.extend_from_slice(&(frames.len() as u32).to_be_bytes());
    for frame in frames {
        out.extend_from_slice(&(frame.len() as u32).to_be_bytes());
        out.extend_from_slice(frame);
    }
    out
}

/// Reads what [`encode`] wrote; `None` for anything else.
fn decode(bytes: &[u8]) -> Option<Entry> {
    struct Reader<'a>(&'a [u8]);
    impl<'a> Reader<'a> {
        fn take(&mut self, n: usize) -> Option<&'a [u8]> {
            let (head, tail) = self.0.split_at_checked(n)?;
            self.0 = tail;
            Some(head)
        }
        fn u32(&mut self) -> Option<usize> {
            Some(u32::from_be_bytes(self.take(4)?.try_into().ok()?) as usize)
        }
    }
    let mut r = Reader(bytes);
    let kind = r.take(1)?[0];
    let ms = u64::from_be_bytes(r.take(8)?.try_into().ok()?);
    let count = r.u32()?;
    // Every frame takes at least its four length bytes.
    if count > r.0.len() / 4 {
        return None;
    }
    let mut frames = Vec::with_capacity(count);
    for _ in 0..count {
        let len = r.u32()?;
        frames.push(Bytes::copy_from_slice(r.take(len)?));
    }
    if !r.0.is_empty() {
        return None;
    }
    match kind {
        PENDING if !frames.is_empty() => {
            let service = frames.remove(0);
            Some(Entry::Pending {
                stored_ms: ms,
                service,
                body: frames,
            })
        }
        DONE => Some(Entry::Done {
            done_ms: ms,
            body: frames,
        }),
        _ => None,
    }
}

/// Titanic's store in one redb file. Every commit is durable (redb's default, an fsync per
/// transaction); the driver groups the writes of concurrent requests into one transaction.
pub struct RedbStore {
    db: redb::Database,
}

impl std::fmt::Debug for RedbStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedbStore").finish_non_exhaustive()
    }
}

impl RedbStore {
    /// Opens the store at `path` with a cache of [`RedbStore::DEFAULT_CACHE`], creating it if
    /// there is no file. A file that is not a redb database (or one without Titanic's table
    /// layout) is an error.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, StoreError> {
        Self::open_with_cache(path, Self::DEFAULT_CACHE)
    }

    /// The default cache: 64 MiB (redb's own default is 1 GiB, which lets a process's memory
    /// grow with its file).
    pub const DEFAULT_CACHE: usize = 64 << 20;

    /// As [`RedbStore::open`], with a cache of `cache_bytes` (what the process holds of the
    /// file in memory, at most).
    pub fn open_with_cache(path: impl AsRef<Path>, cache_bytes: usize) -> Result<Self, StoreError> {
        let path = path.as_ref();
        let db = redb::Database::builder()
            .set_cache_size(cache_bytes)
            .create(path)
            .map_err(|source| StoreError::Open {
                path: path.display().to_string(),
                source,
            })?;
        // Create the table, so that a read finds it, and check that it has the right types.
        let txn = db.begin_write().map_err(io)?;
        txn.open_table(ENTRIES).map_err(io)?;
        txn.commit().map_err(io)?;
        Ok(Self { db })
    }

    /// Entries stored.
    pub fn len(&self) -> Result<u64, StoreError> {
        let txn = self.db.begin_read().map_err(io)?;
        let table = txn.open_table(ENTRIES).map_err(io)?;
        table.len().map_err(io)
    }

    /// Whether nothing is stored.
    pub fn is_empty(&self) -> Result<bool, StoreError> {
        Ok(self.len()? == 0)
    }

    /// Gives back the file's free space where it can (redb compaction); false when a read is
    /// in progress.
    pub fn compact(&mut self) -> Result<bool, StoreError> {
        self.db.compact().map_err(io)
    }
}

impl Store for RedbStore {
    fn commit(&self, ops: &[Op]) -> Result<(), StoreError> {
        let txn = self.db.begin_write().map_err(io)?;
        {
            let mut table = txn.open_table(ENTRIES).map_err(io)?;
            for op in ops {
                match op {
                    Op::Request(uuid, entry) => {
                        table.insert(&uuid.0[..], &encode(entry)[..]).map_err(io)?;
                    }
                    Op::Reply(uuid, entry) => {
                        let known = table.get(&uuid.0[..]).map_err(io)?.is_some();
                        if known {
                            table.insert(&uuid.0[..], &encode(entry)[..]).map_err(io)?;
                        }
                    }
                    Op::Remove(uuid) => {
                        table.remove(&uuid.0[..]).map_err(io)?;
                    }
                }
            }
        }
        txn.commit().map_err(io)
    }

    fn get(&self, uuid: &Uuid) -> Result<Option<Entry>, StoreError> {
        let txn = self.db.begin_read().map_err(io)?;
        let table = txn.open_table(ENTRIES).map_err(io)?;
        match table.get(&uuid.0[..]).map_err(io)? {
            None => Ok(None),
            Some(value) => decode(value.value())
                .map(Some)
                .ok_or(StoreError::Corrupt(*uuid)),
        }
    }

    fn load(&self) -> Result<Vec<(Uuid, Entry)>, StoreError> {
        let txn = self.db.begin_read().map_err(io)?;
        let table = txn.open_table(ENTRIES).map_err(io)?;
        let mut all = Vec::new();
        for item in table.iter().map_err(io)? {
            let (key, value) = item.map_err(io)?;
            let key: [u8; 16] = key.value().try_into().map_err(|_| StoreError::BadKey)?;
            let uuid = Uuid(key);
            all.push((
                uuid,
                decode(value.value()).ok_or(StoreError::Corrupt(uuid))?,
            ));
        }
        Ok(all)
    }
}

/// A store in memory, for tests and `majordomo titanic --in-memory`: the same rules as
/// [`RedbStore`], gone with the process.
#[derive(Debug, Default)]
pub struct MemoryStore {
    entries: std::sync::Mutex<BTreeMap<Uuid, Entry>>,
}

impl MemoryStore {
    fn entries(&self) -> std::sync::MutexGuard<'_, BTreeMap<Uuid, Entry>> {
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Store for MemoryStore {
    fn commit(&self, ops: &[Op]) -> Result<(), StoreError> {
        let mut entries = self.entries();
        for op in ops {
            match op {
                Op::Request(uuid, entry) => {
                    entries.insert(*uuid, entry.clone());
                }
                Op::Reply(uuid, entry) => {
                    if let Some(slot) = entries.get_mut(uuid) {
                        *slot = entry.clone();
                    }
                }
                Op::Remove(uuid) => {
                    entries.remove(uuid);
                }
            }
        }
        Ok(())
    }

    fn get(&self, uuid: &Uuid) -> Result<Option<Entry>, StoreError> {
        Ok(self.entries().get(uuid).cloned())
    }

    fn load(&self) -> Result<Vec<(Uuid, Entry)>, StoreError> {
        Ok(self
            .entries()
            .iter()
            .map(|(k, v)| (*k, v.clone()))
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pending() -> Entry {
        Entry::Pending {
            stored_ms: 7,
            service: Bytes::from_static(b"echo"),
            body: vec![Bytes::from_static(b"a"), Bytes::new()],
        }
    }

    #[test]
    fn entries_round_trip_and_anything_else_is_refused() {
        let done = Entry::Done {
            done_ms: 9,
            body: vec![],
        };
        for entry in [pending(), done] {
            assert_eq!(decode(&encode(&entry)), Some(entry));
        }
        let bytes = encode(&pending());
        for cut in 0..bytes.len() {
            assert_eq!(decode(&bytes[..cut]), None, "cut at {cut}");
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert_eq!(decode(&longer), None);
        let mut kind = bytes;
        kind[0] = 9;
        assert_eq!(decode(&kind), None);
    }

    #[test]
    fn redb_store_keeps_entries_across_reopen_and_refuses_a_foreign_file() {
        let dir = std::env::temp_dir().join(format!("titanic-store-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("t.redb");
        let _ = std::fs::remove_file(&path);
        let (a, b) = (Uuid([1; 16]), Uuid([2; 16]));
        {
            let store = RedbStore::open(&path).unwrap();
            store
                .commit(&[Op::Request(a, pending()), Op::Request(b, pending())])
                .unwrap();
            let done = Entry::Done {
                done_ms: 1,
                body: vec![Bytes::from_static(b"r")],
            };
            store
                .commit(&[Op::Reply(a, done.clone()), Op::Remove(b)])
                .unwrap();
            // A reply to a request that is gone does not bring it back.
            store.commit(&[Op::Reply(b, done)]).unwrap();
        }
        let store = RedbStore::open(&path).unwrap();
        let all = store.load().unwrap();
        assert_eq!(all.len(), 1);
        assert!(matches!(all[0], (uuid, Entry::Done { .. }) if uuid == a));
        assert_eq!(store.get(&b).unwrap(), None);
        drop(store);
        let foreign = dir.join("foreign.redb");
        std::fs::write(&foreign, b"not a database at all, just text ".repeat(200)).unwrap();
        assert!(matches!(
            RedbStore::open(&foreign),
            Err(StoreError::Open { .. })
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
