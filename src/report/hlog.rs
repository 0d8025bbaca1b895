//! `histograms.hlog`: every interval histogram of a run, as an HdrHistogram
//! interval log (the format of Java's `HistogramLogWriter`; histograms V2 encoded,
//! deflated, base64), one line per stage per second, tagged with the stage:
//!
//! ```text
//! #[percore report format 1]
//! #[Histogram log format version 1.3]
//! #[StartTime: 1700000000.000 (seconds since epoch)]
//! #[BaseTime: 1700000000.000 (seconds since epoch)]
//! "StartTimestamp","Interval_Length","Interval_Max","Interval_Compressed_Histogram"
//! Tag=schedule_lag,0.000,1.000,57.000,HISTFAAAA…
//! Tag=fetch,0.000,1.000,812.000,HISTFAAAA…
//! …
//! #[percore report end: 300 histograms]
//! ```
//!
//! Besides the five stages of ok jobs, a second may carry `failed_fetch`,
//! `failed_infer` and `failed_end_to_end` (failed jobs' time to failure; one
//! `failed_end_to_end` sample per failed job) and `skipped` (the schedule lag of
//! skipped ticks, one sample per skip), each only when it has samples: a log
//! without them (a healthy run, or one written before they existed) reads as
//! none failed or skipped.
//!
//! StartTime and BaseTime are the run's start (`window_unix_ms[0]` of the summary),
//! so timestamps are seconds since the start, millisecond precision, and HdrHistogram's
//! own tools (`HistogramLogProcessor`, HistogramLogAnalyzer) read the file as it is.
//! The first line names the writer and the format version, so [`read_log`] can refuse
//! a log it would misread; the last line makes a file cut at a line boundary as
//! detectable as one cut in the middle of a line.

use std::path::Path;
use std::time::{Duration, UNIX_EPOCH};

use hdrhistogram::serialization::interval_log::{
    IntervalLogIterator, IntervalLogWriterBuilder, LogEntry, LogIteratorError, Tag,
};
use hdrhistogram::serialization::{Deserializer, V2DeflateSerializer};

use super::{Interval, Recording, ReportError, ReportErrorKind, FORMAT_VERSION, LOG_TAGS};

/// The comment line naming the writer and its format version.
pub fn format_marker(version: u32) -> String {
    format!("#[percore report format {version}]")
}

/// Prefix of the format line, up to the version number.
const FORMAT_PREFIX: &str = "#[percore report format ";

/// Prefix of the last line, which carries the number of histograms written.
const END_PREFIX: &str = "#[percore report end: ";

/// Column legend Java's `HistogramLogWriter` writes (its readers skip it).
const LEGEND: &str =
    "\"StartTimestamp\",\"Interval_Length\",\"Interval_Max\",\"Interval_Compressed_Histogram\"\n";

/// The log text for `recording`'s intervals, ordered by start time, then stage.
pub fn write_log(recording: &Recording) -> Vec<u8> {
    let start_ms = recording
        .summary
        .get("window_unix_ms")
        .and_then(|w| w.get(0))
        .and_then(serde_json::Value::as_i64)
        .unwrap_or(0);
    let mut intervals: Vec<&Interval> = recording.intervals.iter().collect();
    intervals.sort_by_key(|i| (i.start, stage_rank(&i.stage)));
    // Writing to a Vec cannot fail; serializing a u64 histogram cannot either.
    let mut log = LogWriter::begin(Vec::new(), start_ms).expect("writing to a Vec");
    for interval in intervals {
        log.append(interval).expect("writing to a Vec");
    }
    log.finish().expect("writing to a Vec")
}

/// Position of a tag in [`LOG_TAGS`] (unknown tags last), the log's order
/// within one interval.
fn stage_rank(stage: &str) -> usize {
    LOG_TAGS
        .iter()
        .position(|s| *s == stage)
        .unwrap_or(LOG_TAGS.len())
}

/// Writes a log one interval at a time, as a run closes them, so a run of any
/// length keeps none of its past intervals in memory. The caller appends in
/// time order (then stage order); [`LogWriter::finish`] writes the end marker.
pub struct LogWriter<W: std::io::Write> {
    /// Where the lines go (a buffered file during a run).
    out: W,
    /// Reused between intervals: V2 encoding and deflate buffers.
    serializer: V2DeflateSerializer,
    /// Histograms written, for the end marker.
    written: usize,
}

impl<W: std::io::Write> LogWriter<W> {
    /// Writes the header for a run that started at `start_unix_ms`.
    pub fn begin(mut out: W, start_unix_ms: i64) -> std::io::Result<LogWriter<W>> {
        let run_start = UNIX_EPOCH + Duration::from_millis(start_unix_ms.max(0) as u64);
        let mut serializer = V2DeflateSerializer::new();
        {
            let mut builder = IntervalLogWriterBuilder::new();
            builder
                .add_comment(&format_marker(FORMAT_VERSION)[1..])
                .add_comment("[Histogram log format version 1.3]")
                .with_start_time(run_start)
                .with_base_time(run_start);
            builder.begin_log_with(&mut out, &mut serializer)?;
        }
        out.write_all(LEGEND.as_bytes())?;
        Ok(LogWriter {
            out,
            serializer,
            written: 0,
        })
    }

    /// Appends one interval histogram.
    pub fn append(&mut self, interval: &Interval) -> std::io::Result<()> {
        let mut writer =
            IntervalLogWriterBuilder::new().begin_log_with(&mut self.out, &mut self.serializer)?;
        // A stage name with a space or comma could not be a tag; ours never have one.
        let tag = Tag::new(&interval.stage);
        writer
            .write_histogram(&interval.histogram, interval.start, interval.length, tag)
            .map_err(|error| std::io::Error::other(format!("{error:?}")))?;
        self.written += 1;
        Ok(())
    }

    /// Writes the end marker and hands back the output, flushed.
    pub fn finish(mut self) -> std::io::Result<W> {
        let end = format!("{END_PREFIX}{} histograms]\n", self.written);
        self.out.write_all(end.as_bytes())?;
        self.out.flush()?;
        Ok(self.out)
    }
}

/// Parses a log [`write_log`] wrote. `path` is only for error messages; every
/// error names it and, when it can, the line.
pub fn read_log(text: &[u8], path: &Path) -> Result<Vec<Interval>, ReportError> {
    check_format(text, path)?;
    let mut intervals = Vec::new();
    let mut deserializer = Deserializer::new();
    // One line at a time, so every error knows its line.
    for (index, line) in text.split_inclusive(|&b| b == b'\n').enumerate() {
        let number = index + 1;
        let malformed =
            |what: String| ReportError::at_line(path, number, ReportErrorKind::Malformed(what));
        if !line.ends_with(b"\n") {
            return Err(ReportError::at_line(
                path,
                number,
                ReportErrorKind::Truncated { mid_line: true },
            ));
        }
        let interval = match IntervalLogIterator::new(line).next() {
            // A comment or the legend.
            None => continue,
            Some(Ok(LogEntry::Interval(interval))) => interval,
            Some(Ok(LogEntry::StartTime(_) | LogEntry::BaseTime(_))) => continue,
            Some(Err(LogIteratorError::ParseError { .. })) => {
                return Err(malformed("not an interval log line".into()))
            }
        };
        let stage = match interval.tag() {
            Some(tag) if LOG_TAGS.contains(&tag.as_str()) => tag.as_str().to_string(),
            Some(tag) => return Err(malformed(format!("unknown stage tag \"{}\"", tag.as_str()))),
            None => return Err(malformed("histogram without a stage tag".into())),
        };
        let bytes = base64_decode(interval.encoded_histogram())
            .ok_or_else(|| malformed("histogram is not valid base64".into()))?;
        let histogram = deserializer
            .deserialize::<u64, _>(&mut &bytes[..])
            .map_err(|e| malformed(format!("cannot decode histogram: {e}")))?;
        intervals.push(Interval {
            start: interval.start_timestamp(),
            length: interval.duration(),
            stage,
            histogram,
        });
    }
    check_end_marker(text, path, intervals.len())?;
    Ok(intervals)
}

/// The first lines must carry this writer's format line, at this version.
fn check_format(text: &[u8], path: &Path) -> Result<(), ReportError> {
    for line in text.split(|&b| b == b'\n') {
        if !line.starts_with(b"#") {
            break;
        }
        let line = String::from_utf8_lossy(line);
        if let Some(rest) = line.strip_prefix(FORMAT_PREFIX) {
            let version = rest.trim_end().trim_end_matches(']');
            if version == FORMAT_VERSION.to_string() {
                return Ok(());
            }
            return Err(ReportError::new(
                path,
                ReportErrorKind::OtherFormat {
                    found: Some(format!("percore report format {version}")),
                },
            ));
        }
    }
    // A file cut inside its first lines has lost its format line too: say so.
    if !text.is_empty() && !text.ends_with(b"\n") {
        let line = text.iter().filter(|&&b| b == b'\n').count() + 1;
        return Err(ReportError::at_line(
            path,
            line,
            ReportErrorKind::Truncated { mid_line: true },
        ));
    }
    Err(ReportError::new(
        path,
        ReportErrorKind::OtherFormat { found: None },
    ))
}

/// The last line must be the end marker, counting the histograms read.
fn check_end_marker(text: &[u8], path: &Path, read: usize) -> Result<(), ReportError> {
    let body = text.strip_suffix(b"\n").unwrap_or(text);
    let last_line_start = body.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
    let last = String::from_utf8_lossy(&body[last_line_start..]);
    let line = body.iter().filter(|&&b| b == b'\n').count() + 1;
    let Some(count) = last.strip_prefix(END_PREFIX) else {
        return Err(ReportError::new(
            path,
            ReportErrorKind::Truncated { mid_line: false },
        ));
    };
    let written: Option<usize> = count
        .strip_suffix(" histograms]")
        .and_then(|n| n.parse().ok());
    match written {
        Some(written) if written == read => Ok(()),
        Some(written) => Err(ReportError::at_line(
            path,
            line,
            ReportErrorKind::Malformed(format!(
                "{read} histograms read, but the end marker says {written}"
            )),
        )),
        None => Err(ReportError::at_line(
            path,
            line,
            ReportErrorKind::Malformed("malformed end marker".into()),
        )),
    }
}

/// Standard base64 (RFC 4648, with padding), as Java's and the Rust crate's log
/// writers produce it. The crate decodes internally but does not export it.
fn base64_decode(text: &str) -> Option<Vec<u8>> {
    fn sextet(c: u8) -> Option<u32> {
        match c {
            b'A'..=b'Z' => Some(u32::from(c - b'A')),
            b'a'..=b'z' => Some(u32::from(c - b'a') + 26),
            b'0'..=b'9' => Some(u32::from(c - b'0') + 52),
            b'+' => Some(62),
            b'/' => Some(63),
            _ => None,
        }
    }
    let bytes = text.as_bytes();
    if bytes.len() % 4 != 0 {
        return None;
    }
    let mut out = Vec::with_capacity(bytes.len() / 4 * 3);
    for (i, chunk) in bytes.chunks(4).enumerate() {
        let last = i == bytes.len() / 4 - 1;
        let padding = chunk.iter().rev().take_while(|&&c| c == b'=').count();
        if padding > 2 || (padding > 0 && !last) {
            return None;
        }
        let mut word = 0_u32;
        for &c in &chunk[..4 - padding] {
            word = (word << 6) | sextet(c)?;
        }
        word <<= 6 * padding as u32;
        let decoded = [(word >> 16) as u8, (word >> 8) as u8, word as u8];
        out.extend_from_slice(&decoded[..3 - padding]);
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::new_histogram;
    use serde_json::json;

    fn recording() -> Recording {
        let mut intervals = Vec::new();
        for second in 0..5_u64 {
            for (s, stage) in ["fetch", "infer", "end_to_end"].into_iter().enumerate() {
                let mut histogram = new_histogram();
                // Different counts and shapes per stage and second.
                let n = 100 * (second + 1) + s as u64;
                for v in 1..=n {
                    histogram.record(v * (s as u64 + 1) * 37 + second).unwrap();
                }
                intervals.push(Interval {
                    // A start that needs milliseconds: 1.25 s apart.
                    start: Duration::from_millis(second * 1_250),
                    length: Duration::from_millis(1_250),
                    stage: stage.to_string(),
                    histogram,
                });
            }
        }
        Recording {
            summary: json!({"window_unix_ms": [1_700_000_000_123_i64, 1_700_000_006_373_i64]}),
            intervals,
        }
    }

    #[test]
    fn intervals_survive_a_round_trip() {
        let recording = recording();
        let text = write_log(&recording);
        let back = read_log(&text, Path::new("histograms.hlog")).unwrap();
        assert_eq!(back.len(), 15);
        // Written in (start, stage) order, which is the order they were made in.
        for (written, read) in recording.intervals.iter().zip(&back) {
            assert_eq!(read.stage, written.stage);
            assert_eq!(read.start, written.start);
            assert_eq!(read.length, written.length);
            assert_eq!(read.histogram.len(), written.histogram.len());
            assert_eq!(read.histogram, written.histogram);
        }
    }

    #[test]
    fn log_has_the_java_compatible_header_and_tagged_lines() {
        let text = String::from_utf8(write_log(&recording())).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "#[percore report format 1]");
        assert_eq!(lines[1], "#[Histogram log format version 1.3]");
        assert_eq!(
            lines[2],
            "#[StartTime: 1700000000.123 (seconds since epoch)]"
        );
        assert_eq!(
            lines[3],
            "#[BaseTime: 1700000000.123 (seconds since epoch)]"
        );
        assert!(lines[4].starts_with("\"StartTimestamp\""));
        assert!(
            lines[5].starts_with("Tag=fetch,0.000,1.250,"),
            "{}",
            lines[5]
        );
        assert!(
            lines[7].starts_with("Tag=end_to_end,0.000,1.250,"),
            "{}",
            lines[7]
        );
        assert!(
            lines[8].starts_with("Tag=fetch,1.250,1.250,"),
            "{}",
            lines[8]
        );
        // V2 + deflate: the base64 of the compressed cookie 0x1c849304.
        assert!(lines[5].split(',').nth(4).unwrap().starts_with("HISTF"));
        assert_eq!(
            *lines.last().unwrap(),
            "#[percore report end: 15 histograms]"
        );
    }

    #[test]
    fn a_cut_file_is_an_error_not_a_short_read() {
        let text = write_log(&recording());
        // Cut in the middle of the 8th line (the 3rd histogram line).
        let line_starts: Vec<usize> = std::iter::once(0)
            .chain(
                text.iter()
                    .enumerate()
                    .filter(|(_, &b)| b == b'\n')
                    .map(|(i, _)| i + 1),
            )
            .collect();
        let cut = line_starts[7] + 20;
        let e = read_log(&text[..cut], Path::new("h.hlog")).unwrap_err();
        assert_eq!(e.line, Some(8));
        assert!(matches!(
            e.kind,
            ReportErrorKind::Truncated { mid_line: true }
        ));
        // Cut exactly after a line: only the end marker tells.
        let e = read_log(&text[..line_starts[9]], Path::new("h.hlog")).unwrap_err();
        assert!(
            matches!(e.kind, ReportErrorKind::Truncated { mid_line: false }),
            "{e}"
        );
    }

    #[test]
    fn other_versions_and_writers_are_refused() {
        let text = String::from_utf8(write_log(&recording())).unwrap();
        let v3 = text.replace("#[percore report format 1]", "#[percore report format 3]");
        let e = read_log(v3.as_bytes(), Path::new("h.hlog")).unwrap_err();
        assert_eq!(
            e.to_string(),
            "percore report: h.hlog: written by percore report format 3, this is percore report format 1"
        );
        // Cut inside the format line itself: a truncation, not another writer.
        let e = read_log(&text.as_bytes()[..12], Path::new("h.hlog")).unwrap_err();
        assert!(
            matches!(e.kind, ReportErrorKind::Truncated { mid_line: true }),
            "{e}"
        );
        assert_eq!(e.line, Some(1));
        let java = text.replace("#[percore report format 1]\n", "");
        let e = read_log(java.as_bytes(), Path::new("h.hlog")).unwrap_err();
        assert!(
            matches!(e.kind, ReportErrorKind::OtherFormat { found: None }),
            "{e}"
        );
    }

    #[test]
    fn corrupt_histograms_name_their_line() {
        let text = String::from_utf8(write_log(&recording())).unwrap();
        let line = text.lines().nth(6).unwrap();
        let broken = line.replacen("HISTF", "AAAAA", 1);
        let e = read_log(text.replace(line, &broken).as_bytes(), Path::new("h.hlog")).unwrap_err();
        assert_eq!(e.line, Some(7), "{e}");
        assert!(e.to_string().contains("cannot decode histogram"), "{e}");
        let untagged = line.replacen("Tag=infer,", "Tag=bogus,", 1);
        let e = read_log(
            text.replace(line, &untagged).as_bytes(),
            Path::new("h.hlog"),
        )
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "percore report: h.hlog line 7: unknown stage tag \"bogus\""
        );
    }

    #[test]
    fn base64_decodes_what_the_standard_alphabet_encodes() {
        assert_eq!(base64_decode("").unwrap(), b"");
        assert_eq!(base64_decode("Zg==").unwrap(), b"f");
        assert_eq!(base64_decode("Zm8=").unwrap(), b"fo");
        assert_eq!(base64_decode("Zm9v").unwrap(), b"foo");
        assert_eq!(base64_decode("+/+/").unwrap(), [0xfb, 0xff, 0xbf]);
        assert!(base64_decode("Zm9").is_none());
        assert!(base64_decode("Zg==Zg==").is_none());
        assert!(base64_decode("Z!==").is_none());
    }
}
