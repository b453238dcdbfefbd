//! Shared harness for the end-to-end tests: a real `distroctl-agent` on a
//! Unix socket with its own data directory, driven through the real
//! `distroctl` binary or the wire protocol.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;

pub mod vm;
use std::time::{Duration, Instant};

/// True when the test may run; prints why it skips otherwise. The agent
/// needs root for namespaces, mounts and `pivot_root`.
pub fn can_run_agent() -> bool {
    if !nix::unistd::geteuid().is_root() {
        eprintln!(
            "SKIP: the agent tests need root (namespaces, mounts, pivot_root); run them as root"
        );
        return false;
    }
    true
}

/// A cgroup2 hierarchy to make distro groups under (`/sys/fs/cgroup`, or
/// the unified one of a hybrid host); `None`, with the reason printed,
/// when the host has none.
pub fn cgroup2_root() -> Option<PathBuf> {
    let is_cgroup2 =
        |p: &Path| nix::sys::statfs::statfs(p).is_ok_and(|s| s.filesystem_type().0 == 0x6367_7270);
    let root = ["/sys/fs/cgroup", "/sys/fs/cgroup/unified"]
        .into_iter()
        .map(Path::new)
        .find(|p| is_cgroup2(p));
    if root.is_none() {
        eprintln!("SKIP: no cgroup2 hierarchy on this host");
    }
    root.map(Path::to_path_buf)
}

/// Path of a built binary of this workspace.
pub fn binary(name: &str) -> PathBuf {
    let distroctl = PathBuf::from(env!("CARGO_BIN_EXE_distroctl"));
    let path = distroctl.with_file_name(name);
    assert!(
        path.exists(),
        "{} is not built; run the tests with `cargo test --workspace`",
        path.display()
    );
    path
}

/// The Debian bookworm minbase tarball, built once per day by
/// `scripts/test-rootfs` (mmdebstrap through the host's apt configuration).
pub fn debian_rootfs() -> &'static Path {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| test_rootfs(&[]))
}

/// The same with systemd as its init, dbus, logind and openssh-server
/// (`scripts/test-rootfs --systemd`).
pub fn debian_systemd_rootfs() -> &'static Path {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| test_rootfs(&["--systemd"]))
}

fn test_rootfs(args: &[&str]) -> PathBuf {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/test-rootfs");
    let out = Command::new(&script)
        .args(args)
        .stderr(Stdio::inherit())
        .output()
        .expect("run scripts/test-rootfs");
    assert!(
        out.status.success(),
        "scripts/test-rootfs {args:?} failed; install mmdebstrap (apt-get install mmdebstrap) or run .ci/run"
    );
    PathBuf::from(String::from_utf8(out.stdout).unwrap().trim())
}

/// A running agent with a private data directory.
pub struct TestAgent {
    pub dir: tempfile::TempDir,
    pub socket: PathBuf,
    cgroup_root: PathBuf,
    child: Child,
}

/// Starts `distroctl-agent` serving `socket` with its data under `dir`,
/// appending to `dir/agent.log`; returns once the socket exists.
fn spawn_agent(dir: &Path, socket: &Path, cgroup_root: &Path) -> Child {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("agent.log"))
        .unwrap();
    let child = Command::new(binary("distroctl-agent"))
        .arg("--listen")
        .arg(format!("unix:{}", socket.display()))
        .arg("--data-dir")
        .arg(dir.join("data"))
        .arg("--cgroup-root")
        .arg(cgroup_root)
        .env("DISTROCTL_LOG", "debug")
        .stderr(log)
        .spawn()
        .expect("spawn distroctl-agent");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !socket.exists() {
        assert!(Instant::now() < deadline, "agent did not create its socket");
        std::thread::sleep(Duration::from_millis(10));
    }
    child
}

impl TestAgent {
    /// Starts an agent without cgroups (like a host without cgroup v2).
    pub fn start() -> TestAgent {
        Self::start_with_cgroups(None)
    }

    /// Starts an agent that makes distro cgroups under `cgroup_root`.
    pub fn start_with_cgroups(cgroup_root: Option<&Path>) -> TestAgent {
        let dir = tempfile::Builder::new()
            .prefix("distroctl-test-")
            .tempdir_in(std::env::var_os("DISTROCTL_TEST_TMP").unwrap_or_else(|| "/var/tmp".into()))
            .unwrap();
        let socket = dir.path().join("agent.sock");
        let cgroup_root =
            cgroup_root.map_or_else(|| dir.path().join("no-cgroup"), Path::to_path_buf);
        let child = spawn_agent(dir.path(), &socket, &cgroup_root);
        TestAgent {
            dir,
            socket,
            cgroup_root,
            child,
        }
    }

    /// Kills the agent with SIGKILL, as the OOM killer would, and starts a
    /// new one on the same data directory and socket (as init does in the
    /// VM).
    pub fn kill_and_restart(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
        let _ = std::fs::remove_file(&self.socket);
        self.child = spawn_agent(self.dir.path(), &self.socket, &self.cgroup_root);
    }

    /// Host PID of the agent.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// True while the agent process the test started still runs (it was
    /// neither killed nor replaced).
    pub fn is_running(&self) -> bool {
        std::fs::read_to_string(format!("/proc/{}/stat", self.pid()))
            .ok()
            .and_then(|stat| {
                let state = stat.rsplit(')').next()?.split_whitespace().next()?;
                Some(state != "Z" && state != "X")
            })
            .unwrap_or(false)
    }

    /// The data directory.
    pub fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// A distro's root file system on the host.
    pub fn rootfs(&self, name: &str) -> PathBuf {
        self.data().join("distros").join(name).join("rootfs")
    }

    /// Imports the Debian test rootfs as `name`.
    pub fn import_debian(&self, name: &str) {
        self.ok(&["import", name, debian_rootfs().to_str().unwrap()]);
    }

    /// The last lines of the agent's log.
    pub fn log_tail(&self) -> String {
        tail(&self.dir.path().join("agent.log"), 30)
    }
}

impl Cli for TestAgent {
    /// A `distroctl` command aimed at this agent.
    fn cli(&self) -> Command {
        let mut cmd = Command::new(binary("distroctl"));
        cmd.arg("--agent-socket").arg(&self.socket);
        cmd
    }

    fn failure_context(&self) -> String {
        format!("agent log tail:\n{}", self.log_tail())
    }
}

impl Drop for TestAgent {
    fn drop(&mut self) {
        // Shutdown terminates every distro so no process outlives the test.
        let _ = self.cli().arg("shutdown").stdin(Stdio::null()).output();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Something `distroctl` commands are aimed at: a host agent or a VM.
pub trait Cli {
    /// A `distroctl` command in its environment.
    fn cli(&self) -> Command;

    /// What to show when a command fails (the end of the relevant log).
    fn failure_context(&self) -> String;

    /// Runs `distroctl ARGS` and returns its output.
    fn run(&self, args: &[&str]) -> Output {
        self.cli().args(args).stdin(Stdio::null()).output().unwrap()
    }

    /// Starts `distroctl ARGS` in the background with its output captured.
    fn spawn(&self, args: &[&str]) -> std::process::Child {
        self.cli()
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    }

    /// Runs `distroctl ARGS`, asserting success.
    fn ok(&self, args: &[&str]) -> Output {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "distroctl {args:?} failed: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            self.failure_context()
        );
        out
    }

    /// Runs a shell script in `distro` and returns its stdout as text.
    fn sh(&self, distro: &str, script: &str) -> String {
        let out = self.ok(&["exec", distro, "--", "sh", "-c", script]);
        String::from_utf8(out.stdout).unwrap()
    }

    /// Streams `data` through `cat` in `distro` and returns the output.
    /// Closing stdin at the end must reach `cat` as end of file.
    fn round_trip_through_cat(&self, distro: &str, data: &[u8]) -> Output {
        self.pipe_through(&["exec", distro, "--", "cat"], data)
    }

    /// Runs `distroctl ARGS` with `data` on stdin (closed at its end) and
    /// returns the output. The command may stop reading early (a refused
    /// import); what it did then is in the output.
    fn pipe_through(&self, args: &[&str], data: &[u8]) -> Output {
        let mut child = self
            .cli()
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdin = child.stdin.take().unwrap();
        let input = data.to_vec();
        let writer = std::thread::spawn(move || {
            let _ = std::io::Write::write_all(&mut stdin, &input);
        });
        let out = child.wait_with_output().unwrap();
        writer.join().unwrap();
        out
    }
}

/// The last `lines` lines of a log file (empty when it is missing).
pub fn tail(path: &Path, lines: usize) -> String {
    let log = std::fs::read(path).unwrap_or_default();
    let log = String::from_utf8_lossy(&log);
    let all: Vec<&str> = log.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// The row of `distroctl list` for `name`, without the default marker.
pub fn list_row<'a>(list: &'a str, name: &str) -> &'a str {
    list.lines()
        .filter_map(|l| l.get(2..))
        .find(|l| l.split_whitespace().next() == Some(name))
        .unwrap_or_else(|| panic!("{name} not listed:\n{list}"))
}

/// Text of an output stream.
pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Reads from a PTY master until `needle` shows up or time runs out.
fn read_until(master: &mut std::fs::File, needle: &str, seen: &mut String) -> bool {
    use std::io::Read;
    // An earlier read may have brought it already, with nothing more to come.
    if seen.contains(needle) {
        return true;
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut buf = [0u8; 4096];
    while Instant::now() < deadline {
        let mut fds = [nix::poll::PollFd::new(
            std::os::fd::AsFd::as_fd(master),
            nix::poll::PollFlags::POLLIN,
        )];
        if nix::poll::poll(&mut fds, nix::poll::PollTimeout::from(200u16)).unwrap_or(0) == 0 {
            continue;
        }
        match master.read(&mut buf) {
            Ok(0) | Err(_) => return seen.contains(needle),
            Ok(n) => seen.push_str(&String::from_utf8_lossy(&buf[..n])),
        }
        if seen.contains(needle) {
            return true;
        }
    }
    false
}

/// Runs `cmd` (a `distroctl shell …`) on a real 40×100 terminal as a
/// terminal emulator would, and checks: a root prompt appears, a command
/// runs, the window size is seen, `exit 3` gives status 3, and the terminal
/// mode is restored afterwards.
pub fn assert_interactive_shell(cmd: Command) {
    use std::io::Write;
    let (mut child, mut master, slave, before) = on_terminal(cmd);
    let mut seen = String::new();

    assert!(
        read_until(&mut master, "# ", &mut seen),
        "no root prompt: {seen:?}"
    );
    master.write_all(b"echo hi-$((40+2)); stty size\r").unwrap();
    assert!(read_until(&mut master, "hi-42", &mut seen), "{seen:?}");
    assert!(read_until(&mut master, "40 100", &mut seen), "{seen:?}");
    master.write_all(b"exit 3\r").unwrap();
    let status = child.wait().unwrap();

    assert_eq!(status.code(), Some(3));
    let after = nix::sys::termios::tcgetattr(&slave).unwrap();
    assert_eq!(
        before.local_flags, after.local_flags,
        "terminal mode restored"
    );
    assert_eq!(
        before.input_flags, after.input_flags,
        "terminal mode restored"
    );
}

/// Runs `cmd` (a `distroctl shell …`) on a real terminal, waits for a root
/// prompt, types `line` and `exit`, and returns what the terminal showed.
pub fn shell_transcript(cmd: Command, line: &str) -> String {
    use std::io::Write;
    let (mut child, mut master, _slave, _) = on_terminal(cmd);
    let mut seen = String::new();
    assert!(
        read_until(&mut master, "# ", &mut seen),
        "no root prompt: {seen:?}"
    );
    master
        .write_all(format!("{line}; echo transcript-$((6*7))\r").as_bytes())
        .unwrap();
    assert!(
        read_until(&mut master, "transcript-42\r\n", &mut seen),
        "{seen:?}"
    );
    master.write_all(b"exit\r").unwrap();
    child.wait().unwrap();
    seen
}

/// Starts `cmd` on a new 40×100 PTY as its controlling terminal; returns
/// the child, the master, the slave and the slave's mode before.
fn on_terminal(
    mut cmd: Command,
) -> (
    std::process::Child,
    std::fs::File,
    std::os::fd::OwnedFd,
    nix::sys::termios::Termios,
) {
    let pty = nix::pty::openpty(
        Some(&nix::pty::Winsize {
            ws_row: 40,
            ws_col: 100,
            ws_xpixel: 0,
            ws_ypixel: 0,
        }),
        None,
    )
    .unwrap();
    let slave = pty.slave;
    let before = nix::sys::termios::tcgetattr(&slave).unwrap();
    cmd.env("TERM", "xterm")
        .stdin(slave.try_clone().unwrap())
        .stdout(slave.try_clone().unwrap())
        .stderr(slave.try_clone().unwrap());
    // SAFETY: setsid and TIOCSCTTY in the child before exec make the PTY its
    // controlling terminal, as a terminal emulator does.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut cmd, || {
            nix::unistd::setsid()?;
            if libc::ioctl(0, libc::TIOCSCTTY, 0) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = cmd.spawn().unwrap();
    (child, std::fs::File::from(pty.master), slave, before)
}

/// A distro workload for `stats`: fills 32 MiB of its `/tmp` (tmpfs, so
/// charged to its memory), forks three sleepers, writes 8 MiB to its disk
/// with fsync, then spins the CPU for `spins` loop turns.
pub fn stats_workload(spins: u32) -> String {
    format!(
        "head -c 32M /dev/zero > /tmp/fill && \
         for i in 1 2 3; do setsid sleep 4747 </dev/null >/dev/null 2>&1 & done; \
         dd if=/dev/zero of=/root/written bs=1M count=8 conv=fsync status=none && \
         i=0; while [ $i -lt {spins} ]; do i=$((i+1)); done"
    )
}

/// `distroctl stats --json NAMES…`, parsed.
pub fn stats_json(target: &impl Cli, names: &[&str]) -> serde_json::Value {
    let mut args = vec!["stats", "--json"];
    args.extend_from_slice(names);
    let out = target.ok(&args);
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("stats --json is not JSON ({e}): {}", text(&out.stdout)))
}

/// The entry of `name` in a `stats --json` document.
pub fn stats_of<'a>(doc: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    doc["distros"]
        .as_array()
        .and_then(|d| d.iter().find(|d| d["name"] == name))
        .unwrap_or_else(|| panic!("{name} not in stats: {doc}"))
}
