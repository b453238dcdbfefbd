//! The nested-KVM venue script (`scripts/kvm-venue`): its own mistakes are
//! one line and exit status 125, apart from the command's own status. The
//! venue's whole-stack use is `scripts/test-kvm` (run by `scripts/test`).

mod common;

use std::path::Path;
use std::process::Command;

use common::text;

fn venue(args: &[&str]) -> std::process::Output {
    Command::new(Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/kvm-venue"))
        .args(args)
        .output()
        .expect("run scripts/kvm-venue")
}

fn assert_one_line_error(args: &[&str], needle: &str) {
    let out = venue(args);
    assert_eq!(out.status.code(), Some(125), "{args:?}: {out:?}");
    let err = text(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{args:?}: {err}");
    assert!(err.starts_with("kvm-venue: "), "{err}");
    assert!(err.contains(needle), "{args:?}: {err}");
}

#[test]
fn venue_without_a_command_says_how_to_use_it() {
    assert_one_line_error(&[], "no command given");
    assert_one_line_error(&["--cpus", "1"], "no command given");
}

#[test]
fn venue_refuses_unknown_options_and_missing_shares() {
    assert_one_line_error(
        &["--frobnicate", "--", "true"],
        "unknown option '--frobnicate'",
    );
    assert_one_line_error(
        &["--rw", "/nonexistent/venue-share", "--", "true"],
        "/nonexistent/venue-share",
    );
}

/// An L1 whose emulated CPU wedges (here: the lockup message the L1 kernel
/// prints when one does) is stopped at once with one line and status 125,
/// so `scripts/test-kvm` can run the suites again instead of waiting out a
/// VM that never finishes.
#[test]
fn venue_stops_a_wedged_l1_at_once() {
    if !nix::unistd::Uid::effective().is_root() {
        println!("SKIP: booting the venue needs root (it shares the test cache writable)");
        return;
    }
    let out = venue(&[
        "--cpus",
        "1",
        "--",
        "bash",
        "-c",
        "echo '[ 1.0] watchdog: BUG: soft lockup - CPU#0 stuck for 64s! [x:1]' >/dev/ttyS0; sleep 600; echo finished",
    ]);
    let stdout = text(&out.stdout);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(125), "{stdout}\n{err}");
    assert!(!stdout.contains("finished"), "{stdout}");
    let last = err.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("kvm-venue: L1 wedged (watchdog: BUG: soft lockup - CPU#0 stuck for 64s!"),
        "{err}"
    );
}
