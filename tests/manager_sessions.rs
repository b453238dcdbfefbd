//! The manager on the host, without booting a VM: two login sessions of one
//! user share the data disk but never both run a VM on it, and what the
//! manager keeps is private to the user.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{binary, text};

/// One user's home, and the login sessions (runtime directories) in it.
struct Home {
    dir: tempfile::TempDir,
}

impl Home {
    fn new() -> Home {
        Home {
            dir: tempfile::Builder::new()
                .prefix("distroctl-sessions-")
                .tempdir_in("/var/tmp")
                .unwrap(),
        }
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join(".local/share/distroctl")
    }

    fn runtime(&self, session: &str) -> PathBuf {
        self.dir.path().join(session).join("distroctl")
    }

    /// `distroctl ARGS` in `session`.
    fn cli(&self, session: &str) -> Command {
        let h = self.dir.path();
        let mut cmd = Command::new(binary("distroctl"));
        cmd.env("HOME", h)
            .env("XDG_CONFIG_HOME", h.join(".config"))
            .env("XDG_DATA_HOME", h.join(".local/share"))
            .env("XDG_RUNTIME_DIR", h.join(session))
            .env("XDG_CACHE_HOME", h.join(".cache"))
            .env_remove("DISTROCTL_AGENT_SOCKET")
            .stdin(Stdio::null());
        cmd
    }

    /// Starts a manager in `session` and waits until it listens. With no
    /// command connecting, it exits by itself a few seconds later.
    fn manager(&self, session: &str) -> Child {
        let child = self
            .cli(session)
            .arg("daemon")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let socket = self.runtime(session).join("manager.sock");
        let deadline = Instant::now() + Duration::from_secs(10);
        while !socket.exists() {
            assert!(Instant::now() < deadline, "the manager did not listen");
            std::thread::sleep(Duration::from_millis(10));
        }
        child
    }
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o7777
}

fn stop(mut child: Child) {
    let _ = child.kill();
    let _ = child.wait();
}

#[test]
fn second_session_is_told_who_runs_the_vm_and_touches_nothing() {
    let home = Home::new();
    let first = home.manager("session-a");
    let console = home.data().join("console.log");
    std::fs::write(&console, "the running VM's console\n").unwrap();

    let command = home.cli("session-b").arg("list").output().unwrap();
    let manager = home.cli("session-b").arg("daemon").output().unwrap();

    let first_pid = first.id();
    stop(first);
    for (what, out) in [("a command", &command), ("a manager", &manager)] {
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{what}: {err}");
        assert!(
            err.contains("already run by another session")
                && err.contains(&format!("manager PID {first_pid}")),
            "{what}: {err}"
        );
        assert_eq!(err.trim().lines().count(), 1, "{what}: one line: {err}");
    }
    assert_eq!(
        std::fs::read_to_string(&console).unwrap(),
        "the running VM's console\n"
    );
    assert!(!home.data().join("console.log.old").exists());
    assert!(!home.runtime("session-b").join("manager.sock").exists());
}

#[test]
fn manager_makes_its_directories_and_files_private() {
    let home = Home::new();
    let data = home.data();
    std::fs::create_dir_all(&data).unwrap();
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o755)).unwrap();
    for name in ["data.img", "console.log", "console.log.old", "manager.log"] {
        let file = data.join(name);
        std::fs::write(&file, name).unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
    }
    let runtime = home.runtime("session-a");
    std::fs::create_dir_all(&runtime).unwrap();
    std::fs::set_permissions(&runtime, std::fs::Permissions::from_mode(0o755)).unwrap();

    let manager = home.manager("session-a");

    stop(manager);
    assert_eq!(mode(&data), 0o700, "data directory");
    assert_eq!(mode(&runtime), 0o700, "runtime directory");
    for name in ["data.img", "console.log", "console.log.old", "manager.log"] {
        assert_eq!(mode(&data.join(name)), 0o600, "{name}");
        assert_eq!(std::fs::read_to_string(data.join(name)).unwrap(), name);
    }
}
