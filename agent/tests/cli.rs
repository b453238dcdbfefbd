//! The agent binary's command line.

use std::process::Command;

#[test]
fn bad_listen_address_is_a_usage_error() {
    let out = Command::new(env!("CARGO_BIN_EXE_distroctl-agent"))
        .args(["--listen", "tcp:1234"])
        .output()
        .unwrap();

    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("use unix:PATH or vsock:PORT"), "{err}");
}

#[test]
fn unreadable_data_dir_is_one_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("file");
    std::fs::write(&file, "").unwrap();

    let out = Command::new(env!("CARGO_BIN_EXE_distroctl-agent"))
        .args(["--listen", &format!("unix:{}/s", tmp.path().display())])
        .arg("--data-dir")
        .arg(&file)
        .output()
        .unwrap();

    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.starts_with("distroctl-agent: could not create"),
        "{err}"
    );
}
