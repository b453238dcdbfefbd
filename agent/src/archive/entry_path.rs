//! Checking and normalizing the paths stored in archive entries.
//!
//! Only the lexical checks live here; whether a path crosses a symlink is
//! decided while walking the tree (see `parent_dirs`).

/// What is wrong with an entry path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum PathProblem {
    /// Empty, or holds a NUL byte.
    Invalid,
    /// Starts with `/`.
    Absolute,
    /// Has a `..` component.
    LeavesRoot,
    /// Longer than the kernel takes, or nested too deeply.
    TooLong,
}

/// Longest path, as `PATH_MAX` without its NUL.
const PATH_MAX: usize = 4095;

/// Longest component, as `NAME_MAX`.
const NAME_MAX: usize = 255;

/// Deepest nesting. Extraction holds one descriptor per level, so this keeps
/// it well below the usual limit of 1024 open files; real trees stay under 30.
const DEPTH_MAX: usize = 256;

/// An entry path that stays below the distro root, normalized: no leading
/// `./`, no `.` or empty components, no trailing slash. The root itself is the
/// empty path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct EntryPath {
    normalized: Vec<u8>,
}

impl EntryPath {
    /// Checks and normalizes `raw`, the path bytes of an archive entry.
    pub(super) fn parse(raw: &[u8]) -> Result<Self, PathProblem> {
        if raw.is_empty() || raw.contains(&0) {
            return Err(PathProblem::Invalid);
        }
        if raw[0] == b'/' {
            return Err(PathProblem::Absolute);
        }
        let mut normalized = Vec::with_capacity(raw.len());
        let mut depth = 0;
        for component in raw.split(|&b| b == b'/') {
            match component {
                b"" | b"." => {}
                b".." => return Err(PathProblem::LeavesRoot),
                _ => {
                    if !normalized.is_empty() {
                        normalized.push(b'/');
                    }
                    normalized.extend_from_slice(component);
                    depth += 1;
                    if component.len() > NAME_MAX {
                        return Err(PathProblem::TooLong);
                    }
                }
            }
        }
        if normalized.len() > PATH_MAX || depth > DEPTH_MAX {
            return Err(PathProblem::TooLong);
        }
        Ok(EntryPath { normalized })
    }

    /// Whether this is the distro root itself (`./`).
    pub(super) fn is_root(&self) -> bool {
        self.normalized.is_empty()
    }

    /// The normalized path, `/`-separated, empty for the root.
    pub(super) fn as_bytes(&self) -> &[u8] {
        &self.normalized
    }

    /// The parent directory (empty at the top level) and the last component
    /// (empty for the root).
    pub(super) fn parent_and_name(&self) -> (&[u8], &[u8]) {
        match self.normalized.iter().rposition(|&b| b == b'/') {
            Some(slash) => (&self.normalized[..slash], &self.normalized[slash + 1..]),
            None => (&[], &self.normalized),
        }
    }
}

/// Splits a normalized directory path into its components; none for the root.
pub(super) fn components(dir: &[u8]) -> impl Iterator<Item = &[u8]> {
    dir.split(|&b| b == b'/').filter(|c| !c.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_strips_leading_dot_slash_and_empty_components() {
        // Arrange
        let raw = b"./usr//bin/./bash/";

        // Act
        let path = EntryPath::parse(raw).unwrap();

        // Assert
        assert_eq!(path.as_bytes(), b"usr/bin/bash");
        assert_eq!(path.parent_and_name(), (&b"usr/bin"[..], &b"bash"[..]));
    }

    #[test]
    fn parse_treats_dot_slash_as_the_root() {
        // Arrange
        let raws: [&[u8]; 3] = [b"./", b".", b".//."];

        // Act
        let paths: Vec<_> = raws
            .iter()
            .map(|raw| EntryPath::parse(raw).unwrap())
            .collect();

        // Assert
        for path in paths {
            assert!(path.is_root());
            assert_eq!(path.parent_and_name(), (&b""[..], &b""[..]));
        }
    }

    #[test]
    fn parse_rejects_parent_components_anywhere() {
        // Arrange
        let raws: [&[u8]; 4] = [b"..", b"../x", b"a/../../x", b"a/b/.."];

        // Act
        let results: Vec<_> = raws.iter().map(|raw| EntryPath::parse(raw)).collect();

        // Assert
        for result in results {
            assert_eq!(result, Err(PathProblem::LeavesRoot));
        }
    }

    #[test]
    fn parse_rejects_absolute_empty_and_nul_paths() {
        // Arrange
        let absolute = b"/etc/passwd";
        let empty = b"";
        let nul = b"etc/pass\0wd";

        // Act
        let results = [
            EntryPath::parse(absolute),
            EntryPath::parse(empty),
            EntryPath::parse(nul),
        ];

        // Assert
        assert_eq!(
            results,
            [
                Err(PathProblem::Absolute),
                Err(PathProblem::Invalid),
                Err(PathProblem::Invalid)
            ]
        );
    }

    #[test]
    fn parse_rejects_paths_the_kernel_could_not_take() {
        // Arrange
        let long_name = [b'n'; NAME_MAX + 1];
        let long_path = b"abcdefg/".repeat(600);
        let deep = b"a/".repeat(DEPTH_MAX + 1);
        let longest_name = [b'n'; NAME_MAX];

        // Act
        let results = [
            EntryPath::parse(&long_name),
            EntryPath::parse(&long_path),
            EntryPath::parse(&deep),
        ];

        // Assert
        for result in results {
            assert_eq!(result, Err(PathProblem::TooLong));
        }
        assert!(EntryPath::parse(&longest_name).is_ok());
        assert!(EntryPath::parse(&b"a/".repeat(DEPTH_MAX)).is_ok());
    }

    #[test]
    fn parse_keeps_names_that_only_look_like_dots() {
        // Arrange
        let raw = b"...a/..b/.c";

        // Act
        let path = EntryPath::parse(raw).unwrap();

        // Assert
        assert_eq!(path.as_bytes(), b"...a/..b/.c");
    }

    #[test]
    fn components_of_root_are_empty() {
        // Arrange
        let root = b"";

        // Act
        let count = components(root).count();

        // Assert
        assert_eq!(count, 0);
        assert_eq!(
            components(b"a/b").collect::<Vec<_>>(),
            [&b"a"[..], &b"b"[..]]
        );
    }
}
