//! Extracts arbitrary bytes as an archive and checks that nothing was written
//! outside the distro root, whatever the outcome.
//!
//! Layout per run: `<tmp>/root` is the extraction root and `<tmp>/outside` a
//! sibling that must stay empty. A relative symlink such as `../outside` is
//! within the fuzzer's reach, so an extraction that followed a symlink would
//! show up there.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let outer = tempfile::tempdir().expect("temporary directory");
    let root = outer.path().join("root");
    let outside = outer.path().join("outside");
    std::fs::create_dir(&root).expect("root directory");
    std::fs::create_dir(&outside).expect("outside directory");

    // Errors are expected for most inputs; only side effects matter here.
    let _ = agent::archive::extract(data, &root);

    let mut names: Vec<_> = std::fs::read_dir(outer.path())
        .expect("list the temporary directory")
        .map(|entry| entry.expect("directory entry").file_name())
        .collect();
    names.sort();
    assert_eq!(
        names,
        ["outside", "root"],
        "extraction wrote next to the root"
    );
    assert!(
        std::fs::read_dir(&outside)
            .expect("list outside")
            .next()
            .is_none(),
        "extraction wrote outside the root"
    );
    assert!(
        std::fs::symlink_metadata(&root)
            .expect("stat root")
            .is_dir(),
        "the root was replaced"
    );
});
