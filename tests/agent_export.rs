//! Export targets another user may have prepared (a planted symlink, a
//! device node, a FIFO), and an import the agent refuses while the CLI
//! still streams: the archive goes only where it should, and the reason
//! always reaches the user.

mod common;

use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::Path;
use std::process::{Command, Output, Stdio};

use common::{can_run_agent, text, Cli, TestAgent};

/// A small archive with safe names, as a user's own tarball would be.
fn tiny_rootfs(extra: &[(&str, &[u8])]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (name, data) in [("etc/hostname", &b"tiny\n"[..]), ("root/mine", b"safe\n")]
        .iter()
        .chain(extra)
    {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_mtime(1_700_000_000);
        h.set_uid(0);
        h.set_gid(0);
        b.append_data(&mut h, name, *data).unwrap();
    }
    b.into_inner().unwrap()
}

fn agent_with_tiny() -> Option<TestAgent> {
    if !can_run_agent() {
        return None;
    }
    let agent = TestAgent::start();
    let out = agent.pipe_through(&["import", "tiny", "-"], &tiny_rootfs(&[]));
    assert!(out.status.success(), "{}", text(&out.stderr));
    Some(agent)
}

/// The entry names of a plain tar archive.
fn entries(archive: &[u8]) -> Vec<String> {
    tar::Archive::new(archive)
        .entries()
        .unwrap()
        .map(|e| e.unwrap().path().unwrap().to_string_lossy().into_owned())
        .collect()
}

fn assert_one_line_error(out: &Output, needle: &str) {
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains(needle), "expected {needle:?} in {err:?}");
    assert_eq!(err.trim().lines().count(), 1, "one error line: {err:?}");
}

fn mknod(path: &Path, kind: libc::mode_t, major: u32, minor: u32) {
    nix::sys::stat::mknod(
        path,
        nix::sys::stat::SFlag::from_bits_truncate(kind),
        nix::sys::stat::Mode::from_bits_truncate(0o666),
        libc::makedev(major, minor),
    )
    .unwrap();
}

#[test]
fn export_never_writes_through_a_planted_symlink() {
    let Some(agent) = agent_with_tiny() else {
        return;
    };
    let shared = agent.dir.path().join("shared");
    std::fs::create_dir(&shared).unwrap();
    let victim = agent.dir.path().join("victim");
    std::fs::write(&victim, "precious\n").unwrap();
    std::fs::set_permissions(&victim, std::fs::Permissions::from_mode(0o600)).unwrap();
    // The old predictable temporary name, and the target itself.
    std::os::unix::fs::symlink(&victim, shared.join(".out.tar.partial")).unwrap();
    std::os::unix::fs::symlink(&victim, shared.join("out.tar")).unwrap();

    agent.ok(&["export", "tiny", shared.join("out.tar").to_str().unwrap()]);

    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious\n");
    let out = shared.join("out.tar");
    let meta = std::fs::symlink_metadata(&out).unwrap();
    assert!(
        meta.file_type().is_file(),
        "the link was replaced by the archive"
    );
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    assert!(entries(&std::fs::read(&out).unwrap()).contains(&"root/mine".to_string()));
    let left: Vec<String> = std::fs::read_dir(&shared)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(left.len(), 2, "no temporary file left behind: {left:?}");
}

#[test]
fn export_refuses_device_nodes_directories_and_sockets_and_keeps_them() {
    let Some(agent) = agent_with_tiny() else {
        return;
    };
    let dir = agent.dir.path();
    let full = dir.join("full");
    mknod(&full, libc::S_IFCHR, 1, 7);
    let disk = dir.join("disk");
    mknod(&disk, libc::S_IFBLK, 7, 200);
    let sub = dir.join("subdir");
    std::fs::create_dir(&sub).unwrap();
    let socket = dir.join("sock");
    let _listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
    let cases = [
        (&full, "is a character device"),
        (&disk, "is a block device"),
        (&sub, "is a directory"),
        (&socket, "is a socket"),
    ];

    for (path, needle) in cases {
        let out = agent.run(&["export", "tiny", path.to_str().unwrap()]);

        assert_one_line_error(&out, needle);
    }

    assert!(std::fs::metadata(&full)
        .unwrap()
        .file_type()
        .is_char_device());
    assert!(std::fs::metadata(&disk)
        .unwrap()
        .file_type()
        .is_block_device());
    assert!(std::fs::metadata(&sub).unwrap().is_dir());
    assert_eq!(std::fs::read_dir(&sub).unwrap().count(), 0);
    assert!(std::fs::metadata(&socket).unwrap().file_type().is_socket());
}

#[test]
fn export_writes_to_dev_null_and_stdout_in_place() {
    let Some(agent) = agent_with_tiny() else {
        return;
    };
    let null = agent.dir.path().join("null");
    mknod(&null, libc::S_IFCHR, 1, 3);

    agent.ok(&["export", "tiny", null.to_str().unwrap()]);
    let stdout = agent.ok(&["export", "tiny", "/dev/stdout"]);

    assert!(std::fs::metadata(&null)
        .unwrap()
        .file_type()
        .is_char_device());
    assert!(entries(&stdout.stdout).contains(&"root/mine".to_string()));
}

#[test]
fn export_to_a_fifo_reaches_its_reader() {
    let Some(agent) = agent_with_tiny() else {
        return;
    };
    let fifo = agent.dir.path().join("pipe");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    let reader = Command::new("cat")
        .arg(&fifo)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();

    let export = agent.run(&["export", "tiny", fifo.to_str().unwrap()]);
    let still_fifo = std::fs::metadata(&fifo).unwrap().file_type().is_fifo();
    let mut reader = reader;
    if !still_fifo || !export.status.success() {
        // Nothing will ever open the FIFO for writing: do not wait for cat.
        let _ = reader.kill();
    }
    let read = reader.wait_with_output().unwrap();

    assert!(export.status.success(), "{}", text(&export.stderr));
    assert!(still_fifo, "the FIFO was replaced");
    let names = entries(&read.stdout);
    assert!(names.contains(&"root/mine".to_string()), "{names:?}");
    assert!(names.contains(&"etc/hostname".to_string()), "{names:?}");
}

#[test]
fn import_refused_while_still_streaming_always_says_why() {
    let Some(agent) = agent_with_tiny() else {
        return;
    };
    // A bad first entry, then far more than the socket buffers hold: the
    // agent refuses and closes while the CLI is still sending.
    let mut h = tar::Header::new_gnu();
    h.set_size(1);
    h.set_mode(0o644);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(1_700_000_000);
    h.as_old_mut().name[..7].copy_from_slice(b"../evil");
    h.set_cksum();
    let mut archive = h.as_bytes().to_vec();
    archive.extend_from_slice(&[b'x'; 512]);
    archive.extend(tiny_rootfs(&[("big", &vec![7u8; 32 << 20])]));

    for run in 0..16 {
        let out = agent.pipe_through(&["import", &format!("bad{run}"), "-"], &archive);

        assert_one_line_error(&out, "leaves the distro root");
    }
    let names: Vec<String> = std::fs::read_dir(agent.data().join("distros"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, vec!["tiny".to_string()], "leftovers in the store");
}

/// An agent that refuses an import the way one across the VM's vsock does:
/// it stops reading at once and its answer arrives a moment later.
fn slow_refusing_agent(socket: &Path) -> std::thread::JoinHandle<()> {
    use futures_util::{SinkExt, StreamExt};
    use protocol::{AgentError, ErrorKind, Frame, FrameCodec, Hello, Response};
    let listener = std::os::unix::net::UnixListener::bind(socket).unwrap();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async move {
            let (stream, _) = listener.accept().unwrap();
            stream.set_nonblocking(true).unwrap();
            let stream = tokio::net::UnixStream::from_std(stream).unwrap();
            let mut conn = tokio_util::codec::Framed::new(stream, FrameCodec);
            let _hello = conn.next().await;
            conn.send(Frame::Hello(Hello::new("slow agent")))
                .await
                .unwrap();
            let _import = conn.next().await;
            conn.send(Frame::Response(Response::Ready)).await.unwrap();
            let _first_data = conn.next().await;
            let fd = std::os::fd::AsRawFd::as_raw_fd(conn.get_ref());
            // SAFETY: shutting down the read side of a socket this thread
            // owns; the descriptor stays open.
            unsafe { libc::shutdown(fd, libc::SHUT_RD) };
            tokio::time::sleep(std::time::Duration::from_millis(300)).await;
            let refusal = AgentError {
                kind: ErrorKind::InvalidArchive,
                message: "archive entry ../evil leaves the distro root".into(),
            };
            let _ = conn.send(Frame::Response(Response::Error(refusal))).await;
        });
    })
}

#[test]
fn import_refusal_that_arrives_after_the_agent_stopped_reading_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("agent.sock");
    let agent = slow_refusing_agent(&socket);

    let mut cli = Command::new(common::binary("distroctl"));
    cli.arg("--agent-socket")
        .arg(&socket)
        .args(["import", "bad", "-"]);
    let mut child = cli
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let writer = std::thread::spawn(move || {
        let _ = std::io::Write::write_all(&mut stdin, &vec![0u8; 64 << 20]);
    });
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap();
    agent.join().unwrap();

    assert_one_line_error(&out, "leaves the distro root");
}
