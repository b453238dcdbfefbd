//! Published checksum lists: `SHA256SUMS` (`HASH  NAME` or `HASH *NAME`) and
//! the BSD form `SHA256 (NAME) = HASH` that Fedora's `CHECKSUM` files use.

/// Finds the SHA-256 recorded for `file_name` in a checksum list. PGP
/// armour around a signed list is skipped like any other non-matching line.
pub(crate) fn find_sha256(list: &str, file_name: &str) -> Option<String> {
    list.lines().find_map(|line| {
        let line = line.trim();
        let (hash, name) = if let Some(rest) = line.strip_prefix("SHA256 (") {
            let (name, hash) = rest.split_once(") = ")?;
            (hash.trim(), name)
        } else {
            let (hash, name) = line.split_once(char::is_whitespace)?;
            let name = name.trim_start();
            (hash, name.strip_prefix('*').unwrap_or(name))
        };
        let hash = hash.to_ascii_lowercase();
        let is_sha256 = hash.len() == 64 && hash.bytes().all(|b| b.is_ascii_hexdigit());
        (name == file_name && is_sha256).then_some(hash)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "6bc2cde3930ad088b3bb46fa45279e96d25bc3810f209850ecbe4722711874f9";
    const B: &str = "7b2dced6dd56ad5e4a813fa25c8de307b655fdabc6ea9213175a92c48dabb048";

    #[test]
    fn find_sha256_reads_binary_and_text_mode_lines() {
        let list = format!("{B} *other.tar.gz\n{A}  wanted.tar.gz\n");

        assert_eq!(find_sha256(&list, "wanted.tar.gz").as_deref(), Some(A));
        assert_eq!(find_sha256(&list, "other.tar.gz").as_deref(), Some(B));
    }

    #[test]
    fn find_sha256_reads_bsd_lines_in_signed_list() {
        let list = format!(
            "-----BEGIN PGP SIGNED MESSAGE-----\nHash: SHA256\n\n\
             # wanted.oci.tar.xz: 70170200 bytes\nSHA256 (wanted.oci.tar.xz) = {}\n\
             -----BEGIN PGP SIGNATURE-----\n",
            A.to_uppercase()
        );

        assert_eq!(find_sha256(&list, "wanted.oci.tar.xz").as_deref(), Some(A));
    }

    #[test]
    fn find_sha256_ignores_prefix_matches_and_other_hashes() {
        let list = format!("{A}  wanted.tar.gz.asc\nabc123  wanted.tar.gz\n");

        assert_eq!(find_sha256(&list, "wanted.tar.gz"), None);
    }
}
