//! An import cut off by the VM going away says why, through the real
//! manager and the QEMU backend.

mod common;

use std::io::Write;
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::vm::TestVm;
use common::{text, Cli};

#[test]
fn shutdown_during_an_import_says_the_vm_was_shut_down() {
    let vm = TestVm::new("");
    vm.ok(&["list"]);
    let mut import = vm
        .cli()
        .args(["import", "slow", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // A valid archive whose one big file arrives slowly, so the import is
    // still streaming when the VM is shut down.
    let mut header = tar::Header::new_gnu();
    header.set_path("big").unwrap();
    header.set_size(1 << 30);
    header.set_mode(0o644);
    header.set_uid(0);
    header.set_gid(0);
    header.set_mtime(1_700_000_000);
    header.set_cksum();
    let mut stdin = import.stdin.take().unwrap();
    let feeder = std::thread::spawn(move || {
        let _ = stdin.write_all(header.as_bytes());
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(60) {
            if stdin.write_all(&[0u8; 64 * 1024]).is_err() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    });
    std::thread::sleep(Duration::from_secs(3));

    vm.ok(&["shutdown"]);
    let out = import.wait_with_output().unwrap();
    feeder.join().unwrap();

    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("the import of slow did not finish: the utility VM was shut down"),
        "{err}"
    );
    assert_eq!(err.trim().lines().count(), 1, "{err}");
}
