//! virtio-balloon constants, from the virtio 1.2 specification, section 5.5
//! ("Traditional Memory Balloon Device"), and Linux's
//! `include/uapi/linux/virtio_balloon.h`.

/// `VIRTIO_ID_BALLOON`.
pub const VIRTIO_ID_BALLOON: u32 = 5;

/// Feature: the guest may take pages back from the balloon when it runs out
/// of memory (`VIRTIO_BALLOON_F_DEFLATE_ON_OOM`). Only the driver acts on it.
pub const VIRTIO_BALLOON_F_DEFLATE_ON_OOM: u32 = 2;
/// Feature: the reporting queue, on which the guest hands over free pages
/// (`VIRTIO_BALLOON_F_FREE_PAGE_REPORTING`; Linux calls it
/// `VIRTIO_BALLOON_F_REPORTING`).
pub const VIRTIO_BALLOON_F_FREE_PAGE_REPORTING: u32 = 5;
/// `VIRTIO_F_VERSION_1`.
pub const VIRTIO_F_VERSION_1: u32 = 32;

/// `inflateq`: page frame numbers the guest gives up.
pub const INFLATE_QUEUE: usize = 0;
/// `deflateq`: page frame numbers the guest takes back.
pub const DEFLATE_QUEUE: usize = 1;
/// `reporting_vq`. Queues of features not offered are skipped in the
/// numbering (no `statsq`, no `free_page_vq`), which is how Linux's
/// `virtio_mmio` numbers them too.
pub const REPORTING_QUEUE: usize = 2;
/// inflate, deflate, reporting.
pub const NUM_QUEUES: usize = 3;
/// Size of each queue. Linux refuses a reporting queue with room for fewer
/// than `PAGE_REPORTING_CAPACITY` (32) entries.
pub const QUEUE_SIZE: u16 = 256;

/// Balloon page frame numbers count 4 KiB pages whatever the guest's page
/// size (`VIRTIO_BALLOON_PFN_SHIFT`).
pub const VIRTIO_BALLOON_PFN_SHIFT: u32 = 12;
/// The unit every range the device discards must be aligned to.
pub const BALLOON_PAGE_SIZE: u64 = 1 << VIRTIO_BALLOON_PFN_SHIFT;
/// Size of one entry in an inflate or deflate buffer (`le32` PFN).
pub const PFN_ENTRY_SIZE: u32 = 4;

/// Size of `struct virtio_balloon_config`: `num_pages`, `actual`,
/// `free_page_hint_cmd_id`, `poison_val`.
pub const CONFIG_SPACE_SIZE: usize = 16;
/// Offsets of the `struct virtio_balloon_config` fields we use.
pub mod config_offset {
    /// `le32 num_pages`: the target size of the balloon, in 4 KiB pages.
    pub const NUM_PAGES: usize = 0;
    /// `le32 actual`: the balloon's size as the driver reports it.
    pub const ACTUAL: usize = 4;
}
