//! The balloon device on the VMM's event loop: a notification of a queue
//! handles the chains queued on it.

use super::device::{BalloonDevice, BalloonError};
use crate::devices::virtio::EventDrivenDevice;

impl EventDrivenDevice for BalloonDevice {
    fn process_queue(&mut self, index: usize) -> Result<bool, BalloonError> {
        BalloonDevice::process_queue(self, index)
    }

    fn is_activated(&self) -> bool {
        BalloonDevice::is_activated(self)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use event_manager::{EventManager, MutEventSubscriber, SubscriberOps};
    use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

    use super::*;
    use crate::devices::virtio::balloon::defs::*;
    use crate::devices::virtio::balloon::discard::Discard;
    use crate::devices::virtio::mmio::defs::{
        CONFIG_SPACE_OFFSET, INT_USED_RING, REG_DEVICE_ID, REG_QUEUE_NUM_MAX, REG_QUEUE_SEL,
        REG_STATUS, STATUS_DEVICE_NEEDS_RESET, STATUS_DRIVER_OK,
    };
    use crate::devices::virtio::mmio::test_driver::{
        initialize, notify, read_reg, take_interrupt, test_memory, write_reg, GuestQueue,
        F_INDIRECT, F_NEXT, F_WRITE, VERSION_1,
    };
    use crate::devices::virtio::mmio::MmioTransport;

    type Subscriber = Arc<Mutex<dyn MutEventSubscriber + Send>>;

    const MIB: u64 = 1 << 20;
    const PAGE: u64 = 4096;
    const REPORTING: u64 = 1 << VIRTIO_BALLOON_F_FREE_PAGE_REPORTING;
    const DEFLATE_ON_OOM: u64 = 1 << VIRTIO_BALLOON_F_DEFLATE_ON_OOM;
    /// Where the tests' "free" guest memory starts (test memory is 32 MiB).
    const FREE: u64 = 4 * MIB;
    /// Where page lists are put.
    const LISTS: u64 = 0x8_0000;

    /// The guest's side: transport, event loop and the three queues.
    struct Guest<'m> {
        mem: &'m GuestMemoryMmap,
        transport: MmioTransport<BalloonDevice>,
        events: EventManager<Subscriber>,
        queues: Vec<GuestQueue<'m>>,
        features: u64,
    }

    impl<'m> Guest<'m> {
        /// A driver that wants `wanted` and sets up `queue_count` queues.
        fn new(mem: &'m GuestMemoryMmap, wanted: u64, queue_count: usize) -> Self {
            Self::with_discard(mem, wanted, queue_count, Discard::Private)
        }

        /// As [`Guest::new`], for a device that discards with `discard`.
        fn with_discard(
            mem: &'m GuestMemoryMmap,
            wanted: u64,
            queue_count: usize,
            discard: Discard,
        ) -> Self {
            let device = Arc::new(Mutex::new(BalloonDevice::new(discard)));
            let mut transport = MmioTransport::new(mem.clone(), device).unwrap();
            let mut events = EventManager::<Subscriber>::new().unwrap();
            events.add_subscriber(Arc::new(Mutex::new(transport.event_handler().unwrap())));
            let queues: Vec<GuestQueue<'m>> = (0..queue_count as u64)
                .map(|i| GuestQueue::new(mem, GuestAddress(0x1_0000 * (i + 1)), 16))
                .collect();
            let features = initialize(&mut transport, wanted, &queues.iter().collect::<Vec<_>>());
            Self {
                mem,
                transport,
                events,
                queues,
                features,
            }
        }

        /// A driver like Linux's with free page reporting.
        fn reporting(mem: &'m GuestMemoryMmap) -> Self {
            Self::new(mem, u64::MAX, NUM_QUEUES)
        }

        /// Queues `chain` on `queue`, notifies, runs the event loop and
        /// returns the used elements.
        fn send(&mut self, queue: usize, chain: &[(GuestAddress, u32, bool)]) -> Vec<(u16, u32)> {
            let head = self.queues[queue].add_chain(chain);
            notify(&mut self.transport, queue as u32);
            self.events.run_with_timeout(1000).unwrap();
            let used = self.queues[queue].take_used();
            assert_eq!(used.first().map(|u| u.0), Some(head), "chain not returned");
            used
        }

        /// A page list of `pfns` as one device-readable (or, if `writable`,
        /// device-writable) descriptor.
        fn page_list(&mut self, queue: usize, pfns: &[u32], writable: bool) -> Vec<(u16, u32)> {
            let bytes: Vec<u8> = pfns.iter().flat_map(|p| p.to_le_bytes()).collect();
            self.mem.write_slice(&bytes, GuestAddress(LISTS)).unwrap();
            self.send(
                queue,
                &[(GuestAddress(LISTS), bytes.len() as u32, writable)],
            )
        }

        fn returned_bytes(&self) -> u64 {
            self.transport.device().lock().unwrap().returned_bytes()
        }
    }

    /// Fills `[addr, addr + len)` with a non-zero pattern.
    fn fill(mem: &GuestMemoryMmap, addr: u64, len: u64) {
        mem.write_slice(&vec![0xa5u8; len as usize], GuestAddress(addr))
            .unwrap();
    }

    /// Whether every byte of `[addr, addr + len)` holds `byte`.
    fn all(mem: &GuestMemoryMmap, addr: u64, len: u64, byte: u8) -> bool {
        let mut bytes = vec![0u8; len as usize];
        mem.read_slice(&mut bytes, GuestAddress(addr)).unwrap();
        bytes.iter().all(|&b| b == byte)
    }

    #[test]
    fn device_offers_reporting_and_deflate_on_oom_with_three_queues() {
        let mem = test_memory();

        let mut guest = Guest::reporting(&mem);

        assert_eq!(guest.features, VERSION_1 | REPORTING | DEFLATE_ON_OOM);
        assert_eq!(
            read_reg(&mut guest.transport, REG_DEVICE_ID),
            VIRTIO_ID_BALLOON
        );
        for queue in 0..NUM_QUEUES as u32 {
            write_reg(&mut guest.transport, REG_QUEUE_SEL, queue);
            assert_eq!(
                read_reg(&mut guest.transport, REG_QUEUE_NUM_MAX),
                u32::from(QUEUE_SIZE)
            );
        }
        write_reg(&mut guest.transport, REG_QUEUE_SEL, NUM_QUEUES as u32);
        assert_eq!(read_reg(&mut guest.transport, REG_QUEUE_NUM_MAX), 0);
        assert!(guest.transport.device().lock().unwrap().is_activated());
    }

    #[test]
    fn driver_without_reporting_runs_with_inflate_and_deflate_only() {
        let mem = test_memory();

        let mut guest = Guest::new(&mem, VERSION_1 | DEFLATE_ON_OOM, 2);

        let status = read_reg(&mut guest.transport, REG_STATUS);
        assert_eq!(guest.features, VERSION_1 | DEFLATE_ON_OOM);
        assert_ne!(status & STATUS_DRIVER_OK, 0);
        assert_eq!(status & STATUS_DEVICE_NEEDS_RESET, 0);
    }

    #[test]
    fn reported_range_reads_back_as_zeros_and_its_neighbours_keep_their_data() {
        let mem = test_memory();
        let mut guest = Guest::reporting(&mem);
        fill(&mem, FREE - PAGE, 2 * MIB + 2 * PAGE);

        let used = guest.send(
            REPORTING_QUEUE,
            &[(GuestAddress(FREE), 2 * MIB as u32, true)],
        );

        assert_eq!(used.len(), 1);
        assert_eq!(used[0].1, 0, "the device writes nothing into a report");
        assert!(
            all(&mem, FREE, 2 * MIB, 0),
            "reported pages kept their data"
        );
        assert!(all(&mem, FREE - PAGE, PAGE, 0xa5));
        assert!(all(&mem, FREE + 2 * MIB, PAGE, 0xa5));
        assert_eq!(guest.returned_bytes(), 2 * MIB);
        assert_eq!(take_interrupt(&mut guest.transport), INT_USED_RING);
    }

    #[test]
    fn report_with_several_ranges_gives_back_each() {
        let mem = test_memory();
        let mut guest = Guest::reporting(&mem);
        fill(&mem, FREE, 8 * MIB);

        guest.send(
            REPORTING_QUEUE,
            &[
                (GuestAddress(FREE), 2 * MIB as u32, true),
                (GuestAddress(FREE + 4 * MIB), 4 * MIB as u32, true),
            ],
        );

        assert!(all(&mem, FREE, 2 * MIB, 0));
        assert!(all(&mem, FREE + 2 * MIB, 2 * MIB, 0xa5));
        assert!(all(&mem, FREE + 4 * MIB, 4 * MIB, 0));
        assert_eq!(guest.returned_bytes(), 6 * MIB);
    }

    #[test]
    fn report_reaching_outside_guest_memory_is_refused_whole_and_the_device_keeps_working() {
        let mem = test_memory();
        let mut guest = Guest::reporting(&mem);
        let end = 32 * MIB;
        fill(&mem, FREE, 2 * MIB);
        fill(&mem, end - MIB, MIB);

        let refused = guest.send(
            REPORTING_QUEUE,
            &[
                (GuestAddress(FREE), 2 * MIB as u32, true),
                (GuestAddress(end - MIB), 2 * MIB as u32, true),
            ],
        );
        let untouched = all(&mem, FREE, 2 * MIB, 0xa5) && all(&mem, end - MIB, MIB, 0xa5);
        guest.send(
            REPORTING_QUEUE,
            &[(GuestAddress(FREE), 2 * MIB as u32, true)],
        );

        assert_eq!(refused[0].1, 0);
        assert!(untouched, "a refused report touched memory");
        assert!(
            all(&mem, FREE, 2 * MIB, 0),
            "the next report was not served"
        );
        assert_eq!(guest.returned_bytes(), 2 * MIB);
    }

    #[test]
    fn report_far_outside_guest_memory_is_returned_empty() {
        let mem = test_memory();
        let mut guest = Guest::reporting(&mem);

        let used = guest.send(
            REPORTING_QUEUE,
            &[(GuestAddress(1 << 40), 2 * MIB as u32, true)],
        );

        assert_eq!(used.len(), 1);
        assert_eq!(used[0].1, 0);
        assert_eq!(guest.returned_bytes(), 0);
    }

    #[test]
    fn unaligned_report_is_refused_without_touching_memory() {
        let mem = test_memory();
        let mut guest = Guest::reporting(&mem);
        fill(&mem, FREE, 2 * MIB);

        let misplaced = guest.send(
            REPORTING_QUEUE,
            &[(GuestAddress(FREE + 512), 2 * MIB as u32, true)],
        );
        let odd_length = guest.send(
            REPORTING_QUEUE,
            &[(GuestAddress(FREE), PAGE as u32 + 1, true)],
        );

        assert_eq!((misplaced[0].1, odd_length[0].1), (0, 0));
        assert!(all(&mem, FREE, 2 * MIB, 0xa5));
        assert_eq!(guest.returned_bytes(), 0);
    }

    #[test]
    fn report_in_a_device_readable_descriptor_is_refused() {
        let mem = test_memory();
        let mut guest = Guest::reporting(&mem);
        fill(&mem, FREE, 2 * MIB);

        let used = guest.send(
            REPORTING_QUEUE,
            &[(GuestAddress(FREE), 2 * MIB as u32, false)],
        );

        assert_eq!(used[0].1, 0);
        assert!(all(&mem, FREE, 2 * MIB, 0xa5));
        assert_eq!(guest.returned_bytes(), 0);
    }

    #[test]
    fn inflated_pages_are_given_back_and_deflate_leaves_memory_alone() {
        let mem = test_memory();
        let mut guest = Guest::reporting(&mem);
        let first = (FREE / PAGE) as u32;
        fill(&mem, FREE, 4 * PAGE);

        let inflated = guest.page_list(INFLATE_QUEUE, &[first, first + 1, first + 3], false);
        fill(&mem, FREE, 2 * PAGE);
        let deflated = guest.page_list(DEFLATE_QUEUE, &[first, first + 1], false);

        assert_eq!((inflated[0].1, deflated[0].1), (0, 0));
        assert!(all(&mem, FREE, 2 * PAGE, 0xa5), "deflate dropped pages");
        assert!(all(&mem, FREE + 2 * PAGE, PAGE, 0xa5));
        assert!(all(&mem, FREE + 3 * PAGE, PAGE, 0));
        assert_eq!(guest.returned_bytes(), 3 * PAGE);
    }

    #[test]
    fn inflate_in_a_device_writable_descriptor_is_refused() {
        let mem = test_memory();
        let mut guest = Guest::reporting(&mem);
        let first = (FREE / PAGE) as u32;
        fill(&mem, FREE, 2 * PAGE);

        let used = guest.page_list(INFLATE_QUEUE, &[first, first + 1], true);

        assert_eq!(used[0].1, 0);
        assert!(all(&mem, FREE, 2 * PAGE, 0xa5));
        assert_eq!(guest.returned_bytes(), 0);
    }

    #[test]
    fn inflate_naming_a_page_outside_guest_memory_is_refused_whole() {
        let mem = test_memory();
        let mut guest = Guest::reporting(&mem);
        let first = (FREE / PAGE) as u32;
        fill(&mem, FREE, PAGE);

        guest.page_list(INFLATE_QUEUE, &[first, u32::MAX], false);

        assert!(all(&mem, FREE, PAGE, 0xa5));
        assert_eq!(guest.returned_bytes(), 0);
    }

    #[test]
    fn config_space_asks_for_nothing_and_keeps_what_the_driver_wrote() {
        let mem = test_memory();
        let mut guest = Guest::reporting(&mem);
        let offset = |field: usize| CONFIG_SPACE_OFFSET + field as u64;

        guest
            .transport
            .write(offset(config_offset::NUM_PAGES), &7u32.to_le_bytes());
        guest
            .transport
            .write(offset(config_offset::ACTUAL), &3u32.to_le_bytes());
        let mut target = [0xffu8; 4];
        let mut actual = [0u8; 4];
        let mut beyond = [0xffu8; 4];
        guest
            .transport
            .read(offset(config_offset::NUM_PAGES), &mut target);
        guest
            .transport
            .read(offset(config_offset::ACTUAL), &mut actual);
        guest.transport.read(offset(CONFIG_SPACE_SIZE), &mut beyond);

        assert_eq!(u32::from_le_bytes(target), 0);
        assert_eq!(u32::from_le_bytes(actual), 3);
        assert_eq!(beyond, [0; 4]);
    }

    #[test]
    fn broken_descriptor_chains_are_refused_whole_and_the_device_keeps_working() {
        let mem = test_memory();
        let mut guest = Guest::reporting(&mem);
        let report = (GuestAddress(FREE), 2 * MIB as u32);
        let outside = GuestAddress(1 << 40);
        // Each chain starts with a good 2 MiB report, then goes wrong. They
        // fill table slots 0, 1 and 2-3 of a fresh queue, in that order.
        let chains: [&[(GuestAddress, u32, u16, u16)]; 3] = [
            // It loops back to itself (slot 0).
            &[(report.0, report.1, F_WRITE | F_NEXT, 0)],
            // Its next descriptor lies beyond the queue.
            &[(report.0, report.1, F_WRITE | F_NEXT, 999)],
            // Its next descriptor (slot 3) is an indirect table outside memory.
            &[
                (report.0, report.1, F_WRITE | F_NEXT, 3),
                (outside, 16, F_INDIRECT, 0),
            ],
        ];
        fill(&mem, FREE, 2 * MIB);

        for chain in chains {
            let head = guest.queues[REPORTING_QUEUE].add_raw_chain(chain);
            notify(&mut guest.transport, REPORTING_QUEUE as u32);
            guest.events.run_with_timeout(1000).unwrap();
            let used = guest.queues[REPORTING_QUEUE].take_used();

            assert_eq!(used, vec![(head, 0)], "{chain:?}");
            assert!(all(&mem, FREE, 2 * MIB, 0xa5), "{chain:?} touched memory");
        }
        guest.send(REPORTING_QUEUE, &[(report.0, report.1, true)]);

        assert!(
            all(&mem, FREE, 2 * MIB, 0),
            "the next report was not served"
        );
        assert_eq!(guest.returned_bytes(), 2 * MIB);
        let status = read_reg(&mut guest.transport, REG_STATUS);
        assert_eq!(status & STATUS_DEVICE_NEEDS_RESET, 0);
    }

    #[test]
    fn head_outside_the_queue_is_skipped_and_the_device_keeps_working() {
        let mem = test_memory();
        let mut guest = Guest::reporting(&mem);
        fill(&mem, FREE, 2 * MIB);

        guest.queues[REPORTING_QUEUE].push_avail(500);
        notify(&mut guest.transport, REPORTING_QUEUE as u32);
        guest.events.run_with_timeout(1000).unwrap();
        let skipped = guest.queues[REPORTING_QUEUE].take_used();
        guest.send(
            REPORTING_QUEUE,
            &[(GuestAddress(FREE), 2 * MIB as u32, true)],
        );

        assert!(skipped.is_empty());
        assert!(all(&mem, FREE, 2 * MIB, 0));
        assert_eq!(guest.returned_bytes(), 2 * MIB);
    }

    #[test]
    fn device_that_keeps_memory_offers_no_reporting_and_keeps_inflated_pages() {
        let mem = test_memory();
        let mut guest = Guest::with_discard(&mem, u64::MAX, 2, Discard::Keep);
        let first = (FREE / PAGE) as u32;
        fill(&mem, FREE, 2 * PAGE);

        let used = guest.page_list(INFLATE_QUEUE, &[first, first + 1], false);

        assert_eq!(guest.features, VERSION_1 | DEFLATE_ON_OOM);
        assert_eq!(used[0].1, 0);
        assert!(all(&mem, FREE, 2 * PAGE, 0xa5));
        assert_eq!(guest.returned_bytes(), 0);
    }

    #[test]
    fn notification_before_activation_is_ignored() {
        let mem = test_memory();
        let device = Arc::new(Mutex::new(BalloonDevice::new(Discard::Private)));
        let mut transport = MmioTransport::new(mem.clone(), device).unwrap();
        let mut events = EventManager::<Subscriber>::new().unwrap();
        events.add_subscriber(Arc::new(Mutex::new(transport.event_handler().unwrap())));

        notify(&mut transport, REPORTING_QUEUE as u32);
        events.run_with_timeout(100).unwrap();

        assert_eq!(transport.interrupt().status(), 0);
        assert!(transport.queue_events()[REPORTING_QUEUE].read().is_err());
    }
}
