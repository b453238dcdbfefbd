//! Which kernel modules the utility VM needs, and in what order to load them.
//!
//! Starting from the drivers the VM uses, each module's `.modinfo`
//! `depends=` is followed through the kernel's `lib/modules/<version>` tree;
//! modules built into the kernel (listed in `modules.builtin`) are skipped.
//! The result is a load order with dependencies first, computed on the host
//! without `depmod` or `modinfo` so any tree works, including a configured
//! kernel's.

use std::collections::{BTreeMap, HashSet};
use std::fs::{self, File};
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use thiserror::Error;

use super::modinfo::{self, ModinfoError};

/// Modules the utility VM needs, by name: the virtio-mmio transport (QEMU
/// `microvm` and the own VMM put every device there), the data disk, the
/// network, vsock to the host, the balloon that gives free memory back to
/// the host (free page reporting), the data disk's filesystem (with its
/// checksum helpers), overlayfs for distros, the socket diagnostics the
/// agent reads listening ports with, veth plus nftables NAT for distros
/// with a network of their own, and virtiofs for host shares (the
/// initramfs has no `modprobe` for the kernel to load them on demand).
/// Most are built into some kernels; those are skipped.
pub const UTILITY_VM_MODULES: &[&str] = &[
    "virtio_mmio",
    "virtio_blk",
    "virtio_net",
    "virtio_balloon",
    "vsock",
    "vmw_vsock_virtio_transport_common",
    "vmw_vsock_virtio_transport",
    "crc16",
    "crc32c_generic",
    "mbcache",
    "jbd2",
    "ext4",
    "overlay",
    "inet_diag",
    "tcp_diag",
    "veth",
    "nft_chain_nat",
    "nft_masq",
    "fuse",
    "virtiofs",
];

/// A module file's name endings and how its contents are stored.
const MODULE_SUFFIXES: [(&str, Compression); 4] = [
    (".ko", Compression::None),
    (".ko.xz", Compression::Xz),
    (".ko.zst", Compression::Zstd),
    (".ko.gz", Compression::Gzip),
];

/// Failure to work out the module load order.
#[derive(Debug, Error)]
pub enum ModuleError {
    /// The modules tree could not be listed.
    #[error("could not read the modules tree at {}", path.display())]
    ReadTree {
        /// The directory.
        path: PathBuf,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// A module file could not be read or decompressed.
    #[error("could not read module {}", path.display())]
    ReadModule {
        /// The module file.
        path: PathBuf,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// A module's metadata could not be parsed.
    #[error("could not read the metadata of module {}", path.display())]
    Modinfo {
        /// The module file.
        path: PathBuf,
        /// Cause.
        #[source]
        source: ModinfoError,
    },
    /// A needed module is neither in the tree nor built in.
    #[error("kernel module {module} (needed by {needed_by}) is neither in {} nor built into the kernel", tree.display())]
    Missing {
        /// The missing module.
        module: String,
        /// Who needs it: another module, or "the utility VM".
        needed_by: String,
        /// The tree searched.
        tree: PathBuf,
    },
    /// Modules depend on each other in a circle.
    #[error("kernel modules depend on each other in a cycle: {}", cycle.join(" -> "))]
    Cycle {
        /// The modules in the cycle, the first repeated at the end.
        cycle: Vec<String>,
    },
}

/// One module to load, decompressed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelModule {
    /// Its name, with `-` normalised to `_` as the kernel does.
    pub name: String,
    /// The file it came from.
    pub source: PathBuf,
    /// The module's ELF image (what `finit_module` expects).
    pub image: Vec<u8>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Compression {
    None,
    Xz,
    Zstd,
    Gzip,
}

/// The modules `wanted` needs from the tree at `modules_dir`, dependencies
/// first; each appears once. Built-in modules are left out.
pub fn load_order(modules_dir: &Path, wanted: &[&str]) -> Result<Vec<KernelModule>, ModuleError> {
    let builtin = read_builtin(modules_dir)?;
    let files = index_tree(modules_dir)?;
    let mut resolver = Resolver {
        tree: modules_dir,
        builtin: &builtin,
        files: &files,
        done: HashSet::new(),
        path: Vec::new(),
        order: Vec::new(),
    };
    for name in wanted {
        resolver.visit(&normalize(name), "the utility VM")?;
    }
    Ok(resolver.order)
}

struct Resolver<'a> {
    tree: &'a Path,
    builtin: &'a HashSet<String>,
    files: &'a BTreeMap<String, PathBuf>,
    done: HashSet<String>,
    /// Modules being visited, outermost first: a name seen again here
    /// closes a cycle.
    path: Vec<String>,
    order: Vec<KernelModule>,
}

impl Resolver<'_> {
    fn visit(&mut self, name: &str, needed_by: &str) -> Result<(), ModuleError> {
        if self.done.contains(name) || self.builtin.contains(name) {
            return Ok(());
        }
        if let Some(start) = self.path.iter().position(|n| n == name) {
            let mut cycle = self.path[start..].to_vec();
            cycle.push(name.to_owned());
            return Err(ModuleError::Cycle { cycle });
        }
        let source = self.files.get(name).ok_or_else(|| ModuleError::Missing {
            module: name.to_owned(),
            needed_by: needed_by.to_owned(),
            tree: self.tree.to_path_buf(),
        })?;
        let image = read_module(source)?;
        let info = modinfo::parse(&image).map_err(|e| ModuleError::Modinfo {
            path: source.clone(),
            source: e,
        })?;

        self.path.push(name.to_owned());
        for dependency in &info.depends {
            self.visit(&normalize(dependency), name)?;
        }
        self.path.pop();

        self.done.insert(name.to_owned());
        self.order.push(KernelModule {
            name: name.to_owned(),
            source: source.clone(),
            image,
        });
        Ok(())
    }
}

/// Reads a module file, decompressing `.ko.xz`, `.ko.zst` and `.ko.gz`.
pub fn read_module(path: &Path) -> Result<Vec<u8>, ModuleError> {
    let wrap = |source| ModuleError::ReadModule {
        path: path.to_path_buf(),
        source,
    };
    let compression = path
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(split_module_name)
        .map_or(Compression::None, |(_, c)| c);
    let file = File::open(path).map_err(wrap)?;
    let mut image = Vec::new();
    match compression {
        Compression::None => io::BufReader::new(file).read_to_end(&mut image),
        Compression::Xz => xz2::read::XzDecoder::new(file).read_to_end(&mut image),
        Compression::Zstd => {
            zstd::stream::read::Decoder::new(file).and_then(|mut d| d.read_to_end(&mut image))
        }
        Compression::Gzip => flate2::read::GzDecoder::new(file).read_to_end(&mut image),
    }
    .map_err(wrap)?;
    Ok(image)
}

/// `modules.builtin`: one path per built-in module (`kernel/fs/ext4/ext4.ko`).
/// A tree without it (a hand-made one) simply has no built-ins.
fn read_builtin(modules_dir: &Path) -> Result<HashSet<String>, ModuleError> {
    let path = modules_dir.join("modules.builtin");
    match fs::read_to_string(&path) {
        Ok(text) => Ok(parse_builtin(&text)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(HashSet::new()),
        Err(source) => Err(ModuleError::ReadTree { path, source }),
    }
}

fn parse_builtin(text: &str) -> HashSet<String> {
    text.lines()
        .filter_map(|line| line.trim().rsplit('/').next())
        .filter_map(split_module_name)
        .map(|(name, _)| normalize(name))
        .collect()
}

/// Every module file below `modules_dir` by normalised name. Symlinks are
/// not followed (`build` and `source` point into kernel sources). Where a
/// name occurs twice, `updates/` wins over the rest, as with depmod.
fn index_tree(modules_dir: &Path) -> Result<BTreeMap<String, PathBuf>, ModuleError> {
    let mut files = BTreeMap::new();
    let mut pending = vec![modules_dir.to_path_buf()];
    while let Some(dir) = pending.pop() {
        let wrap = |source| ModuleError::ReadTree {
            path: dir.clone(),
            source,
        };
        let mut entries = fs::read_dir(&dir)
            .map_err(wrap)?
            .collect::<Result<Vec<_>, _>>()
            .map_err(wrap)?;
        entries.sort_by_key(|e| e.file_name());
        for entry in entries {
            let kind = entry.file_type().map_err(wrap)?;
            let path = entry.path();
            if kind.is_dir() {
                pending.push(path);
                continue;
            }
            if !kind.is_file() {
                continue;
            }
            let file_name = entry.file_name();
            let Some((name, _)) = file_name.to_str().and_then(split_module_name) else {
                continue;
            };
            let name = normalize(name);
            let in_updates = path
                .strip_prefix(modules_dir)
                .is_ok_and(|p| p.starts_with("updates"));
            if in_updates || !files.contains_key(&name) {
                files.insert(name, path);
            }
        }
    }
    Ok(files)
}

/// `virtio_blk.ko.xz` → `("virtio_blk", Xz)`; not a module → `None`.
fn split_module_name(file_name: &str) -> Option<(&str, Compression)> {
    MODULE_SUFFIXES.iter().find_map(|(suffix, compression)| {
        file_name
            .strip_suffix(suffix)
            .filter(|stem| !stem.is_empty())
            .map(|stem| (stem, *compression))
    })
}

/// The kernel treats `-` and `_` in module names alike; `_` is canonical.
fn normalize(name: &str) -> String {
    name.replace('-', "_")
}

/// Loading order as module names, for logs and for tests.
pub fn names(order: &[KernelModule]) -> Vec<&str> {
    order.iter().map(|m| m.name.as_str()).collect()
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::io::Write;

    use super::*;
    use crate::guest::modinfo::synthetic_module;

    fn by_name(order: &[KernelModule]) -> HashMap<&str, &KernelModule> {
        order.iter().map(|m| (m.name.as_str(), m)).collect()
    }

    /// Writes `kernel/<name>.ko` files with the given dependencies.
    fn tree(modules: &[(&str, &[&str])]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let kernel = dir.path().join("kernel/drivers");
        fs::create_dir_all(&kernel).unwrap();
        for (name, depends) in modules {
            fs::write(
                kernel.join(format!("{name}.ko")),
                synthetic_module(name, depends),
            )
            .unwrap();
        }
        dir
    }

    #[test]
    fn dependencies_come_before_dependents() {
        let dir = tree(&[
            ("virtio", &[]),
            ("virtio_ring", &["virtio"]),
            ("virtio_mmio", &["virtio_ring", "virtio"]),
            ("virtio_blk", &["virtio_ring", "virtio"]),
        ]);

        let order = load_order(dir.path(), &["virtio_mmio", "virtio_blk"]).unwrap();

        assert_eq!(
            names(&order),
            ["virtio", "virtio_ring", "virtio_mmio", "virtio_blk"]
        );
    }

    #[test]
    fn shared_dependency_is_listed_once() {
        let dir = tree(&[
            ("vsock", &[]),
            ("common", &["vsock"]),
            ("transport", &["common", "vsock"]),
        ]);

        let order = load_order(dir.path(), &["transport", "vsock", "common"]).unwrap();

        assert_eq!(names(&order), ["vsock", "common", "transport"]);
    }

    #[test]
    fn builtin_modules_are_skipped() {
        let dir = tree(&[("overlay", &[]), ("ext4", &["jbd2"])]);
        fs::write(
            dir.path().join("modules.builtin"),
            "kernel/fs/jbd2/jbd2.ko\nkernel/fs/mbcache.ko\n",
        )
        .unwrap();

        let order = load_order(dir.path(), &["ext4", "mbcache", "overlay"]).unwrap();

        assert_eq!(names(&order), ["ext4", "overlay"]);
    }

    #[test]
    fn missing_dependency_names_module_and_dependent() {
        let dir = tree(&[("virtio_net", &["net_failover"])]);

        let err = load_order(dir.path(), &["virtio_net"]).unwrap_err();

        match &err {
            ModuleError::Missing {
                module, needed_by, ..
            } => {
                assert_eq!(module, "net_failover");
                assert_eq!(needed_by, "virtio_net");
            }
            other => panic!("expected Missing, got {other:?}"),
        }
        assert!(err.to_string().contains("net_failover"));
    }

    #[test]
    fn cycle_is_an_error_naming_its_modules() {
        let dir = tree(&[("a", &["b"]), ("b", &["c"]), ("c", &["a"])]);

        let err = load_order(dir.path(), &["a"]).unwrap_err();

        match &err {
            ModuleError::Cycle { cycle } => assert_eq!(cycle, &["a", "b", "c", "a"]),
            other => panic!("expected Cycle, got {other:?}"),
        }
        assert!(err.to_string().contains("a -> b -> c -> a"));
    }

    #[test]
    fn dashes_and_underscores_name_the_same_module() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(
            dir.path().join("crc32c-generic.ko"),
            synthetic_module("crc32c_generic", &[]),
        )
        .unwrap();
        fs::write(
            dir.path().join("user.ko"),
            synthetic_module("user", &["crc32c-generic"]),
        )
        .unwrap();

        let order = load_order(dir.path(), &["user"]).unwrap();

        assert_eq!(names(&order), ["crc32c_generic", "user"]);
    }

    #[test]
    fn compressed_modules_are_decompressed() {
        let dir = tempfile::tempdir().unwrap();
        let xz_image = synthetic_module("xzmod", &["zstmod"]);
        let zst_image = synthetic_module("zstmod", &["gzmod"]);
        let gz_image = synthetic_module("gzmod", &[]);
        let mut xz = xz2::write::XzEncoder::new(Vec::new(), 6);
        xz.write_all(&xz_image).unwrap();
        fs::write(dir.path().join("xzmod.ko.xz"), xz.finish().unwrap()).unwrap();
        fs::write(
            dir.path().join("zstmod.ko.zst"),
            zstd::encode_all(&zst_image[..], 3).unwrap(),
        )
        .unwrap();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&gz_image).unwrap();
        fs::write(dir.path().join("gzmod.ko.gz"), gz.finish().unwrap()).unwrap();

        let order = load_order(dir.path(), &["xzmod"]).unwrap();

        let modules = by_name(&order);
        assert_eq!(names(&order), ["gzmod", "zstmod", "xzmod"]);
        assert_eq!(modules["xzmod"].image, xz_image);
        assert_eq!(modules["zstmod"].image, zst_image);
        assert_eq!(modules["gzmod"].image, gz_image);
    }

    #[test]
    fn updates_directory_overrides_the_shipped_module() {
        let dir = tree(&[("virtio", &[])]);
        fs::create_dir_all(dir.path().join("updates")).unwrap();
        fs::write(
            dir.path().join("updates/virtio.ko"),
            synthetic_module("virtio", &[]),
        )
        .unwrap();

        let order = load_order(dir.path(), &["virtio"]).unwrap();

        assert!(order[0].source.starts_with(dir.path().join("updates")));
    }

    #[test]
    fn file_that_is_not_a_module_is_reported_with_its_path() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("broken.ko"), b"not elf").unwrap();

        let err = load_order(dir.path(), &["broken"]).unwrap_err();

        assert!(matches!(err, ModuleError::Modinfo { .. }));
        assert!(err.to_string().contains("broken.ko"));
    }

    #[test]
    fn builtin_list_accepts_compressed_names() {
        let builtin =
            parse_builtin("kernel/crypto/crc32c_generic.ko.xz\nkernel/lib/crc-t10dif.ko\n\n");

        assert!(builtin.contains("crc32c_generic"));
        assert!(builtin.contains("crc_t10dif"));
        assert_eq!(builtin.len(), 2);
    }
}
