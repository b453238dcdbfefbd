//! PID 1 of a distro: the agent re-executes itself, named plain `init` and
//! told its settings on stdin, inside fresh mount, PID, UTS, IPC and cgroup
//! namespaces (the agent has already placed it in the distro's cgroup). It builds the distro's
//! file system view in one fixed sequence, reports `ready` on stdout, then
//! reaps orphans — or hands PID 1 to the distro's own systemd.

use std::ffi::CString;
use std::fs;
use std::io::Write;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::stat::{makedev, mknod, Mode, SFlag};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::{chdir, pivot_root, sethostname, Pid};
use thiserror::Error;

use crate::host_shares::ShareMount;

/// Name PID 1 of a distro shows in `/proc/1/comm`, as in WSL.
pub const REAPER_COMM: &str = "init";

/// Line the reaper prints on stdout once the distro is set up.
pub const READY_LINE: &str = "ready";

/// Prefix of a line PID 1 prints before the ready line to tell the agent
/// something worth a log line (a share it left out, say).
pub const NOTE_PREFIX: &str = "note: ";

/// Environment variable that makes the agent binary run as a distro's PID 1.
pub const ROLE_ENV: &str = "DISTROCTL_DISTRO_INIT";

/// What the distro's PID 1 is told by the agent.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct DistroInitConfig {
    /// Distro name, used as host name.
    pub name: String,
    /// Its root file system directory (agent's view).
    pub rootfs: PathBuf,
    /// Run `/sbin/init` after setup instead of reaping.
    pub systemd: bool,
    /// Mount cgroup2 at `/sys/fs/cgroup` (the agent made a group for it).
    pub cgroup: bool,
    /// A terminal of the VM's (a PTY slave the agent records) to bind
    /// over the distro's `/dev/console`.
    #[serde(default)]
    pub console: Option<PathBuf>,
    /// Host shares to bind at their guest paths.
    #[serde(default)]
    pub shares: Vec<ShareMount>,
    /// Contents for the distro's `/etc/resolv.conf` (read by PID 1 itself
    /// from the VM's, not sent by the agent).
    #[serde(skip)]
    pub resolv_conf: String,
}

/// Reads the [`DistroInitConfig`] the agent wrote on stdin (JSON, then end
/// of file) and runs as PID 1; never returns.
pub fn run_from_stdin(resolv_conf: String) -> ! {
    let mut text = Vec::new();
    let parsed = std::io::Read::read_to_end(&mut std::io::stdin(), &mut text)
        .map_err(|e| e.to_string())
        .and_then(|_| serde_json::from_slice::<DistroInitConfig>(&text).map_err(|e| e.to_string()));
    match parsed {
        Ok(config) => run(DistroInitConfig {
            resolv_conf,
            ..config
        }),
        Err(e) => {
            eprintln!("could not read the distro's settings from the agent: {e}");
            std::process::exit(1);
        }
    }
}

/// A step of the setup sequence failed.
#[derive(Debug, Error)]
#[error("could not {step}")]
pub struct SetupError {
    step: String,
    #[source]
    source: std::io::Error,
}

trait Step<T> {
    fn step(self, what: impl FnOnce() -> String) -> Result<T, SetupError>;
}

impl<T, E: Into<std::io::Error>> Step<T> for Result<T, E> {
    fn step(self, what: impl FnOnce() -> String) -> Result<T, SetupError> {
        self.map_err(|e| SetupError {
            step: what(),
            source: e.into(),
        })
    }
}

fn mount_fs(
    source: &str,
    target: &Path,
    fstype: &str,
    flags: MsFlags,
    data: Option<&str>,
) -> Result<(), SetupError> {
    fs::create_dir_all(target).step(|| format!("create {}", target.display()))?;
    mount(Some(source), target, Some(fstype), flags, data)
        .step(|| format!("mount {fstype} on {}", target.display()))
}

/// Runs the setup sequence and then serves as PID 1; never returns.
pub fn run(config: DistroInitConfig) -> ! {
    match setup(&config) {
        Ok(()) => {}
        Err(e) => {
            let mut chain = e.to_string();
            let mut source = std::error::Error::source(&e);
            while let Some(s) = source {
                chain.push_str(": ");
                chain.push_str(&s.to_string());
                source = s.source();
            }
            eprintln!("{chain}");
            std::process::exit(1);
        }
    }
    println!("{READY_LINE}");
    let _ = std::io::stdout().flush();
    detach_stdio();
    if config.systemd {
        exec_systemd();
    }
    reap_forever()
}

/// The fixed sequence: private mounts, bind the rootfs, pseudo file systems,
/// `/dev`, tmpfs mounts, host name, `pivot_root`, generated files.
fn setup(config: &DistroInitConfig) -> Result<(), SetupError> {
    let root = &config.rootfs;
    // Nothing mounted from here on propagates back to the agent's namespace.
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_SLAVE,
        None::<&str>,
    )
    .step(|| "make the mount namespace private".into())?;
    mount(
        Some(root.as_path()),
        root.as_path(),
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None::<&str>,
    )
    .step(|| format!("bind-mount {}", root.display()))?;
    // The distro's root decides what these are; a symlink among them would
    // put a mount (and the directories created for it) wherever it points.
    for dir in ["proc", "sys", "dev", "run", "tmp"] {
        require_plain_dir(root, dir)?;
    }

    let nosuid_nodev = MsFlags::MS_NOSUID | MsFlags::MS_NODEV;
    mount_fs(
        "proc",
        &root.join("proc"),
        "proc",
        nosuid_nodev | MsFlags::MS_NOEXEC,
        None,
    )?;
    mount_fs(
        "sysfs",
        &root.join("sys"),
        "sysfs",
        nosuid_nodev | MsFlags::MS_NOEXEC,
        None,
    )?;
    if config.cgroup {
        mount_fs(
            "cgroup2",
            &root.join("sys/fs/cgroup"),
            "cgroup2",
            nosuid_nodev | MsFlags::MS_NOEXEC,
            Some("nsdelegate"),
        )?;
    }
    setup_dev(&root.join("dev"))?;
    if let Some(console) = &config.console {
        attach_console(console, &root.join("dev/console"))?;
    }
    mount_fs(
        "tmpfs",
        &root.join("run"),
        "tmpfs",
        nosuid_nodev,
        Some("mode=0755"),
    )?;
    for dir in ["run/lock", "run/user"] {
        fs::create_dir_all(root.join(dir)).step(|| format!("create /{dir}"))?;
    }
    fs::set_permissions(root.join("run/lock"), fs::Permissions::from_mode(0o1777))
        .step(|| "set mode of /run/lock".into())?;
    mount_fs(
        "tmpfs",
        &root.join("tmp"),
        "tmpfs",
        nosuid_nodev,
        Some("mode=1777"),
    )?;

    sethostname(&config.name).step(|| "set the host name".into())?;
    // Copies of the VM's share mounts, taken while they are still in
    // reach, attached after pivot_root so that each guest path resolves
    // inside the distro (a symlink there cannot point outside it).
    let shares = config
        .shares
        .iter()
        .map(|share| Ok((share, clone_mount(&share.source)?)))
        .collect::<Result<Vec<_>, SetupError>>()?;
    enter_root(root)?;
    for (share, tree) in shares {
        attach_share(share, tree)?;
    }
    if config.systemd && !Path::new("/sbin/init").is_file() {
        // Settings stored before they were checked: say so instead of a
        // distro that dies right after its start.
        return Err(SetupError {
            step: format!(
                "run its systemd: /sbin/init is missing (`distroctl configure {} --systemd false`)",
                config.name
            ),
            source: std::io::ErrorKind::NotFound.into(),
        });
    }
    write_generated_files(config)
}

/// A detached copy of the mount at `source` (`open_tree` with
/// `OPEN_TREE_CLONE`), to be attached elsewhere with `move_mount`.
fn clone_mount(source: &Path) -> Result<std::os::fd::OwnedFd, SetupError> {
    use std::os::fd::FromRawFd;
    use std::os::unix::ffi::OsStrExt;
    let path = CString::new(source.as_os_str().as_bytes()).step(|| "name a share".into())?;
    // SAFETY: open_tree reads the NUL-terminated path; the returned
    // descriptor is new and owned by us.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_open_tree,
            libc::AT_FDCWD,
            path.as_ptr(),
            OPEN_TREE_CLONE | libc::O_CLOEXEC as libc::c_uint,
        )
    };
    if fd < 0 {
        return Err(SetupError {
            step: format!("take a copy of the share mount {}", source.display()),
            source: std::io::Error::last_os_error(),
        });
    }
    // SAFETY: a fresh descriptor from open_tree, owned by nobody else.
    Ok(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd as i32) })
}

/// `open_tree` flag: a detached copy of the mount instead of a path.
const OPEN_TREE_CLONE: libc::c_uint = 1;
/// `move_mount` flag: the source is the descriptor itself.
const MOVE_MOUNT_F_EMPTY_PATH: libc::c_uint = 4;

/// Attaches the share mount `tree` at its guest path inside the distro
/// (called after `pivot_root`). The path is created when missing; a share
/// is left out, with a note to the agent, where it would hide the
/// distro's own files (a non-empty directory) or where the path is not a
/// directory.
fn attach_share(share: &ShareMount, tree: std::os::fd::OwnedFd) -> Result<(), SetupError> {
    use std::os::fd::AsRawFd;
    use std::os::unix::ffi::OsStrExt;
    let target = Path::new(&share.guest);
    let note = |why: &str| {
        println!(
            "{NOTE_PREFIX}host share not mounted at {}: {why}",
            share.guest
        );
        Ok(())
    };
    match fs::metadata(target) {
        Ok(meta) if !meta.is_dir() => return note("it is not a directory in the distro"),
        Ok(_) => {
            let empty = fs::read_dir(target)
                .map(|mut entries| entries.next().is_none())
                .unwrap_or(false);
            if !empty {
                return note("the distro has its own files there (move them, or give the share another guest path)");
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if let Err(e) = fs::create_dir_all(target) {
                return note(&format!("cannot create it: {e}"));
            }
        }
        Err(e) => return note(&e.to_string()),
    }
    let path = CString::new(target.as_os_str().as_bytes()).step(|| "name a share".into())?;
    let empty = CString::default();
    // SAFETY: move_mount reads two NUL-terminated strings and uses the
    // open_tree descriptor, all alive for the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            tree.as_raw_fd(),
            empty.as_ptr(),
            libc::AT_FDCWD,
            path.as_ptr(),
            MOVE_MOUNT_F_EMPTY_PATH,
        )
    };
    if rc != 0 {
        return note(&format!(
            "cannot mount it: {}",
            std::io::Error::last_os_error()
        ));
    }
    Ok(())
}

/// Makes sure `root/name` is a directory, not a symlink: creates it when
/// missing, refuses anything else.
fn require_plain_dir(root: &Path, name: &str) -> Result<(), SetupError> {
    let path = root.join(name);
    match path.symlink_metadata() {
        Ok(meta) if meta.file_type().is_dir() => Ok(()),
        Ok(_) => Err(SetupError {
            step: format!("use /{name}: it is not a directory (a symlink or a file)"),
            source: std::io::ErrorKind::InvalidInput.into(),
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            fs::create_dir(&path).step(|| format!("create /{name}"))
        }
        Err(e) => Err(SetupError {
            step: format!("inspect /{name}"),
            source: e,
        }),
    }
}

fn setup_dev(dev: &Path) -> Result<(), SetupError> {
    mount_fs(
        "tmpfs",
        dev,
        "tmpfs",
        MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        Some("mode=0755"),
    )?;
    let nodes = [
        ("null", 1, 3),
        ("zero", 1, 5),
        ("full", 1, 7),
        ("random", 1, 8),
        ("urandom", 1, 9),
        ("tty", 5, 0),
    ];
    for (name, major, minor) in nodes {
        let path = dev.join(name);
        mknod(
            &path,
            SFlag::S_IFCHR,
            Mode::from_bits_truncate(0o666),
            makedev(major, minor),
        )
        .step(|| format!("create /dev/{name}"))?;
        // mknod applies the umask; the nodes must be world-usable.
        fs::set_permissions(&path, fs::Permissions::from_mode(0o666))
            .step(|| format!("set mode of /dev/{name}"))?;
    }
    mount_fs(
        "devpts",
        &dev.join("pts"),
        "devpts",
        MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        Some("newinstance,ptmxmode=0666,mode=0620,gid=5"),
    )?;
    mount_fs(
        "tmpfs",
        &dev.join("shm"),
        "tmpfs",
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some("mode=1777"),
    )?;
    let links = [
        ("ptmx", "pts/ptmx"),
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
    ];
    for (name, target) in links {
        symlink(target, dev.join(name)).step(|| format!("create /dev/{name}"))?;
    }
    Ok(())
}

/// Binds the console the agent made (a PTY slave it records) over
/// `/dev/console`, as systemd-nspawn does.
fn attach_console(console: &Path, target: &Path) -> Result<(), SetupError> {
    use std::os::unix::fs::OpenOptionsExt;
    fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(target)
        .step(|| "create /dev/console".into())?;
    mount(
        Some(console),
        target,
        None::<&str>,
        MsFlags::MS_BIND,
        None::<&str>,
    )
    .step(|| format!("bind the console {} over /dev/console", console.display()))
}

/// Makes `root` the root directory: `pivot_root(".", ".")` then detach the
/// old root. When the agent's own root is the initramfs (rootfs cannot be
/// pivoted away from), it moves the mount over `/` and chroots instead.
fn enter_root(root: &Path) -> Result<(), SetupError> {
    chdir(root).step(|| format!("enter {}", root.display()))?;
    match pivot_root(".", ".") {
        Ok(()) => {
            mount(
                None::<&str>,
                ".",
                None::<&str>,
                MsFlags::MS_SLAVE | MsFlags::MS_REC,
                None::<&str>,
            )
            .step(|| "make the old root a slave".into())?;
            umount2(".", MntFlags::MNT_DETACH).step(|| "detach the old root".into())?;
        }
        Err(nix::Error::EINVAL) => {
            mount(Some("."), "/", None::<&str>, MsFlags::MS_MOVE, None::<&str>)
                .step(|| "move the distro root over /".into())?;
            nix::unistd::chroot(".").step(|| "chroot into the distro root".into())?;
        }
        Err(e) => {
            return Err(SetupError {
                step: "pivot_root into the distro root".into(),
                source: e.into(),
            })
        }
    }
    chdir("/").step(|| "enter /".into())
}

const GENERATED_HEADER: &str =
    "# Generated by distroctl when the distro starts; changes are overwritten.\n";

/// Writes `/etc/resolv.conf` and `/etc/hosts` inside the distro (after
/// `pivot_root`, so a symlink there cannot point outside the distro).
fn write_generated_files(config: &DistroInitConfig) -> Result<(), SetupError> {
    if !Path::new("/etc").is_dir() {
        return Ok(());
    }
    let hosts = format!(
        "{GENERATED_HEADER}127.0.0.1\tlocalhost\n127.0.1.1\t{name}\n::1\tlocalhost ip6-localhost ip6-loopback\nff02::1\tip6-allnodes\nff02::2\tip6-allrouters\n",
        name = config.name
    );
    let resolv = format!("{GENERATED_HEADER}{}", config.resolv_conf);
    for (path, contents) in [("/etc/resolv.conf", resolv), ("/etc/hosts", hosts)] {
        replace_file(Path::new(path), contents.as_bytes()).step(|| format!("write {path}"))?;
    }
    Ok(())
}

/// Replaces `path` with a new regular file holding `contents`: written to
/// a fresh file beside it (never through a symlink, FIFO or device the
/// distro may have put there) and renamed over it.
fn replace_file(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let tmp = path.with_file_name(format!(".{name}.distroctl-new"));
    match fs::remove_file(&tmp) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o644)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&tmp)?;
    file.write_all(contents)?;
    file.set_permissions(fs::Permissions::from_mode(0o644))?;
    drop(file);
    fs::rename(&tmp, path)
}

/// Points stdin, stdout and stderr at `/dev/null` so the agent's pipes close.
fn detach_stdio() {
    if let Ok(null) = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")
    {
        use std::os::fd::AsRawFd;
        for fd in 0..3 {
            // SAFETY: dup2 onto the standard descriptors; `null` is a valid
            // open descriptor for the duration of the call.
            unsafe { libc::dup2(null.as_raw_fd(), fd) };
        }
    }
}

fn exec_systemd() -> ! {
    let init = CString::new("/sbin/init").expect("no NUL");
    let env = [CString::new("container=distroctl").expect("no NUL")];
    let err = nix::unistd::execve(&init, std::slice::from_ref(&init), &env).unwrap_err();
    // Without its init the distro cannot run; ending PID 1 tears it down and
    // the agent reports the distro stopped.
    let _ = writeln!(std::io::stderr(), "could not start /sbin/init: {err}");
    std::process::exit(1)
}

/// PID 1 loop: reap every child; on SIGTERM, SIGINT or SIGHUP end, which makes
/// the kernel kill every process of the distro.
fn reap_forever() -> ! {
    let _ = nix::sys::prctl::set_name(&CString::new(REAPER_COMM).expect("no NUL"));
    let mut set = SigSet::empty();
    for s in [
        Signal::SIGCHLD,
        Signal::SIGTERM,
        Signal::SIGINT,
        Signal::SIGHUP,
    ] {
        set.add(s);
    }
    let _ = set.thread_block();
    loop {
        match set.wait() {
            Ok(Signal::SIGCHLD) => loop {
                match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
                    Ok(WaitStatus::StillAlive) | Err(_) => break,
                    Ok(_) => continue,
                }
            },
            Ok(_) => std::process::exit(0),
            Err(_) => continue,
        }
    }
}
