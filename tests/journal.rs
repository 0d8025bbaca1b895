//! The spill journal keeps results while the database cannot take them. SQLite
//! held by another connection's exclusive lock past the busy timeout (a
//! transient failure) sends batches to the journal instead of holding up the
//! shards; once the lock goes, the journal is replayed in order and emptied, and
//! every tick due is in the table exactly once. A journal an earlier run left,
//! with a torn last record, is replayed at the next run's start and the cut is
//! reported on stderr with the file and offset.

mod common;

use std::borrow::Cow;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use percore::config::{Config, GrpcConfig, JournalConfig, SinkConfig};
use percore::dispatcher::{self, Load, RunOptions};
use percore::mock::{MockKind, MockOptions, ServiceTime};
use percore::sink::journal::{Journal, SEGMENT_HEADER_LEN};
use percore::sink::row::Row;

/// The journal's segment files in `dir`.
fn segment_files(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "pcj"))
        .collect();
    files.sort();
    files
}

#[test]
fn a_locked_database_sends_results_to_the_journal_and_every_tick_lands_once() {
    let source = common::start_mock(MockKind::Source, MockOptions::default());
    let compute = common::start_mock(
        MockKind::Compute,
        MockOptions {
            service_time: ServiceTime::Fixed(Duration::from_millis(1)),
            ..MockOptions::default()
        },
    );
    let dir = tempfile::tempdir().expect("a temporary directory");
    let db = dir.path().join("jobs.db");
    let journal_dir = dir.path().join("journal");
    let spec = common::ClassSpec {
        name: "meter",
        model: "mock",
        period_ms: 1_000,
        deadline_ms: 500,
    };
    let mut config: Config = common::config(
        vec![common::class(spec, source.addr, compute.addr)],
        2_000,
        db.clone(),
        GrpcConfig::default(),
    );
    config.sink = SinkConfig::Sqlite {
        path: db.clone(),
        busy_timeout: Duration::from_millis(100),
        commit_delay: Duration::ZERO,
        // Small segments, so the outage fills several and they roll.
        journal: Some(JournalConfig {
            segment_bytes: 64 * 1024,
            ..JournalConfig::new(&journal_dir)
        }),
    };
    let options = RunOptions {
        duration: Some(Duration::from_secs(6)),
        load: Load::Ticks,
        ..RunOptions::default()
    };
    let run_config = config.clone();
    let run = std::thread::spawn(move || dispatcher::run(&run_config, &options));

    // Another connection's write lock, held 2.5 s from 1.5 s into the run: 25
    // times the busy timeout, two and a half periods of every device.
    std::thread::sleep(Duration::from_millis(1_500));
    let other = rusqlite::Connection::open(&db).expect("a second connection");
    other
        .execute_batch("BEGIN EXCLUSIVE")
        .expect("the lock is taken");
    let locked_until = Instant::now() + Duration::from_millis(2_500);
    let mut segments_seen = 0;
    while Instant::now() < locked_until {
        segments_seen = segments_seen.max(segment_files(&journal_dir).len());
        std::thread::sleep(Duration::from_millis(50));
    }
    other.execute_batch("ROLLBACK").expect("the lock is let go");
    drop(other);

    let summary = run
        .join()
        .expect("the run thread")
        .expect("the run succeeds once the lock is gone");
    source.stop();
    compute.stop();

    assert_eq!(summary.sink_error, None);
    let journal = &summary.journal;
    assert_eq!(journal.dir.as_deref(), Some(journal_dir.as_path()));
    // Two and a half seconds of 2,000 devices a second went to the journal.
    assert!(
        journal.rows_journaled >= 2_000,
        "only {} rows went through the journal: {journal:?}",
        journal.rows_journaled
    );
    assert!(segments_seen > 1, "segments never rolled ({segments_seen})");
    assert_eq!(journal.rows_replayed, journal.rows_journaled, "{journal:?}");
    assert_eq!((journal.rows_left, journal.bytes), (0, 0), "{journal:?}");
    assert_eq!(
        segment_files(&journal_dir),
        Vec::<PathBuf>::new(),
        "the journal is empty at the end"
    );
    // The shards were never held up: no tick was skipped for a sink backlog.
    assert_eq!(summary.counters.skipped, 0, "{:?}", summary.failures);
    let json = summary.to_json();
    assert_eq!(json["sink_rows_journaled"], journal.rows_journaled);
    assert_eq!(json["sink_rows_replayed"], journal.rows_replayed);
    assert_eq!(json["sink_journal_bytes"], 0);
    let line = summary.journal_line().expect("a journal line");
    assert!(
        line.contains(&format!("{} rows journaled", journal.rows_journaled)),
        "{line}"
    );

    let rows = common::read_rows(&db);
    common::assert_exact_ticks(&config, &summary, &rows);
    common::assert_counts(&summary, &rows);
}

/// A row an earlier run computed for `device` at `tick_ms`.
fn leftover_row(device: usize, tick_ms: i64) -> Row<'static> {
    Row {
        device_id: Cow::Owned(format!("earlier-{device:03}")),
        tick_ms,
        class: Cow::Borrowed("meter"),
        model: Cow::Borrowed("mock"),
        outcome: Cow::Borrowed("ok"),
        reason: None,
        output: bytes::Bytes::from(vec![device as u8; 8]),
        outputs: Cow::Borrowed(&[]),
        schedule_lag_us: 10,
        fetch_us: Some(100),
        infer_us: Some(200),
        end_to_end_us: Some(300),
        shard: 0,
        compute_node: None,
        attempts: 2,
        run_id: Cow::Borrowed("an-earlier-run"),
    }
}

#[test]
fn a_leftover_journal_with_a_torn_tail_is_replayed_at_start_and_the_cut_reported() {
    let source = common::start_mock(MockKind::Source, MockOptions::default());
    let compute = common::start_mock(MockKind::Compute, MockOptions::default());
    let dir = tempfile::tempdir().expect("a temporary directory");
    let db = dir.path().join("jobs.db");
    let journal_dir = dir.path().join("journal");

    // An earlier run's journal: three batches of ten rows, the last one torn.
    let (mut journal, _) = Journal::open(JournalConfig::new(&journal_dir)).expect("a new journal");
    for batch in 0..3 {
        let rows: Vec<Row<'static>> = (0..10)
            .map(|device| leftover_row(device, 1_000_000 + batch))
            .collect();
        journal.append(&rows).expect("an append");
    }
    drop(journal);
    let [file] = &segment_files(&journal_dir)[..] else {
        panic!("one segment expected in {}", journal_dir.display());
    };
    let len = std::fs::metadata(file).expect("the segment").len();
    let record = (len - SEGMENT_HEADER_LEN) / 3;
    let torn_at = SEGMENT_HEADER_LEN + 2 * record;
    std::fs::OpenOptions::new()
        .write(true)
        .open(file)
        .and_then(|handle| handle.set_len(torn_at + 7))
        .expect("the segment is torn");

    let config = common::write_config_file(
        dir.path(),
        source.addr,
        compute.addr,
        20,
        500,
        400,
        &db,
        &format!("journal_dir = \"{}\"", journal_dir.display()),
    );
    let summary_path = dir.path().join("summary.json");
    let output = Command::new(env!("CARGO_BIN_EXE_percore"))
        .args(["run", "--admin", "none", "--duration", "2", "--config"])
        .arg(&config)
        .arg("--summary-json")
        .arg(&summary_path)
        .output()
        .expect("percore runs");
    source.stop();
    compute.stop();
    let stderr = String::from_utf8_lossy(&output.stderr);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(
        output.status.code(),
        Some(0),
        "stdout:\n{stdout}\nstderr:\n{stderr}"
    );
    assert!(
        stderr.contains(&format!(
            "journal file {} is damaged at offset {torn_at}",
            file.display()
        )) && stderr.contains("keeping the 2 whole record(s)"),
        "the cut is not reported with its file and offset:\n{stderr}"
    );
    assert!(
        stderr.contains("an earlier run left 20 rows"),
        "the leftover is not reported:\n{stderr}"
    );
    let summary = common::read_summary_json(&summary_path);
    assert_eq!(summary["sink_leftover_rows_replayed"], 20, "{summary}");
    assert_eq!(summary["sink_journal_bytes"], 0, "{summary}");
    assert!(
        stdout.contains("20 of them left by an earlier run"),
        "stdout:\n{stdout}"
    );
    assert_eq!(segment_files(&journal_dir), Vec::<PathBuf>::new());

    // The two whole batches are in the table once each, beside this run's rows.
    let conn = rusqlite::Connection::open(&db).expect("the database");
    let earlier: Vec<(String, i64, i64)> = conn
        .prepare(
            "SELECT device_id, tick_ms, attempts FROM jobs WHERE device_id LIKE 'earlier-%' ORDER BY tick_ms, device_id",
        )
        .and_then(|mut statement| {
            statement
                .query_map([], |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)))?
                .collect()
        })
        .expect("the earlier rows");
    assert_eq!(earlier.len(), 20, "{earlier:?}");
    assert!(earlier
        .iter()
        .all(|(_, tick, attempts)| (1_000_000..1_000_002).contains(tick) && *attempts == 2));
    let jobs = summary["jobs"].as_u64().expect("jobs");
    assert_eq!(common::count_rows(&db), jobs + 20, "{summary}");
    assert_eq!(summary["rows_written"].as_u64(), Some(jobs), "{summary}");
}
