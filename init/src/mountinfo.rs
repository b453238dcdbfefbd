//! Reading `/proc/self/mountinfo` (format in the kernel's
//! `Documentation/filesystems/proc.rst`, section 3.5).

/// One line of mountinfo, the fields init needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountEntry {
    /// Where it is mounted, with the kernel's octal escapes undone.
    pub mount_point: String,
    /// Filesystem type (`rootfs`, `tmpfs`, `ext4`…).
    pub fs_type: String,
}

/// Parses every well-formed line; malformed lines are skipped because a
/// partial view is still better than none for the decisions made from it.
pub fn parse(text: &str) -> Vec<MountEntry> {
    text.lines().filter_map(parse_line).collect()
}

fn parse_line(line: &str) -> Option<MountEntry> {
    // "36 35 98:0 /mnt1 /mnt2 rw,noatime master:1 - ext3 /dev/root rw"
    let (before, after) = line.split_once(" - ")?;
    let mount_point = before.split(' ').nth(4)?;
    let fs_type = after.split(' ').next().filter(|t| !t.is_empty())?;
    Some(MountEntry {
        mount_point: unescape(mount_point),
        fs_type: fs_type.to_owned(),
    })
}

/// The kernel escapes space, tab, newline and backslash as `\ooo`.
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes
            .get(i + 1..i + 4)
            .filter(|d| bytes[i] == b'\\' && d.iter().all(|c| (b'0'..=b'7').contains(c)));
        match octal {
            Some(digits) => {
                let value = digits
                    .iter()
                    .fold(0u32, |acc, d| acc * 8 + u32::from(d - b'0'));
                out.push(u8::try_from(value).unwrap_or(b'?'));
                i += 4;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The filesystem type of what is visible at `/`: the last mount on `/`
/// wins because later mounts stack on top of earlier ones.
pub fn root_fs_type(entries: &[MountEntry]) -> Option<&str> {
    entries
        .iter()
        .rev()
        .find(|e| e.mount_point == "/")
        .map(|e| e.fs_type.as_str())
}

/// Whether `/` is still the kernel's initial ramfs/tmpfs ("rootfs"), which
/// `pivot_root` refuses to move away from.
pub fn root_is_initramfs(entries: &[MountEntry]) -> bool {
    root_fs_type(entries) == Some("rootfs")
}

#[cfg(test)]
mod tests {
    use super::*;

    const INITRAMFS: &str = "\
1 1 0:2 / / rw - rootfs rootfs rw,size=498012k,nr_inodes=124503
2 1 0:20 / /proc rw,relatime - proc proc rw
";

    const SWITCHED: &str = "\
1 1 0:2 / / rw - rootfs rootfs rw,size=498012k
21 1 0:21 / / rw,relatime - tmpfs tmpfs rw,mode=755
22 21 0:5 / /dev rw,nosuid shared:2 - devtmpfs devtmpfs rw,mode=755
23 21 254:0 / /data rw,noatime - ext4 /dev/vda rw,discard
24 21 0:30 / /mnt/with\\040space rw - tmpfs tmpfs rw
";

    #[test]
    fn initramfs_root_is_detected() {
        let entries = parse(INITRAMFS);

        assert!(root_is_initramfs(&entries));
    }

    #[test]
    fn tmpfs_stacked_on_rootfs_is_not_initramfs() {
        let entries = parse(SWITCHED);

        assert_eq!(root_fs_type(&entries), Some("tmpfs"));
        assert!(!root_is_initramfs(&entries));
    }

    #[test]
    fn mount_point_escapes_are_undone() {
        let entries = parse(SWITCHED);

        assert!(entries.iter().any(|e| e.mount_point == "/mnt/with space"));
    }

    #[test]
    fn optional_fields_do_not_shift_fs_type() {
        let entries = parse(SWITCHED);

        let dev = entries.iter().find(|e| e.mount_point == "/dev").unwrap();
        assert_eq!(dev.fs_type, "devtmpfs");
    }

    #[test]
    fn malformed_lines_are_skipped() {
        let entries = parse("garbage\n\n1 1 0:2 / / rw - \n2 1 0:3 / /x rw - ext4 /dev/vda rw\n");

        assert_eq!(
            entries,
            vec![MountEntry {
                mount_point: "/x".into(),
                fs_type: "ext4".into()
            }]
        );
    }

    #[test]
    fn empty_table_has_no_root() {
        assert_eq!(root_fs_type(&parse("")), None);
        assert!(!root_is_initramfs(&parse("")));
    }
}
