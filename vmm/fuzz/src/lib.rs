//! Pieces the VMM fuzz targets share: a hostile guest's way of putting
//! descriptor chains on a mock virtqueue, and a sparse disk image.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use virtio_queue::desc::{split::Descriptor, RawDescriptor};
use virtio_queue::mock::MockSplitQueue;
use vm_memory::GuestMemoryMmap;

/// One descriptor as the guest writes it: address, length, flags, next.
pub type RawChainEntry = (u64, u32, u16, u16);

/// Writes `descs` into `mock`'s descriptor table from `*next_desc` on
/// (wrapping at `queue_size`) and makes the first one available. Flags and
/// `next` are the caller's, unchecked, as a hostile guest would write them.
pub fn push_chain(
    mock: &MockSplitQueue<'_, GuestMemoryMmap>,
    queue_size: u16,
    next_desc: &mut u16,
    descs: &[RawChainEntry],
) {
    let head = *next_desc;
    for (i, &(addr, len, flags, next)) in descs.iter().enumerate() {
        let index = (head + i as u16) % queue_size;
        let desc = Descriptor::new(addr, len, flags, next % queue_size);
        mock.desc_table()
            .store(index, RawDescriptor::from(desc))
            .unwrap();
    }
    *next_desc = (head + descs.len() as u16) % queue_size;
    let avail = mock.avail().idx().load();
    mock.avail()
        .ring()
        .ref_at(usize::from(avail % queue_size))
        .unwrap()
        .store(head);
    mock.avail().idx().store(avail.wrapping_add(1));
}

/// A sparse 1 MiB disk image in a temporary directory, shared by every run
/// of the process.
pub fn sparse_disk() -> &'static Path {
    static DISK: OnceLock<(tempfile::TempDir, PathBuf)> = OnceLock::new();
    &DISK
        .get_or_init(|| {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("disk.img");
            std::fs::File::create(&path)
                .unwrap()
                .set_len(1 << 20)
                .unwrap();
            (dir, path)
        })
        .1
}
