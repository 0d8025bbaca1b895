//! The spill journal: an append-only log on local disk of batches of resolved
//! rows, written while the database cannot take them and replayed into it, in
//! order, once it can.
//!
//! Only the writer thread ([`super::writer`]) uses it. The coordinator opens it
//! at start-up ([`Journal::open`]), which finds, checks and reports a journal a
//! previous run left behind ([`Leftover`]), so the writer replays it before any
//! new result.
//!
//! # On disk
//!
//! Segment files `journal-<seq:020>.pcj` in one folder, oldest (lowest `seq`)
//! first. Each starts with a 12-byte header, [`MAGIC`] then the [`FORMAT_VERSION`]
//! as u32 little-endian, followed by records:
//!
//! ```text
//! [u32 LE payload length][u32 LE CRC-32 (IEEE) of the payload][payload]
//! ```
//!
//! where the payload is a prost `percore.journal.v1.Batch` (`proto/percore_journal.proto`).
//! A new segment is started when a record would take the current one past
//! [`JournalConfig::segment_bytes`]; a run never appends to a segment an earlier
//! run wrote. A segment is deleted once every record in it has been committed to
//! the database: replaying one again after a crash only rewrites rows that are
//! keyed by (device, tick), which every sink writes idempotently.
//!
//! # Damage
//!
//! A torn or corrupt record (the file ends inside its length or payload, the
//! length runs past the end, the checksum does not match, the payload does not
//! decode) is found when the segment is read, at [`Journal::open`] or during a
//! replay. The file is cut at that record's offset, keeping every whole record
//! before it, and the cut is reported as a [`Cut`] naming the file and offset.
//! A file that does not start with the journal's header is not ours and is
//! refused, never cut.

use std::borrow::Cow;
use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::{self, Write as _};
use std::os::unix::fs::FileExt as _;
use std::os::unix::io::AsRawFd as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bytes::Bytes;
use prost::Message as _;

use super::row::Row;
use crate::proto::journal as pb;
use crate::record::Output;

/// The first bytes of every segment: says the file is a percore journal.
pub const MAGIC: [u8; 8] = *b"PCJOURNL";

/// The record layout written after the header; a reader refuses other versions
/// instead of guessing at them.
pub const FORMAT_VERSION: u32 = 1;

/// Bytes of a segment's header: [`MAGIC`] and the version.
pub const SEGMENT_HEADER_LEN: u64 = 12;

/// Bytes in front of each record's payload: its length and checksum.
pub const RECORD_HEADER_LEN: u64 = 8;

/// A segment is rolled once it would grow past this: large enough that the
/// per-file costs (create, fsync of the folder, delete) do not matter, small
/// enough that replaying frees disk space as it goes.
pub const DEFAULT_SEGMENT_BYTES: u64 = 64 * 1024 * 1024;

/// The journal's size bound: past it `append` says [`JournalError::Full`] and the
/// writer pushes back on the shards instead. 1 GiB holds minutes of results at
/// 100,000 rows/s of small outputs.
pub const DEFAULT_MAX_BYTES: u64 = 1024 * 1024 * 1024;

/// Smallest segment size accepted: below a page the header and per-file costs
/// dominate.
pub const MIN_SEGMENT_BYTES: u64 = 4096;

/// The interval of `journal_fsync = "interval"` when the config does not name one.
pub const DEFAULT_FSYNC_INTERVAL: Duration = Duration::from_millis(100);

/// Largest payload of one record: a batch whose rows encode to more is written
/// as several records, so a length always fits its u32 and one bad record
/// takes few rows with it.
const MAX_RECORD_PAYLOAD: usize = 16 * 1024 * 1024;

/// When the journal makes its writes durable with fsync.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FsyncPolicy {
    /// After every appended batch: a power cut loses nothing the writer took.
    Always,
    /// At most this often (checked on each append and by the writer's loop): a
    /// power cut loses at most the last interval; a crash of percore alone loses
    /// nothing, the OS has the data.
    Interval(Duration),
    /// Never while running, only once when the writer ends (so what stays on
    /// disk is consistent): leaves it to the OS.
    Never,
}

/// Where the journal lives and how it behaves: `[sink] journal_*` in the config.
///
/// Plain data, so every sink's config can make one: [`JournalConfig::new`] gives
/// the documented defaults for a folder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JournalConfig {
    /// The folder of the segment files; created if missing. One run at a time
    /// may use it (it is locked while open).
    pub dir: PathBuf,
    /// When appended batches are fsynced.
    pub fsync: FsyncPolicy,
    /// Most bytes the journal's files may hold together.
    pub max_bytes: u64,
    /// Size past which a new segment file is started.
    pub segment_bytes: u64,
}

impl JournalConfig {
    /// A journal in `dir` with the defaults: fsync after every batch, 1 GiB at
    /// most, 64 MiB segments.
    pub fn new(dir: impl Into<PathBuf>) -> JournalConfig {
        JournalConfig {
            dir: dir.into(),
            fsync: FsyncPolicy::Always,
            max_bytes: DEFAULT_MAX_BYTES,
            segment_bytes: DEFAULT_SEGMENT_BYTES,
        }
    }
}

/// What was wrong with a damaged record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CutReason {
    /// The file ends inside the record's 8-byte length and checksum.
    TornHeader,
    /// The record's length runs past the end of the file.
    PastEnd {
        /// The payload length the record claims.
        length: u64,
        /// Bytes actually left after its header.
        left: u64,
    },
    /// The payload's CRC-32 is not the one stored.
    Checksum {
        /// The checksum in the record.
        stored: u32,
        /// The checksum of the bytes read.
        computed: u32,
    },
    /// The payload is not a `percore.journal.v1.Batch`.
    Undecodable(String),
    /// The file ends inside the segment header (a crash right after creating it).
    TornSegmentHeader,
}

impl std::fmt::Display for CutReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CutReason::TornHeader => write!(f, "the file ends inside the record's header"),
            CutReason::PastEnd { length, left } => write!(
                f,
                "the record claims {length} bytes but only {left} follow (torn write)"
            ),
            CutReason::Checksum { stored, computed } => write!(
                f,
                "checksum mismatch (stored {stored:08x}, computed {computed:08x})"
            ),
            CutReason::Undecodable(error) => write!(f, "the payload does not decode: {error}"),
            CutReason::TornSegmentHeader => write!(f, "the file ends inside the segment header"),
        }
    }
}

/// A damaged record found and cut away: the file was truncated at `offset`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cut {
    /// The segment file.
    pub file: PathBuf,
    /// Where the damaged record started; the file's new length.
    pub offset: u64,
    /// What was wrong with it.
    pub reason: CutReason,
    /// Whole records kept in the file before the cut.
    pub records_kept: u64,
    /// Bytes dropped from the file's end.
    pub bytes_dropped: u64,
    /// Whether the file was deleted because no record was left in it.
    pub removed: bool,
}

impl std::fmt::Display for Cut {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "journal file {} is damaged at offset {}: {}; cut there, keeping the {} whole record(s) before it ({} byte(s) dropped",
            self.file.display(),
            self.offset,
            self.reason,
            self.records_kept,
            self.bytes_dropped
        )?;
        if self.removed {
            write!(f, "; the file held no whole record and was removed")?;
        }
        write!(f, ")")
    }
}

/// A journal found at open, left by an earlier run (after its cuts).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Leftover {
    /// Segment files holding records.
    pub segments: usize,
    /// Bytes of those files.
    pub bytes: u64,
    /// Records (batches) in them.
    pub batches: u64,
    /// Rows in those records.
    pub rows: u64,
    /// Damaged records cut away while reading them.
    pub cuts: Vec<Cut>,
}

impl Leftover {
    /// Whether there is nothing to replay and nothing was cut.
    pub fn is_empty(&self) -> bool {
        self.batches == 0 && self.cuts.is_empty()
    }
}

/// A journal operation failed: what, where, why.
#[derive(Debug)]
pub enum JournalError {
    /// The OS refused a file operation.
    Io {
        /// What was being done, e.g. "appending a record".
        operation: &'static str,
        /// The file or folder.
        path: PathBuf,
        /// The OS's reason.
        error: io::Error,
    },
    /// Appending would take the journal past its size bound.
    Full {
        /// The journal's folder.
        dir: PathBuf,
        /// Bytes the journal holds now.
        bytes: u64,
        /// Bytes the append needed.
        needed: u64,
        /// The bound.
        max_bytes: u64,
    },
    /// A segment file does not start with the journal's header: not ours (or a
    /// newer format), so it is neither read nor cut.
    BadHeader {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        detail: String,
    },
    /// Another process has the journal's folder open.
    Locked {
        /// The folder.
        dir: PathBuf,
    },
}

impl std::fmt::Display for JournalError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            JournalError::Io {
                operation,
                path,
                error,
            } => write!(f, "journal {}: {operation} failed: {error}", path.display()),
            JournalError::Full {
                dir,
                bytes,
                needed,
                max_bytes,
            } => write!(
                f,
                "journal {} is full: it holds {bytes} bytes, the batch needs {needed} more, the bound is {max_bytes} (journal_max_bytes)",
                dir.display()
            ),
            JournalError::BadHeader { path, detail } => write!(
                f,
                "journal file {} is not a percore journal segment: {detail}",
                path.display()
            ),
            JournalError::Locked { dir } => write!(
                f,
                "journal {} is in use by another percore process",
                dir.display()
            ),
        }
    }
}

impl std::error::Error for JournalError {}

/// An `io::Error` on `path` while doing `operation`.
fn io_error<'p>(
    operation: &'static str,
    path: &'p Path,
) -> impl FnOnce(io::Error) -> JournalError + 'p {
    move |error| JournalError::Io {
        operation,
        path: path.to_path_buf(),
        error,
    }
}

/// One segment file the journal holds.
#[derive(Debug)]
struct Segment {
    /// Its sequence number: the order segments are replayed in.
    seq: u64,
    /// Its path.
    path: PathBuf,
    /// Bytes of whole records and header: the file's length as far as the
    /// journal knows it (a failed append's torn tail beyond it is never read).
    bytes: u64,
    /// Rows in its records not yet committed.
    rows: u64,
    /// Records in it not yet committed.
    records: u64,
}

/// Records read back for replay, to write in one transaction: their rows
/// and where the last one ends.
#[derive(Debug)]
pub struct Replay {
    /// The records' rows, in order, owning their text.
    pub rows: Vec<Row<'static>>,
    /// The segment they are in.
    seq: u64,
    /// Offset just past the last: where the next record starts.
    end: u64,
    /// How many records: a group of them is committed as one.
    records: u64,
}

/// The journal: segments on disk, appended at the back, replayed from the front.
#[derive(Debug)]
pub struct Journal {
    /// Folder, fsync policy and bounds.
    config: JournalConfig,
    /// The folder, opened and `flock`ed so two processes never share a journal;
    /// also what the folder's own fsync goes through.
    dir: File,
    /// Every segment holding records not yet committed, oldest first; the last
    /// one is the one appends go to while `active` is set.
    segments: VecDeque<Segment>,
    /// Append handle of the back segment, once this run has started one.
    active: Option<File>,
    /// Read handle of the front segment, and its sequence number.
    reader: Option<(u64, File)>,
    /// Offset in the front segment of the next record to replay.
    read_offset: u64,
    /// Records of the front segment committed so far (they stay in its file
    /// until the whole segment is committed).
    front_committed: u64,
    /// Bytes of every segment together: what counts against `max_bytes`.
    bytes: u64,
    /// Rows in records not yet committed.
    rows: u64,
    /// The next segment's sequence number.
    next_seq: u64,
    /// Appended bytes not yet fsynced.
    unsynced: bool,
    /// The last fsync, for [`FsyncPolicy::Interval`].
    last_sync: Instant,
    /// Cuts made since the last [`Journal::take_cuts`].
    cuts: Vec<Cut>,
    /// Rows lost to cuts made while replaying (not at open): records this run
    /// counted that were damaged on disk.
    rows_lost: u64,
}

/// The file name of segment `seq`.
fn segment_name(seq: u64) -> String {
    format!("journal-{seq:020}.pcj")
}

/// The sequence number in a segment file's name, if it is one.
fn segment_seq(name: &str) -> Option<u64> {
    let digits = name.strip_prefix("journal-")?.strip_suffix(".pcj")?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// The segment header's bytes.
fn segment_header() -> [u8; SEGMENT_HEADER_LEN as usize] {
    let mut header = [0; SEGMENT_HEADER_LEN as usize];
    header[..8].copy_from_slice(&MAGIC);
    header[8..].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
    header
}

/// Reads one record at `offset` of a file whose whole records end at `len`.
/// `Ok(Err(reason))` is a damaged record; `Ok(Ok(None))` the end of the file.
fn read_record(
    file: &File,
    path: &Path,
    offset: u64,
    len: u64,
) -> Result<Result<Option<(pb::Batch, u64)>, CutReason>, JournalError> {
    if offset >= len {
        return Ok(Ok(None));
    }
    if len - offset < RECORD_HEADER_LEN {
        return Ok(Err(CutReason::TornHeader));
    }
    let mut header = [0u8; RECORD_HEADER_LEN as usize];
    file.read_exact_at(&mut header, offset)
        .map_err(io_error("reading a record header", path))?;
    let length = u64::from(u32::from_le_bytes([
        header[0], header[1], header[2], header[3],
    ]));
    let stored = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
    let left = len - offset - RECORD_HEADER_LEN;
    if length > left {
        return Ok(Err(CutReason::PastEnd { length, left }));
    }
    // `length` ≤ what is left of a file we could open, so it fits memory's index.
    let mut payload = vec![0u8; length as usize];
    file.read_exact_at(&mut payload, offset + RECORD_HEADER_LEN)
        .map_err(io_error("reading a record", path))?;
    let computed = crc32fast::hash(&payload);
    if computed != stored {
        return Ok(Err(CutReason::Checksum { stored, computed }));
    }
    match pb::Batch::decode(&payload[..]) {
        Ok(batch) => Ok(Ok(Some((batch, offset + RECORD_HEADER_LEN + length)))),
        Err(error) => Ok(Err(CutReason::Undecodable(error.to_string()))),
    }
}

/// A row as the journal stores it.
fn to_message(row: &Row<'_>) -> pb::Row {
    pb::Row {
        device_id: row.device_id.to_string(),
        tick_ms: row.tick_ms,
        class: row.class.to_string(),
        model: row.model.to_string(),
        outcome: row.outcome.to_string(),
        reason: row.reason.as_ref().map(|reason| reason.to_string()),
        // The first of `outputs` is the column's value: stored once.
        output: if row.outputs.is_empty() {
            row.output.clone()
        } else {
            Bytes::new()
        },
        outputs: row
            .outputs
            .iter()
            .map(|output| pb::Output {
                name: output.name.clone(),
                datatype: output.datatype.clone(),
                shape: output.shape.clone(),
                data: output.bytes.clone(),
            })
            .collect(),
        schedule_lag_us: row.schedule_lag_us,
        fetch_us: row.fetch_us,
        infer_us: row.infer_us,
        end_to_end_us: row.end_to_end_us,
        shard: row.shard,
        compute_node: row.compute_node.as_ref().map(|node| node.to_string()),
        attempts: row.attempts,
        run_id: row.run_id.to_string(),
    }
}

/// A stored row back in the shape every sink writes.
fn from_message(row: pb::Row) -> Row<'static> {
    Row {
        device_id: Cow::Owned(row.device_id),
        tick_ms: row.tick_ms,
        class: Cow::Owned(row.class),
        model: Cow::Owned(row.model),
        outcome: Cow::Owned(row.outcome),
        reason: row.reason.map(Cow::Owned),
        output: match row.outputs.first() {
            Some(first) => first.data.clone(),
            None => row.output,
        },
        outputs: Cow::Owned(
            row.outputs
                .into_iter()
                .map(|output| Output {
                    name: output.name,
                    datatype: output.datatype,
                    shape: output.shape,
                    bytes: output.data,
                })
                .collect(),
        ),
        schedule_lag_us: row.schedule_lag_us,
        fetch_us: row.fetch_us,
        infer_us: row.infer_us,
        end_to_end_us: row.end_to_end_us,
        shard: row.shard,
        compute_node: row.compute_node.map(Cow::Owned),
        attempts: row.attempts,
        run_id: Cow::Owned(row.run_id),
    }
}

/// Encodes `rows` as records (`[len][crc][payload]`), several when the rows
/// encode to more than [`MAX_RECORD_PAYLOAD`]; with each record's row count.
fn encode_records(rows: &[Row<'_>]) -> Vec<(Vec<u8>, u64)> {
    let mut records = Vec::new();
    let mut batch = pb::Batch::default();
    let mut size = 0usize;
    let mut finish = |batch: &mut pb::Batch| {
        let rows = batch.rows.len() as u64;
        let payload = std::mem::take(batch).encode_to_vec();
        let mut record = Vec::with_capacity(payload.len() + RECORD_HEADER_LEN as usize);
        // A payload is at most MAX_RECORD_PAYLOAD plus one row (a row's output is
        // bounded by the gRPC message limit, far below 4 GiB).
        let length = u32::try_from(payload.len()).unwrap_or(u32::MAX);
        record.extend_from_slice(&length.to_le_bytes());
        record.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
        record.extend_from_slice(&payload);
        records.push((record, rows));
    };
    for row in rows {
        let message = to_message(row);
        let len = message.encoded_len();
        if !batch.rows.is_empty() && size + len > MAX_RECORD_PAYLOAD {
            finish(&mut batch);
            size = 0;
        }
        size += len + 3; // field tag and length prefix, at most
        batch.rows.push(message);
    }
    if !batch.rows.is_empty() {
        finish(&mut batch);
    }
    records
}

/// Takes an exclusive, non-blocking `flock` on the open folder.
fn lock(dir: &File, path: &Path) -> Result<(), JournalError> {
    // SAFETY: flock only reads the descriptor, which `dir` keeps open.
    if unsafe { libc::flock(dir.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
        return Ok(());
    }
    let error = io::Error::last_os_error();
    if error.raw_os_error() == Some(libc::EWOULDBLOCK) {
        return Err(JournalError::Locked {
            dir: path.to_path_buf(),
        });
    }
    Err(JournalError::Io {
        operation: "locking the folder",
        path: path.to_path_buf(),
        error,
    })
}

impl Journal {
    /// Opens the journal in `config.dir` (created if missing), locks it, and
    /// reads every segment an earlier run left: each record is checked, damaged
    /// ones are cut away (reported in [`Leftover::cuts`]) and what remains is
    /// what the writer replays first. Appends go to a new segment.
    pub fn open(config: JournalConfig) -> Result<(Journal, Leftover), JournalError> {
        let path = config.dir.clone();
        std::fs::create_dir_all(&path).map_err(io_error("creating the folder", &path))?;
        let dir = File::open(&path).map_err(io_error("opening the folder", &path))?;
        lock(&dir, &path)?;
        let mut found = Vec::new();
        for entry in std::fs::read_dir(&path).map_err(io_error("listing the folder", &path))? {
            let entry = entry.map_err(io_error("listing the folder", &path))?;
            if let Some(seq) = entry.file_name().to_str().and_then(segment_seq) {
                found.push((seq, entry.path()));
            }
        }
        found.sort_unstable();
        let next_seq = found.last().map_or(0, |(seq, _)| seq.saturating_add(1));
        let mut journal = Journal {
            config,
            dir,
            segments: VecDeque::new(),
            active: None,
            reader: None,
            read_offset: SEGMENT_HEADER_LEN,
            front_committed: 0,
            bytes: 0,
            rows: 0,
            next_seq,
            unsynced: false,
            last_sync: Instant::now(),
            cuts: Vec::new(),
            rows_lost: 0,
        };
        let mut leftover = Leftover::default();
        for (seq, path) in found {
            if let Some(segment) = journal.scan(seq, path)? {
                leftover.segments += 1;
                leftover.bytes += segment.bytes;
                leftover.batches += segment.records;
                leftover.rows += segment.rows;
                journal.bytes += segment.bytes;
                journal.rows += segment.rows;
                journal.segments.push_back(segment);
            }
        }
        leftover.cuts = std::mem::take(&mut journal.cuts);
        if !leftover.cuts.is_empty() {
            journal.sync_dir()?;
        }
        Ok((journal, leftover))
    }

    /// Reads a leftover segment through, cutting it at its first damaged record;
    /// `None` when no record is left in it (the file is then removed).
    fn scan(&mut self, seq: u64, path: PathBuf) -> Result<Option<Segment>, JournalError> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .map_err(io_error("opening a segment", &path))?;
        let len = file
            .metadata()
            .map_err(io_error("reading a segment's size", &path))?
            .len();
        let expected = segment_header();
        let mut header = [0u8; SEGMENT_HEADER_LEN as usize];
        let have = len.min(SEGMENT_HEADER_LEN) as usize;
        file.read_exact_at(&mut header[..have], 0)
            .map_err(io_error("reading a segment header", &path))?;
        if header[..have.min(8)] != expected[..have.min(8)] {
            return Err(JournalError::BadHeader {
                path,
                detail: format!(
                    "it does not start with {:?}",
                    String::from_utf8_lossy(&MAGIC)
                ),
            });
        }
        if have == SEGMENT_HEADER_LEN as usize && header[8..] != expected[8..] {
            let version = u32::from_le_bytes([header[8], header[9], header[10], header[11]]);
            return Err(JournalError::BadHeader {
                path,
                detail: format!(
                    "its format version is {version}; this percore reads version {FORMAT_VERSION}"
                ),
            });
        }
        if len < SEGMENT_HEADER_LEN {
            self.cut(&file, &path, 0, len, CutReason::TornSegmentHeader, 0)?;
            return Ok(None);
        }
        let mut segment = Segment {
            seq,
            path,
            bytes: len,
            rows: 0,
            records: 0,
        };
        let mut offset = SEGMENT_HEADER_LEN;
        loop {
            match read_record(&file, &segment.path, offset, len)? {
                Ok(Some((batch, end))) => {
                    segment.records += 1;
                    segment.rows += batch.rows.len() as u64;
                    offset = end;
                }
                Ok(None) => break,
                Err(reason) => {
                    let records = segment.records;
                    self.cut(&file, &segment.path, offset, len, reason, records)?;
                    segment.bytes = offset;
                    break;
                }
            }
        }
        if segment.records == 0 {
            // Only a header: nothing to replay, nothing to keep.
            if self.cuts.last().is_none_or(|cut| cut.file != segment.path) {
                std::fs::remove_file(&segment.path)
                    .map_err(io_error("removing an empty segment", &segment.path))?;
            }
            return Ok(None);
        }
        Ok(Some(segment))
    }

    /// Cuts `file` (of length `len`) at `offset`, removing it when no record
    /// is left, and records the cut.
    fn cut(
        &mut self,
        file: &File,
        path: &Path,
        offset: u64,
        len: u64,
        reason: CutReason,
        records_kept: u64,
    ) -> Result<(), JournalError> {
        let removed = records_kept == 0;
        if removed {
            std::fs::remove_file(path).map_err(io_error("removing a damaged segment", path))?;
        } else {
            file.set_len(offset)
                .map_err(io_error("cutting a damaged record", path))?;
            file.sync_all()
                .map_err(io_error("syncing a cut segment", path))?;
        }
        self.cuts.push(Cut {
            file: path.to_path_buf(),
            offset,
            reason,
            records_kept,
            bytes_dropped: len.saturating_sub(offset),
            removed,
        });
        Ok(())
    }

    /// The journal's folder.
    pub fn dir(&self) -> &Path {
        &self.config.dir
    }

    /// Whether no record waits to be replayed.
    pub fn is_empty(&self) -> bool {
        self.segments.iter().all(|segment| segment.records == 0)
    }

    /// Rows in records not yet committed.
    pub fn rows(&self) -> u64 {
        self.rows
    }

    /// Bytes the journal's files hold.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Segment files on disk.
    pub fn segments(&self) -> usize {
        self.segments.len()
    }

    /// Rows lost to records damaged on disk while this run replayed them.
    pub fn rows_lost(&self) -> u64 {
        self.rows_lost
    }

    /// The cuts made while replaying since the last call (those made at open
    /// are in [`Leftover::cuts`]).
    pub fn take_cuts(&mut self) -> Vec<Cut> {
        std::mem::take(&mut self.cuts)
    }

    /// Appends `rows` as one record (several for a very large batch), after
    /// every record already in the journal; returns the bytes written. Refuses
    /// with [`JournalError::Full`], writing nothing, when the rows do not fit
    /// under `max_bytes`. Fsyncs as the policy says.
    pub fn append(&mut self, rows: &[Row<'_>]) -> Result<u64, JournalError> {
        if rows.is_empty() {
            return Ok(0);
        }
        let records = encode_records(rows);
        // The same rolling rule as below, to know the size before writing.
        let mut back = self.active_bytes();
        let mut needed = 0;
        for (record, _) in &records {
            let len = record.len() as u64;
            match back {
                Some(bytes) if !self.rolls(bytes, len) => {
                    back = Some(bytes + len);
                    needed += len;
                }
                _ => {
                    back = Some(SEGMENT_HEADER_LEN + len);
                    needed += SEGMENT_HEADER_LEN + len;
                }
            }
        }
        if self.bytes + needed > self.config.max_bytes {
            return Err(JournalError::Full {
                dir: self.config.dir.clone(),
                bytes: self.bytes,
                needed,
                max_bytes: self.config.max_bytes,
            });
        }
        for (record, rows) in &records {
            self.write_record(record, *rows)?;
        }
        match self.config.fsync {
            FsyncPolicy::Always => self.sync()?,
            FsyncPolicy::Interval(_) => self.sync_if_due()?,
            FsyncPolicy::Never => {}
        }
        Ok(needed)
    }

    /// Bytes of the segment appends go to, if one is open.
    fn active_bytes(&self) -> Option<u64> {
        self.active
            .as_ref()
            .and(self.segments.back())
            .map(|s| s.bytes)
    }

    /// Whether a record of `len` bytes starts a new segment after one of `bytes`.
    fn rolls(&self, bytes: u64, len: u64) -> bool {
        bytes > SEGMENT_HEADER_LEN && bytes + len > self.config.segment_bytes
    }

    /// Writes one record at the back, rolling to a new segment first if needed.
    fn write_record(&mut self, record: &[u8], rows: u64) -> Result<(), JournalError> {
        let len = record.len() as u64;
        let rolls = self
            .active_bytes()
            .is_none_or(|bytes| self.rolls(bytes, len));
        if rolls {
            self.start_segment()?;
        }
        let (Some(file), Some(segment)) = (self.active.as_mut(), self.segments.back_mut()) else {
            unreachable!("start_segment leaves an active segment at the back");
        };
        if let Err(error) = file.write_all(record) {
            // Take back a partial write so no torn record sits before the next
            // one; the segment is closed either way and its known length stays.
            let _ = file.set_len(segment.bytes);
            self.active = None;
            return Err(JournalError::Io {
                operation: "appending a record",
                path: segment.path.clone(),
                error,
            });
        }
        segment.bytes += len;
        segment.records += 1;
        segment.rows += rows;
        self.bytes += len;
        self.rows += rows;
        self.unsynced = true;
        Ok(())
    }

    /// Closes the segment being appended to (synced) and starts the next one.
    fn start_segment(&mut self) -> Result<(), JournalError> {
        if self.active.is_some() {
            self.sync()?;
            self.active = None;
        }
        let seq = self.next_seq;
        let path = self.config.dir.join(segment_name(seq));
        let mut file = OpenOptions::new()
            .append(true)
            .create_new(true)
            .open(&path)
            .map_err(io_error("creating a segment", &path))?;
        self.next_seq += 1;
        if let Err(error) = file.write_all(&segment_header()) {
            let _ = std::fs::remove_file(&path);
            return Err(JournalError::Io {
                operation: "writing a segment header",
                path,
                error,
            });
        }
        // A new file's name must survive a power cut as well as its data.
        if self.config.fsync != FsyncPolicy::Never {
            file.sync_all()
                .map_err(io_error("syncing a new segment", &path))?;
            self.sync_dir()?;
        }
        self.bytes += SEGMENT_HEADER_LEN;
        self.segments.push_back(Segment {
            seq,
            path,
            bytes: SEGMENT_HEADER_LEN,
            rows: 0,
            records: 0,
        });
        self.active = Some(file);
        Ok(())
    }

    /// Fsyncs what was appended (whatever the policy: the writer calls this
    /// when it ends, so what stays on disk is consistent).
    pub fn sync(&mut self) -> Result<(), JournalError> {
        if self.unsynced {
            if let (Some(file), Some(segment)) = (&self.active, self.segments.back()) {
                file.sync_data()
                    .map_err(io_error("syncing a segment", &segment.path))?;
            }
            self.unsynced = false;
        }
        self.last_sync = Instant::now();
        Ok(())
    }

    /// Fsyncs if the interval policy's time has come and something is unsynced.
    pub fn sync_if_due(&mut self) -> Result<(), JournalError> {
        if let FsyncPolicy::Interval(interval) = self.config.fsync {
            if self.unsynced && self.last_sync.elapsed() >= interval {
                self.sync()?;
            }
        }
        Ok(())
    }

    /// When [`Journal::sync_if_due`] will next have something to do: `None`
    /// unless the policy is an interval and appended bytes are unsynced.
    pub fn sync_due_at(&self) -> Option<Instant> {
        match self.config.fsync {
            FsyncPolicy::Interval(interval) if self.unsynced => Some(self.last_sync + interval),
            _ => None,
        }
    }

    /// Fsyncs the folder, so created and removed names are durable.
    fn sync_dir(&self) -> Result<(), JournalError> {
        self.dir
            .sync_all()
            .map_err(io_error("syncing the folder", &self.config.dir))
    }

    /// The oldest record not yet committed, read back (it stays in the journal
    /// until [`Journal::commit`]); `None` when the journal is empty. A damaged
    /// record is cut away (see [`Journal::take_cuts`]) and the next whole one
    /// returned.
    pub fn next_batch(&mut self) -> Result<Option<Replay>, JournalError> {
        loop {
            let Some(front) = self.segments.front() else {
                return Ok(None);
            };
            let (seq, len) = (front.seq, front.bytes);
            if self.read_offset >= len {
                // Nothing more in the front segment: it has been replayed (an
                // active one too: the next append starts a new segment).
                self.remove_front()?;
                continue;
            }
            if self.reader.as_ref().is_none_or(|(open, _)| *open != seq) {
                let file = OpenOptions::new()
                    .read(true)
                    .write(true)
                    .open(&front.path)
                    .map_err(io_error("opening a segment", &front.path))?;
                self.reader = Some((seq, file));
            }
            let Some((_, file)) = &self.reader else {
                unreachable!("the reader was opened above");
            };
            let path = front.path.clone();
            match read_record(file, &path, self.read_offset, len)? {
                Ok(Some((batch, end))) => {
                    return Ok(Some(Replay {
                        rows: batch.rows.into_iter().map(from_message).collect(),
                        seq,
                        end,
                        records: 1,
                    }))
                }
                Ok(None) => continue,
                Err(reason) => {
                    let file = file
                        .try_clone()
                        .map_err(io_error("opening a segment", &path))?;
                    self.cut_front(&file, &path, len, reason)?;
                }
            }
        }
    }

    /// Cuts the front segment at the read offset during a replay; its rows past
    /// that are lost.
    fn cut_front(
        &mut self,
        file: &File,
        path: &Path,
        len: u64,
        reason: CutReason,
    ) -> Result<(), JournalError> {
        let offset = self.read_offset;
        let Some(front) = self.segments.front_mut() else {
            return Ok(());
        };
        // Records before the read offset were committed; they are still in the file.
        let kept = self.front_committed;
        let lost_rows = front.rows;
        self.rows -= lost_rows;
        self.rows_lost += lost_rows;
        self.bytes -= len - offset;
        front.bytes = offset;
        front.rows = 0;
        front.records = 0;
        let is_active = self.segments.len() == 1 && self.active.is_some();
        if is_active {
            self.active = None;
        }
        self.cut(file, path, offset, len, reason, kept)?;
        Ok(())
    }

    /// The next record ([`Journal::next_batch`]) and the whole records after
    /// it in the same segment, until they hold `max_rows` rows: one
    /// transaction instead of one per record. A journal filled at a low rate
    /// holds many small records (one per group the writer had), and replaying
    /// them one commit each could take longer than the outage did. A damaged
    /// record ends the group; the next call cuts it.
    pub fn next_group(&mut self, max_rows: usize) -> Result<Option<Replay>, JournalError> {
        let Some(mut group) = self.next_batch()? else {
            return Ok(None);
        };
        while group.rows.len() < max_rows {
            let (Some(front), Some((open, file))) = (self.segments.front(), &self.reader) else {
                break;
            };
            if front.seq != group.seq || *open != group.seq {
                break;
            }
            match read_record(file, &front.path, group.end, front.bytes)? {
                Ok(Some((batch, end))) => {
                    group.rows.extend(batch.rows.into_iter().map(from_message));
                    group.end = end;
                    group.records += 1;
                }
                Ok(None) | Err(_) => break,
            }
        }
        Ok(Some(group))
    }

    /// Marks `replay` as committed to the database; a segment every record of
    /// which is committed is deleted.
    pub fn commit(&mut self, replay: &Replay) -> Result<(), JournalError> {
        let Some(front) = self.segments.front_mut() else {
            return Ok(());
        };
        if front.seq != replay.seq || replay.end <= self.read_offset {
            return Ok(()); // not the record at the front: nothing to do
        }
        let rows = replay.rows.len() as u64;
        front.rows = front.rows.saturating_sub(rows);
        front.records = front.records.saturating_sub(replay.records);
        self.rows = self.rows.saturating_sub(rows);
        self.read_offset = replay.end;
        self.front_committed += replay.records;
        if self.read_offset >= front.bytes {
            self.remove_front()?;
        }
        Ok(())
    }

    /// Deletes the front segment (every record of it committed).
    fn remove_front(&mut self) -> Result<(), JournalError> {
        let Some(front) = self.segments.pop_front() else {
            return Ok(());
        };
        if self.segments.is_empty() {
            self.active = None; // the next append starts a new segment
            self.unsynced = false;
        }
        if self
            .reader
            .as_ref()
            .is_some_and(|(seq, _)| *seq == front.seq)
        {
            self.reader = None;
        }
        self.read_offset = SEGMENT_HEADER_LEN;
        self.front_committed = 0;
        self.bytes = self.bytes.saturating_sub(front.bytes);
        self.rows = self.rows.saturating_sub(front.rows);
        match std::fs::remove_file(&front.path) {
            Ok(()) => Ok(()),
            Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(error) => Err(JournalError::Io {
                operation: "removing a replayed segment",
                path: front.path,
                error,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn row(device: usize, tick_ms: i64) -> Row<'static> {
        Row {
            device_id: Cow::Owned(format!("dev-{device:05}")),
            tick_ms,
            class: Cow::Borrowed("camera"),
            model: Cow::Borrowed("yolo"),
            outcome: Cow::Borrowed("ok"),
            reason: None,
            output: Bytes::from(vec![device as u8; 16]),
            outputs: std::borrow::Cow::Borrowed(&[]),
            schedule_lag_us: 5,
            fetch_us: Some(100),
            infer_us: Some(200),
            end_to_end_us: Some(320),
            shard: 1,
            compute_node: Some(Cow::Borrowed("10.0.0.1:8001")),
            attempts: 2,
            run_id: Cow::Borrowed("run-1"),
        }
    }

    /// The tick of a test batch: 1000 + its number, so every batch's rows
    /// encode to the same size (proto3 leaves a 0 out) and records line up.
    fn tick(batch: usize) -> i64 {
        1_000 + batch as i64
    }

    fn rows(batch: usize, count: usize) -> Vec<Row<'static>> {
        (0..count).map(|i| row(i, tick(batch))).collect()
    }

    fn config(dir: &Path) -> JournalConfig {
        JournalConfig::new(dir.join("journal"))
    }

    /// Every batch left in the journal, replayed and committed in order.
    fn drain(journal: &mut Journal) -> Vec<Vec<Row<'static>>> {
        let mut batches = Vec::new();
        for _ in 0..10_000 {
            let Some(replay) = journal.next_batch().unwrap() else {
                return batches;
            };
            journal.commit(&replay).unwrap();
            batches.push(replay.rows);
        }
        panic!("the journal never ran dry");
    }

    fn segment_files(dir: &Path) -> Vec<PathBuf> {
        let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
            .unwrap()
            .map(|entry| entry.unwrap().path())
            .filter(|path| path.extension().is_some_and(|e| e == "pcj"))
            .collect();
        files.sort();
        files
    }

    #[test]
    fn every_column_round_trips_with_nulls_and_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let full = Row {
            reason: Some(Cow::Borrowed("infer: grpc status 5 NOT_FOUND: no model")),
            output: Bytes::from_static(&[0, 1, 2, 255, 0]),
            ..row(1, 1_700_000_000_000)
        };
        let nulls = Row {
            device_id: Cow::Borrowed("thermo-02"),
            tick_ms: -7,
            outcome: Cow::Borrowed("skipped"),
            reason: Some(Cow::Borrowed("")), // an empty text, not NULL
            output: Bytes::new(),
            schedule_lag_us: i64::MAX,
            fetch_us: None,
            infer_us: None,
            end_to_end_us: None,
            shard: 0,
            compute_node: None,
            attempts: 0,
            ..row(2, 0)
        };
        let no_reason = Row {
            reason: None,
            fetch_us: Some(0),
            end_to_end_us: Some(i64::MIN),
            ..nulls.clone()
        };
        let (mut journal, leftover) = Journal::open(config(dir.path())).unwrap();
        assert!(leftover.is_empty(), "{leftover:?}");
        journal
            .append(&[full.clone(), nulls.clone(), no_reason.clone()])
            .unwrap();
        assert_eq!(journal.rows(), 3);
        let batches = drain(&mut journal);
        assert_eq!(batches, vec![vec![full, nulls, no_reason]]);
        assert!(journal.is_empty());
        assert_eq!((journal.rows(), journal.bytes()), (0, 0));
        assert!(segment_files(&dir.path().join("journal")).is_empty());
    }

    #[test]
    fn small_records_replay_as_groups_in_order_and_commit_as_one() {
        let dir = tempfile::tempdir().unwrap();
        let folder = dir.path().join("journal");
        let (mut journal, _) = Journal::open(config(dir.path())).unwrap();
        // 50 records of 3 rows: what a writer at a low rate journals.
        for batch in 0..50 {
            journal.append(&rows(batch, 3)).unwrap();
        }
        let mut replayed = Vec::new();
        let mut groups = 0;
        while let Some(group) = journal.next_group(40).unwrap() {
            // Whole records, up to the first that reaches 40 rows.
            assert!(
                group.rows.len() <= 42 && group.rows.len() % 3 == 0,
                "{}",
                group.rows.len()
            );
            journal.commit(&group).unwrap();
            replayed.extend(group.rows);
            groups += 1;
            assert_eq!(journal.rows(), 150 - replayed.len() as u64);
        }
        assert_eq!(groups, 4, "150 rows in groups of 42, 42, 42, 24");
        let expected: Vec<Row<'static>> = (0..50).flat_map(|batch| rows(batch, 3)).collect();
        assert_eq!(replayed, expected, "every row once, in order");
        assert!(journal.is_empty());
        assert!(segment_files(&folder).is_empty());
    }

    #[test]
    fn a_group_stops_before_a_damaged_record_which_the_next_read_cuts() {
        let dir = tempfile::tempdir().unwrap();
        let folder = dir.path().join("journal");
        let (mut journal, _) = Journal::open(config(dir.path())).unwrap();
        for batch in 0..4 {
            journal.append(&rows(batch, 3)).unwrap();
        }
        journal.sync().unwrap();
        let file = segment_files(&folder).pop().unwrap();
        let mut bytes = std::fs::read(&file).unwrap();
        // Flip a byte in the last record's body: its checksum fails.
        let last = bytes.len() - 2;
        bytes[last] ^= 0xff;
        std::fs::write(&file, bytes).unwrap();
        let group = journal.next_group(1_000).unwrap().unwrap();
        assert_eq!(group.rows.len(), 9, "the three whole records");
        journal.commit(&group).unwrap();
        assert!(
            journal.next_group(1_000).unwrap().is_none(),
            "the damaged one is cut"
        );
        assert_eq!(journal.take_cuts().len(), 1);
        assert_eq!(journal.rows_lost(), 3);
    }

    #[test]
    fn segments_roll_and_replay_in_order_then_are_deleted() {
        let dir = tempfile::tempdir().unwrap();
        let config = JournalConfig {
            segment_bytes: MIN_SEGMENT_BYTES,
            ..config(dir.path())
        };
        let folder = config.dir.clone();
        let (mut journal, _) = Journal::open(config).unwrap();
        for batch in 0..40 {
            journal.append(&rows(batch, 10)).unwrap();
        }
        let files = segment_files(&folder);
        assert!(files.len() >= 5, "{files:?}");
        assert_eq!(files.len(), journal.segments());
        let names: Vec<String> = files
            .iter()
            .map(|f| f.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names[0], "journal-00000000000000000000.pcj");
        assert_eq!(names[1], "journal-00000000000000000001.pcj");
        for file in &files {
            let len = std::fs::metadata(file).unwrap().len();
            // A segment passes the bound only by its one record.
            assert!(
                len <= MIN_SEGMENT_BYTES + 1024,
                "{} is {len}",
                file.display()
            );
        }
        assert_eq!(
            journal.bytes(),
            files
                .iter()
                .map(|f| std::fs::metadata(f).unwrap().len())
                .sum::<u64>()
        );
        // Half replayed: the fully committed segments are gone already.
        for expected in 0..20 {
            let replay = journal.next_batch().unwrap().unwrap();
            assert_eq!(replay.rows[0].tick_ms, tick(expected));
            journal.commit(&replay).unwrap();
        }
        assert!(segment_files(&folder).len() < files.len());
        assert_eq!(journal.rows(), 200);
        // Appends go on behind the replay.
        journal.append(&rows(40, 10)).unwrap();
        let ticks: Vec<i64> = drain(&mut journal)
            .iter()
            .map(|batch| batch[0].tick_ms)
            .collect();
        assert_eq!(ticks, (20..=40).map(tick).collect::<Vec<_>>());
        assert!(segment_files(&folder).is_empty());
        assert_eq!((journal.rows(), journal.bytes()), (0, 0));
        // And after it ran dry, a new segment is started.
        journal.append(&rows(41, 1)).unwrap();
        assert_eq!(segment_files(&folder).len(), 1);
    }

    #[test]
    fn a_torn_last_record_is_cut_and_the_whole_records_kept() {
        let dir = tempfile::tempdir().unwrap();
        let config = config(dir.path());
        let folder = config.dir.clone();
        let (mut journal, _) = Journal::open(config.clone()).unwrap();
        for batch in 0..3 {
            journal.append(&rows(batch, 5)).unwrap();
        }
        drop(journal);
        let file = segment_files(&folder).remove(0);
        let len = std::fs::metadata(&file).unwrap().len();
        let record = (len - SEGMENT_HEADER_LEN) / 3;
        let torn_at = SEGMENT_HEADER_LEN + 2 * record;
        // Mid-payload of the third record.
        let handle = OpenOptions::new().write(true).open(&file).unwrap();
        handle.set_len(torn_at + record / 2).unwrap();
        drop(handle);

        let (mut journal, leftover) = Journal::open(config.clone()).unwrap();
        assert_eq!((leftover.batches, leftover.rows), (2, 10), "{leftover:?}");
        assert_eq!(leftover.segments, 1);
        assert_eq!(leftover.bytes, torn_at);
        let [cut] = &leftover.cuts[..] else {
            panic!("one cut expected: {leftover:?}")
        };
        assert_eq!((&cut.file, cut.offset), (&file, torn_at));
        assert!(matches!(cut.reason, CutReason::PastEnd { .. }), "{cut:?}");
        let text = cut.to_string();
        assert!(
            text.contains(&file.display().to_string())
                && text.contains(&format!("offset {torn_at}"))
                && text.contains("2 whole record"),
            "{text}"
        );
        assert_eq!(std::fs::metadata(&file).unwrap().len(), torn_at);
        let ticks: Vec<i64> = drain(&mut journal).iter().map(|b| b[0].tick_ms).collect();
        assert_eq!(ticks, vec![tick(0), tick(1)]);
        drop(journal);

        // A file cut inside a record's 8-byte header.
        let (mut journal, _) = Journal::open(config.clone()).unwrap();
        journal.append(&rows(7, 2)).unwrap();
        drop(journal);
        let file = segment_files(&folder).remove(0);
        let len = std::fs::metadata(&file).unwrap().len();
        let mut handle = OpenOptions::new().append(true).open(&file).unwrap();
        handle.write_all(&[9, 0, 0]).unwrap();
        drop(handle);
        let (_, leftover) = Journal::open(config).unwrap();
        assert_eq!(leftover.rows, 2);
        assert_eq!(leftover.cuts.len(), 1, "{leftover:?}");
        assert_eq!(leftover.cuts[0].reason, CutReason::TornHeader);
        assert_eq!(leftover.cuts[0].offset, len);
    }

    #[test]
    fn a_flipped_byte_fails_the_checksum_and_is_cut_there() {
        let dir = tempfile::tempdir().unwrap();
        let config = config(dir.path());
        let folder = config.dir.clone();
        let (mut journal, _) = Journal::open(config.clone()).unwrap();
        for batch in 0..4 {
            journal.append(&rows(batch, 3)).unwrap();
        }
        drop(journal);
        let file = segment_files(&folder).remove(0);
        let len = std::fs::metadata(&file).unwrap().len();
        let record = (len - SEGMENT_HEADER_LEN) / 4;
        let second = SEGMENT_HEADER_LEN + record;
        let mut bytes = std::fs::read(&file).unwrap();
        let flipped = (second + RECORD_HEADER_LEN + 5) as usize;
        bytes[flipped] ^= 0x40;
        std::fs::write(&file, &bytes).unwrap();

        let (mut journal, leftover) = Journal::open(config).unwrap();
        assert_eq!((leftover.batches, leftover.rows), (1, 3));
        assert_eq!(leftover.cuts.len(), 1);
        assert_eq!(leftover.cuts[0].offset, second);
        assert!(
            matches!(leftover.cuts[0].reason, CutReason::Checksum { .. }),
            "{:?}",
            leftover.cuts[0]
        );
        assert_eq!(leftover.cuts[0].bytes_dropped, len - second);
        assert_eq!(drain(&mut journal).len(), 1);
    }

    #[test]
    fn an_undecodable_payload_with_a_good_checksum_is_cut() {
        let dir = tempfile::tempdir().unwrap();
        let config = config(dir.path());
        std::fs::create_dir_all(&config.dir).unwrap();
        let path = config.dir.join(segment_name(3));
        let good = &encode_records(&rows(0, 2))[0].0;
        let garbage = [0xff_u8; 6];
        let mut bytes = segment_header().to_vec();
        bytes.extend_from_slice(good);
        bytes.extend_from_slice(&(garbage.len() as u32).to_le_bytes());
        bytes.extend_from_slice(&crc32fast::hash(&garbage).to_le_bytes());
        bytes.extend_from_slice(&garbage);
        std::fs::write(&path, &bytes).unwrap();
        let (mut journal, leftover) = Journal::open(config.clone()).unwrap();
        assert_eq!(leftover.rows, 2);
        assert!(
            matches!(leftover.cuts[0].reason, CutReason::Undecodable(_)),
            "{leftover:?}"
        );
        // Appends go to a segment after the leftover one.
        journal.append(&rows(1, 1)).unwrap();
        assert!(config.dir.join(segment_name(4)).exists());
        assert_eq!(drain(&mut journal).len(), 2);
    }

    #[test]
    fn foreign_files_are_refused_not_cut() {
        let dir = tempfile::tempdir().unwrap();
        let config = config(dir.path());
        std::fs::create_dir_all(&config.dir).unwrap();
        let path = config.dir.join(segment_name(0));
        std::fs::write(&path, b"hello, this is not a journal").unwrap();
        let error = Journal::open(config.clone()).unwrap_err();
        assert!(
            matches!(&error, JournalError::BadHeader { path: p, .. } if *p == path),
            "{error}"
        );
        assert_eq!(
            std::fs::read(&path).unwrap(),
            b"hello, this is not a journal"
        );
        let mut newer = segment_header().to_vec();
        newer[8] = 2;
        std::fs::write(&path, &newer).unwrap();
        let error = Journal::open(config.clone()).unwrap_err().to_string();
        assert!(error.contains("format version is 2"), "{error}");
        // Other names in the folder are not the journal's business.
        std::fs::remove_file(&path).unwrap();
        std::fs::write(config.dir.join("notes.txt"), b"x").unwrap();
        let (_, leftover) = Journal::open(config).unwrap();
        assert!(leftover.is_empty());
    }

    #[test]
    fn the_size_bound_refuses_with_full_and_writes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let config = JournalConfig {
            max_bytes: 2_000,
            segment_bytes: MIN_SEGMENT_BYTES,
            ..config(dir.path())
        };
        let (mut journal, _) = Journal::open(config).unwrap();
        let mut appended = 0;
        let error = loop {
            match journal.append(&rows(appended, 4)) {
                Ok(_) => appended += 1,
                Err(error) => break error,
            }
            assert!(appended < 1_000, "never full");
        };
        assert!(appended > 0);
        let JournalError::Full {
            bytes, max_bytes, ..
        } = &error
        else {
            panic!("expected Full, got {error}");
        };
        assert_eq!(*max_bytes, 2_000);
        assert_eq!(*bytes, journal.bytes());
        assert!(journal.bytes() <= 2_000);
        assert!(error.to_string().contains("journal_max_bytes"), "{error}");
        assert_eq!(journal.rows(), 4 * appended as u64);
        // Replaying frees the room again.
        assert_eq!(drain(&mut journal).len(), appended);
        journal.append(&rows(0, 4)).unwrap();
    }

    #[test]
    fn fsync_policies_do_not_change_what_is_stored() {
        let mut stored = Vec::new();
        for fsync in [
            FsyncPolicy::Always,
            FsyncPolicy::Interval(Duration::from_millis(1)),
            FsyncPolicy::Never,
        ] {
            let dir = tempfile::tempdir().unwrap();
            let config = JournalConfig {
                fsync,
                ..config(dir.path())
            };
            let (mut journal, _) = Journal::open(config.clone()).unwrap();
            for batch in 0..5 {
                journal.append(&rows(batch, 3)).unwrap();
                journal.sync_if_due().unwrap();
            }
            journal.sync().unwrap();
            drop(journal);
            let files = segment_files(&config.dir);
            let bytes: Vec<Vec<u8>> = files.iter().map(|f| std::fs::read(f).unwrap()).collect();
            let (mut journal, leftover) = Journal::open(config).unwrap();
            assert_eq!(leftover.rows, 15, "{fsync:?}");
            assert_eq!(drain(&mut journal).len(), 5);
            stored.push(bytes);
        }
        assert_eq!(stored[0], stored[1]);
        assert_eq!(stored[0], stored[2]);
    }

    #[test]
    fn a_reopened_journal_finds_what_was_left_and_the_folder_is_locked() {
        let dir = tempfile::tempdir().unwrap();
        let config = JournalConfig {
            segment_bytes: MIN_SEGMENT_BYTES,
            ..config(dir.path())
        };
        let (mut journal, _) = Journal::open(config.clone()).unwrap();
        for batch in 0..30 {
            journal.append(&rows(batch, 10)).unwrap();
        }
        // One batch replayed and committed before the "crash".
        let replay = journal.next_batch().unwrap().unwrap();
        journal.commit(&replay).unwrap();
        let segments = journal.segments();
        let error = Journal::open(config.clone()).unwrap_err();
        assert!(matches!(error, JournalError::Locked { .. }), "{error}");
        drop(journal);

        let (mut journal, leftover) = Journal::open(config).unwrap();
        assert_eq!(leftover.segments, segments);
        assert!(leftover.cuts.is_empty());
        // The first segment still holds the committed batch: replaying it again
        // is harmless, and it is counted.
        assert!(leftover.batches >= 29, "{leftover:?}");
        assert_eq!(leftover.rows, leftover.batches * 10);
        assert_eq!(leftover.bytes, journal.bytes());
        let ticks: Vec<i64> = drain(&mut journal).iter().map(|b| b[0].tick_ms).collect();
        assert_eq!(*ticks.last().unwrap(), tick(29));
        assert!(ticks.windows(2).all(|w| w[0] + 1 == w[1]), "{ticks:?}");
    }

    #[test]
    fn a_torn_segment_header_is_removed() {
        let dir = tempfile::tempdir().unwrap();
        let config = config(dir.path());
        std::fs::create_dir_all(&config.dir).unwrap();
        let path = config.dir.join(segment_name(5));
        std::fs::write(&path, &MAGIC[..5]).unwrap();
        let (mut journal, leftover) = Journal::open(config.clone()).unwrap();
        assert_eq!(leftover.cuts.len(), 1);
        assert!(leftover.cuts[0].removed);
        assert_eq!(leftover.cuts[0].reason, CutReason::TornSegmentHeader);
        assert!(!path.exists());
        journal.append(&rows(0, 1)).unwrap();
        assert!(config.dir.join(segment_name(6)).exists());
    }

    #[test]
    fn damage_found_while_replaying_is_cut_and_counted() {
        let dir = tempfile::tempdir().unwrap();
        let config = config(dir.path());
        let (mut journal, _) = Journal::open(config.clone()).unwrap();
        for batch in 0..3 {
            journal.append(&rows(batch, 2)).unwrap();
        }
        let file = segment_files(&config.dir).remove(0);
        let mut bytes = std::fs::read(&file).unwrap();
        let last = bytes.len() - 3;
        bytes[last] ^= 1;
        // Rewrite in place (same inode, as a bad disk would leave it).
        OpenOptions::new()
            .write(true)
            .open(&file)
            .unwrap()
            .write_all_at(&bytes, 0)
            .unwrap();
        let batches = drain(&mut journal);
        assert_eq!(batches.len(), 2);
        let cuts = journal.take_cuts();
        assert_eq!(cuts.len(), 1, "{cuts:?}");
        assert_eq!(journal.rows_lost(), 2);
        assert_eq!(journal.rows(), 0);
        // The journal takes appends again, in a new segment.
        journal.append(&rows(9, 1)).unwrap();
        assert_eq!(drain(&mut journal).len(), 1);
    }
}
