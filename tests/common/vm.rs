//! A private utility VM for a test: its own HOME, config, data disk and
//! runtime directory, booted by the real `distroctl` under QEMU.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use super::{binary, Cli};

/// VMs run one at a time: two emulated guests on a small host only slow
/// each other down.
static ONE_VM: Mutex<()> = Mutex::new(());

/// Kernels and initramfs images are shared between tests (fetched once).
/// (`DISTROCTL_TEST_CACHE` puts them elsewhere, e.g. for a second
/// checkout testing beside the first.)
pub fn shared_cache() -> PathBuf {
    std::env::var_os("DISTROCTL_TEST_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/cache/distroctl-tests/cache"))
}

/// The backend the VM suites run on: `qemu`, or `kvm` (our own VMM) when
/// `DISTROCTL_TEST_BACKEND=kvm` (see `scripts/test-kvm`).
pub fn test_backend() -> String {
    std::env::var("DISTROCTL_TEST_BACKEND").unwrap_or_else(|_| "qemu".into())
}

pub struct TestVm {
    pub home: tempfile::TempDir,
    _turn: MutexGuard<'static, ()>,
}

impl TestVm {
    /// A VM home with `extra` appended to a small test config.
    pub fn new(extra: &str) -> TestVm {
        let turn = ONE_VM.lock().unwrap_or_else(|p| p.into_inner());
        assert!(
            Path::new("/usr/bin/qemu-system-x86_64").exists(),
            "qemu-system-x86_64 is missing: install qemu-system-x86 (scripts/test does)"
        );
        let home = tempfile::Builder::new()
            .prefix("distroctl-vm-")
            .tempdir_in("/var/tmp")
            .unwrap();
        let config = home.path().join(".config/distroctl");
        std::fs::create_dir_all(&config).unwrap();
        let mut text = String::new();
        // The whole suite runs on either backend: DISTROCTL_TEST_BACKEND=kvm
        // runs it on our own VMM (hosts with hardware virtualization).
        if !extra.contains("backend =") {
            text.push_str(&format!("backend = \"{}\"\n", test_backend()));
        }
        for (key, value) in [
            ("memory", "\"1G\""),
            ("cpus", "2"),
            ("disk_size", "\"8G\""),
            // Suites about other things run without host shares, as before
            // shares existed; `vm_shares` turns them on (and with them our
            // VMM's shared-memfd guest RAM).
            ("share_home", "false"),
        ] {
            if !extra.contains(&format!("{key} =")) {
                text.push_str(&format!("{key} = {value}\n"));
            }
        }
        text.push_str(extra);
        std::fs::write(config.join("config.toml"), text).unwrap();
        std::fs::create_dir_all(shared_cache()).unwrap();
        TestVm { home, _turn: turn }
    }

    pub fn runtime_dir(&self) -> PathBuf {
        self.home.path().join("run/distroctl")
    }

    pub fn data_dir(&self) -> PathBuf {
        self.home.path().join(".local/share/distroctl")
    }

    /// `vm.json` of the running VM.
    pub fn state(&self) -> Option<serde_json::Value> {
        let bytes = std::fs::read(self.runtime_dir().join("vm.json")).ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    /// PID of the VM monitor (QEMU here).
    pub fn qemu_pid(&self) -> Option<i32> {
        self.state()?.get("vmm_pid")?.as_i64().map(|p| p as i32)
    }

    pub fn runner_pid(&self) -> Option<i32> {
        self.state()?.get("runner_pid")?.as_i64().map(|p| p as i32)
    }

    /// Waits until no runner holds the VM (after shutdown or a kill).
    pub fn wait_stopped(&self) -> bool {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if !self.runtime_dir().join("vm.json").exists() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    }

    /// PID of this VM's manager, while one runs.
    pub fn manager_pid(&self) -> Option<i32> {
        let dir = self.runtime_dir();
        if !dir.join("manager.sock").exists() {
            return None;
        }
        std::fs::read_to_string(dir.join("manager.lock"))
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    /// Waits until the manager has exited.
    pub fn wait_manager_gone(&self) -> bool {
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if !self.runtime_dir().join("manager.sock").exists() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    }

    pub fn console_tail(&self) -> String {
        super::tail(&self.data_dir().join("console.log"), 25)
    }
}

impl Cli for TestVm {
    /// A `distroctl` command in this VM's environment.
    fn cli(&self) -> Command {
        let mut cmd = Command::new(binary("distroctl"));
        let h = self.home.path();
        cmd.env("HOME", h)
            .env("XDG_CONFIG_HOME", h.join(".config"))
            .env("XDG_DATA_HOME", h.join(".local/share"))
            .env("XDG_RUNTIME_DIR", h.join("run"))
            .env("XDG_CACHE_HOME", shared_cache())
            .env_remove("DISTROCTL_AGENT_SOCKET");
        cmd
    }

    fn failure_context(&self) -> String {
        format!("console:\n{}", self.console_tail())
    }
}

impl Drop for TestVm {
    fn drop(&mut self) {
        let _ = self.run(&["shutdown"]);
        let stopped = self.wait_stopped() && self.wait_manager_gone();
        if !stopped {
            let pids = [self.qemu_pid(), self.runner_pid(), self.manager_pid()];
            for pid in pids.into_iter().flatten() {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
    }
}
