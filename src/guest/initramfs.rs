//! The utility VM's initramfs: `distroctl-init` as `/init`, the agent, the
//! mount points init expects, a console node, and the kernel modules the VM
//! needs with their load order — as one uncompressed cpio archive (TCG
//! would spend longer decompressing than reading it).
//!
//! Archives are cached by content: the file name carries a SHA-256 over
//! every input (both binaries, each module, the order, the layout version),
//! so an unchanged setup reuses the archive and any change makes a new one.

use std::fs;
use std::io::{self, BufWriter};
use std::path::{Path, PathBuf};
use std::process;

use sha2::{Digest, Sha256};
use thiserror::Error;

use super::cpio::CpioWriter;
use super::kernel::Kernel;
use super::modules::{self, KernelModule, ModuleError};

/// Bumped whenever the archive's layout changes, so old cache entries are
/// not mistaken for the new layout.
const LAYOUT_VERSION: &[u8] = b"distroctl-initramfs-1";

/// Where init finds the module load order (init's `ORDER_FILE`).
pub const ORDER_FILE: &str = "lib/modules/distroctl.order";

/// Directory of the modules inside the archive.
const MODULES_DIR: &str = "lib/modules";

/// Directories created empty, with their permissions: mount points and the
/// tmpfs root init moves onto.
const DIRECTORIES: [(&str, u32); 10] = [
    ("bin", 0o755),
    ("data", 0o755),
    ("dev", 0o755),
    ("lib", 0o755),
    (MODULES_DIR, 0o755),
    ("newroot", 0o755),
    ("proc", 0o555),
    ("run", 0o755),
    ("sys", 0o555),
    ("tmp", 0o1777),
];

/// `/dev/console` (5, 1): the kernel opens it for init's stdio before
/// devtmpfs is mounted, so it must exist in the archive itself.
const CONSOLE: (&str, u32, u32) = ("dev/console", 5, 1);

/// Failure to build the initramfs.
#[derive(Debug, Error)]
pub enum InitramfsError {
    /// An input binary could not be read.
    #[error("could not read {}", path.display())]
    ReadBinary {
        /// The binary.
        path: PathBuf,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// The kernel modules the VM needs could not be collected.
    #[error("could not collect the kernel modules for kernel {version}")]
    Modules {
        /// The kernel release.
        version: String,
        /// Cause.
        #[source]
        source: ModuleError,
    },
    /// The archive could not be written.
    #[error("could not write the initramfs {}", path.display())]
    Write {
        /// The archive (or its directory).
        path: PathBuf,
        /// Cause.
        #[source]
        source: io::Error,
    },
}

/// One archive member.
enum Member {
    Directory {
        permissions: u32,
    },
    File {
        permissions: u32,
        data: Vec<u8>,
    },
    CharDevice {
        permissions: u32,
        major: u32,
        minor: u32,
    },
}

/// Builds (or reuses) the initramfs for `kernel` in `out_dir`; returns its
/// path.
pub fn build(
    init_bin: &Path,
    agent_bin: &Path,
    kernel: &Kernel,
    out_dir: &Path,
) -> Result<PathBuf, InitramfsError> {
    let members = collect(init_bin, agent_bin, kernel)?;
    let digest = content_digest(&members);
    let path = out_dir.join(format!("initramfs-{}.cpio", &digest[..32]));
    if path.is_file() {
        // Mark it as in use, so another distroctl build sharing this cache
        // does not drop it (see `remove_other_archives`).
        if let Ok(file) = fs::File::options().append(true).open(&path) {
            let _ = file.set_modified(std::time::SystemTime::now());
        }
        return Ok(path);
    }
    write_archive(&members, &path)?;
    remove_other_archives(out_dir, &path);
    Ok(path)
}

fn collect(
    init_bin: &Path,
    agent_bin: &Path,
    kernel: &Kernel,
) -> Result<Vec<(String, Member)>, InitramfsError> {
    let read = |path: &Path| {
        fs::read(path).map_err(|source| InitramfsError::ReadBinary {
            path: path.to_path_buf(),
            source,
        })
    };
    let modules = match &kernel.modules_dir {
        Some(dir) => modules::load_order(dir, modules::UTILITY_VM_MODULES).map_err(|source| {
            InitramfsError::Modules {
                version: kernel.version.clone(),
                source,
            }
        })?,
        // A kernel configured without modules must have its drivers built in.
        None => Vec::new(),
    };

    let mut directories = DIRECTORIES.to_vec();
    // Parents before children, as the kernel creates them in archive order.
    directories.sort_by_key(|(name, _)| *name);
    let mut members: Vec<(String, Member)> = directories
        .into_iter()
        .map(|(name, permissions)| (name.to_owned(), Member::Directory { permissions }))
        .collect();
    let (console, major, minor) = CONSOLE;
    members.push((
        console.to_owned(),
        Member::CharDevice {
            permissions: 0o600,
            major,
            minor,
        },
    ));
    members.push((
        "init".to_owned(),
        Member::File {
            permissions: 0o755,
            data: read(init_bin)?,
        },
    ));
    members.push((
        "bin/distroctl-agent".to_owned(),
        Member::File {
            permissions: 0o755,
            data: read(agent_bin)?,
        },
    ));
    members.push((
        ORDER_FILE.to_owned(),
        Member::File {
            permissions: 0o644,
            data: order_file(&modules).into_bytes(),
        },
    ));
    for module in modules {
        members.push((
            module_member(&module.name),
            Member::File {
                permissions: 0o644,
                data: module.image,
            },
        ));
    }
    Ok(members)
}

/// Archive path of a module: flat, by its canonical name.
fn module_member(name: &str) -> String {
    format!("{MODULES_DIR}/{name}.ko")
}

/// The order file init reads: absolute paths, dependencies first.
fn order_file(modules: &[KernelModule]) -> String {
    modules
        .iter()
        .map(|m| format!("/{}\n", module_member(&m.name)))
        .collect()
}

/// SHA-256 over the layout version and every member, hex-encoded. Each
/// field is length-prefixed so no two different archives hash alike.
fn content_digest(members: &[(String, Member)]) -> String {
    let mut hasher = Sha256::new();
    hasher.update(LAYOUT_VERSION);
    let mut field = |bytes: &[u8]| {
        hasher.update((bytes.len() as u64).to_le_bytes());
        hasher.update(bytes);
    };
    for (name, member) in members {
        field(name.as_bytes());
        match member {
            Member::Directory { permissions } => {
                field(b"dir");
                field(&permissions.to_le_bytes());
            }
            Member::File { permissions, data } => {
                field(b"file");
                field(&permissions.to_le_bytes());
                field(data);
            }
            Member::CharDevice {
                permissions,
                major,
                minor,
            } => {
                field(b"chr");
                field(&permissions.to_le_bytes());
                field(&major.to_le_bytes());
                field(&minor.to_le_bytes());
            }
        }
    }
    hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Writes to a temporary name and renames, so a reader never sees a
/// half-written archive under the final name.
fn write_archive(members: &[(String, Member)], path: &Path) -> Result<(), InitramfsError> {
    let write_error = |source| InitramfsError::Write {
        path: path.to_path_buf(),
        source,
    };
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).map_err(write_error)?;
    }
    let temporary = path.with_extension(format!("cpio.tmp-{}", process::id()));
    let result = (|| {
        let file = fs::File::create(&temporary)?;
        let mut archive = CpioWriter::new(BufWriter::new(file));
        for (name, member) in members {
            match member {
                Member::Directory { permissions } => archive.directory(name, *permissions)?,
                Member::File { permissions, data } => archive.file(name, *permissions, data)?,
                Member::CharDevice {
                    permissions,
                    major,
                    minor,
                } => archive.char_device(name, *permissions, *major, *minor)?,
            }
        }
        let file = archive.finish()?.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()?;
        drop(file);
        fs::rename(&temporary, path)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&temporary);
    }
    result.map_err(write_error)
}

/// How long an archive built from other inputs is kept after its last use:
/// another distroctl build sharing the cache (a second checkout, an
/// upgrade) may be about to boot from it.
const UNUSED_GRACE: std::time::Duration = std::time::Duration::from_secs(3600);

/// Drops archives built from other inputs and unused for [`UNUSED_GRACE`];
/// a VM that booted from one has already read it into memory.
fn remove_other_archives(out_dir: &Path, keep: &Path) {
    let Ok(entries) = fs::read_dir(out_dir) else {
        return;
    };
    for entry in entries.filter_map(Result::ok) {
        let path = entry.path();
        let name = entry.file_name();
        let name = name.to_string_lossy();
        let unused = entry
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age >= UNUSED_GRACE);
        if path != keep && name.starts_with("initramfs-") && name.ends_with(".cpio") && unused {
            let _ = fs::remove_file(path);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::MetadataExt;

    use super::*;
    use crate::guest::cpio::reader;
    use crate::guest::cpio::{S_IFCHR, S_IFDIR, S_IFREG};
    use crate::guest::modinfo::synthetic_module;

    struct Inputs {
        dir: tempfile::TempDir,
        kernel: Kernel,
    }

    impl Inputs {
        fn init(&self) -> PathBuf {
            self.dir.path().join("distroctl-init")
        }
        fn agent(&self) -> PathBuf {
            self.dir.path().join("distroctl-agent")
        }
        fn out(&self) -> PathBuf {
            self.dir.path().join("out")
        }
        fn module(&self, name: &str) -> PathBuf {
            self.kernel
                .modules_dir
                .as_ref()
                .unwrap()
                .join(format!("kernel/{name}.ko"))
        }
        fn build(&self) -> PathBuf {
            build(&self.init(), &self.agent(), &self.kernel, &self.out()).unwrap()
        }
    }

    /// Binaries and a module tree shaped like Debian's cloud kernel: the
    /// VM's modules, their dependencies, and the built-in ones listed.
    fn inputs() -> Inputs {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("distroctl-init"), b"init-binary").unwrap();
        fs::write(dir.path().join("distroctl-agent"), b"agent-binary").unwrap();
        let modules_dir = dir.path().join("lib/modules/6.1.0-test");
        fs::create_dir_all(modules_dir.join("kernel")).unwrap();
        let tree: &[(&str, &[&str])] = &[
            ("virtio", &[]),
            ("virtio_ring", &["virtio"]),
            ("virtio_mmio", &["virtio", "virtio_ring"]),
            ("virtio_blk", &["virtio", "virtio_ring"]),
            ("failover", &[]),
            ("net_failover", &["failover"]),
            ("virtio_net", &["virtio_ring", "virtio", "net_failover"]),
            ("virtio_balloon", &["virtio", "virtio_ring"]),
            ("vsock", &[]),
            ("vmw_vsock_virtio_transport_common", &["vsock"]),
            (
                "vmw_vsock_virtio_transport",
                &[
                    "vmw_vsock_virtio_transport_common",
                    "virtio",
                    "virtio_ring",
                    "vsock",
                ],
            ),
            ("overlay", &[]),
            ("inet_diag", &[]),
            ("tcp_diag", &["inet_diag"]),
            ("veth", &[]),
            ("nf_tables", &[]),
            ("nf_conntrack", &[]),
            ("nf_nat", &["nf_conntrack"]),
            ("nft_chain_nat", &["nf_tables", "nf_nat"]),
            ("nft_masq", &["nf_tables", "nf_nat"]),
            ("fuse", &[]),
            ("virtiofs", &["fuse", "virtio", "virtio_ring"]),
        ];
        for (name, depends) in tree {
            fs::write(
                modules_dir.join(format!("kernel/{name}.ko")),
                synthetic_module(name, depends),
            )
            .unwrap();
        }
        fs::write(
            modules_dir.join("modules.builtin"),
            "kernel/fs/ext4/ext4.ko\nkernel/fs/jbd2/jbd2.ko\nkernel/fs/mbcache.ko\nkernel/lib/crc16.ko\nkernel/crypto/crc32c_generic.ko\n",
        )
        .unwrap();
        let kernel = Kernel {
            image: dir.path().join("vmlinuz"),
            modules_dir: Some(modules_dir),
            version: "6.1.0-test".to_owned(),
        };
        Inputs { dir, kernel }
    }

    #[test]
    fn archive_holds_init_agent_mount_points_and_console() {
        let inputs = inputs();

        let path = inputs.build();

        let entries = reader::parse(&fs::read(path).unwrap());
        let find = |name: &str| {
            entries
                .iter()
                .find(|e| e.name == name)
                .unwrap_or_else(|| panic!("{name} missing"))
        };
        assert_eq!(find("init").mode, S_IFREG | 0o755);
        assert_eq!(find("init").data, b"init-binary");
        assert_eq!(find("bin/distroctl-agent").data, b"agent-binary");
        assert_eq!(find("dev/console").mode, S_IFCHR | 0o600);
        assert_eq!(find("dev/console").rdev, (5, 1));
        for dir in [
            "dev",
            "proc",
            "sys",
            "run",
            "data",
            "tmp",
            "newroot",
            "lib/modules",
        ] {
            assert_eq!(
                find(dir).mode & S_IFDIR,
                S_IFDIR,
                "{dir} is not a directory"
            );
        }
        assert_eq!(find("tmp").mode & 0o7777, 0o1777);
    }

    #[test]
    fn parents_precede_their_children() {
        let inputs = inputs();

        let entries = reader::parse(&fs::read(inputs.build()).unwrap());

        for (i, entry) in entries.iter().enumerate() {
            if let Some((parent, _)) = entry.name.rsplit_once('/') {
                let parent_at = entries.iter().position(|e| e.name == parent);
                assert!(
                    parent_at.is_some_and(|p| p < i),
                    "{} before its parent",
                    entry.name
                );
            }
        }
    }

    #[test]
    fn modules_and_order_file_follow_dependencies() {
        let inputs = inputs();

        let entries = reader::parse(&fs::read(inputs.build()).unwrap());

        let order = entries.iter().find(|e| e.name == ORDER_FILE).unwrap();
        let order = String::from_utf8(order.data.clone()).unwrap();
        let lines: Vec<_> = order.lines().collect();
        let at = |name: &str| {
            lines
                .iter()
                .position(|l| *l == format!("/lib/modules/{name}.ko"))
                .unwrap_or_else(|| panic!("{name} not in order:\n{order}"))
        };
        assert!(at("virtio") < at("virtio_ring"));
        assert!(at("virtio_ring") < at("virtio_mmio"));
        assert!(at("failover") < at("net_failover"));
        assert!(at("net_failover") < at("virtio_net"));
        assert!(at("vmw_vsock_virtio_transport_common") < at("vmw_vsock_virtio_transport"));
        assert!(at("inet_diag") < at("tcp_diag"));
        assert!(at("nf_conntrack") < at("nf_nat"));
        assert!(at("nf_nat") < at("nft_masq"));
        assert!(at("virtio_ring") < at("virtio_balloon"));
        assert!(at("fuse") < at("virtiofs"));
        assert_eq!(
            lines.len(),
            22,
            "built-in modules must not be listed:\n{order}"
        );
        for line in &lines {
            let member = entries
                .iter()
                .find(|e| format!("/{}", e.name) == *line)
                .unwrap();
            assert_eq!(&member.data[..4], b"\x7fELF");
        }
    }

    #[test]
    fn unchanged_inputs_reuse_the_archive_without_rewriting() {
        let inputs = inputs();
        let first = inputs.build();
        let before = fs::metadata(&first).unwrap();

        let second = inputs.build();

        let after = fs::metadata(&second).unwrap();
        assert_eq!(first, second);
        assert_eq!((before.ino(), before.size()), (after.ino(), after.size()));
    }

    #[test]
    fn recently_used_archive_of_other_inputs_is_kept() {
        let inputs = inputs();
        let first = inputs.build();
        fs::write(inputs.agent(), b"agent-binary-v2").unwrap();

        let second = inputs.build();

        assert_ne!(first, second);
        assert!(first.exists(), "another build may be booting from it");
    }

    #[test]
    fn changed_binary_gives_a_new_archive_and_drops_the_old() {
        let inputs = inputs();
        let first = inputs.build();
        let long_ago = std::time::SystemTime::now() - 2 * UNUSED_GRACE;
        fs::File::options()
            .append(true)
            .open(&first)
            .unwrap()
            .set_modified(long_ago)
            .unwrap();
        fs::write(inputs.agent(), b"agent-binary-v2").unwrap();

        let second = inputs.build();

        assert_ne!(first, second);
        assert!(!first.exists(), "stale archive kept");
        let entries = reader::parse(&fs::read(&second).unwrap());
        let agent = entries
            .iter()
            .find(|e| e.name == "bin/distroctl-agent")
            .unwrap();
        assert_eq!(agent.data, b"agent-binary-v2");
    }

    #[test]
    fn changed_module_gives_a_new_archive() {
        let inputs = inputs();
        let first = inputs.build();
        fs::write(
            inputs.module("overlay"),
            synthetic_module("overlay", &["vsock"]),
        )
        .unwrap();

        let second = inputs.build();

        assert_ne!(first, second);
    }

    #[test]
    fn kernel_without_modules_gets_an_empty_order() {
        let mut inputs = inputs();
        inputs.kernel.modules_dir = None;

        let entries = reader::parse(&fs::read(inputs.build()).unwrap());

        let order = entries.iter().find(|e| e.name == ORDER_FILE).unwrap();
        assert!(order.data.is_empty());
        assert!(!entries.iter().any(|e| e.name.ends_with(".ko")));
    }

    #[test]
    fn missing_module_names_module_and_kernel() {
        let inputs = inputs();
        fs::remove_file(inputs.module("net_failover")).unwrap();

        let err = build(
            &inputs.init(),
            &inputs.agent(),
            &inputs.kernel,
            &inputs.out(),
        )
        .unwrap_err();

        assert!(matches!(err, InitramfsError::Modules { .. }));
        assert!(err.to_string().contains("6.1.0-test"));
    }

    #[test]
    fn missing_agent_binary_is_named() {
        let inputs = inputs();
        fs::remove_file(inputs.agent()).unwrap();

        let err = build(
            &inputs.init(),
            &inputs.agent(),
            &inputs.kernel,
            &inputs.out(),
        )
        .unwrap_err();

        assert!(err.to_string().contains("distroctl-agent"), "{err}");
    }

    /// Manual check: fetches Debian's cloud kernel into the user's cache
    /// and builds an initramfs from real binaries. Needs apt and network:
    /// `DISTROCTL_INIT_BIN=… DISTROCTL_AGENT_BIN=… DISTROCTL_GUEST_OUT=dir
    /// cargo test -p distroctl guest::initramfs -- --ignored --nocapture`
    #[test]
    #[ignore = "fetches a kernel with apt; run by hand with DISTROCTL_INIT_BIN, DISTROCTL_AGENT_BIN, DISTROCTL_GUEST_OUT"]
    fn builds_boot_files_from_debian_cloud_kernel() {
        let var = |name: &str| {
            std::env::var_os(name)
                .map(PathBuf::from)
                .unwrap_or_else(|| panic!("set {name} to run this check"))
        };
        let (init, agent, out) = (
            var("DISTROCTL_INIT_BIN"),
            var("DISTROCTL_AGENT_BIN"),
            var("DISTROCTL_GUEST_OUT"),
        );
        let cache =
            crate::guest::kernel::default_cache_dir().expect("HOME or XDG_CACHE_HOME must be set");

        let kernel = crate::guest::kernel::resolve(&Default::default(), &cache).unwrap();
        let initramfs = build(&init, &agent, &kernel, &out).unwrap();

        let entries = reader::parse(&fs::read(&initramfs).unwrap());
        let order = entries.iter().find(|e| e.name == ORDER_FILE).unwrap();
        println!("kernel: {}", kernel.image.display());
        println!("initramfs: {}", initramfs.display());
        println!("module order:\n{}", String::from_utf8_lossy(&order.data));
        assert!(entries
            .iter()
            .any(|e| e.name == "lib/modules/virtio_mmio.ko"));
    }
}
