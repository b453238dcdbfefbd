//! User lookup in a distro's own `/etc/passwd` and `/etc/group`, read
//! through [`DistroRoot`] so a distro can only ever name its own accounts.

use crate::distro_root::{DistroFileError, DistroRoot, MAX_ACCOUNT_FILE};

/// A user as the distro knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    /// Login name (the uid as text when the distro has no entry).
    pub name: String,
    /// User id.
    pub uid: u32,
    /// Primary group id.
    pub gid: u32,
    /// Supplementary group ids (from `/etc/group`), primary included.
    pub groups: Vec<u32>,
    /// Home directory.
    pub home: String,
    /// Login shell.
    pub shell: String,
}

/// Finds `spec` (a name or a numeric uid) in the distro behind `root`.
/// A numeric uid without an entry is allowed, as `docker exec -u` does;
/// an unknown name is `Ok(None)`. A missing file counts as empty; one that
/// is not a regular file, or is huge, is an error.
pub fn lookup(root: &DistroRoot, spec: &str) -> Result<Option<User>, DistroFileError> {
    let passwd = root.read_text_or_empty("/etc/passwd", MAX_ACCOUNT_FILE)?;
    let group = root.read_text_or_empty("/etc/group", MAX_ACCOUNT_FILE)?;
    Ok(find(&passwd, &group, spec))
}

fn find(passwd: &str, group: &str, spec: &str) -> Option<User> {
    let numeric = spec.parse::<u32>().ok();
    let mut user = parse_passwd(passwd)
        .find(|u| u.name == spec || Some(u.uid) == numeric)
        .or_else(|| {
            numeric.map(|uid| User {
                name: uid.to_string(),
                uid,
                gid: uid,
                groups: Vec::new(),
                home: "/".into(),
                shell: "/bin/sh".into(),
            })
        })?;
    user.groups = supplementary_groups(group, &user.name, user.gid);
    Some(user)
}

fn parse_passwd(text: &str) -> impl Iterator<Item = User> + '_ {
    text.lines().filter_map(|line| {
        let f: Vec<&str> = line.split(':').collect();
        if f.len() < 7 || line.starts_with('#') {
            return None;
        }
        Some(User {
            name: f[0].to_string(),
            uid: f[2].parse().ok()?,
            gid: f[3].parse().ok()?,
            groups: Vec::new(),
            home: if f[5].is_empty() { "/" } else { f[5] }.to_string(),
            shell: if f[6].is_empty() { "/bin/sh" } else { f[6] }.to_string(),
        })
    })
}

fn supplementary_groups(text: &str, user: &str, primary: u32) -> Vec<u32> {
    let mut groups = vec![primary];
    for line in text.lines() {
        let f: Vec<&str> = line.split(':').collect();
        if f.len() < 4 {
            continue;
        }
        let Ok(gid) = f[2].parse::<u32>() else {
            continue;
        };
        if f[3].split(',').any(|m| m == user) && !groups.contains(&gid) {
            groups.push(gid);
        }
    }
    groups
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Root {
        dir: tempfile::TempDir,
        root: DistroRoot,
    }

    impl Root {
        fn root_path(&self, path: &str) -> std::path::PathBuf {
            self.dir.path().join(path)
        }
    }

    fn root_with(passwd: &str, group: &str) -> Root {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("etc")).unwrap();
        std::fs::write(dir.path().join("etc/passwd"), passwd).unwrap();
        std::fs::write(dir.path().join("etc/group"), group).unwrap();
        let root = DistroRoot::open("d", dir.path()).unwrap();
        Root { dir, root }
    }

    fn user(root: &Root, spec: &str) -> Option<User> {
        lookup(&root.root, spec).unwrap()
    }

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/bash\nalice:x:1000:1000:Alice,,,:/home/alice:/bin/zsh\nbroken\n";
    const GROUP: &str = "root:x:0:\nsudo:x:27:alice\nalice:x:1000:\nusers:x:100:bob,alice\n";

    #[test]
    fn lookup_by_name_reads_fields_and_groups() {
        let root = root_with(PASSWD, GROUP);

        let user = user(&root, "alice").unwrap();

        assert_eq!(user.uid, 1000);
        assert_eq!(user.home, "/home/alice");
        assert_eq!(user.shell, "/bin/zsh");
        assert_eq!(user.groups, vec![1000, 27, 100]);
    }

    #[test]
    fn lookup_by_uid_finds_the_entry() {
        let root = root_with(PASSWD, GROUP);

        assert_eq!(user(&root, "1000").unwrap().name, "alice");
    }

    #[test]
    fn unknown_uid_gets_defaults_unknown_name_fails() {
        let root = root_with(PASSWD, GROUP);

        assert_eq!(user(&root, "4242").unwrap().gid, 4242);
        assert!(user(&root, "mallory").is_none());
    }

    #[test]
    fn passwd_that_is_a_fifo_is_an_error_not_a_hang() {
        let root = root_with("", "");
        let path = root.root_path("etc/passwd");
        std::fs::remove_file(&path).unwrap();
        nix::unistd::mkfifo(&path, nix::sys::stat::Mode::from_bits_truncate(0o644)).unwrap();

        let err = lookup(&root.root, "root").unwrap_err();

        assert_eq!(
            err.to_string(),
            "/etc/passwd in distro d is not a regular file"
        );
    }
}
