//! Bad input: hostile or broken archives, bad names, unknown distros and
//! garbage on the socket. Each gives a clear error and harms nothing else.

mod common;

use std::io::Write;
use std::process::Stdio;

use common::{can_run_agent, text, Cli, TestAgent};

/// One entry of a hand-built archive.
enum Entry<'a> {
    File(&'a str, &'a [u8]),
    Dir(&'a str),
    Symlink(&'a str, &'a str),
    Hardlink(&'a str, &'a str),
    BlockDevice(&'a str),
}

/// Writes a raw GNU tar with exactly these names (the `tar` crate's path
/// setters refuse `..` and absolute paths, which is what is being tested).
fn archive(entries: &[Entry]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for e in entries {
        let mut h = tar::Header::new_gnu();
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(1_700_000_000);
        h.set_size(0);
        let (name, data): (&str, &[u8]) = match e {
            Entry::File(n, d) => {
                h.set_entry_type(tar::EntryType::Regular);
                h.set_size(d.len() as u64);
                h.set_mode(0o644);
                (n, d)
            }
            Entry::Dir(n) => {
                h.set_entry_type(tar::EntryType::Directory);
                h.set_mode(0o755);
                (n, &[])
            }
            Entry::Symlink(n, t) | Entry::Hardlink(n, t) => {
                h.set_entry_type(if matches!(e, Entry::Symlink(..)) {
                    tar::EntryType::Symlink
                } else {
                    tar::EntryType::Link
                });
                h.set_mode(0o777);
                let link = &mut h.as_old_mut().linkname;
                link[..t.len()].copy_from_slice(t.as_bytes());
                (n, &[])
            }
            Entry::BlockDevice(n) => {
                h.set_entry_type(tar::EntryType::Block);
                h.set_mode(0o600);
                h.set_device_major(8).unwrap();
                h.set_device_minor(0).unwrap();
                (n, &[])
            }
        };
        h.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
        h.set_cksum();
        b.append(&h, data).unwrap();
    }
    b.into_inner().unwrap()
}

fn import_bytes(agent: &TestAgent, name: &str, bytes: &[u8]) -> std::process::Output {
    let mut child = agent
        .cli()
        .args(["import", "--", name, "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let data = bytes.to_vec();
    let writer = std::thread::spawn(move || {
        let _ = stdin.write_all(&data);
    });
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap();
    out
}

/// Asserts the import failed with `needle` in its one-line error and left
/// nothing behind, while `witness` still works with its files.
fn assert_refused(agent: &TestAgent, out: &std::process::Output, needle: &str) {
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains(needle), "expected {needle:?} in {err:?}");
    assert_eq!(err.trim().lines().count(), 1, "one error line: {err:?}");
    let names: Vec<String> = std::fs::read_dir(agent.data().join("distros"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, vec!["witness".to_string()], "leftovers in the store");
    assert_eq!(agent.sh("witness", "cat /root/mine"), "safe\n");
}

fn agent_with_witness() -> Option<TestAgent> {
    if !can_run_agent() {
        return None;
    }
    let agent = TestAgent::start();
    agent.import_debian("witness");
    agent.sh("witness", "echo safe > /root/mine");
    Some(agent)
}

#[test]
fn hostile_archives_are_refused_without_damage() {
    let Some(agent) = agent_with_witness() else {
        return;
    };
    let outside = agent.dir.path().join("outside");
    std::fs::create_dir(&outside).unwrap();
    let outside_str = outside.to_str().unwrap().to_string();
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "dotdot",
            archive(&[Entry::File("../evil", b"x")]),
            "leaves the distro root",
        ),
        (
            "deep-dotdot",
            archive(&[Entry::Dir("a/"), Entry::File("a/../../evil", b"x")]),
            "leaves the distro root",
        ),
        (
            "absolute",
            archive(&[Entry::File("/etc/evil", b"x")]),
            "absolute path",
        ),
        (
            "symlink-escape",
            archive(&[
                Entry::Symlink("link", &outside_str),
                Entry::File("link/evil", b"x"),
            ]),
            "goes through symlink",
        ),
        (
            "symlink-dotdot",
            archive(&[Entry::Symlink("up", ".."), Entry::File("up/evil", b"x")]),
            "goes through symlink",
        ),
        (
            "hardlink-out",
            archive(&[Entry::Hardlink("pw", "../../../../etc/passwd")]),
            "leaves the distro root",
        ),
        (
            "hardlink-abs",
            archive(&[Entry::Hardlink("pw", "/etc/passwd")]),
            "leaves the distro root",
        ),
        (
            "blockdev",
            archive(&[Entry::BlockDevice("dev/sda")]),
            "not allowed",
        ),
    ];

    for (name, bytes, needle) in cases {
        let out = import_bytes(&agent, name, &bytes);
        assert_refused(&agent, &out, needle);
    }
    assert_eq!(
        std::fs::read_dir(&outside).unwrap().count(),
        0,
        "wrote outside the distro"
    );
    assert!(!agent.dir.path().join("evil").exists());
}

#[test]
fn broken_archives_are_refused_without_damage() {
    let Some(agent) = agent_with_witness() else {
        return;
    };
    let good = archive(&[
        Entry::File("big", &[7u8; 100_000]),
        Entry::File("after", b"y"),
    ]);
    let truncated = &good[..50_000];
    let mut garbage = vec![0u8; 20_000];
    rand::Rng::fill(&mut rand::thread_rng(), &mut garbage[..]);

    assert_refused(&agent, &import_bytes(&agent, "cut", truncated), "truncated");
    assert_refused(
        &agent,
        &import_bytes(&agent, "junk", &garbage),
        "not a tar archive",
    );
    assert_refused(&agent, &import_bytes(&agent, "empty", b""), "empty");
}

#[test]
fn duplicate_and_invalid_names_are_refused() {
    let Some(agent) = agent_with_witness() else {
        return;
    };
    let tiny = archive(&[Entry::File("f", b"x")]);

    let dup = import_bytes(&agent, "witness", &tiny);
    assert_refused(&agent, &dup, "already exists");
    for bad in ["Bad", "-x", "a/b", "..", &"x".repeat(65)] {
        let out = import_bytes(&agent, bad, &tiny);
        assert_refused(&agent, &out, "invalid distro name");
    }
}

#[test]
fn unknown_distro_is_a_clear_error() {
    let Some(agent) = agent_with_witness() else {
        return;
    };

    for args in [
        vec!["start", "ghost"],
        vec!["exec", "ghost", "--", "true"],
        vec!["terminate", "ghost"],
        vec!["unregister", "--yes", "ghost"],
        vec!["export", "ghost", "-"],
    ] {
        let out = agent.run(&args);
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        assert!(
            text(&out.stderr).contains("distro ghost is not installed"),
            "{args:?}: {}",
            text(&out.stderr)
        );
    }
}

#[test]
fn export_round_trips_and_missing_file_is_a_clear_error() {
    let Some(agent) = agent_with_witness() else {
        return;
    };
    let out_file = agent.dir.path().join("witness.tar.zst");

    agent.ok(&["export", "witness", out_file.to_str().unwrap()]);
    agent.ok(&["import", "copy", out_file.to_str().unwrap()]);
    let missing = agent.run(&["import", "other", "/nonexistent/file.tar"]);

    let magic = std::fs::read(&out_file).unwrap()[..4].to_vec();
    assert_eq!(
        magic,
        [0x28, 0xb5, 0x2f, 0xfd],
        "zstd chosen from the extension"
    );
    assert_eq!(agent.sh("copy", "cat /root/mine"), "safe\n");
    assert_eq!(missing.status.code(), Some(1));
    assert!(text(&missing.stderr).contains("cannot open /nonexistent/file.tar"));
}

#[test]
fn garbage_on_the_socket_closes_only_that_connection() {
    let Some(agent) = agent_with_witness() else {
        return;
    };
    use std::io::Read;

    let mut s = std::os::unix::net::UnixStream::connect(&agent.socket).unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    s.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    let mut buf = Vec::new();
    let closed = s.read_to_end(&mut buf);

    assert!(
        closed.is_ok() && buf.is_empty(),
        "connection closed without a reply"
    );
    assert!(text(&agent.ok(&["list"]).stdout).contains("witness"));
    assert_eq!(agent.sh("witness", "echo still"), "still\n");
}
