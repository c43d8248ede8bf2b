//! The store's optional durability log: an append-only file of changes, replayed at start-up.
//!
//! Changes are [`push`](Journal::push)ed into an in-memory batch and written with a single
//! `write(2)` by [`commit`](Journal::commit), which must return before the changes are
//! acknowledged. Whether and when the file is also flushed to disk is set by [`Fsync`].
//! [`compact`](Journal::compact) replaces the file with a snapshot of the live content.
//!
//! # File format
//!
//! All integers are little-endian.
//!
//! * Header: the 8 bytes `YKJRNL01`. A file that does not start with them is refused,
//!   except an empty file or a header cut short by a crash, which are started afresh.
//! * Then zero or more records, each:
//!   * `u32` length of the body in bytes;
//!   * `u32` CRC-32 (IEEE, as computed by `crc32fast`) of the body;
//!   * the body:
//!     * `u8` tag: `1` set, `2` delete, `3` expire;
//!     * for set and expire only: `u64` expiry time in milliseconds since the UNIX epoch,
//!       `u64::MAX` meaning no expiry (so `Some(u64::MAX)` is stored as none);
//!     * `u32` key length, then the key bytes;
//!     * for set only: the value bytes, which fill the rest of the body.
//!
//!   Delete and expire bodies end right after the key.
//!
//! Replay stops at the first record whose length is implausible (over 1 GiB, or running past
//! the end of the file), whose CRC does not match, or whose body does not parse. Such a tail
//! is what a crash in the middle of a write leaves behind: it is logged with a warning that
//! names the file and the byte offset, and cut off so that new records follow the last good one.
//! Compaction writes the new file as `<path>.tmp` and renames it over the journal.

use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const MAGIC: &[u8; 8] = b"YKJRNL01";
const HEADER: usize = 8;
const MAX_BODY: usize = 1 << 30;
const NO_EXPIRY: u64 = u64::MAX;
const TAG_SET: u8 = 1;
const TAG_DELETE: u8 = 2;
const TAG_EXPIRE: u8 = 3;
const SYNC_INTERVAL: Duration = Duration::from_secs(1);

/// When the journal calls fsync.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Fsync {
    /// After every write, before it is acknowledged.
    Always,
    /// At most once a second: a write may be lost on a machine crash, never on a process crash.
    #[default]
    EverySecond,
    /// Never: flushing is left to the operating system.
    Never,
}

/// One change to the store. Keys and values are opaque bytes (values are MessagePack).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record {
    /// Sets `key` to `value`, with an optional expiry time (milliseconds since the UNIX epoch).
    Set {
        /// The key.
        key: Vec<u8>,
        /// The new value.
        value: Vec<u8>,
        /// When the key expires, in milliseconds since the UNIX epoch; `None` for never.
        expires_at_ms: Option<u64>,
    },
    /// Removes `key`.
    Delete {
        /// The key.
        key: Vec<u8>,
    },
    /// Changes the expiry time of `key`; `None` removes the expiry.
    Expire {
        /// The key.
        key: Vec<u8>,
        /// The new expiry time in milliseconds since the UNIX epoch; `None` for never.
        expires_at_ms: Option<u64>,
    },
}

/// A borrowed [`Record`], for appending without copies.
#[derive(Debug, Clone, Copy)]
pub enum RecordRef<'a> {
    /// See [`Record::Set`].
    Set {
        /// The key.
        key: &'a [u8],
        /// The new value.
        value: &'a [u8],
        /// When the key expires, in milliseconds since the UNIX epoch; `None` for never.
        expires_at_ms: Option<u64>,
    },
    /// See [`Record::Delete`].
    Delete {
        /// The key.
        key: &'a [u8],
    },
    /// See [`Record::Expire`].
    Expire {
        /// The key.
        key: &'a [u8],
        /// The new expiry time in milliseconds since the UNIX epoch; `None` for never.
        expires_at_ms: Option<u64>,
    },
}

impl<'a> From<&'a Record> for RecordRef<'a> {
    fn from(rec: &'a Record) -> Self {
        match rec {
            Record::Set {
                key,
                value,
                expires_at_ms,
            } => RecordRef::Set {
                key,
                value,
                expires_at_ms: *expires_at_ms,
            },
            Record::Delete { key } => RecordRef::Delete { key },
            Record::Expire { key, expires_at_ms } => RecordRef::Expire {
                key,
                expires_at_ms: *expires_at_ms,
            },
        }
    }
}

impl RecordRef<'_> {
    /// The tag, the expiry field (absent for delete), the key and the value.
    fn parts(&self) -> (u8, Option<Option<u64>>, &[u8], &[u8]) {
        match *self {
            RecordRef::Set {
                key,
                value,
                expires_at_ms: at,
            } => (TAG_SET, Some(at), key, value),
            RecordRef::Delete { key } => (TAG_DELETE, None, key, &[]),
            RecordRef::Expire {
                key,
                expires_at_ms: at,
            } => (TAG_EXPIRE, Some(at), key, &[]),
        }
    }

    /// Appends the framed record to `out`; returns `false` (appending nothing) if its body
    /// would be over 1 GiB, which replay would refuse.
    fn encode(&self, out: &mut Vec<u8>) -> bool {
        let (tag, expiry, key, value) = self.parts();
        let body_len = 1 + expiry.map_or(0, |_| 8) + 4 + key.len() + value.len();
        if body_len > MAX_BODY {
            return false;
        }
        let start = out.len();
        out.reserve(HEADER + body_len);
        out.extend_from_slice(&(body_len as u32).to_le_bytes());
        out.extend_from_slice(&[0; 4]);
        out.push(tag);
        if let Some(at) = expiry {
            out.extend_from_slice(&at.unwrap_or(NO_EXPIRY).to_le_bytes());
        }
        out.extend_from_slice(&(key.len() as u32).to_le_bytes());
        out.extend_from_slice(key);
        out.extend_from_slice(value);
        let crc = crc32fast::hash(&out[start + HEADER..]);
        out[start + 4..start + HEADER].copy_from_slice(&crc.to_le_bytes());
        true
    }
}

/// Splits `n` bytes off the front of `buf`.
fn take<'a>(buf: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
    let head = buf.get(..n)?;
    *buf = &buf[n..];
    Some(head)
}

fn take_u32(buf: &mut &[u8]) -> Option<u32> {
    Some(u32::from_le_bytes(take(buf, 4)?.try_into().ok()?))
}

fn take_expiry(buf: &mut &[u8]) -> Option<Option<u64>> {
    let at = u64::from_le_bytes(take(buf, 8)?.try_into().ok()?);
    Some((at != NO_EXPIRY).then_some(at))
}

fn take_key(buf: &mut &[u8]) -> Option<Vec<u8>> {
    let len = take_u32(buf)? as usize;
    Some(take(buf, len)?.to_vec())
}

/// Parses a record body; `None` if it is malformed.
fn decode(mut body: &[u8]) -> Option<Record> {
    let tag = take(&mut body, 1)?[0];
    let rec = match tag {
        TAG_SET => {
            let expires_at_ms = take_expiry(&mut body)?;
            let key = take_key(&mut body)?;
            let value = std::mem::take(&mut body).to_vec();
            Record::Set {
                key,
                value,
                expires_at_ms,
            }
        }
        TAG_DELETE => Record::Delete {
            key: take_key(&mut body)?,
        },
        TAG_EXPIRE => {
            let expires_at_ms = take_expiry(&mut body)?;
            Record::Expire {
                key: take_key(&mut body)?,
                expires_at_ms,
            }
        }
        _ => return None,
    };
    body.is_empty().then_some(rec)
}

/// Reads the records after the header. Returns them, the length of the good prefix of
/// `data`, and why replay stopped early, if it did.
fn replay(data: &[u8]) -> (Vec<Record>, usize, Option<&'static str>) {
    let mut records = Vec::new();
    let mut off = HEADER;
    while off < data.len() {
        match next_record(&data[off..]) {
            Ok((rec, used)) => {
                records.push(rec);
                off += used;
            }
            Err(reason) => return (records, off, Some(reason)),
        }
    }
    (records, off, None)
}

/// Parses the record at the start of `buf`; returns it and its length, or why it is bad.
fn next_record(mut buf: &[u8]) -> Result<(Record, usize), &'static str> {
    let (len, crc) = take_u32(&mut buf)
        .zip(take_u32(&mut buf))
        .ok_or("short record header")?;
    let body = take(&mut buf, len as usize)
        .filter(|body| body.len() <= MAX_BODY)
        .ok_or("record length is implausible or runs past the end of the file")?;
    if crc32fast::hash(body) != crc {
        return Err("checksum mismatch");
    }
    let rec = decode(body).ok_or("malformed record body")?;
    Ok((rec, HEADER + body.len()))
}

/// Flushes the directory holding `path`, so that a file created or renamed there persists.
fn sync_dir(path: &Path) -> io::Result<()> {
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    File::open(dir)?.sync_all()
}

fn too_large(count: usize) -> io::Error {
    let msg = format!("{count} journal record(s) over 1 GiB were refused");
    io::Error::new(io::ErrorKind::InvalidInput, msg)
}

/// Writes a complete journal holding `live` to `tmp` and flushes it to disk.
fn write_snapshot<'a>(
    tmp: &Path,
    live: impl Iterator<Item = RecordRef<'a>>,
) -> io::Result<(File, u64)> {
    let file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(tmp)?;
    let mut out = BufWriter::with_capacity(1 << 16, file);
    out.write_all(MAGIC)?;
    let mut len = HEADER as u64;
    let mut buf = Vec::new();
    for rec in live {
        buf.clear();
        if !rec.encode(&mut buf) {
            return Err(too_large(1));
        }
        out.write_all(&buf)?;
        len += buf.len() as u64;
    }
    let file = out.into_inner().map_err(|e| e.into_error())?;
    file.sync_all()?;
    Ok((file, len))
}

/// An open journal file. Dropping it flushes data that [`Fsync::EverySecond`] left
/// unsynced, but does not write a pending batch.
pub struct Journal {
    path: PathBuf,
    file: File,
    fsync: Fsync,
    /// Framed records waiting for [`Journal::commit`].
    batch: Vec<u8>,
    /// Records refused by `push` since the last commit, for being too large.
    refused: usize,
    /// Length of the file up to the end of the last good record.
    len: u64,
    last_sync: Instant,
    /// Data was written since the last sync.
    unsynced: bool,
    /// A write failed part-way: cut the file back to `len` before the next write.
    needs_repair: bool,
}

impl Journal {
    /// Opens (creating if missing) the journal at `path` and returns it with every record it
    /// holds, in order.
    ///
    /// A torn or corrupt tail is logged, skipped and cut off, never an error. An I/O error is
    /// an error, and so is a file that does not start with the journal's header
    /// (`InvalidData`, naming the path); such a file is left untouched. An empty file, or one
    /// holding only the start of the header (a crash while creating it), is started afresh.
    pub fn open(path: &Path, fsync: Fsync) -> io::Result<(Journal, Vec<Record>)> {
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)?;
        let mut data = Vec::new();
        file.read_to_end(&mut data)?;
        let (records, len) = if data.len() < HEADER && MAGIC.starts_with(&data) {
            // A new file, or one whose creation was cut short by a crash.
            file.set_len(0)?;
            file.seek(SeekFrom::Start(0))?;
            file.write_all(MAGIC)?;
            file.sync_all()?;
            sync_dir(path)?;
            (Vec::new(), HEADER)
        } else if !data.starts_with(MAGIC) {
            let msg = format!(
                "{}: not a journal file (no YKJRNL01 header)",
                path.display()
            );
            return Err(io::Error::new(io::ErrorKind::InvalidData, msg));
        } else {
            let (records, good, reason) = replay(&data);
            if let Some(reason) = reason {
                tracing::warn!(
                    path = %path.display(),
                    offset = good,
                    dropped_bytes = data.len() - good,
                    "journal {}: {reason} at byte {good}; dropping the rest of the file",
                    path.display(),
                );
                file.set_len(good as u64)?;
                file.sync_all()?;
            }
            file.seek(SeekFrom::Start(good as u64))?;
            (records, good)
        };
        let journal = Journal {
            path: path.to_path_buf(),
            file,
            fsync,
            batch: Vec::new(),
            refused: 0,
            len: len as u64,
            last_sync: Instant::now(),
            unsynced: false,
            needs_repair: false,
        };
        Ok((journal, records))
    }

    /// Adds a record to the in-memory batch (no system call). A record over 1 GiB is
    /// refused, and the next [`commit`](Journal::commit) reports it as an error.
    pub fn push(&mut self, rec: RecordRef<'_>) {
        if !rec.encode(&mut self.batch) {
            self.refused += 1;
        }
    }

    /// Whether records are waiting in the batch.
    #[cfg(test)]
    pub fn has_pending(&self) -> bool {
        !self.batch.is_empty()
    }

    /// Writes the batch with one `write(2)` and syncs as the [`Fsync`] policy says.
    ///
    /// Call it before acknowledging the writes in the batch: once it returns `Ok`, they
    /// survive the process being killed (and, with [`Fsync::Always`], a machine crash). If
    /// the write fails, the batch is kept for the next call, which first cuts off whatever
    /// part of it reached the file. If it was written but the sync failed, the batch is gone
    /// and [`sync_if_due`](Journal::sync_if_due) retries the sync.
    pub fn commit(&mut self) -> io::Result<()> {
        if !self.batch.is_empty() {
            if self.needs_repair {
                self.file.set_len(self.len)?;
                self.file.seek(SeekFrom::Start(self.len))?;
                self.needs_repair = false;
            }
            if let Err(e) = self.file.write_all(&self.batch) {
                self.needs_repair = true;
                return Err(e);
            }
            self.len += self.batch.len() as u64;
            self.batch.clear();
            match self.fsync {
                Fsync::Always => {
                    self.unsynced = true;
                    self.sync()?;
                }
                Fsync::EverySecond => {
                    self.unsynced = true;
                    if self.last_sync.elapsed() >= SYNC_INTERVAL {
                        self.sync()?;
                    }
                }
                Fsync::Never => {}
            }
        }
        match std::mem::take(&mut self.refused) {
            0 => Ok(()),
            n => Err(too_large(n)),
        }
    }

    /// Syncs if data was written since the last sync; meant for a once-a-second timer under
    /// [`Fsync::EverySecond`]. Otherwise a cheap no-op.
    pub fn sync_if_due(&mut self) -> io::Result<()> {
        if self.unsynced {
            self.sync()?;
        }
        Ok(())
    }

    fn sync(&mut self) -> io::Result<()> {
        self.file.sync_data()?;
        self.unsynced = false;
        self.last_sync = Instant::now();
        Ok(())
    }

    /// How long written data has waited for a sync (zero when everything is synced).
    pub fn fsync_lag(&self) -> std::time::Duration {
        if self.unsynced {
            self.last_sync.elapsed()
        } else {
            std::time::Duration::ZERO
        }
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// When it syncs.
    pub fn fsync(&self) -> Fsync {
        self.fsync
    }

    /// Bytes in the file, header included.
    pub fn len_bytes(&self) -> u64 {
        self.len
    }

    /// Rewrites the journal to hold exactly `live` (the store's current content, as set
    /// records), atomically: writes `<path>.tmp`, syncs it, renames it over the journal,
    /// syncs the directory, then appends to the new file.
    ///
    /// If writing or renaming fails (or a record is over 1 GiB), the old journal stays in
    /// use and intact. Once the rename is done the new file is in use even if the directory
    /// sync then fails. A pending batch stays pending and goes to the new file on the next
    /// commit; replaying it over `live`, which already includes it, changes nothing.
    pub fn compact<'a>(&mut self, live: impl Iterator<Item = RecordRef<'a>>) -> io::Result<()> {
        let mut tmp = self.path.clone().into_os_string();
        tmp.push(".tmp");
        let tmp = PathBuf::from(tmp);
        let renamed = write_snapshot(&tmp, live)
            .and_then(|(file, len)| std::fs::rename(&tmp, &self.path).map(|()| (file, len)));
        let (file, len) = match renamed {
            Ok(done) => done,
            Err(e) => {
                let _ = std::fs::remove_file(&tmp);
                return Err(e);
            }
        };
        self.file = file;
        self.len = len;
        self.needs_repair = false;
        self.unsynced = false;
        self.last_sync = Instant::now();
        sync_dir(&self.path)
    }
}

impl Drop for Journal {
    fn drop(&mut self) {
        if self.unsynced {
            let _ = self.file.sync_data();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::sync::atomic::{AtomicU64, Ordering};

    /// A unique directory under the system temp dir, removed on drop.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new() -> Self {
            static NEXT: AtomicU64 = AtomicU64::new(0);
            let n = NEXT.fetch_add(1, Ordering::Relaxed);
            let dir = std::env::temp_dir().join(format!("ykjrnl-{}-{n}", std::process::id()));
            let _ = fs::remove_dir_all(&dir);
            fs::create_dir_all(&dir).unwrap();
            TempDir(dir)
        }

        fn journal(&self) -> PathBuf {
            self.0.join("store.journal")
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    fn set(key: &str, value: &str, expires_at_ms: Option<u64>) -> Record {
        let (key, value) = (key.as_bytes().to_vec(), value.as_bytes().to_vec());
        Record::Set {
            key,
            value,
            expires_at_ms,
        }
    }

    fn samples() -> Vec<Record> {
        vec![
            set("alpha", "\u{81}\u{a1}x", None),
            set("beta", "", Some(1_700_000_000_000)),
            Record::Delete {
                key: b"alpha".to_vec(),
            },
            Record::Expire {
                key: b"beta".to_vec(),
                expires_at_ms: None,
            },
            set("", "empty key", Some(0)),
            Record::Expire {
                key: b"beta".to_vec(),
                expires_at_ms: Some(42),
            },
        ]
    }

    fn reopen(path: &Path) -> Vec<Record> {
        Journal::open(path, Fsync::Never).unwrap().1
    }

    /// Writes `recs` to a new journal, one commit each; returns the file and where each record ends.
    fn journal_bytes(path: &Path, recs: &[Record]) -> (Vec<u8>, Vec<usize>) {
        let (mut j, _) = Journal::open(path, Fsync::Never).unwrap();
        let mut ends = Vec::new();
        for rec in recs {
            j.push(rec.into());
            j.commit().unwrap();
            ends.push(j.len_bytes() as usize);
        }
        drop(j);
        (fs::read(path).unwrap(), ends)
    }

    #[test]
    fn round_trip_across_reopen_with_every_fsync_policy() {
        for fsync in [Fsync::Always, Fsync::EverySecond, Fsync::Never] {
            let dir = TempDir::new();
            let (path, recs) = (dir.journal(), samples());
            let (mut j, got) = Journal::open(&path, fsync).unwrap();
            assert!(got.is_empty() && !j.has_pending());
            assert_eq!(j.len_bytes(), 8);
            recs[..3].iter().for_each(|r| j.push(r.into()));
            assert!(j.has_pending());
            j.commit().unwrap();
            assert!(!j.has_pending());
            j.sync_if_due().unwrap();
            drop(j);
            let (mut j, got) = Journal::open(&path, fsync).unwrap();
            assert_eq!(got, recs[..3], "{fsync:?}");
            for rec in &recs[3..] {
                j.push(rec.into());
                j.commit().unwrap();
            }
            assert_eq!(fs::metadata(&path).unwrap().len(), j.len_bytes());
            drop(j);
            assert_eq!(reopen(&path), recs, "{fsync:?}");
        }
    }

    #[test]
    fn torn_or_corrupt_last_record_is_dropped_and_appends_follow() {
        let dir = TempDir::new();
        let (path, recs) = (dir.journal(), samples());
        let (bytes, ends) = journal_bytes(&path, &recs);
        let (last, kept) = (ends[ends.len() - 2], &recs[..recs.len() - 1]);
        let extra = set("new", "value", Some(7));
        for i in last..bytes.len() {
            let mut flipped = bytes.clone();
            flipped[i] ^= 0x5a;
            for (what, data) in [("cut", &bytes[..i]), ("flip", &flipped[..])] {
                fs::write(&path, data).unwrap();
                let (mut j, got) = Journal::open(&path, Fsync::Never).unwrap();
                assert_eq!(got, kept, "{what} at {i}");
                assert_eq!(j.len_bytes(), last as u64);
                j.push((&extra).into());
                j.commit().unwrap();
                drop(j);
                assert_eq!(
                    reopen(&path),
                    [kept, std::slice::from_ref(&extra)].concat(),
                    "{what} at {i}"
                );
            }
        }
    }

    #[test]
    fn replay_never_panics_and_keeps_the_good_prefix() {
        let dir = TempDir::new();
        let (path, recs) = (dir.journal(), samples());
        let (bytes, ends) = journal_bytes(&path, &recs);
        for cut in 0..=bytes.len() {
            fs::write(&path, &bytes[..cut]).unwrap();
            let whole = ends.iter().filter(|&&end| end <= cut).count();
            assert_eq!(reopen(&path), recs[..whole], "cut at {cut}");
        }
        let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
        let mut rand = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for round in 0..3000 {
            let whole = (rand() % (recs.len() as u64 + 1)) as usize;
            let mut data = bytes[..ends.get(whole.wrapping_sub(1)).copied().unwrap_or(8)].to_vec();
            if round % 3 == 0 {
                // A plausible header: a small length and maybe a tag, with garbage after.
                data.extend_from_slice(&(rand() % 40).to_le_bytes()[..4]);
            }
            data.extend((0..rand() % 64).map(|_| rand() as u8));
            let (got, good, _) = replay(&data);
            assert!(good <= data.len());
            assert_eq!(got, recs[..whole], "round {round}");
            if round % 100 == 0 {
                fs::write(&path, &data).unwrap();
                assert_eq!(reopen(&path), recs[..whole]);
            }
        }
    }

    #[test]
    fn foreign_file_is_refused_and_left_alone() {
        let dir = TempDir::new();
        let path = dir.journal();
        for content in [
            &b"{\"not\": \"a journal\"}"[..],
            b"YKJ!",
            b"YKJRNL02\x00\x00",
        ] {
            fs::write(&path, content).unwrap();
            let err = Journal::open(&path, Fsync::Always).err().unwrap();
            assert_eq!(err.kind(), io::ErrorKind::InvalidData);
            assert!(
                err.to_string().contains(&path.display().to_string()),
                "{err}"
            );
            assert_eq!(fs::read(&path).unwrap(), content);
        }
    }

    #[test]
    fn compact_keeps_exactly_the_live_records() {
        let dir = TempDir::new();
        let path = dir.journal();
        let (mut j, _) = Journal::open(&path, Fsync::EverySecond).unwrap();
        samples().iter().for_each(|r| j.push(r.into()));
        j.commit().unwrap();
        let live = vec![set("x", "1", None), set("y", "2", Some(99))];
        let pending = Record::Delete { key: b"x".to_vec() };
        j.push((&pending).into());
        j.compact(live.iter().map(RecordRef::from)).unwrap();
        assert!(!dir.0.join("store.journal.tmp").exists());
        assert_eq!(reopen(&path), live);
        assert!(j.has_pending());
        j.commit().unwrap();
        let extra = set("z", "3", None);
        j.push((&extra).into());
        j.commit().unwrap();
        assert_eq!(fs::metadata(&path).unwrap().len(), j.len_bytes());
        drop(j);
        assert_eq!(reopen(&path), [live, vec![pending, extra]].concat());
    }

    #[test]
    fn failed_compact_leaves_the_old_journal_in_use() {
        let dir = TempDir::new();
        let path = dir.journal();
        let (mut j, _) = Journal::open(&path, Fsync::Always).unwrap();
        let recs = samples();
        j.push((&recs[0]).into());
        j.commit().unwrap();
        fs::create_dir(dir.0.join("store.journal.tmp")).unwrap();
        assert!(j.compact(std::iter::empty()).is_err());
        j.push((&recs[1]).into());
        j.commit().unwrap();
        drop(j);
        assert_eq!(reopen(&path), recs[..2]);
    }
}
