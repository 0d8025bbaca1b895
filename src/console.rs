//! The terminal, written to without ever failing the process.
//!
//! `println!` and `eprintln!` panic when their stream is closed (`percore … | head
//! -1`, or a service manager that closed stderr). percore's results are its
//! database and its summary and report files; a terminal nobody reads must not
//! stop it from writing them. Everything percore prints goes through these two.

use std::io::Write;

/// Writes to stdout and flushes; a closed or failing stdout is ignored.
pub fn out(text: std::fmt::Arguments<'_>) {
    let mut stdout = std::io::stdout().lock();
    let _ = stdout.write_fmt(text).and_then(|()| stdout.flush());
}

/// Writes one line to stderr (warnings, errors, status); failures are ignored.
pub fn err(text: std::fmt::Arguments<'_>) {
    let mut stderr = std::io::stderr().lock();
    let _ = stderr
        .write_fmt(text)
        .and_then(|()| stderr.write_all(b"\n"));
}
