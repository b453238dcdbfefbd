//! Runs an activated vsock device from readiness events.
//!
//! In our own VMM the transport turns each guest queue notification into a
//! write on an eventfd, and raises interrupts through an [`InterruptSignal`].
//! The handler names the fds to watch ([`VsockEventHandler::sources`]) and
//! does the work for whichever became readable
//! ([`VsockEventHandler::handle`]), so it plugs into any readiness loop;
//! [`VsockEventHandler::run_until_woken`] is a minimal epoll loop for a
//! dedicated thread. Everything is level-triggered and consumed on handling,
//! so nothing is polled in a loop.

use std::io;
use std::os::fd::{AsRawFd, RawFd};

use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::defs::{EVQ_INDEX, NUM_QUEUES, RXQ_INDEX, TXQ_INDEX};
use super::device::{DeviceError, VsockDevice, VsockEvent};
use crate::devices::virtio::EventDrivenDevice;

/// How the transport raises the guest's used-buffer interrupt.
pub trait InterruptSignal {
    /// Tells the guest that `queue_index` has used buffers.
    fn signal_used(&self, queue_index: usize) -> io::Result<()>;
}

/// Why running the device for an event failed.
#[derive(Debug, thiserror::Error)]
pub enum EventHandlerError {
    /// Creating the wake eventfd or the epoll instance failed.
    #[error("cannot set up the vsock event loop")]
    Setup(#[source] io::Error),
    /// Consuming a notification eventfd failed.
    #[error("cannot read a vsock queue notification")]
    ReadNotification(#[source] io::Error),
    /// The device failed.
    #[error("the vsock device failed")]
    Device(#[source] DeviceError),
    /// Raising the interrupt failed.
    #[error("cannot interrupt the guest for queue {0}")]
    Interrupt(usize, #[source] io::Error),
    /// Waiting for events failed.
    #[error("cannot wait for vsock events")]
    Wait(#[source] io::Error),
}

/// Something that can wake the handler.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventSource {
    /// The guest notified the receive queue.
    RxQueue,
    /// The guest notified the transmit queue.
    TxQueue,
    /// The guest notified the event queue.
    EventQueue,
    /// A host socket is ready.
    Backend,
    /// Someone called [`VsockWaker::wake`].
    Wake,
}

impl EventSource {
    const ALL: [EventSource; 5] = [
        EventSource::RxQueue,
        EventSource::TxQueue,
        EventSource::EventQueue,
        EventSource::Backend,
        EventSource::Wake,
    ];

    fn token(self) -> u64 {
        self as u64
    }

    fn from_token(token: u64) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.token() == token)
    }
}

/// Wakes a handler from another thread: [`VsockEventHandler::run_until_woken`]
/// returns, so its owner can stop or reconfigure it.
#[derive(Debug)]
pub struct VsockWaker(EventFd);

impl VsockWaker {
    /// Wakes the handler.
    pub fn wake(&self) -> io::Result<()> {
        self.0.write(1)
    }
}

/// Drives an activated [`VsockDevice`].
#[derive(Debug)]
pub struct VsockEventHandler<I> {
    device: VsockDevice,
    queue_events: [EventFd; NUM_QUEUES],
    wake: EventFd,
    interrupt: I,
}

impl<I: InterruptSignal> VsockEventHandler<I> {
    /// Wraps an activated device with the eventfds its transport writes when
    /// the guest notifies each queue (in queue-index order).
    pub fn new(
        device: VsockDevice,
        queue_events: [EventFd; NUM_QUEUES],
        interrupt: I,
    ) -> Result<Self, EventHandlerError> {
        let wake = EventFd::new(EFD_NONBLOCK).map_err(EventHandlerError::Setup)?;
        Ok(Self {
            device,
            queue_events,
            wake,
            interrupt,
        })
    }

    /// The device.
    pub fn device(&self) -> &VsockDevice {
        &self.device
    }

    /// The device, to reset its transport or inspect it between events.
    pub fn device_mut(&mut self) -> &mut VsockDevice {
        &mut self.device
    }

    /// A handle that wakes this handler from anywhere.
    pub fn waker(&self) -> Result<VsockWaker, EventHandlerError> {
        self.wake
            .try_clone()
            .map(VsockWaker)
            .map_err(EventHandlerError::Setup)
    }

    /// The fds to watch for `EPOLLIN` and what each one is.
    pub fn sources(&self) -> Vec<(RawFd, EventSource)> {
        vec![
            (
                self.queue_events[RXQ_INDEX].as_raw_fd(),
                EventSource::RxQueue,
            ),
            (
                self.queue_events[TXQ_INDEX].as_raw_fd(),
                EventSource::TxQueue,
            ),
            (
                self.queue_events[EVQ_INDEX].as_raw_fd(),
                EventSource::EventQueue,
            ),
            (self.device.as_raw_fd(), EventSource::Backend),
            (self.wake.as_raw_fd(), EventSource::Wake),
        ]
    }

    /// Does the work for a source that became readable and raises the
    /// interrupts the guest asked for.
    pub fn handle(&mut self, source: EventSource) -> Result<(), EventHandlerError> {
        let event = match source {
            EventSource::RxQueue => {
                consume(&self.queue_events[RXQ_INDEX])?;
                VsockEvent::RxQueue
            }
            EventSource::TxQueue => {
                consume(&self.queue_events[TXQ_INDEX])?;
                VsockEvent::TxQueue
            }
            EventSource::EventQueue => {
                consume(&self.queue_events[EVQ_INDEX])?;
                VsockEvent::EventQueue
            }
            EventSource::Backend => VsockEvent::Backend,
            EventSource::Wake => {
                consume(&self.wake)?;
                return Ok(());
            }
        };
        let used = self
            .device
            .handle_event(event)
            .map_err(EventHandlerError::Device)?;
        for (queue, wanted) in [
            (RXQ_INDEX, used.rx),
            (TXQ_INDEX, used.tx),
            (EVQ_INDEX, used.event),
        ] {
            if wanted {
                self.interrupt
                    .signal_used(queue)
                    .map_err(|e| EventHandlerError::Interrupt(queue, e))?;
            }
        }
        Ok(())
    }

    /// Handles events until the [`VsockWaker`] fires.
    pub fn run_until_woken(&mut self) -> Result<(), EventHandlerError> {
        let epoll = Epoll::new().map_err(EventHandlerError::Setup)?;
        for (fd, source) in self.sources() {
            epoll
                .ctl(
                    ControlOperation::Add,
                    fd,
                    EpollEvent::new(EventSet::IN, source.token()),
                )
                .map_err(EventHandlerError::Setup)?;
        }
        let mut events = [EpollEvent::default(); 8];
        loop {
            let count = match epoll.wait(-1, &mut events) {
                Ok(count) => count,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(EventHandlerError::Wait(e)),
            };
            for event in &events[..count] {
                let Some(source) = EventSource::from_token(event.data()) else {
                    continue;
                };
                self.handle(source)?;
                if source == EventSource::Wake {
                    return Ok(());
                }
            }
        }
    }
}

/// The vsock device on the VMM's event loop (see
/// `crate::devices::virtio::mmio`): queue notifications and host-socket
/// readiness run the same [`VsockDevice::handle_event`] as
/// [`VsockEventHandler::handle`].
impl EventDrivenDevice for VsockDevice {
    fn process_queue(&mut self, index: usize) -> Result<bool, DeviceError> {
        let Some(event) = VsockEvent::for_queue(index) else {
            return Ok(false);
        };
        Ok(self.handle_event(event)?.any())
    }

    fn host_fds(&self) -> Vec<RawFd> {
        vec![self.as_raw_fd()]
    }

    fn process_host_fd(&mut self, _fd: RawFd) -> Result<bool, DeviceError> {
        if !self.is_activated() {
            // Host clients may connect before the guest driver is up; their
            // packets wait in the muxer.
            self.process_backend()?;
            return Ok(false);
        }
        Ok(self.handle_event(VsockEvent::Backend)?.any())
    }

    fn is_activated(&self) -> bool {
        VsockDevice::is_activated(self)
    }
}

/// Reads an eventfd's counter; an empty counter is not an error (another
/// path may have consumed it first).
fn consume(eventfd: &EventFd) -> Result<(), EventHandlerError> {
    match eventfd.read() {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(()),
        Err(e) => Err(EventHandlerError::ReadNotification(e)),
    }
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;
    use std::rc::Rc;

    use std::io::Write;
    use std::os::unix::net::{UnixListener, UnixStream};
    use std::path::Path;
    use std::sync::{Arc, Mutex};

    use event_manager::{EventManager, MutEventSubscriber, SubscriberOps};
    use vm_memory::GuestMemoryMmap;

    use super::*;
    use crate::devices::virtio::mmio::defs::{CONFIG_SPACE_OFFSET, INT_USED_RING, REG_STATUS};
    use crate::devices::virtio::mmio::test_driver::{
        initialize, notify as mmio_notify, take_interrupt, write_reg,
    };
    use crate::devices::virtio::mmio::MmioTransport;
    use crate::devices::virtio::vsock::defs::{OP_REQUEST, OP_RESPONSE, OP_RST, OP_RW};
    use crate::devices::virtio::vsock::packet::Packet;
    use crate::devices::virtio::vsock::test_driver::{
        guest_header, host_sees_eof, read_host, test_memory, GuestDriver, GUEST_CID, GUEST_PORT,
        HOST_PORT,
    };
    use crate::devices::virtio::VirtioDevice;

    /// Records which queues were signalled.
    #[derive(Clone, Default)]
    struct RecordingInterrupt(Rc<RefCell<Vec<usize>>>);

    impl InterruptSignal for RecordingInterrupt {
        fn signal_used(&self, queue_index: usize) -> io::Result<()> {
            self.0.borrow_mut().push(queue_index);
            Ok(())
        }
    }

    fn eventfds() -> [EventFd; NUM_QUEUES] {
        [(); NUM_QUEUES].map(|_| EventFd::new(EFD_NONBLOCK).unwrap())
    }

    #[test]
    fn tx_notification_runs_device_and_interrupts_used_queues() {
        let dir = tempfile::tempdir().unwrap();
        let mem = test_memory();
        let mut guest = GuestDriver::new(&mem);
        let mut device = VsockDevice::new(3, &dir.path().join("vsock")).unwrap();
        device.activate(mem.clone(), guest.device_queues()).unwrap();
        let interrupt = RecordingInterrupt::default();
        let mut handler = VsockEventHandler::new(device, eventfds(), interrupt.clone()).unwrap();
        guest.offer_rx(1, 4096);
        guest.send(guest_header(OP_REQUEST, 5000, 1234), &[]);
        handler.queue_events[TXQ_INDEX].write(1).unwrap();

        handler.handle(EventSource::TxQueue).unwrap();

        assert_eq!(guest.take_tx_used(), 1);
        assert_eq!(guest.take_rx()[0].header.op, OP_RST);
        let mut signalled = interrupt.0.borrow().clone();
        signalled.sort();
        assert_eq!(signalled, vec![RXQ_INDEX, TXQ_INDEX]);
        assert_eq!(handler.queue_events[TXQ_INDEX].read().ok(), None);
    }

    #[test]
    fn no_interrupt_when_nothing_was_used() {
        let dir = tempfile::tempdir().unwrap();
        let mem = test_memory();
        let guest = GuestDriver::new(&mem);
        let mut device = VsockDevice::new(3, &dir.path().join("vsock")).unwrap();
        device.activate(mem.clone(), guest.device_queues()).unwrap();
        let interrupt = RecordingInterrupt::default();
        let mut handler = VsockEventHandler::new(device, eventfds(), interrupt.clone()).unwrap();

        handler.handle(EventSource::RxQueue).unwrap();

        assert!(interrupt.0.borrow().is_empty());
    }

    #[test]
    fn run_returns_when_woken() {
        let dir = tempfile::tempdir().unwrap();
        let mem = test_memory();
        let guest = GuestDriver::new(&mem);
        let mut device = VsockDevice::new(3, &dir.path().join("vsock")).unwrap();
        device.activate(mem.clone(), guest.device_queues()).unwrap();
        let mut handler =
            VsockEventHandler::new(device, eventfds(), RecordingInterrupt::default()).unwrap();
        handler.waker().unwrap().wake().unwrap();

        let result = handler.run_until_woken();

        assert!(result.is_ok());
    }

    #[test]
    fn sources_name_every_fd_once() {
        let dir = tempfile::tempdir().unwrap();
        let device = VsockDevice::new(3, &dir.path().join("vsock")).unwrap();
        let handler =
            VsockEventHandler::new(device, eventfds(), RecordingInterrupt::default()).unwrap();

        let sources = handler.sources();

        let mut fds: Vec<RawFd> = sources.iter().map(|(fd, _)| *fd).collect();
        fds.sort();
        fds.dedup();
        assert_eq!(fds.len(), EventSource::ALL.len());
    }

    /// The vsock device behind the virtio-mmio transport on an
    /// `event_manager` loop, as the VMM runs it.
    struct MmioVsock<'m> {
        transport: MmioTransport<VsockDevice>,
        events: EventManager<Arc<Mutex<dyn MutEventSubscriber + Send>>>,
        guest: GuestDriver<'m>,
    }

    impl<'m> MmioVsock<'m> {
        fn new(mem: &'m GuestMemoryMmap, dir: &Path) -> Self {
            let device = VsockDevice::new(GUEST_CID, &dir.join("vsock")).unwrap();
            let transport = MmioTransport::new(mem.clone(), Arc::new(Mutex::new(device))).unwrap();
            let mut events: EventManager<Arc<Mutex<dyn MutEventSubscriber + Send>>> =
                EventManager::new().unwrap();
            events.add_subscriber(Arc::new(Mutex::new(transport.event_handler().unwrap())));
            Self {
                transport,
                events,
                guest: GuestDriver::new(mem),
            }
        }

        fn start_driver(&mut self) {
            let queues = self.guest.guest_queues();
            initialize(&mut self.transport, 1 << 32, &queues);
        }

        /// Runs the event loop until the guest got a receive buffer back.
        fn run_until_rx(&mut self) -> Vec<Packet> {
            for _ in 0..20 {
                self.events.run_with_timeout(100).unwrap();
                let packets = self.guest.take_rx();
                if !packets.is_empty() {
                    return packets;
                }
            }
            panic!("no packet reached the guest");
        }
    }

    #[test]
    fn guest_and_host_talk_through_the_mmio_transport() {
        let dir = tempfile::tempdir().unwrap();
        let mem = test_memory();
        let mut vm = MmioVsock::new(&mem, dir.path());
        vm.start_driver();
        let service = UnixListener::bind(dir.path().join(format!("vsock_{HOST_PORT}"))).unwrap();
        let mut cid = [0u8; 8];
        vm.transport.read(CONFIG_SPACE_OFFSET, &mut cid);
        vm.guest.offer_rx(4, 4096);

        vm.guest
            .send(guest_header(OP_REQUEST, GUEST_PORT, HOST_PORT), &[]);
        mmio_notify(&mut vm.transport, TXQ_INDEX as u32);
        let response = vm.run_until_rx();
        let (mut host, _) = service.accept().unwrap();
        host.write_all(b"hello guest").unwrap();
        let data = vm.run_until_rx();
        vm.guest
            .send(guest_header(OP_RW, GUEST_PORT, HOST_PORT), b"hello host");
        mmio_notify(&mut vm.transport, TXQ_INDEX as u32);
        vm.events.run_with_timeout(1000).unwrap();

        assert_eq!(u64::from_le_bytes(cid), GUEST_CID);
        assert_eq!(response[0].header.op, OP_RESPONSE);
        assert_eq!(data[0].header.op, OP_RW);
        assert_eq!(data[0].data, b"hello guest");
        assert_eq!(read_host(&mut host, 10), b"hello host");
        assert_eq!(take_interrupt(&mut vm.transport), INT_USED_RING);
    }

    #[test]
    fn host_connect_before_the_driver_is_up_is_closed_by_its_reset_and_a_retry_works() {
        let dir = tempfile::tempdir().unwrap();
        let mem = test_memory();
        let mut vm = MmioVsock::new(&mem, dir.path());
        let connect_line = format!("CONNECT {GUEST_PORT}\n");
        let mut early = UnixStream::connect(dir.path().join("vsock")).unwrap();
        early.write_all(connect_line.as_bytes()).unwrap();
        vm.events.run_with_timeout(200).unwrap();

        // Linux resets the device when its driver probes it.
        vm.start_driver();
        let mut retry = UnixStream::connect(dir.path().join("vsock")).unwrap();
        retry.write_all(connect_line.as_bytes()).unwrap();
        vm.guest.offer_rx(1, 4096);
        mmio_notify(&mut vm.transport, RXQ_INDEX as u32);
        let request = vm.run_until_rx();

        assert!(host_sees_eof(&mut early));
        assert_eq!(request[0].header.op, OP_REQUEST);
        assert_eq!(request[0].header.dst_port, GUEST_PORT);
    }

    #[test]
    fn reset_through_the_transport_drops_host_connections() {
        let dir = tempfile::tempdir().unwrap();
        let mem = test_memory();
        let mut vm = MmioVsock::new(&mem, dir.path());
        vm.start_driver();
        let service = UnixListener::bind(dir.path().join(format!("vsock_{HOST_PORT}"))).unwrap();
        vm.guest.offer_rx(1, 4096);
        vm.guest
            .send(guest_header(OP_REQUEST, GUEST_PORT, HOST_PORT), &[]);
        mmio_notify(&mut vm.transport, TXQ_INDEX as u32);
        vm.run_until_rx();
        let (mut host, _) = service.accept().unwrap();

        write_reg(&mut vm.transport, REG_STATUS, 0);

        assert!(host_sees_eof(&mut host));
        let device = vm.transport.device().lock().unwrap();
        assert!(!device.is_activated());
        assert_eq!(device.muxer().connection_count(), 0);
    }
}
