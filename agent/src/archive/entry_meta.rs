//! Decoding an entry's metadata (owner, mode, time, extended attributes,
//! link target, device numbers) from its header and PAX records.

use std::io::{self, Read};

use nix::sys::time::TimeSpec;

use super::dirfd::Xattrs;
use super::unpack::Node;
use super::{shown, ImportError};

/// Longest symlink or hard link target, as `PATH_MAX` without its NUL.
const LINK_TARGET_MAX: usize = 4095;

/// Extended attribute namespaces that are restored. `trusted.*` is left out on
/// purpose: it holds host-side metadata (overlayfs, for one) that an imported
/// archive must not be able to forge.
const RESTORED_XATTR_PREFIXES: [&[u8]; 4] = [
    b"user.",
    b"security.",
    b"system.posix_acl_access",
    b"system.posix_acl_default",
];

/// Metadata of an entry, decoded from its header and PAX records.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Meta {
    /// Numeric owner.
    pub(super) uid: u32,
    /// Numeric group.
    pub(super) gid: u32,
    /// Permission bits with setuid, setgid and sticky.
    pub(super) mode: u32,
    /// Modification time.
    pub(super) mtime: TimeSpec,
    /// Extended attributes to restore, by name.
    pub(super) xattrs: Xattrs,
}

/// Whether an extended attribute of this name is restored.
pub(super) fn xattr_restored(name: &[u8]) -> bool {
    !name.contains(&0)
        && RESTORED_XATTR_PREFIXES
            .iter()
            .any(|prefix| name.starts_with(prefix))
}

/// Parses a PAX time (`seconds[.fraction]`, possibly negative).
pub(super) fn parse_pax_time(value: &[u8]) -> Option<TimeSpec> {
    let text = std::str::from_utf8(value).ok()?;
    let (negative, digits) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text),
    };
    let (whole, fraction) = digits.split_once('.').unwrap_or((digits, ""));
    if whole.is_empty()
        || !whole.bytes().all(|b| b.is_ascii_digit())
        || !fraction.bytes().all(|b| b.is_ascii_digit())
    {
        return None;
    }
    let seconds: i64 = whole.parse().ok()?;
    let mut nanos: i64 = 0;
    for (i, digit) in fraction.bytes().take(9).enumerate() {
        nanos += i64::from(digit - b'0') * 10_i64.pow(8 - i as u32);
    }
    Some(match (negative, nanos) {
        (false, _) => TimeSpec::new(seconds, nanos),
        (true, 0) => TimeSpec::new(-seconds, 0),
        (true, _) => TimeSpec::new(-seconds - 1, 1_000_000_000 - nanos),
    })
}

/// Maps a header decoding error to an [`ImportError`].
pub(super) fn bad_header(shown_path: &str) -> impl FnOnce(io::Error) -> ImportError + '_ {
    move |source| ImportError::BadHeader {
        path: shown_path.to_owned(),
        source,
    }
}

/// Owner, mode, time and extended attributes of an entry. Names are ignored:
/// ids are numeric, as the distro's own `/etc/passwd` defines them.
pub(super) fn read_meta<R: Read>(
    entry: &mut tar::Entry<'_, R>,
    shown_path: &str,
) -> Result<Meta, ImportError> {
    let header = entry.header();
    let id = |value: u64| {
        u32::try_from(value)
            .ok()
            .filter(|&id| id != u32::MAX)
            .ok_or_else(|| bad_header(shown_path)(io::Error::other("owner id out of range")))
    };
    let uid = id(header.uid().map_err(bad_header(shown_path))?)?;
    let gid = id(header.gid().map_err(bad_header(shown_path))?)?;
    let mode = header.mode().map_err(bad_header(shown_path))? & 0o7777;
    let seconds = header.mtime().map_err(bad_header(shown_path))?;
    let mut mtime = TimeSpec::new(i64::try_from(seconds).unwrap_or(i64::MAX), 0);
    let mut xattrs = Vec::new();
    if let Some(records) = entry.pax_extensions().map_err(bad_header(shown_path))? {
        for record in records {
            let record = record.map_err(bad_header(shown_path))?;
            let key = record.key_bytes();
            if key.starts_with(b"GNU.sparse.") {
                // The `tar` crate reads old GNU sparse entries, but would
                // take PAX sparse data (its map included) for file contents.
                return Err(ImportError::UnsupportedFeature {
                    path: shown_path.to_owned(),
                    feature: "PAX sparse files",
                });
            }
            if key == b"mtime" {
                if let Some(time) = parse_pax_time(record.value_bytes()) {
                    mtime = time;
                }
            } else if let Some(name) = key.strip_prefix(b"SCHILY.xattr.") {
                if xattr_restored(name) {
                    xattrs.push((name.to_vec(), record.value_bytes().to_vec()));
                } else {
                    tracing::warn!(path = shown_path, xattr = %shown(name), "extended attribute not restored");
                }
            }
        }
    }
    Ok(Meta {
        uid,
        gid,
        mode,
        mtime,
        xattrs,
    })
}

/// The target of a symlink or hard link entry, checked for emptiness, NUL
/// bytes and length.
pub(super) fn link_target<R: Read>(
    entry: &tar::Entry<'_, R>,
    shown_path: &str,
) -> Result<Vec<u8>, ImportError> {
    // A symlink target is limited like a path (the kernel refuses longer ones).
    match entry.link_name_bytes() {
        Some(target)
            if !target.is_empty() && target.len() <= LINK_TARGET_MAX && !target.contains(&0) =>
        {
            Ok(target.into_owned())
        }
        _ => Err(ImportError::InvalidLinkTarget {
            path: shown_path.to_owned(),
        }),
    }
}

/// Major and minor numbers of a device entry; (0, 0) for a FIFO.
pub(super) fn device_numbers<R: Read>(
    entry: &tar::Entry<'_, R>,
    node: Node,
    shown_path: &str,
) -> Result<(u32, u32), ImportError> {
    if node == Node::Fifo {
        return Ok((0, 0));
    }
    let header = entry.header();
    let major = header.device_major().map_err(bad_header(shown_path))?;
    let minor = header.device_minor().map_err(bad_header(shown_path))?;
    match (major, minor) {
        (Some(major), Some(minor)) => Ok((major, minor)),
        _ => Err(bad_header(shown_path)(io::Error::other(
            "device numbers missing",
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xattr_policy_restores_user_security_and_acls_but_not_trusted() {
        // Arrange
        let names: [(&[u8], bool); 6] = [
            (b"user.test", true),
            (b"security.capability", true),
            (b"system.posix_acl_access", true),
            (b"trusted.overlay.redirect", false),
            (b"system.nfs4_acl", false),
            (b"user.a\0b", false),
        ];

        for (name, expected) in names {
            // Act
            let restored = xattr_restored(name);

            // Assert
            assert_eq!(restored, expected, "{}", String::from_utf8_lossy(name));
        }
    }

    #[test]
    fn parse_pax_time_handles_fractions_and_negatives() {
        // Arrange
        let values: [&[u8]; 6] = [
            b"1700000000",
            b"1700000000.5",
            b"12.123456789999",
            b"-1.25",
            b"-3",
            b"x1",
        ];

        // Act
        let parsed: Vec<_> = values.iter().map(|v| parse_pax_time(v)).collect();

        // Assert
        assert_eq!(
            parsed,
            [
                Some(TimeSpec::new(1_700_000_000, 0)),
                Some(TimeSpec::new(1_700_000_000, 500_000_000)),
                Some(TimeSpec::new(12, 123_456_789)),
                Some(TimeSpec::new(-2, 750_000_000)),
                Some(TimeSpec::new(-3, 0)),
                None,
            ]
        );
    }
}
