//! The rng device on the VMM's event loop: a notification of the request
//! queue fills the queued buffers.

use super::device::{RngDevice, RngError};
use crate::devices::virtio::EventDrivenDevice;

impl EventDrivenDevice for RngDevice {
    fn process_queue(&mut self, _index: usize) -> Result<bool, RngError> {
        self.process_requests()
    }

    fn is_activated(&self) -> bool {
        RngDevice::is_activated(self)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use event_manager::{EventManager, MutEventSubscriber, SubscriberOps};
    use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

    use super::*;
    use crate::devices::virtio::mmio::defs::{INT_USED_RING, REG_INTERRUPT_STATUS};
    use crate::devices::virtio::mmio::test_driver::{
        initialize, notify, read_reg, take_interrupt, test_memory, GuestQueue,
    };
    use crate::devices::virtio::mmio::MmioTransport;

    type Subscriber = Arc<Mutex<dyn MutEventSubscriber + Send>>;

    /// A transport over a fresh device; the event manager is `None` when
    /// the test drives the device itself.
    fn transport(
        mem: &GuestMemoryMmap,
        with_event_loop: bool,
    ) -> (MmioTransport<RngDevice>, Option<EventManager<Subscriber>>) {
        let device = Arc::new(Mutex::new(RngDevice::new()));
        let transport = MmioTransport::new(mem.clone(), device).unwrap();
        let events = with_event_loop.then(|| {
            let mut events = EventManager::<Subscriber>::new().unwrap();
            events.add_subscriber(Arc::new(Mutex::new(transport.event_handler().unwrap())));
            events
        });
        (transport, events)
    }

    /// A transport the driver initialised with one 16-entry queue.
    fn started(mem: &GuestMemoryMmap) -> (MmioTransport<RngDevice>, GuestQueue<'_>) {
        let (mut transport, _) = transport(mem, false);
        let queue = GuestQueue::new(mem, GuestAddress(0x1_0000), 16);
        initialize(&mut transport, 1 << 32, &[&queue]);
        (transport, queue)
    }

    fn process(transport: &MmioTransport<RngDevice>) -> bool {
        transport.device().lock().unwrap().process_queue(0).unwrap()
    }

    #[test]
    fn guest_buffers_are_filled_over_mmio_and_interrupt_raised() {
        let mem = test_memory();
        let (mut transport, events) = transport(&mem, true);
        let mut events = events.unwrap();
        let mut queue = GuestQueue::new(&mem, GuestAddress(0x1_0000), 16);
        initialize(&mut transport, 1 << 32, &[&queue]);
        let buffers = [GuestAddress(0x10_0000), GuestAddress(0x10_1000)];
        let head = queue.add_chain(&[(buffers[0], 100, true), (buffers[1], 28, true)]);

        notify(&mut transport, 0);
        events.run_with_timeout(1000).unwrap();

        assert_eq!(queue.take_used(), vec![(head, 128)]);
        let mut bytes = [0u8; 100];
        mem.read_slice(&mut bytes, buffers[0]).unwrap();
        assert!(bytes.iter().any(|&b| b != 0), "buffer left all zeros");
        assert_eq!(transport.interrupt().event().read().unwrap(), 1);
        assert_eq!(take_interrupt(&mut transport), INT_USED_RING);
        assert_eq!(read_reg(&mut transport, REG_INTERRUPT_STATUS), 0);
    }

    #[test]
    fn request_larger_than_the_cap_gets_the_cap() {
        let mem = test_memory();
        let (transport, mut queue) = started(&mem);
        let head = queue.add_chain(&[(GuestAddress(0x10_0000), 0x20_0000, true)]);

        let wants_interrupt = process(&transport);

        assert!(wants_interrupt);
        assert_eq!(queue.take_used(), vec![(head, 64 * 1024)]);
    }

    #[test]
    fn read_only_descriptors_get_nothing() {
        let mem = test_memory();
        let (transport, mut queue) = started(&mem);
        mem.write_slice(&[0u8; 32], GuestAddress(0x10_0000))
            .unwrap();
        let head = queue.add_chain(&[(GuestAddress(0x10_0000), 32, false)]);

        process(&transport);

        assert_eq!(queue.take_used(), vec![(head, 0)]);
        let mut bytes = [1u8; 32];
        mem.read_slice(&mut bytes, GuestAddress(0x10_0000)).unwrap();
        assert_eq!(bytes, [0u8; 32]);
    }

    #[test]
    fn notification_before_activation_is_ignored() {
        let mem = test_memory();
        let (mut transport, events) = transport(&mem, true);
        let mut events = events.unwrap();

        notify(&mut transport, 0);
        events.run_with_timeout(100).unwrap();

        assert_eq!(transport.interrupt().status(), 0);
        assert!(
            transport.queue_events()[0].read().is_err(),
            "notification not consumed"
        );
    }
}
