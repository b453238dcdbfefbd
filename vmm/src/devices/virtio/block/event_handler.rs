//! The block device on the VMM's event loop: a notification of the request
//! queue runs the queued requests.

use super::device::{BlockDevice, BlockError};
use crate::devices::virtio::EventDrivenDevice;

impl EventDrivenDevice for BlockDevice {
    fn process_queue(&mut self, _index: usize) -> Result<bool, BlockError> {
        self.process_requests()
    }

    fn is_activated(&self) -> bool {
        BlockDevice::is_activated(self)
    }
}

#[cfg(test)]
mod tests {
    use std::fs::File;
    use std::io::{Read, Seek, SeekFrom};
    use std::os::unix::fs::{FileExt, MetadataExt};
    use std::path::Path;
    use std::sync::{Arc, Mutex};

    use event_manager::{EventManager, MutEventSubscriber, SubscriberOps};
    use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

    use super::*;
    use crate::devices::virtio::block::defs::*;
    use crate::devices::virtio::block::BlockConfig;
    use crate::devices::virtio::mmio::defs::{CONFIG_SPACE_OFFSET, INT_USED_RING};
    use crate::devices::virtio::mmio::test_driver::{
        initialize, notify, take_interrupt, test_memory, GuestQueue,
    };
    use crate::devices::virtio::mmio::MmioTransport;

    type Subscriber = Arc<Mutex<dyn MutEventSubscriber + Send>>;

    const DISK_SIZE: u64 = 4 << 20;
    const BUFFERS: u64 = 0x10_0000;

    /// A sparse disk image of `DISK_SIZE` bytes in `dir`.
    fn disk_image(dir: &Path) -> std::path::PathBuf {
        let path = dir.join("data.img");
        File::create(&path).unwrap().set_len(DISK_SIZE).unwrap();
        path
    }

    /// The guest's side: transport, event loop and the request queue.
    struct Guest<'m> {
        mem: &'m GuestMemoryMmap,
        transport: MmioTransport<BlockDevice>,
        events: EventManager<Subscriber>,
        queue: GuestQueue<'m>,
        next_addr: u64,
        features: u64,
    }

    impl<'m> Guest<'m> {
        fn new(mem: &'m GuestMemoryMmap, config: BlockConfig) -> Self {
            let device = Arc::new(Mutex::new(BlockDevice::new(config).unwrap()));
            let mut transport = MmioTransport::new(mem.clone(), device).unwrap();
            let mut events = EventManager::<Subscriber>::new().unwrap();
            events.add_subscriber(Arc::new(Mutex::new(transport.event_handler().unwrap())));
            let queue = GuestQueue::new(mem, GuestAddress(0x1_0000), 64);
            let features = initialize(&mut transport, u64::MAX, &[&queue]);
            Self {
                mem,
                transport,
                events,
                queue,
                next_addr: BUFFERS,
                features,
            }
        }

        /// Guest memory for a buffer, 4 KiB aligned.
        fn alloc(&mut self, len: u64) -> GuestAddress {
            let addr = self.next_addr;
            self.next_addr += len.max(1).next_multiple_of(4096);
            GuestAddress(addr)
        }

        /// Queues a request as Linux lays it out: header, data, status.
        /// Returns the status byte's address.
        fn submit(
            &mut self,
            request_type: u32,
            sector: u64,
            data: &[(GuestAddress, u32, bool)],
        ) -> GuestAddress {
            let header = self.alloc(16);
            let mut raw = [0u8; 16];
            raw[0..4].copy_from_slice(&request_type.to_le_bytes());
            raw[8..16].copy_from_slice(&sector.to_le_bytes());
            self.mem.write_slice(&raw, header).unwrap();
            let status = self.alloc(1);
            self.mem.write_obj(0xffu8, status).unwrap();
            let mut chain = vec![(header, 16, false)];
            chain.extend_from_slice(data);
            chain.push((status, 1, true));
            self.queue.add_chain(&chain);
            status
        }

        /// Notifies the queue, runs the event loop, returns the used lengths.
        fn run(&mut self) -> Vec<u32> {
            notify(&mut self.transport, 0);
            self.events.run_with_timeout(1000).unwrap();
            self.queue
                .take_used()
                .into_iter()
                .map(|(_, len)| len)
                .collect()
        }

        fn status(&self, addr: GuestAddress) -> u8 {
            self.mem.read_obj(addr).unwrap()
        }

        /// Writes `bytes` at `sector` through the device; returns the status.
        fn write(&mut self, sector: u64, bytes: &[u8]) -> u8 {
            let buffer = self.alloc(bytes.len() as u64);
            self.mem.write_slice(bytes, buffer).unwrap();
            let status = self.submit(REQ_OUT, sector, &[(buffer, bytes.len() as u32, false)]);
            assert_eq!(self.run(), vec![1]);
            self.status(status)
        }

        /// Reads `len` bytes at `sector` through the device.
        fn read(&mut self, sector: u64, len: u32) -> (u8, Vec<u8>) {
            let buffer = self.alloc(u64::from(len));
            let status = self.submit(REQ_IN, sector, &[(buffer, len, true)]);
            let used = self.run();
            let mut bytes = vec![0u8; len as usize];
            self.mem.read_slice(&mut bytes, buffer).unwrap();
            if self.status(status) == STATUS_OK {
                assert_eq!(used, vec![len + 1]);
            }
            (self.status(status), bytes)
        }

        /// A discard or write-zeroes request for one range; returns the status.
        fn ranges(&mut self, request_type: u32, sector: u64, count: u32, flags: u32) -> u8 {
            let list = self.alloc(16);
            let mut raw = [0u8; 16];
            raw[0..8].copy_from_slice(&sector.to_le_bytes());
            raw[8..12].copy_from_slice(&count.to_le_bytes());
            raw[12..16].copy_from_slice(&flags.to_le_bytes());
            self.mem.write_slice(&raw, list).unwrap();
            let status = self.submit(request_type, 0, &[(list, 16, false)]);
            self.run();
            self.status(status)
        }
    }

    fn pattern(len: usize, seed: u8) -> Vec<u8> {
        (0..len)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
            .collect()
    }

    fn host_bytes(path: &Path, offset: u64, len: usize) -> Vec<u8> {
        let mut file = File::open(path).unwrap();
        file.seek(SeekFrom::Start(offset)).unwrap();
        let mut bytes = vec![0u8; len];
        file.read_exact(&mut bytes).unwrap();
        bytes
    }

    #[test]
    fn write_lands_in_the_host_file_and_reads_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = disk_image(dir.path());
        let mem = test_memory();
        let mut guest = Guest::new(&mem, BlockConfig::new(&path));
        let data = pattern(3 * 512, 7);

        let write_status = guest.write(3, &data);
        let (read_status, read_back) = guest.read(3, 3 * 512);

        assert_eq!(write_status, STATUS_OK);
        assert_eq!(host_bytes(&path, 3 * 512, data.len()), data);
        assert_eq!(read_status, STATUS_OK);
        assert_eq!(read_back, data);
        assert_eq!(take_interrupt(&mut guest.transport), INT_USED_RING);
    }

    #[test]
    fn read_sees_what_the_host_wrote_into_the_image() {
        let dir = tempfile::tempdir().unwrap();
        let path = disk_image(dir.path());
        let data = pattern(4096, 3);
        File::options()
            .write(true)
            .open(&path)
            .unwrap()
            .write_all_at(&data, 8192)
            .unwrap();
        let mem = test_memory();
        let mut guest = Guest::new(&mem, BlockConfig::new(&path));

        let (status, bytes) = guest.read(16, 4096);

        assert_eq!(status, STATUS_OK);
        assert_eq!(bytes, data);
    }

    #[test]
    fn read_past_the_end_gets_ioerr_and_the_device_keeps_working() {
        let dir = tempfile::tempdir().unwrap();
        let path = disk_image(dir.path());
        let mem = test_memory();
        let mut guest = Guest::new(&mem, BlockConfig::new(&path));
        let last = DISK_SIZE / 512 - 1;

        let (past_end, _) = guest.read(last, 1024);
        let (at_end, _) = guest.read(last, 512);

        assert_eq!(past_end, STATUS_IOERR);
        assert_eq!(at_end, STATUS_OK);
    }

    #[test]
    fn flush_succeeds() {
        let dir = tempfile::tempdir().unwrap();
        let mem = test_memory();
        let mut guest = Guest::new(&mem, BlockConfig::new(disk_image(dir.path())));
        guest.write(0, &pattern(512, 1));

        let status = guest.submit(REQ_FLUSH, 0, &[]);
        let used = guest.run();

        assert_eq!(used, vec![1]);
        assert_eq!(guest.status(status), STATUS_OK);
    }

    #[test]
    fn discard_punches_a_hole_in_the_host_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = disk_image(dir.path());
        let mem = test_memory();
        let mut guest = Guest::new(&mem, BlockConfig::new(&path));
        for chunk in 0..16 {
            guest.write(chunk * 128, &pattern(64 * 1024, chunk as u8));
        }
        let blocks_written = File::open(&path).unwrap().metadata().unwrap().blocks();

        let status = guest.ranges(REQ_DISCARD, 0, 2048, 0);

        let metadata = File::open(&path).unwrap().metadata().unwrap();
        assert_eq!(status, STATUS_OK);
        assert!(
            blocks_written >= 2048,
            "only {blocks_written} blocks allocated"
        );
        assert!(
            metadata.blocks() + 2048 <= blocks_written,
            "{} blocks left",
            metadata.blocks()
        );
        assert_eq!(metadata.len(), DISK_SIZE);
        assert_eq!(guest.read(0, 4096).1, vec![0u8; 4096]);
    }

    #[test]
    fn write_zeroes_zeroes_the_range_and_unmap_frees_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = disk_image(dir.path());
        let mem = test_memory();
        let mut guest = Guest::new(&mem, BlockConfig::new(&path));
        guest.write(0, &pattern(64 * 1024, 9));
        guest.write(1024, &pattern(64 * 1024, 10));
        let blocks_before = File::open(&path).unwrap().metadata().unwrap().blocks();

        let kept = guest.ranges(REQ_WRITE_ZEROES, 0, 128, 0);
        let blocks_after_zero = File::open(&path).unwrap().metadata().unwrap().blocks();
        let unmapped = guest.ranges(REQ_WRITE_ZEROES, 1024, 128, WRITE_ZEROES_FLAG_UNMAP);
        let blocks_after_unmap = File::open(&path).unwrap().metadata().unwrap().blocks();

        assert_eq!((kept, unmapped), (STATUS_OK, STATUS_OK));
        assert_eq!(host_bytes(&path, 0, 64 * 1024), vec![0u8; 64 * 1024]);
        assert_eq!(
            host_bytes(&path, 1024 * 512, 64 * 1024),
            vec![0u8; 64 * 1024]
        );
        assert_eq!(blocks_after_zero, blocks_before);
        assert!(blocks_after_unmap + 128 <= blocks_after_zero);
    }

    #[test]
    fn get_id_returns_the_serial() {
        let dir = tempfile::tempdir().unwrap();
        let mem = test_memory();
        let config = BlockConfig {
            serial: "distroctl-data".into(),
            ..BlockConfig::new(disk_image(dir.path()))
        };
        let mut guest = Guest::new(&mem, config);
        let buffer = guest.alloc(20);

        let status = guest.submit(REQ_GET_ID, 0, &[(buffer, 20, true)]);
        let used = guest.run();

        let mut id = [0u8; 20];
        mem.read_slice(&mut id, buffer).unwrap();
        assert_eq!(guest.status(status), STATUS_OK);
        assert_eq!(used, vec![21]);
        assert_eq!(&id[..15], b"distroctl-data\0");
    }

    #[test]
    fn read_only_disk_offers_ro_and_refuses_writes() {
        let dir = tempfile::tempdir().unwrap();
        let path = disk_image(dir.path());
        let mem = test_memory();
        let config = BlockConfig {
            read_only: true,
            ..BlockConfig::new(&path)
        };
        let mut guest = Guest::new(&mem, config);

        let status = guest.write(0, &pattern(512, 4));

        assert_eq!(status, STATUS_IOERR);
        assert_eq!(host_bytes(&path, 0, 512), vec![0u8; 512]);
        assert_ne!(guest.features & 1 << VIRTIO_BLK_F_RO, 0);
        assert_eq!(guest.features & 1 << VIRTIO_BLK_F_DISCARD, 0);
        assert_eq!(guest.read(0, 512).0, STATUS_OK);
    }

    #[test]
    fn unknown_request_type_gets_unsupp() {
        let dir = tempfile::tempdir().unwrap();
        let mem = test_memory();
        let mut guest = Guest::new(&mem, BlockConfig::new(disk_image(dir.path())));

        let status = guest.submit(99, 0, &[]);
        guest.run();

        assert_eq!(guest.status(status), STATUS_UNSUPP);
    }

    #[test]
    fn chain_without_status_is_returned_empty_and_the_next_request_runs() {
        let dir = tempfile::tempdir().unwrap();
        let mem = test_memory();
        let mut guest = Guest::new(&mem, BlockConfig::new(disk_image(dir.path())));
        let header = guest.alloc(16);
        guest.queue.add_chain(&[(header, 16, false)]);

        let used = guest.run();
        let (status, _) = guest.read(0, 512);

        assert_eq!(used, vec![0]);
        assert_eq!(status, STATUS_OK);
    }

    #[test]
    fn config_space_reports_capacity_and_limits() {
        let dir = tempfile::tempdir().unwrap();
        let mem = test_memory();
        let mut guest = Guest::new(&mem, BlockConfig::new(disk_image(dir.path())));
        let mut read = |offset: usize, len: usize| {
            let mut bytes = vec![0u8; len];
            guest
                .transport
                .read(CONFIG_SPACE_OFFSET + offset as u64, &mut bytes);
            bytes
        };

        assert_eq!(
            read(config_offset::CAPACITY, 8),
            (DISK_SIZE / 512).to_le_bytes()
        );
        assert_eq!(read(config_offset::SEG_MAX, 4), 254u32.to_le_bytes());
        assert_eq!(read(config_offset::BLK_SIZE, 4), 512u32.to_le_bytes());
        assert_eq!(
            read(config_offset::MAX_DISCARD_SEG, 4),
            MAX_RANGES.to_le_bytes()
        );
        assert_eq!(read(config_offset::WRITE_ZEROES_MAY_UNMAP, 1), [1]);
        assert_eq!(read(CONFIG_SPACE_SIZE, 4), [0; 4]);
    }

    #[test]
    fn direct_io_reads_and_writes_aligned_blocks() {
        let dir = tempfile::tempdir().unwrap();
        let path = disk_image(dir.path());
        let config = BlockConfig {
            direct_io: true,
            ..BlockConfig::new(&path)
        };
        let device = match BlockDevice::new(config.clone()) {
            Ok(device) => device,
            Err(e) => {
                eprintln!("skipping: the temporary directory refuses O_DIRECT ({e:?})");
                return;
            }
        };
        assert_eq!(device.capacity_sectors(), DISK_SIZE / 512);
        let mem = test_memory();
        let mut guest = Guest::new(&mem, config);
        let data = pattern(8192, 5);

        let status = guest.write(8, &data);
        let (read_status, read_back) = guest.read(8, 8192);

        assert_eq!((status, read_status), (STATUS_OK, STATUS_OK));
        assert_eq!(read_back, data);
        assert_eq!(host_bytes(&path, 4096, 8192), data);
    }

    #[test]
    fn opening_a_missing_image_names_it() {
        let error = BlockDevice::new(BlockConfig::new("/nonexistent/disk.img")).unwrap_err();

        let chain = format!("{error}: {}", std::error::Error::source(&error).unwrap());

        assert!(chain.contains("/nonexistent/disk.img"), "{chain}");
        assert_eq!(
            BlockConfig::new("/x/data.img").serial,
            "data.img",
            "default serial is the file name"
        );
    }
}
