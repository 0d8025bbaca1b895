//! Headless Chromium (Debian's `chromium`, installed by `tests/run-all.sh`):
//! load a page from disk, run its script, and hand back the DOM or whatever
//! the extra flags ask for (a screenshot). Shared by the tests that check
//! `report.html` in a real browser.

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

pub const CHROMIUM: &str = "/usr/bin/chromium";

/// A guard against a wedged browser, not a performance bound.
pub const CHROMIUM_DEADLINE: Duration = Duration::from_secs(180);

/// Runs Chromium headless on `page` with the extra `args`; fails the test with
/// Chromium's own words if it does not exit cleanly.
pub fn chromium(page: &Path, profile: &Path, args: &[String]) -> Output {
    assert!(
        Path::new(CHROMIUM).exists(),
        "{CHROMIUM} is missing: install Debian's chromium (tests/run-all.sh does: \
         apt-get install -y --no-install-recommends chromium)"
    );
    let child = Command::new(CHROMIUM)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--hide-scrollbars",
            // Let the page's script run to completion before the DOM is taken.
            "--virtual-time-budget=5000",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(args)
        .arg(format!("file://{}", page.display()))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start chromium");
    let id = child.id();
    let started = Instant::now();
    let (sender, receiver) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = sender.send(child.wait_with_output());
    });
    let output = match receiver.recv_timeout(CHROMIUM_DEADLINE) {
        Ok(output) => output.expect("wait for chromium"),
        Err(_) => {
            // Only the process this test started, by its id.
            let _ = Command::new("kill").arg("-9").arg(id.to_string()).status();
            panic!("chromium did not finish within {:?}", started.elapsed());
        }
    };
    assert!(
        output.status.success(),
        "chromium failed ({}): {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

/// The DOM of `page` after its script ran, via `--dump-dom`.
pub fn dump_dom(page: &Path, scratch: &Path) -> String {
    let profile = scratch.join("profile-dom");
    let output = chromium(page, &profile, &["--dump-dom".to_string()]);
    String::from_utf8(output.stdout).expect("DOM is UTF-8")
}
