//! Where Titanic keeps requests and replies: the [`Store`] trait, written in transactions of
//! [`Op`]s, with [`RedbStore`] (one redb file: ACID, crash-safe) and [`MemoryStore`] (for tests).
//!
//! One table maps a request's UUID (16 bytes) to its [`Entry`]: the request while it is pending,
//! then its reply. A reply replaces its request in the same transaction that stores it, so a
//! request is marked done only once its reply is durable, and `close` removes both at once.
//!
//! # A damaged file
//! [`RedbStore::open`] refuses an existing empty file (it is not a store: taking it as a new
//! one would hide that what it held is gone), checks every page of an existing file (redb's
//! integrity check, which also repairs what an interrupted commit left), and reads every entry
//! back when the server loads it. redb panics on some damage; those panics are caught (quietly:
//! the panic hook does not print them) and, like redb's errors, reported as
//! [`StoreError::Damaged`], naming the file and what is wrong.

use std::cell::Cell;
use std::collections::BTreeMap;
use std::panic::AssertUnwindSafe;
use std::path::Path;
use std::sync::Once;

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
    #[error("cannot open the store {path}")]
    Open {
        /// Its path.
        path: String,
        /// What redb said.
        #[source]
        source: redb::DatabaseError,
    },
    /// The file is not a redb database: another kind of file, or one whose header is gone.
    #[error(
        "cannot open the store {path}: it is not a redb database (another kind of file, or its \
         header is destroyed); move it aside to start a new store, or restore it from a backup"
    )]
    NotAStore {
        /// Its path.
        path: String,
    },
    /// The file exists and is empty: it is not a store (a new store is made only where there
    /// is no file).
    #[error(
        "the store {path} is empty: it is not a Titanic store; remove it to start a new store, \
         or restore it from a backup"
    )]
    Empty {
        /// Its path.
        path: String,
    },
    /// The file is damaged (truncated, overwritten, not written by Titanic): what redb or the
    /// entries' check found, also when redb panicked on it.
    #[error(
        "the store {path} is damaged: {what}; move it aside to start a new store (what it \
         held is lost), or restore it from a backup"
    )]
    Damaged {
        /// Its path.
        path: String,
        /// What is wrong.
        what: String,
    },
    /// The file could not be read.
    #[error("cannot read the store {path}")]
    File {
        /// Its path.
        path: String,
        /// What the system said.
        #[source]
        source: std::io::Error,
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
    /// Applies `ops` in one transaction, in order after every earlier one, without waiting
    /// for them to be durable: they are when the next [`Store::commit`] returns (which may
    /// have no ops). Titanic uses it for removals, which nobody waits on. The default commits
    /// durably.
    fn commit_deferred(&self, ops: &[Op]) -> Result<(), StoreError> {
        self.commit(ops)
    }
    /// The entry of `uuid`, if any.
    fn get(&self, uuid: &Uuid) -> Result<Option<Entry>, StoreError>;
    /// Every entry, for rebuilding the index at start.
    fn load(&self) -> Result<Vec<(Uuid, Entry)>, StoreError>;

    /// Every entry, each handed to `each` in turn, so that they need not all be in memory at
    /// once (the default collects [`Store::load`]).
    fn load_each(&self, each: &mut dyn FnMut(Uuid, Entry)) -> Result<(), StoreError> {
        for (uuid, entry) in self.load()? {
            each(uuid, entry);
        }
        Ok(())
    }
}

/// What an entry costs in a [`RedbStore`] file, counted against
/// [`crate::core::CoreConfig::max_stored_bytes`]: see [`stored_cost_of`].
pub fn stored_cost(entry: &Entry) -> u64 {
    match entry {
        Entry::Pending { service, body, .. } => stored_cost_of(Some(service), body),
        Entry::Done { body, .. } => stored_cost_of(None, body),
    }
}

/// What an entry of `service` (a pending request's) and `body` costs in a [`RedbStore`] file:
/// its key and encoded value as redb lays them out, with what its B-tree and free space add.
/// Measured as the file's growth per entry when storing many of one size, against what is
/// counted: 360 bytes for a 100-byte body (counted 487), 3.1 KB for 1 KB (3.2 KB), 5.6 KB for
/// 3 KB (5.2 KB), 22 KB for 10 KB (21 KB), 218 KB for 100 KB (164 KB), 2.2 MB for 1 MiB
/// (2.6 MB), 21 MB for 15 MiB (21 MB): within a quarter. Small values share half-full leaf
/// pages (three times their size); a value past half a page gets pages of its own, allocated
/// by powers of two, and the file keeps a
/// quarter more in free space and region headers.
pub fn stored_cost_of(service: Option<&Bytes>, body: &[Bytes]) -> u64 {
    const PAGE: u64 = 4096;
    const OVERHEAD: u64 = 64;
    let frames = service.into_iter().chain(body);
    // The key, the kind, time and count, and each frame with its length.
    let bytes = 16 + 13 + frames.map(|f| f.len() as u64 + 4).sum::<u64>();
    if bytes < PAGE / 2 {
        3 * bytes + OVERHEAD
    } else {
        bytes.div_ceil(PAGE).next_power_of_two() * PAGE * 5 / 4 + OVERHEAD
    }
}

thread_local! {
    /// Whether a panic on this thread is being contained, and not to be printed.
    static QUIET: Cell<bool> = const { Cell::new(false) };
}

/// Runs `f`, turning a panic into its message. The panic hook stays quiet for panics of this
/// thread while `f` runs (it is wrapped once; other threads' panics are printed as before).
fn contained<T>(f: impl FnOnce() -> T) -> Result<T, String> {
    static WRAP: Once = Once::new();
    WRAP.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !QUIET.with(Cell::get) {
                previous(info);
            }
        }));
    });
    let was = QUIET.with(|q| q.replace(true));
    let result = std::panic::catch_unwind(AssertUnwindSafe(f));
    QUIET.with(|q| q.set(was));
    result.map_err(|payload| {
        let message = payload
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "no message".to_owned());
        format!("redb could not read it ({message})")
    })
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

/// Titanic's store in one redb file. Every [`Store::commit`] is durable (an fsync per
/// transaction), and [`Store::commit_deferred`] is not (until the next durable one); the
/// driver groups the writes of concurrent requests into one transaction.
pub struct RedbStore {
    db: Db,
    path: String,
}

/// The database, closed (on drop) with redb's panics contained: closing a damaged file writes
/// to it, and redb may panic there.
struct Db(Option<redb::Database>);

impl Db {
    fn get(&self) -> &redb::Database {
        self.0.as_ref().expect("open until dropped")
    }
}

impl Drop for Db {
    fn drop(&mut self) {
        if let Some(db) = self.0.take() {
            if let Err(error) = contained(move || drop(db)) {
                tracing::warn!(%error, "the store did not close cleanly");
            }
        }
    }
}

impl std::fmt::Debug for RedbStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedbStore")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl RedbStore {
    /// Opens the store at `path` with a cache of [`RedbStore::DEFAULT_CACHE`], creating it if
    /// there is no file. An existing file is checked page by page (see the module docs): an
    /// empty file, a file that is not a redb database, or one that is damaged, is an error
    /// naming the file and what is wrong, never a panic.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, StoreError> {
        Self::open_with_cache(path, Self::DEFAULT_CACHE)
    }

    /// The default cache: 32 MiB (redb's own default is 1 GiB, which lets a process's memory
    /// grow with its file).
    pub const DEFAULT_CACHE: usize = 32 << 20;

    /// As [`RedbStore::open`], with a cache of `cache_bytes` (what the process holds of the
    /// file in memory, at most).
    pub fn open_with_cache(path: impl AsRef<Path>, cache_bytes: usize) -> Result<Self, StoreError> {
        let path = path.as_ref();
        let name = path.display().to_string();
        let damaged = |what: String| StoreError::Damaged {
            path: name.clone(),
            what,
        };
        let existing = match std::fs::metadata(path) {
            Ok(meta) if meta.len() == 0 => return Err(StoreError::Empty { path: name }),
            Ok(_) => true,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => false,
            Err(source) => return Err(StoreError::File { path: name, source }),
        };
        let opened = contained(|| {
            redb::Database::builder()
                .set_cache_size(cache_bytes)
                .create(path)
        })
        .map_err(&damaged)?;
        let db = opened.map_err(|source| match source {
            redb::DatabaseError::Storage(redb::StorageError::Corrupted(what)) => damaged(what),
            redb::DatabaseError::Storage(redb::StorageError::Io(error))
                if error.kind() == std::io::ErrorKind::InvalidData =>
            {
                StoreError::NotAStore { path: name.clone() }
            }
            source => StoreError::Open {
                path: name.clone(),
                source,
            },
        })?;
        let mut db = Db(Some(db));
        let checked = if existing {
            match contained(|| db.0.as_mut().expect("open").check_integrity()) {
                Ok(Ok(true)) => Ok(()),
                Ok(Ok(false)) => {
                    tracing::warn!(
                        store = %name,
                        "the store failed redb's integrity check and was repaired: it is back \
                         at its last consistent commit"
                    );
                    Ok(())
                }
                Ok(Err(error)) => Err(error.to_string()),
                Err(panicked) => Err(panicked),
            }
        } else {
            Ok(())
        };
        // Create the table, so that a read finds it, and check that it has the right types.
        let checked = checked.and_then(|()| {
            contained(|| -> Result<(), redb::Error> {
                let txn = db.get().begin_write()?;
                txn.open_table(ENTRIES)?;
                txn.commit()?;
                Ok(())
            })?
            .map_err(|error| error.to_string())
        });
        match checked {
            Ok(()) => Ok(Self { db, path: name }),
            Err(what) => Err(damaged(what)),
        }
    }

    /// The path it was opened at.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// Entries stored.
    pub fn len(&self) -> Result<u64, StoreError> {
        let txn = self.db.get().begin_read().map_err(io)?;
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
        self.db.0.as_mut().expect("open").compact().map_err(io)
    }
}

impl RedbStore {
    /// Applies `ops` in one write transaction of `durability`.
    fn write(&self, ops: &[Op], durability: redb::Durability) -> Result<(), StoreError> {
        let mut txn = self.db.get().begin_write().map_err(io)?;
        txn.set_durability(durability).map_err(io)?;
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
}

impl Store for RedbStore {
    fn commit(&self, ops: &[Op]) -> Result<(), StoreError> {
        self.write(ops, redb::Durability::Immediate)
    }

    /// A transaction with redb's `redb::Durability::None`: no fsync; the next durable commit
    /// makes it durable with itself.
    fn commit_deferred(&self, ops: &[Op]) -> Result<(), StoreError> {
        self.write(ops, redb::Durability::None)
    }

    fn get(&self, uuid: &Uuid) -> Result<Option<Entry>, StoreError> {
        let txn = self.db.get().begin_read().map_err(io)?;
        let table = txn.open_table(ENTRIES).map_err(io)?;
        match table.get(&uuid.0[..]).map_err(io)? {
            None => Ok(None),
            Some(value) => decode(value.value())
                .map(Some)
                .ok_or(StoreError::Corrupt(*uuid)),
        }
    }

    fn load(&self) -> Result<Vec<(Uuid, Entry)>, StoreError> {
        let mut all = Vec::new();
        self.load_each(&mut |uuid, entry| all.push((uuid, entry)))?;
        Ok(all)
    }

    /// Reads every entry back, containing redb's panics: an entry that cannot be read is
    /// [`StoreError::Damaged`].
    fn load_each(&self, each: &mut dyn FnMut(Uuid, Entry)) -> Result<(), StoreError> {
        let damaged = |what: String| StoreError::Damaged {
            path: self.path.clone(),
            what,
        };
        contained(|| -> Result<(), StoreError> {
            let txn = self.db.get().begin_read().map_err(io)?;
            let table = txn.open_table(ENTRIES).map_err(io)?;
            for item in table.iter().map_err(io)? {
                let (key, value) = item.map_err(|e| damaged(redb::Error::from(e).to_string()))?;
                let key: [u8; 16] = key
                    .value()
                    .try_into()
                    .map_err(|_| damaged("a key is not a UUID".to_owned()))?;
                let uuid = Uuid(key);
                let entry = decode(value.value())
                    .ok_or_else(|| damaged(format!("entry {uuid} is not a Titanic entry")))?;
                each(uuid, entry);
            }
            Ok(())
        })
        .map_err(&damaged)?
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
            Err(StoreError::NotAStore { .. })
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// A store of a few small and large entries at `path`, closed.
    fn filled(path: &Path) {
        let store = RedbStore::open(path).unwrap();
        for i in 0..40u8 {
            let size = if i % 4 == 0 { 20_000 } else { 100 };
            let entry = Entry::Pending {
                stored_ms: 1,
                service: Bytes::from_static(b"echo"),
                body: vec![Bytes::from(vec![i; size])],
            };
            store.commit(&[Op::Request(Uuid([i; 16]), entry)]).unwrap();
        }
    }

    #[test]
    fn a_damaged_store_is_an_error_naming_the_file_never_a_panic() {
        let dir = std::env::temp_dir().join(format!("titanic-damage-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let good = dir.join("good.redb");
        let _ = std::fs::remove_file(&good);
        filled(&good);
        let bytes = std::fs::read(&good).unwrap();
        let len = bytes.len();
        let mut garbage = 0x9e37_79b9_u32;
        let mut noise = |n: usize| -> Vec<u8> {
            (0..n)
                .map(|_| {
                    garbage ^= garbage << 13;
                    garbage ^= garbage >> 17;
                    garbage ^= garbage << 5;
                    garbage as u8
                })
                .collect()
        };
        let mut page = bytes.clone();
        let at = len / 2 / 4096 * 4096;
        page[at..at + 4096].copy_from_slice(&noise(4096));
        let mut header = bytes.clone();
        header[16..512].copy_from_slice(&noise(496));
        let cases: Vec<(&str, Vec<u8>, &str)> = vec![
            ("empty", vec![], "is empty: it is not a Titanic store"),
            ("half", bytes[..len / 2].to_vec(), "is damaged"),
            ("page", page, "is damaged"),
            ("header", header, "is damaged"),
            ("random", noise(len), "is not a redb database"),
        ];
        for (name, content, problem) in cases {
            let path = dir.join(format!("{name}.redb"));
            std::fs::write(&path, &content).unwrap();
            let result = RedbStore::open(&path).and_then(|s| s.load().map(|all| all.len()));
            let error = result.expect_err(name).to_string();
            assert!(
                error.contains(&path.display().to_string()),
                "{name}: {error}"
            );
            assert!(error.contains(problem), "{name}: {error}");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
