//! `~/.config/distroctl/config.toml`: the user's settings for the utility VM.
//!
//! Every key is optional; unknown keys and bad values are errors that name
//! the file and the key, so a typo never silently falls back to a default.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Deserializer};
use thiserror::Error;

/// A config file that cannot be used.
#[derive(Debug, Error)]
pub enum ConfigError {
    /// The file exists but cannot be read.
    #[error("cannot read {}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid TOML or has an unknown key or a bad value.
    #[error("invalid config {}: {message}", path.display())]
    Invalid {
        /// The file.
        path: PathBuf,
        /// The parser's explanation, naming the key.
        message: String,
    },
}

/// Which VM monitor runs the utility VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum BackendChoice {
    /// Pick the best one this host can run.
    #[default]
    Auto,
    /// QEMU (`qemu-system-x86_64 -M microvm`).
    Qemu,
    /// Our own VMM (`distroctl-vmm`) on `/dev/kvm`.
    Kvm,
}

/// What kind of KVM the configured kernel is built for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum KvmFlavor {
    /// Decide from the kernel's version string (`pvm` in it marks a PVM
    /// guest kernel).
    #[default]
    Auto,
    /// A stock kernel for hardware virtualization.
    Vmx,
    /// A PVM guest kernel, which runs on a PVM host's `/dev/kvm`.
    Pvm,
}

/// When the guest's page cache is trimmed so that free page reporting can
/// hand the memory back to the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum MemoryReclaim {
    /// Never: the page cache grows until the guest needs the memory.
    Off,
    /// Once the VM has run no command for a quiet period.
    #[default]
    Idle,
    /// When idle, and also every minute while commands run.
    Aggressive,
}

/// The effective settings.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Guest memory in bytes (`"4G"`, `"512M"`, or a number of bytes).
    #[serde(deserialize_with = "size")]
    pub memory: u64,
    /// Guest vCPUs.
    pub cpus: u32,
    /// Kernel image to boot instead of Debian's cloud kernel.
    pub kernel: Option<PathBuf>,
    /// Module tree (`lib/modules/<version>`) for a configured kernel.
    pub modules: Option<PathBuf>,
    /// VM monitor.
    pub backend: BackendChoice,
    /// Whether the configured kernel is a PVM guest kernel.
    pub kvm_flavor: KvmFlavor,
    /// Virtual size of the data disk, used when it is first created.
    #[serde(deserialize_with = "size")]
    pub disk_size: u64,
    /// How long to wait for the agent after starting the VM.
    #[serde(deserialize_with = "duration")]
    pub boot_timeout: Duration,
    /// How long the VM keeps running with no command and no distro process
    /// (`60`, `"5m"`); `"never"` keeps it up until `distroctl shutdown`.
    #[serde(deserialize_with = "optional_duration")]
    pub idle_timeout: Option<Duration>,
    /// When the guest's page cache is trimmed for the host's sake.
    pub memory_reclaim: MemoryReclaim,
    /// Distro that `distroctl shell` uses when none is named.
    pub default_distro: Option<String>,
    /// Forward ports that distros listen on to the host's localhost.
    pub port_forwarding: bool,
    /// Per-port exceptions (`[[port_forward]]` entries), first match wins.
    pub port_forward: Vec<crate::net::port_rules::PortRule>,
    /// Share the user's home directory with every distro, at the same path.
    pub share_home: bool,
    /// More host directories shared with every distro (`[[mount]]` entries).
    pub mount: Vec<crate::vm::shares::MountEntry>,
    /// The virtio-fs daemon that serves shares (default: found on `PATH`,
    /// in `~/.cargo/bin` or where distributions install it).
    pub virtiofsd: Option<PathBuf>,
}

/// The most guest memory a default config asks for. As in WSL2 the VM gets
/// half the host's RAM, and pages the guest never touches or frees cost the
/// host nothing (free page reporting); but the guest kernel's page array
/// (64 bytes per 4 KiB page, 1.6%) is resident from boot whether the memory
/// is used or not: 128 MiB at 8 GiB, and more for every gigabyte beyond.
/// (WSL2 itself capped its default at 8 GB for years.)
pub const DEFAULT_MEMORY_MAX: u64 = 8 << 30;

/// The least guest memory a default config asks for: enough for the guest
/// kernel, the agent and a small distro.
pub const DEFAULT_MEMORY_MIN: u64 = 256 << 20;

/// The default guest memory on a host with `host_ram` bytes of RAM.
pub fn default_memory(host_ram: u64) -> u64 {
    (host_ram / 2).clamp(DEFAULT_MEMORY_MIN, DEFAULT_MEMORY_MAX)
}

impl Default for Config {
    fn default() -> Self {
        let host_ram = host_memory_bytes();
        Config {
            memory: default_memory(host_ram),
            cpus: std::thread::available_parallelism().map_or(1, |n| n.get() as u32),
            kernel: None,
            modules: None,
            backend: BackendChoice::Auto,
            kvm_flavor: KvmFlavor::Auto,
            disk_size: 64 << 30,
            boot_timeout: Duration::from_secs(120),
            idle_timeout: Some(Duration::from_secs(60)),
            memory_reclaim: MemoryReclaim::Idle,
            default_distro: None,
            port_forwarding: true,
            port_forward: Vec::new(),
            share_home: true,
            mount: Vec::new(),
            virtiofsd: None,
        }
    }
}

fn host_memory_bytes() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kib| kib.parse::<u64>().ok())
        })
        .map_or(2 << 30, |kib| kib * 1024)
}

impl Config {
    /// Loads `path`; a missing file means all defaults. Paths in it must
    /// exist.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let invalid = |message| ConfigError::Invalid {
            path: path.to_path_buf(),
            message,
        };
        if path.is_dir() {
            return Err(invalid(
                "it is a directory; the config must be a TOML file".into(),
            ));
        }
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Config::default()),
            Err(source) => {
                return Err(ConfigError::Read {
                    path: path.to_path_buf(),
                    source,
                })
            }
        };
        let config = Self::parse(&text).map_err(invalid)?;
        config.check_paths().map_err(invalid)?;
        Ok(config)
    }

    fn parse(text: &str) -> Result<Config, String> {
        let table: toml::Table = toml::from_str(text).map_err(|e| {
            // toml's message spans several lines with a source excerpt;
            // the first line names the problem.
            e.message().lines().next().unwrap_or("invalid").to_string()
        })?;
        // Each key on its own first, so every error names its key, its
        // value and what is allowed.
        for (key, value) in &table {
            check_key(key, value)?;
        }
        Config::deserialize(toml::Value::Table(table)).map_err(|e| e.message().to_string())
    }

    /// The configured kernel and module tree must exist.
    fn check_paths(&self) -> Result<(), String> {
        if let Some(kernel) = &self.kernel {
            if !kernel.is_file() {
                return Err(format!(
                    "kernel = \"{}\": {}; use the path of a kernel image (bzImage or vmlinux)",
                    kernel.display(),
                    missing_or_kind(kernel)
                ));
            }
        }
        if let Some(virtiofsd) = &self.virtiofsd {
            if !virtiofsd.is_file() {
                return Err(format!(
                    "virtiofsd = \"{}\": {}; use the path of the virtiofsd program (cargo install virtiofsd)",
                    virtiofsd.display(),
                    missing_or_kind(virtiofsd)
                ));
            }
        }
        if let Some(modules) = &self.modules {
            if !modules.is_dir() {
                return Err(format!(
                    "modules = \"{}\": {}; use the kernel's module directory (lib/modules/VERSION)",
                    modules.display(),
                    missing_or_kind(modules)
                ));
            }
        }
        Ok(())
    }

    /// Sets one top-level key in the file at `path` (or removes it, with
    /// `None`), keeping the rest of the file (comments, order) as it is.
    /// The result must still be a valid config; the file is replaced
    /// atomically.
    pub fn set_key(path: &Path, key: &str, value: Option<&str>) -> Result<(), ConfigError> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(source) => {
                return Err(ConfigError::Read {
                    path: path.to_path_buf(),
                    source,
                })
            }
        };
        let invalid = |message: String| ConfigError::Invalid {
            path: path.to_path_buf(),
            message,
        };
        let mut doc: toml_edit::DocumentMut = text
            .parse()
            .map_err(|e: toml_edit::TomlError| invalid(e.message().to_string()))?;
        match value {
            Some(value) => doc[key] = toml_edit::value(value),
            None => {
                doc.remove(key);
            }
        }
        let text = doc.to_string();
        Self::parse(&text).map_err(invalid)?;
        let write = |source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(write)?;
        }
        let tmp = path.with_extension("toml.tmp");
        std::fs::write(&tmp, text).map_err(write)?;
        std::fs::rename(&tmp, path).map_err(write)
    }

    /// The default location, `$XDG_CONFIG_HOME/distroctl/config.toml`.
    pub fn default_path() -> PathBuf {
        crate::paths::config_dir().join("config.toml")
    }
}

/// Parses `"4G"`, `"512M"`, `"1024K"`, `"100"` (bytes) or an integer.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let (num, mult) = match s.char_indices().find(|(_, c)| !c.is_ascii_digit()) {
        Some((i, _)) => {
            let unit = s[i..]
                .trim()
                .trim_end_matches(['B', 'b'])
                .trim_end_matches(['i']);
            let mult: u64 = match unit.to_ascii_uppercase().as_str() {
                "" => 1,
                "K" => 1 << 10,
                "M" => 1 << 20,
                "G" => 1 << 30,
                "T" => 1 << 40,
                _ => return Err(format!("unknown size unit in {s:?}: use K, M, G or T")),
            };
            (&s[..i], mult)
        }
        None => (s, 1),
    };
    num.parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(mult))
        .ok_or_else(|| format!("invalid size {s:?}: use e.g. \"4G\" or \"512M\""))
}

/// Parses `60`, `"60s"`, `"5m"`, `"1h"` or `"250ms"`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("invalid duration {s:?}: use e.g. 60, \"60s\" or \"5m\""))?;
    Ok(match unit.trim() {
        "" | "s" => Duration::from_secs(n),
        "ms" => Duration::from_millis(n),
        "m" => Duration::from_secs(n * 60),
        "h" => Duration::from_secs(n * 3600),
        other => {
            return Err(format!(
                "unknown duration unit {other:?} in {s:?}: use s, m or h"
            ))
        }
    })
}

/// The keys and what each allows, as the error for a bad value says it.
const KEYS: &[(&str, &str)] = &[
    ("memory", "a size such as \"4G\" or \"512M\", at least 128M"),
    ("cpus", "a whole number of CPUs, at least 1"),
    ("kernel", "the path of a kernel image, as a string"),
    ("modules", "the path of a module directory, as a string"),
    ("backend", "\"auto\", \"kvm\" or \"qemu\""),
    ("kvm_flavor", "\"auto\", \"vmx\" or \"pvm\""),
    ("disk_size", "a size such as \"64G\", at least 64M"),
    (
        "boot_timeout",
        "a duration such as \"90s\" or \"2m\", at least 100ms",
    ),
    (
        "idle_timeout",
        "a duration such as \"60s\" or \"5m\", at least 1s, or \"never\"",
    ),
    ("memory_reclaim", "\"off\", \"idle\" or \"aggressive\""),
    ("default_distro", "a distro name, as a string"),
    ("port_forwarding", "true or false"),
    ("port_forward", "[[port_forward]] entries"),
    ("share_home", "true or false"),
    (
        "mount",
        "[[mount]] entries with host, and optionally guest and read_only",
    ),
    (
        "virtiofsd",
        "the path of the virtiofsd program, as a string",
    ),
];

/// Smallest data disk worth formatting (ext4 with its journal, and room
/// for a small distro).
const MIN_DISK_SIZE: u64 = 64 << 20;

/// Checks one top-level key and its value.
fn check_key(key: &str, value: &toml::Value) -> Result<(), String> {
    let Some((_, allowed)) = KEYS.iter().find(|(k, _)| *k == key) else {
        let known: Vec<&str> = KEYS.iter().map(|(k, _)| *k).collect();
        return Err(format!(
            "unknown key {key}; the keys are {}",
            known.join(", ")
        ));
    };
    let mut one = toml::Table::new();
    one.insert(key.to_string(), value.clone());
    let config = match Config::deserialize(toml::Value::Table(one)) {
        Ok(config) => config,
        // Entries are checked field by field; their own message names it.
        Err(e) if (key == "port_forward" || key == "mount") && value.is_array() => {
            return Err(format!("{key}: {}", e.message()))
        }
        Err(_) => return Err(format!("{key} = {}: use {allowed}", shown(value))),
    };
    let too_small = match key {
        "memory" => config.memory < 128 << 20,
        "cpus" => config.cpus == 0,
        "disk_size" => config.disk_size < MIN_DISK_SIZE,
        "boot_timeout" => config.boot_timeout < Duration::from_millis(100),
        "idle_timeout" => config
            .idle_timeout
            .is_some_and(|t| t < Duration::from_secs(1)),
        _ => false,
    };
    if too_small {
        return Err(format!(
            "{key} = {} is too small: use {allowed}",
            shown(value)
        ));
    }
    Ok(())
}

/// A value as written in TOML, on one line.
fn shown(value: &toml::Value) -> String {
    match value {
        toml::Value::Table(_) => "a table".into(),
        toml::Value::Array(_) => "an array".into(),
        other => other.to_string(),
    }
}

/// Why a configured path is not what it should be.
fn missing_or_kind(path: &Path) -> &'static str {
    match std::fs::metadata(path) {
        Err(_) => "no such file or directory",
        Ok(m) if m.is_dir() => "it is a directory",
        Ok(_) => "it is not a directory",
    }
}

#[derive(Deserialize)]
#[serde(untagged)]
enum NumberOrText {
    Number(u64),
    Text(String),
}

fn size<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    match NumberOrText::deserialize(d)? {
        NumberOrText::Number(n) => Ok(n),
        NumberOrText::Text(s) => parse_size(&s).map_err(serde::de::Error::custom),
    }
}

fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    match NumberOrText::deserialize(d)? {
        NumberOrText::Number(n) => Ok(Duration::from_secs(n)),
        NumberOrText::Text(s) => parse_duration(&s).map_err(serde::de::Error::custom),
    }
}

fn optional_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    match NumberOrText::deserialize(d)? {
        NumberOrText::Number(n) => Ok(Some(Duration::from_secs(n))),
        NumberOrText::Text(s) if s.trim() == "never" => Ok(None),
        NumberOrText::Text(s) => parse_duration(&s)
            .map(Some)
            .map_err(|e| serde::de::Error::custom(format!("{e}, or \"never\""))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_file_gives_defaults() {
        let config = Config::parse("").unwrap();

        assert_eq!(config, Config::default());
        assert!(config.memory <= DEFAULT_MEMORY_MAX);
    }

    #[test]
    fn default_memory_is_half_the_host_within_bounds() {
        assert_eq!(default_memory(8 << 30), 4 << 30);
        assert_eq!(default_memory(12 << 30), 6 << 30);
        assert_eq!(default_memory(64 << 30), DEFAULT_MEMORY_MAX);
        assert_eq!(default_memory(256 << 20), DEFAULT_MEMORY_MIN);
    }

    #[test]
    fn sizes_and_durations_accept_numbers_and_text() {
        let config = Config::parse(
            "memory = \"1G\"\ncpus = 2\ndisk_size = 1073741824\nboot_timeout = \"2m\"\nkernel = \"/k\"\nbackend = \"qemu\"\n",
        )
        .unwrap();

        assert_eq!(config.memory, 1 << 30);
        assert_eq!(config.disk_size, 1 << 30);
        assert_eq!(config.boot_timeout, Duration::from_secs(120));
        assert_eq!(config.kernel, Some(PathBuf::from("/k")));
        assert_eq!(config.backend, BackendChoice::Qemu);
    }

    #[test]
    fn idle_timeout_takes_seconds_text_or_never() {
        assert_eq!(
            Config::parse("idle_timeout = 30\n").unwrap().idle_timeout,
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            Config::parse("idle_timeout = \"5m\"\n")
                .unwrap()
                .idle_timeout,
            Some(Duration::from_secs(300))
        );
        assert_eq!(
            Config::parse("idle_timeout = \"never\"\n")
                .unwrap()
                .idle_timeout,
            None
        );
        assert!(Config::parse("idle_timeout = \"soon\"\n")
            .unwrap_err()
            .contains("never"));
    }

    #[test]
    fn memory_reclaim_defaults_to_idle_and_takes_each_mode() {
        assert_eq!(Config::default().memory_reclaim, MemoryReclaim::Idle);
        for (text, mode) in [
            ("off", MemoryReclaim::Off),
            ("idle", MemoryReclaim::Idle),
            ("aggressive", MemoryReclaim::Aggressive),
        ] {
            let config = Config::parse(&format!("memory_reclaim = \"{text}\"\n")).unwrap();
            assert_eq!(config.memory_reclaim, mode);
        }
    }

    #[test]
    fn default_distro_and_port_forwarding_are_read() {
        let config =
            Config::parse("default_distro = \"debian\"\nport_forwarding = false\n").unwrap();

        assert_eq!(config.default_distro.as_deref(), Some("debian"));
        assert!(!config.port_forwarding);
        assert!(Config::default().port_forwarding);
    }

    #[test]
    fn set_key_keeps_comments_and_other_keys() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.toml");
        std::fs::write(&path, "# mine\nmemory = \"1G\"\n").unwrap();

        Config::set_key(&path, "default_distro", Some("debian")).unwrap();

        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.starts_with("# mine\nmemory = \"1G\"\n"), "{text}");
        let config = Config::load(&path).unwrap();
        assert_eq!(config.default_distro.as_deref(), Some("debian"));
        assert_eq!(config.memory, 1 << 30);

        Config::set_key(&path, "default_distro", None).unwrap();
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "# mine\nmemory = \"1G\"\n"
        );
    }

    #[test]
    fn set_key_refuses_to_write_an_invalid_config() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.toml");
        std::fs::write(&path, "memroy = 1\n").unwrap();

        assert!(Config::set_key(&path, "default_distro", Some("debian")).is_err());
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "memroy = 1\n");
    }

    #[test]
    fn unknown_key_is_named() {
        let err = Config::parse("memroy = \"1G\"\n").unwrap_err();

        assert!(err.contains("memroy"), "{err}");
    }

    #[test]
    fn bad_values_are_errors() {
        assert!(Config::parse("memory = \"lots\"\n")
            .unwrap_err()
            .contains("lots"));
        assert!(Config::parse("cpus = 0\n").is_err());
        assert!(Config::parse("boot_timeout = \"5 fortnights\"\n").is_err());
        assert!(Config::parse("backend = \"vmware\"\n")
            .unwrap_err()
            .contains("vmware"));
    }

    #[test]
    fn each_bad_value_is_one_line_naming_key_value_and_what_is_allowed() {
        let cases = [
            (
                "boot_timeout = \"0s\"",
                "boot_timeout = \"0s\"",
                "at least 100ms",
            ),
            ("disk_size = \"1K\"", "disk_size = \"1K\"", "at least 64M"),
            ("cpus = \"many\"", "cpus = \"many\"", "whole number"),
            ("memory = true", "memory = true", "a size such as"),
            (
                "idle_timeout = \"soon\"",
                "idle_timeout = \"soon\"",
                "never",
            ),
            ("backend = \"vmware\"", "backend = \"vmware\"", "\"qemu\""),
            (
                "memory_reclaim = \"sometimes\"",
                "memory_reclaim = \"sometimes\"",
                "\"off\", \"idle\" or \"aggressive\"",
            ),
            ("memory_reclaim = 1", "memory_reclaim = 1", "\"aggressive\""),
            (
                "port_forwarding = 1",
                "port_forwarding = 1",
                "true or false",
            ),
            ("memroy = 1", "unknown key memroy", "memory, cpus"),
        ];
        for (text, names, allowed) in cases {
            let err = Config::parse(text).unwrap_err();

            assert!(err.contains(names), "{text}: {err}");
            assert!(err.contains(allowed), "{text}: {err}");
            assert_eq!(err.lines().count(), 1, "{text}: {err}");
            assert!(!err.contains("untagged enum"), "{text}: {err}");
        }
    }

    #[test]
    fn mount_entries_and_share_home_are_read_and_each_mistake_is_one_line() {
        let config = Config::parse(
            "share_home = false\n[[mount]]\nhost = \"/srv\"\n[[mount]]\nhost = \"/opt/x\"\nguest = \"/x\"\nread_only = true\n",
        )
        .unwrap();

        assert!(!config.share_home);
        assert!(Config::default().share_home);
        assert_eq!(config.mount.len(), 2);
        assert_eq!(config.mount[0].guest, "/srv");
        assert!(!config.mount[0].read_only);
        assert_eq!(config.mount[1].guest, "/x");
        assert!(config.mount[1].read_only);
        let cases = [
            ("share_home = \"yes\"", "true or false"),
            ("[[mount]]\nguest = \"/x\"", "missing field `host`"),
            ("[[mount]]\nhost = \"srv\"", "not an absolute path"),
            (
                "[[mount]]\nhost = \"/srv\"\nguest = \"/proc\"",
                "would hide",
            ),
            (
                "[[mount]]\nhost = \"/srv\"\nguest = \"x/../y\"",
                "without `..`",
            ),
            (
                "[[mount]]\nhost = \"/srv\"\nreadonly = true",
                "unknown field `readonly`",
            ),
            ("mount = 1", "[[mount]] entries"),
        ];
        for (text, wanted) in cases {
            let err = Config::parse(text).unwrap_err();

            assert!(err.contains(wanted), "{text}: {err}");
            assert_eq!(err.lines().count(), 1, "{text}: {err}");
        }
    }

    #[test]
    fn missing_kernel_and_modules_paths_are_refused_when_loaded() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.toml");
        let cases = [
            (
                "kernel = \"/nonexistent/bzImage\"\n",
                "kernel = \"/nonexistent/bzImage\": no such",
            ),
            ("kernel = \"/\"\n", "kernel = \"/\": it is a directory"),
            (
                "modules = \"/nonexistent/6.1\"\n",
                "modules = \"/nonexistent/6.1\": no such",
            ),
        ];
        for (text, needle) in cases {
            std::fs::write(&path, text).unwrap();

            let err = Config::load(&path).unwrap_err().to_string();

            assert!(err.contains(needle), "{text}: {err}");
        }
    }

    #[test]
    fn config_path_that_is_a_directory_is_refused() {
        let dir = tempfile::tempdir().unwrap();

        let err = Config::load(dir.path()).unwrap_err().to_string();

        assert!(err.contains("it is a directory"), "{err}");
    }

    #[test]
    fn parse_size_units() {
        assert_eq!(parse_size("512M").unwrap(), 512 << 20);
        assert_eq!(parse_size("2GiB").unwrap(), 2 << 30);
        assert_eq!(parse_size("100").unwrap(), 100);
        assert!(parse_size("99999999999T").is_err());
    }

    #[test]
    fn parse_duration_units() {
        assert_eq!(parse_duration("60").unwrap(), Duration::from_secs(60));
        assert_eq!(parse_duration("5m").unwrap(), Duration::from_secs(300));
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
    }
}
