//! The event-loop side of a virtio-mmio device: an
//! `event_manager::MutEventSubscriber` that watches the device's queue
//! notification eventfds and host-side fds, runs the device's queue work and
//! raises the used-ring interrupt when the driver wants one.

use std::os::fd::{AsRawFd, RawFd};
use std::sync::{Arc, Mutex};

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};
use vmm_sys_util::eventfd::EventFd;

use super::interrupt::{InterruptLine, InterruptReason};
use super::lock_device;
use crate::devices::virtio::EventDrivenDevice;

/// Runs one [`EventDrivenDevice`] from readiness events; made by
/// [`MmioTransport::event_handler`](super::MmioTransport::event_handler).
#[derive(Debug)]
pub struct VirtioEventHandler<D> {
    device: Arc<Mutex<D>>,
    queue_events: Vec<EventFd>,
    interrupt: Arc<InterruptLine>,
}

/// What a readable fd means.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Wakeup {
    Queue(usize),
    Host(RawFd),
}

impl<D: EventDrivenDevice> VirtioEventHandler<D> {
    /// Wraps a device with duplicates of its transport's queue eventfds and
    /// its interrupt line.
    pub fn new(
        device: Arc<Mutex<D>>,
        queue_events: Vec<EventFd>,
        interrupt: Arc<InterruptLine>,
    ) -> Self {
        Self {
            device,
            queue_events,
            interrupt,
        }
    }

    /// Every fd to watch: the queue eventfds, then the device's host fds.
    pub fn watched_fds(&self) -> Vec<RawFd> {
        let host_fds = lock_device(&self.device).host_fds();
        self.queue_events
            .iter()
            .map(AsRawFd::as_raw_fd)
            .chain(host_fds)
            .collect()
    }

    /// Does the work for readable `fd` and raises the interrupt if due.
    /// Device errors are logged: a guest's bad request must not stop the
    /// event loop.
    pub fn handle_fd(&mut self, fd: RawFd) {
        let wakeup = match self.queue_events.iter().position(|e| e.as_raw_fd() == fd) {
            Some(index) => Wakeup::Queue(index),
            None => Wakeup::Host(fd),
        };
        let mut device = lock_device(&self.device);
        let result = match wakeup {
            Wakeup::Queue(index) => {
                // Empty counter: a reset drained it, nothing to do.
                if self.queue_events[index].read().is_err() || !device.is_activated() {
                    return;
                }
                device.process_queue(index)
            }
            Wakeup::Host(fd) => device.process_host_fd(fd),
        };
        let config_changed = device.take_config_change();
        drop(device);
        if config_changed {
            if let Err(e) = self.interrupt.config_changed() {
                tracing::error!(error = %e, "virtio: cannot tell the guest its configuration changed");
            }
        }
        match result {
            Ok(true) => {
                if let Err(e) = self.interrupt.trigger(InterruptReason::UsedRing) {
                    tracing::error!(error = %e, "virtio: cannot interrupt the guest");
                }
            }
            Ok(false) => {}
            Err(e) => tracing::error!(?wakeup, error = %e, "virtio: device work failed"),
        }
    }
}

impl<D: EventDrivenDevice> MutEventSubscriber for VirtioEventHandler<D> {
    fn process(&mut self, events: Events, ops: &mut EventOps) {
        if events.event_set().contains(EventSet::IN) {
            self.handle_fd(events.fd());
        } else if events
            .event_set()
            .intersects(EventSet::HANG_UP | EventSet::ERROR)
        {
            // A level-triggered fd in error would spin the loop.
            tracing::error!(
                fd = events.fd(),
                "virtio: a watched fd failed; no longer watching it"
            );
            if let Err(e) = ops.remove(events) {
                tracing::error!(error = ?e, "virtio: cannot stop watching an fd");
            }
        }
    }

    fn init(&mut self, ops: &mut EventOps) {
        for fd in self.watched_fds() {
            if let Err(e) = ops.add(Events::new_raw(fd, EventSet::IN)) {
                tracing::error!(fd, error = ?e, "virtio: cannot watch a device fd");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::thread;

    use event_manager::{EventManager, SubscriberOps};
    use vm_memory::{Bytes, GuestAddress};

    use super::*;
    use crate::devices::virtio::block::BlockDevice;
    use crate::devices::virtio::mmio::defs::INT_USED_RING;
    use crate::devices::virtio::mmio::test_driver::{
        initialize, notify, take_interrupt, test_memory, GuestQueue,
    };
    use crate::devices::virtio::mmio::MmioTransport;
    use crate::devices::virtio::rng::RngDevice;
    use crate::devices::virtio::vsock::test_driver::wait_readable;
    use crate::devices::virtio::vsock::VsockDevice;

    fn assert_send<T: Send>() {}

    #[test]
    fn transports_and_handlers_can_move_to_other_threads() {
        assert_send::<MmioTransport<BlockDevice>>();
        assert_send::<MmioTransport<RngDevice>>();
        assert_send::<MmioTransport<VsockDevice>>();
        assert_send::<VirtioEventHandler<BlockDevice>>();
        assert_send::<VirtioEventHandler<RngDevice>>();
        assert_send::<VirtioEventHandler<VsockDevice>>();
    }

    #[test]
    fn vcpu_thread_notifies_while_the_event_loop_thread_processes() {
        let mem = test_memory();
        let device = Arc::new(Mutex::new(RngDevice::new()));
        let mut transport = MmioTransport::new(mem.clone(), device).unwrap();
        let handler = transport.event_handler().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let event_loop = {
            let stop = Arc::clone(&stop);
            thread::spawn(move || {
                let mut events =
                    EventManager::<Arc<Mutex<dyn MutEventSubscriber + Send>>>::new().unwrap();
                events.add_subscriber(Arc::new(Mutex::new(handler)));
                while !stop.load(Ordering::Acquire) {
                    events.run_with_timeout(20).unwrap();
                }
            })
        };
        let mut queue = GuestQueue::new(&mem, GuestAddress(0x1_0000), 16);
        initialize(&mut transport, 1 << 32, &[&queue]);
        let mut served = 0;

        for round in 0..50u64 {
            let buffer = GuestAddress(0x10_0000 + round * 0x100);
            mem.write_slice(&[0u8; 64], buffer).unwrap();
            queue.add_chain(&[(buffer, 64, true)]);
            notify(&mut transport, 0);
            let irq = transport.interrupt().event().as_raw_fd();
            while served <= round {
                assert!(wait_readable(irq, 2000), "no interrupt in round {round}");
                transport.interrupt().event().read().unwrap();
                assert_ne!(take_interrupt(&mut transport) & INT_USED_RING, 0);
                served += queue.take_used().len() as u64;
            }
        }
        stop.store(true, Ordering::Release);
        event_loop.join().unwrap();

        assert_eq!(served, 50);
    }
}
