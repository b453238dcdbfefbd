//! Host directories in distros over virtiofs, on the backend under test
//! (QEMU here; our VMM with `DISTROCTL_TEST_BACKEND=kvm`, see
//! `scripts/test-kvm`): the user's home at its own path and `[[mount]]`
//! entries, file operations seen at once on both sides, ownership, a
//! read-only share, escapes out of a share, a distro with mounts off, and a
//! daemon that dies while the VM runs.

mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::time::{Duration, Instant};

use common::vm::TestVm;
use common::{debian_rootfs, text, Cli};

/// A VM whose home (shared by default) and a read-only `[[mount]]` are
/// real directories, plus a `[[mount]]` whose host directory is missing.
fn share_vm(ro_dir: &Path) -> TestVm {
    TestVm::new(&format!(
        "share_home = true\n[[mount]]\nhost = \"{}\"\nguest = \"/ro\"\nread_only = true\n\n[[mount]]\nhost = \"/nonexistent/distroctl-share\"\nguest = \"/gone\"\n",
        ro_dir.display()
    ))
}

#[test]
fn host_home_and_mounts_are_shared_with_every_distro() {
    let ro_dir = tempfile::tempdir_in("/var/tmp").unwrap();
    std::fs::write(ro_dir.path().join("readme"), "read only\n").unwrap();
    // A host file outside every share, which no path in a share may reach.
    let outside = tempfile::tempdir_in("/var/tmp").unwrap();
    std::fs::write(outside.path().join("secret"), "host secret\n").unwrap();
    let vm = share_vm(ro_dir.path());
    let home = vm.home.path().to_str().unwrap().to_owned();
    let work = vm.home.path().join("work");
    std::fs::create_dir(&work).unwrap();
    let w = work.to_str().unwrap();
    let tar = debian_rootfs().to_str().unwrap();

    // The missing host directory is one line at boot; the VM still boots.
    let import = vm.ok(&["import", "deb", tar]);
    let err = text(&import.stderr);
    assert!(
        err.contains("/nonexistent/distroctl-share is not shared: it does not exist"),
        "{err}"
    );
    let status = text(&vm.ok(&["status"]).stdout);
    assert!(
        status.contains(&format!("{home} at {home} (read-write)")),
        "{status}"
    );
    assert!(
        status.contains(&format!("{} at /ro (read-only)", ro_dir.path().display())),
        "{status}"
    );

    // Made in the distro (as root): seen on the host at once, owned by the
    // user running distroctl.
    vm.sh(
        "deb",
        &format!(
            "cd {w} && echo one > a && mkdir d && echo two > d/b && mv a renamed \
             && chmod 751 renamed && ln -s renamed link && cp /bin/true ./true-copy && ./true-copy"
        ),
    );
    assert_eq!(
        std::fs::read_to_string(work.join("renamed")).unwrap(),
        "one\n"
    );
    assert!(!work.join("a").exists());
    assert_eq!(std::fs::read_to_string(work.join("d/b")).unwrap(), "two\n");
    let meta = std::fs::metadata(work.join("renamed")).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o751);
    assert_eq!(
        meta.uid(),
        nix::unistd::geteuid().as_raw(),
        "root in a distro is the host user"
    );
    assert_eq!(
        std::fs::read_link(work.join("link")).unwrap(),
        Path::new("renamed")
    );

    // Made on the host: seen in the distro at once (a name the guest has
    // not looked up), owned there by the default user's ID.
    std::fs::write(work.join("from-host"), "host\n").unwrap();
    let seen = vm.sh(
        "deb",
        &format!("cd {w} && cat from-host && stat -c %u:%g from-host"),
    );
    assert_eq!(seen, "host\n1000:1000\n");
    // Changed or deleted on the host: the guest keeps what it knows of a
    // file's attributes for up to a second (virtiofsd's cache = auto), so
    // the change shows within that.
    std::fs::write(work.join("renamed"), "changed on the host\n").unwrap();
    std::fs::remove_file(work.join("d/b")).unwrap();
    let started = Instant::now();
    let seen = loop {
        let seen = vm.sh("deb", &format!("cd {w} && cat renamed && ls d | wc -l"));
        if seen == "changed on the host\n0\n" || started.elapsed() > Duration::from_secs(3) {
            break seen;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(
        seen,
        "changed on the host\n0\n",
        "within {:?}",
        started.elapsed()
    );

    // Read-only share: readable, writes refused with EROFS, also for root.
    let ro = vm.run(&[
        "exec",
        "deb",
        "--",
        "sh",
        "-c",
        "cat /ro/readme && touch /ro/new",
    ]);
    assert_eq!(text(&ro.stdout), "read only\n");
    assert_ne!(ro.status.code(), Some(0));
    assert!(
        text(&ro.stderr).contains("Read-only file system"),
        "{}",
        text(&ro.stderr)
    );
    assert!(!ro_dir.path().join("new").exists());

    // Escapes: symlinks put into the share on the host (absolute and
    // relative) resolve inside the distro, never to host files; a hard
    // link from the distro's own files into the share is refused.
    let secret = outside.path().join("secret");
    std::os::unix::fs::symlink(&secret, work.join("abs")).unwrap();
    let depth = work.components().count();
    let relative = format!(
        "{}{}",
        "../".repeat(depth),
        secret.display().to_string().trim_start_matches('/')
    );
    std::os::unix::fs::symlink(&relative, work.join("rel")).unwrap();
    let escape = vm.run(&[
        "exec",
        "deb",
        "--",
        "sh",
        "-c",
        &format!(
            "cat {w}/abs {w}/rel; cat {w}/../../../../../{}; ln /etc/hostname {w}/hard",
            secret.display()
        ),
    ]);
    assert!(
        !text(&escape.stdout).contains("host secret"),
        "{}",
        text(&escape.stdout)
    );
    assert!(
        text(&escape.stderr).contains("Invalid cross-device link"),
        "{}",
        text(&escape.stderr)
    );
    assert!(!work.join("hard").exists());

    // A distro with mounts off sees none of the shares.
    vm.ok(&["import", "private", tar]);
    vm.ok(&["configure", "private", "--mounts", "off"]);
    let mounts = vm.sh("private", "grep -c virtiofs /proc/self/mounts || true");
    assert_eq!(mounts.trim(), "0");
    assert_eq!(
        vm.sh("deb", "grep -c virtiofs /proc/self/mounts").trim(),
        "2",
        "home and /ro"
    );
    let list = text(&vm.ok(&["status"]).stdout);
    assert!(list.contains("host shares off"), "{list}");

    // git in a distro on a shared directory, as the distro's user 1000 (who
    // owns the host user's files there, so git trusts the repository);
    // the host's git agrees.
    vm.sh(
        "deb",
        "useradd -m -u 1000 dev && apt-get update -q >/dev/null \
         && apt-get install -y -q --no-install-recommends git >/dev/null",
    );
    let git = vm.ok(&[
        "exec",
        "deb",
        "--user",
        "dev",
        "--",
        "sh",
        "-c",
        &format!(
            "cd {w} && git init -q repo && cd repo && echo x > f && git add f \
             && git -c user.name=t -c user.email=t@t commit -qm one && git status --porcelain && echo clean"
        ),
    ]);
    assert_eq!(text(&git.stdout), "clean\n");
    let host_log = std::process::Command::new("git")
        .args(["-c", "safe.directory=*", "-C"])
        .arg(work.join("repo"))
        .args(["log", "--format=%s"])
        .output()
        .unwrap();
    assert_eq!(
        text(&host_log.stdout),
        "one\n",
        "{}",
        text(&host_log.stderr)
    );
}

#[test]
fn a_dead_share_daemon_is_reported_and_the_next_vm_serves_the_share_again() {
    let ro_dir = tempfile::tempdir_in("/var/tmp").unwrap();
    let vm = share_vm(ro_dir.path());
    let home = vm.home.path().to_str().unwrap().to_owned();
    let tar = debian_rootfs().to_str().unwrap();
    vm.ok(&["import", "deb", tar]);
    assert_eq!(vm.sh("deb", &format!("ls -d {home}")).trim(), home);

    let socket = vm.runtime_dir().join("share0.sock");
    let pid = daemon_of(&socket).expect("a virtiofsd serving share0");
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::SIGKILL).unwrap();

    // The runner notices within a moment; the next command says so.
    let deadline = Instant::now() + Duration::from_secs(10);
    let said = loop {
        let out = vm.run(&["exec", "deb", "--", "true"]);
        let err = text(&out.stderr);
        if err.contains("virtiofsd serving") || Instant::now() > deadline {
            break err;
        }
        std::thread::sleep(Duration::from_millis(300));
    };
    assert!(
        said.contains(&format!("virtiofsd serving {home} exited")),
        "{said}"
    );
    assert!(said.contains("until the VM restarts"), "{said}");
    let status = text(&vm.ok(&["status"]).stdout);
    assert!(status.contains("virtiofsd serving"), "{status}");

    // A new VM starts a new daemon: the share works again.
    vm.ok(&["shutdown"]);
    assert!(vm.wait_stopped());
    std::fs::write(vm.home.path().join("again"), "back\n").unwrap();
    let out = vm.ok(&["exec", "deb", "--", "cat", &format!("{home}/again")]);
    assert_eq!(text(&out.stdout), "back\n");
    assert!(!text(&out.stderr).contains("virtiofsd serving"));
}

/// The PID of the virtiofsd listening on `socket`.
fn daemon_of(socket: &Path) -> Option<i32> {
    let wanted = socket.to_str()?;
    std::fs::read_dir("/proc")
        .ok()?
        .flatten()
        .find_map(|entry| {
            let pid: i32 = entry.file_name().to_str()?.parse().ok()?;
            let cmdline = std::fs::read(entry.path().join("cmdline")).ok()?;
            let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
            let is_it = args.first().is_some_and(|a| a.ends_with(b"virtiofsd"))
                && args.contains(&wanted.as_bytes());
            is_it.then_some(pid)
        })
}
