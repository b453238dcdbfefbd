//! The vsock device as a vhost-user backend (QEMU's
//! `vhost-user-vsock-device`).
//!
//! The `vhost-user-backend` crate speaks the protocol and runs one worker
//! thread with an epoll loop over the queue kick eventfds; we add the
//! muxer's fd to that loop, so host sockets and guest notifications are
//! handled on the same thread without polling. One front end per instance:
//! when it disconnects, the backend ends.

use std::io;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::thread::{self, JoinHandle};

use vhost::vhost_user::message::{VhostUserProtocolFeatures, VhostUserVirtioFeatures};
use vhost::vhost_user::{Error as ProtocolError, Listener};
use vhost_user_backend::{ShutdownHandle, VhostUserBackend, VhostUserDaemon, VringRwLock, VringT};
use virtio_queue::QueueT;
use vm_memory::{GuestAddressSpace, GuestMemoryAtomic, GuestMemoryMmap};
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::event::{
    new_event_consumer_and_notifier, EventConsumer, EventFlag, EventNotifier,
};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::devices::virtio::vsock::defs::{
    CONFIG_SPACE_SIZE, EVQ_INDEX, NUM_QUEUES, RXQ_INDEX, TXQ_INDEX,
};
use crate::devices::virtio::vsock::{DeviceError, QueuesMut, VsockDevice, VsockEvent};
use crate::devices::virtio::VirtioDevice;

/// Event ID of the muxer's fd in the worker's epoll. IDs up to
/// `NUM_QUEUES` are the framework's: queue kicks, then its exit event.
const BACKEND_EVENT: u16 = NUM_QUEUES as u16 + 1;

/// Largest ring the vhost-user front-end may set up.
const VHOST_USER_MAX_QUEUE_SIZE: usize = 1024;

/// A failure reported by the `vhost-user-backend` crate, kept as text: its
/// error type is neither `std::error::Error` nor `Sync`.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct DaemonFailure(String);

impl DaemonFailure {
    fn new(error: vhost_user_backend::Error) -> Self {
        Self(error.to_string())
    }
}

/// Why the vhost-user vsock backend could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum VhostUserError {
    /// Creating the vsock device (and its hybrid-vsock socket) failed.
    #[error("cannot create the vsock device")]
    Device(#[source] DeviceError),
    /// Creating the vhost-user daemon failed.
    #[error("cannot create the vhost-user daemon")]
    Daemon(#[source] DaemonFailure),
    /// Adding the host sockets to the worker's event loop failed.
    #[error("cannot watch the vsock host sockets")]
    WatchBackend(#[source] io::Error),
    /// Listening on the vhost-user socket failed.
    #[error("cannot listen for the vhost-user front end on {0}")]
    Listen(PathBuf, #[source] ProtocolError),
    /// Setting up the wait for the front end failed.
    #[error("cannot wait for the vhost-user front end")]
    WaitFrontend(#[source] io::Error),
    /// Starting the service thread failed.
    #[error("cannot start the vhost-user service thread")]
    Spawn(#[source] io::Error),
    /// Accepting the front end failed.
    #[error("cannot accept the vhost-user front end")]
    Accept(#[source] DaemonFailure),
    /// The conversation with the front end failed.
    #[error("serving the vhost-user front end failed")]
    Serve(#[source] DaemonFailure),
    /// The service thread panicked.
    #[error("the vhost-user service thread panicked")]
    Panicked,
}

/// The device as the vhost-user framework sees it.
struct VsockBackend {
    device: Mutex<VsockDevice>,
    mem: RwLock<Option<GuestMemoryAtomic<GuestMemoryMmap>>>,
}

impl VsockBackend {
    fn device(&self) -> io::Result<MutexGuard<'_, VsockDevice>> {
        self.device
            .lock()
            .map_err(|_| io::Error::other("a vsock worker panicked"))
    }

    fn memory(&self) -> Option<GuestMemoryAtomic<GuestMemoryMmap>> {
        self.mem.read().ok().and_then(|mem| mem.clone())
    }
}

impl VhostUserBackend for VsockBackend {
    type Bitmap = ();
    type Vring = VringRwLock;

    fn num_queues(&self) -> usize {
        NUM_QUEUES
    }

    fn max_queue_size(&self) -> usize {
        // QEMU's vhost-user-vsock front-end sets up 1024-entry rings (more
        // than our own VMM's QUEUE_SIZE); the device code works with any
        // size the driver chooses up to this.
        VHOST_USER_MAX_QUEUE_SIZE
    }

    fn features(&self) -> u64 {
        let device = self.device.lock().map(|d| d.avail_features()).unwrap_or(0);
        device | VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits()
    }

    fn acked_features(&self, features: u64) {
        if let Ok(mut device) = self.device.lock() {
            device.ack_features(features);
        }
    }

    fn protocol_features(&self) -> VhostUserProtocolFeatures {
        // QEMU reads the guest CID with GET_CONFIG and refuses a
        // vhost-user-vsock backend without CONFIG; MQ lets it ask how many
        // queues we have instead of assuming.
        VhostUserProtocolFeatures::CONFIG | VhostUserProtocolFeatures::MQ
    }

    fn set_event_idx(&self, _enabled: bool) {
        // VIRTIO_RING_F_EVENT_IDX is not offered, so never enabled.
    }

    fn get_config(&self, offset: u32, size: u32) -> Vec<u8> {
        let (Ok(offset), Ok(size)) = (usize::try_from(offset), usize::try_from(size)) else {
            return Vec::new();
        };
        if offset
            .checked_add(size)
            .is_none_or(|end| end > CONFIG_SPACE_SIZE)
        {
            return Vec::new();
        }
        let mut config = vec![0; size];
        if let Ok(device) = self.device.lock() {
            device.read_config(offset as u64, &mut config);
        }
        config
    }

    fn update_memory(&self, mem: GuestMemoryAtomic<GuestMemoryMmap>) -> io::Result<()> {
        let mut slot = self
            .mem
            .write()
            .map_err(|_| io::Error::other("a vsock worker panicked"))?;
        *slot = Some(mem);
        Ok(())
    }

    fn queues_per_thread(&self) -> Vec<u64> {
        // One worker for all queues: the muxer is shared by all of them.
        vec![(1 << NUM_QUEUES) - 1]
    }

    fn exit_event(&self, _thread_index: usize) -> Option<(EventConsumer, EventNotifier)> {
        new_event_consumer_and_notifier(EventFlag::NONBLOCK | EventFlag::CLOEXEC).ok()
    }

    fn handle_event(
        &self,
        device_event: u16,
        _evset: EventSet,
        vrings: &[VringRwLock],
        _thread_id: usize,
    ) -> io::Result<()> {
        let event = match device_event {
            e if usize::from(e) == RXQ_INDEX => VsockEvent::RxQueue,
            e if usize::from(e) == TXQ_INDEX => VsockEvent::TxQueue,
            e if usize::from(e) == EVQ_INDEX => VsockEvent::EventQueue,
            BACKEND_EVENT => VsockEvent::Backend,
            other => return Err(io::Error::other(format!("unexpected event {other}"))),
        };
        let mut device = self.device()?;
        let Some(atomic) = self.memory() else {
            // No memory table yet, so no queues; host sockets still need
            // their readiness consumed.
            if event == VsockEvent::Backend {
                device.process_backend().map_err(io::Error::other)?;
            }
            return Ok(());
        };
        let mem = atomic.memory();
        let mut states: Vec<_> = vrings.iter().map(|vring| vring.get_mut()).collect();
        let result = {
            // A queue the front end has not started or has disabled must not
            // be touched (vhost-user spec, "Ring states").
            let mut usable = states.iter_mut().map(|state| {
                if state.is_enabled() && state.get_queue().ready() {
                    Some(state.get_queue_mut())
                } else {
                    None
                }
            });
            let queues = QueuesMut {
                rx: usable.next().flatten(),
                tx: usable.next().flatten(),
                event: usable.next().flatten(),
            };
            device.handle_event_with(event, &mem, queues)
        };
        drop(states);
        drop(device);
        match result {
            Ok(used) => {
                for (index, used) in [
                    (RXQ_INDEX, used.rx),
                    (TXQ_INDEX, used.tx),
                    (EVQ_INDEX, used.event),
                ] {
                    if used {
                        vrings[index].signal_used_queue()?;
                    }
                }
                Ok(())
            }
            // Failures here come from the guest's rings; ending the worker
            // would take the device away from every connection, so report
            // and carry on.
            Err(e) => {
                tracing::warn!(error = %e, "vhost-user vsock: event handling failed");
                Ok(())
            }
        }
    }
}

/// What `stop()` needs to reach the service thread.
struct Control {
    stop: EventFd,
    state: Mutex<ControlState>,
}

#[derive(Default)]
struct ControlState {
    stopping: bool,
    connection: Option<ShutdownHandle>,
}

impl Control {
    fn state(&self) -> MutexGuard<'_, ControlState> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// A running vhost-user vsock backend. Dropping it stops it.
pub struct VhostUserVsock {
    control: Arc<Control>,
    thread: Option<JoinHandle<Result<(), VhostUserError>>>,
}

impl VhostUserVsock {
    /// Waits until the front end disconnects (or [`VhostUserVsock::stop`]
    /// is called elsewhere) and the backend has shut down.
    pub fn wait(mut self) -> Result<(), VhostUserError> {
        self.join()
    }

    /// Ends the backend: refuses a front end that has not connected yet or
    /// drops the one that has, then waits for the threads to finish.
    pub fn stop(mut self) -> Result<(), VhostUserError> {
        self.request_stop();
        self.join()
    }

    /// Whether the backend has already ended.
    pub fn is_finished(&self) -> bool {
        self.thread.as_ref().is_none_or(JoinHandle::is_finished)
    }

    fn request_stop(&self) {
        let mut state = self.control.state();
        state.stopping = true;
        if let Some(connection) = state.connection.as_ref() {
            connection.shutdown();
        }
        drop(state);
        let _ = self.control.stop.write(1);
    }

    fn join(&mut self) -> Result<(), VhostUserError> {
        match self.thread.take() {
            Some(thread) => thread.join().unwrap_or(Err(VhostUserError::Panicked)),
            None => Ok(()),
        }
    }
}

impl Drop for VhostUserVsock {
    fn drop(&mut self) {
        if self.thread.is_some() {
            self.request_stop();
            let _ = self.join();
        }
    }
}

/// Serves the vsock device as a vhost-user backend on `vhost_socket` (QEMU
/// connects to it) with guest CID `cid`, bridging to the hybrid-vsock Unix
/// socket `uds_path`. Runs on its own threads; returns a handle whose
/// `stop()`/drop ends it, and whose `wait()` returns when QEMU disconnects.
///
/// Both sockets exist when this returns, so QEMU and host clients may
/// connect at once. Both socket files are removed when the backend ends.
pub fn spawn_vhost_user_vsock(
    vhost_socket: &Path,
    uds_path: &Path,
    cid: u64,
) -> Result<VhostUserVsock, VhostUserError> {
    let device = VsockDevice::new(cid, uds_path).map_err(VhostUserError::Device)?;
    let device_fd = device.as_raw_fd();
    let backend = Arc::new(VsockBackend {
        device: Mutex::new(device),
        mem: RwLock::new(None),
    });
    let daemon = VhostUserDaemon::new(
        "vhost-user-vsock".to_string(),
        backend,
        GuestMemoryAtomic::new(GuestMemoryMmap::new()),
    )
    .map_err(|e| VhostUserError::Daemon(DaemonFailure::new(e)))?;
    for handler in daemon.get_epoll_handlers() {
        handler
            .register_listener(device_fd, EventSet::IN, u64::from(BACKEND_EVENT))
            .map_err(VhostUserError::WatchBackend)?;
    }
    let listener = Listener::new(vhost_socket, true)
        .map_err(|e| VhostUserError::Listen(vhost_socket.to_path_buf(), e))?;
    let control = Arc::new(Control {
        stop: EventFd::new(EFD_NONBLOCK).map_err(VhostUserError::WaitFrontend)?,
        state: Mutex::new(ControlState::default()),
    });
    let thread_control = Arc::clone(&control);
    let thread = thread::Builder::new()
        .name("vhost-user-vsock".to_string())
        .spawn(move || serve(daemon, listener, &thread_control))
        .map_err(VhostUserError::Spawn)?;
    Ok(VhostUserVsock {
        control,
        thread: Some(thread),
    })
}

fn serve(
    mut daemon: VhostUserDaemon<Arc<VsockBackend>>,
    mut listener: Listener,
    control: &Control,
) -> Result<(), VhostUserError> {
    let result = serve_frontend(&mut daemon, &mut listener, control);
    // The worker thread runs until told to exit, and dropping the daemon
    // joins it.
    for handler in daemon.get_epoll_handlers() {
        handler.send_exit_event();
    }
    result
}

fn serve_frontend(
    daemon: &mut VhostUserDaemon<Arc<VsockBackend>>,
    listener: &mut Listener,
    control: &Control,
) -> Result<(), VhostUserError> {
    if !wait_for_frontend(listener, &control.stop)? {
        return Ok(());
    }
    // The listener is readable, so this accept does not block.
    daemon
        .start(listener)
        .map_err(|e| VhostUserError::Accept(DaemonFailure::new(e)))?;
    {
        let mut state = control.state();
        if state.stopping {
            daemon.request_shutdown();
        } else {
            state.connection = daemon.shutdown_handle();
        }
    }
    let result = daemon.wait();
    control.state().connection = None;
    match result {
        Ok(()) => Ok(()),
        // A front end that goes away is how a VM normally ends.
        Err(vhost_user_backend::Error::HandleRequest(
            ProtocolError::Disconnected | ProtocolError::PartialMessage,
        )) => Ok(()),
        Err(e) => Err(VhostUserError::Serve(DaemonFailure::new(e))),
    }
}

/// Blocks until a front end connects (`true`) or a stop is requested (`false`).
fn wait_for_frontend(listener: &Listener, stop: &EventFd) -> Result<bool, VhostUserError> {
    const LISTENER: u64 = 0;
    const STOP: u64 = 1;
    let epoll = Epoll::new().map_err(VhostUserError::WaitFrontend)?;
    for (fd, token) in [(listener.as_raw_fd(), LISTENER), (stop.as_raw_fd(), STOP)] {
        epoll
            .ctl(
                ControlOperation::Add,
                fd,
                EpollEvent::new(EventSet::IN, token),
            )
            .map_err(VhostUserError::WaitFrontend)?;
    }
    let mut events = [EpollEvent::default(); 2];
    loop {
        match epoll.wait(-1, &mut events) {
            Ok(count) => {
                let ready = &events[..count];
                if ready.iter().any(|e| e.data() == STOP) {
                    return Ok(false);
                }
                if ready.iter().any(|e| e.data() == LISTENER) {
                    return Ok(true);
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(VhostUserError::WaitFrontend(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::devices::virtio::vsock::defs::QUEUE_SIZE;
    use std::io::Write;
    use std::os::unix::net::UnixStream;

    use vhost::vhost_user::message::VhostUserConfigFlags;
    use vhost::vhost_user::{Frontend, VhostUserFrontend};
    use vhost::{VhostBackend, VhostUserMemoryRegionInfo, VringConfigData};
    use vm_memory::{GuestAddress, GuestMemoryBackend};

    use super::*;
    use crate::devices::virtio::vsock::defs::{OP_REQUEST, OP_RST, VIRTIO_F_VERSION_1};
    use crate::devices::virtio::vsock::test_driver::{
        guest_header, shared_test_memory, wait_readable, GuestDriver, GUEST_CID,
    };

    struct Paths {
        _dir: tempfile::TempDir,
        vhost: PathBuf,
        uds: PathBuf,
    }

    fn paths() -> Paths {
        let dir = tempfile::tempdir().unwrap();
        Paths {
            vhost: dir.path().join("vhost.sock"),
            uds: dir.path().join("vsock"),
            _dir: dir,
        }
    }

    /// Plays QEMU's part up to the point where the device may run.
    fn negotiate(frontend: &mut Frontend) {
        frontend.set_owner().unwrap();
        let features = frontend.get_features().unwrap();
        frontend.set_features(features).unwrap();
        let protocol = frontend.get_protocol_features().unwrap();
        frontend.set_protocol_features(protocol).unwrap();
    }

    /// Shares `mem` and hands over the receive and transmit rings, as QEMU
    /// does (it keeps the event queue to itself).
    fn start_rings(
        frontend: &mut Frontend,
        mem: &GuestMemoryMmap,
        guest: &GuestDriver<'_>,
        kicks: &[EventFd],
        calls: &[EventFd],
    ) {
        let region = mem.iter().next().unwrap();
        let info = VhostUserMemoryRegionInfo::from_guest_region(region).unwrap();
        frontend.set_mem_table(&[info]).unwrap();
        let host_addr = |gpa: GuestAddress| region.as_ptr() as u64 + gpa.0;
        for queue in [RXQ_INDEX, TXQ_INDEX] {
            let (desc, avail, used) = guest.ring_addresses(queue);
            frontend.set_vring_num(queue, QUEUE_SIZE).unwrap();
            frontend
                .set_vring_addr(
                    queue,
                    &VringConfigData {
                        queue_max_size: QUEUE_SIZE,
                        queue_size: QUEUE_SIZE,
                        flags: 0,
                        desc_table_addr: host_addr(desc),
                        used_ring_addr: host_addr(used),
                        avail_ring_addr: host_addr(avail),
                        log_addr: None,
                    },
                )
                .unwrap();
            frontend.set_vring_base(queue, 0).unwrap();
            frontend.set_vring_call(queue, &calls[queue]).unwrap();
            frontend.set_vring_kick(queue, &kicks[queue]).unwrap();
            frontend.set_vring_enable(queue, true).unwrap();
        }
    }

    #[test]
    fn stop_before_any_frontend_ends_and_removes_both_sockets() {
        let paths = paths();
        let backend = spawn_vhost_user_vsock(&paths.vhost, &paths.uds, GUEST_CID).unwrap();
        let existed = paths.vhost.exists() && paths.uds.exists();

        let result = backend.stop();

        assert!(existed);
        assert!(result.is_ok());
        assert!(!paths.vhost.exists());
        assert!(!paths.uds.exists());
    }

    #[test]
    fn spawn_refuses_a_reserved_cid() {
        let paths = paths();

        let result = spawn_vhost_user_vsock(&paths.vhost, &paths.uds, 2);

        assert!(matches!(
            result,
            Err(VhostUserError::Device(DeviceError::InvalidCid(2)))
        ));
    }

    #[test]
    fn frontend_sees_version_1_config_protocol_and_the_guest_cid() {
        let paths = paths();
        let _backend = spawn_vhost_user_vsock(&paths.vhost, &paths.uds, 0x1234).unwrap();
        let mut frontend = Frontend::connect(&paths.vhost, NUM_QUEUES as u64).unwrap();

        negotiate(&mut frontend);
        let features = frontend.get_features().unwrap();
        let protocol = frontend.get_protocol_features().unwrap();
        let (_, config) = frontend
            .get_config(0, 8, VhostUserConfigFlags::empty(), &[0; 8])
            .unwrap();
        let queues = frontend.get_queue_num().unwrap();

        assert_ne!(features & (1 << VIRTIO_F_VERSION_1), 0);
        assert_ne!(
            features & VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits(),
            0
        );
        assert!(protocol.contains(VhostUserProtocolFeatures::CONFIG));
        assert_eq!(config, 0x1234u64.to_le_bytes());
        assert_eq!(queues, NUM_QUEUES as u64);
    }

    #[test]
    fn backend_ends_when_the_frontend_disconnects() {
        let paths = paths();
        let backend = spawn_vhost_user_vsock(&paths.vhost, &paths.uds, GUEST_CID).unwrap();
        let mut frontend = Frontend::connect(&paths.vhost, NUM_QUEUES as u64).unwrap();
        negotiate(&mut frontend);

        drop(frontend);
        let result = backend.wait();

        assert!(result.is_ok(), "{result:?}");
        assert!(!paths.uds.exists());
    }

    #[test]
    fn stop_with_a_frontend_connected_ends_the_backend() {
        let paths = paths();
        let backend = spawn_vhost_user_vsock(&paths.vhost, &paths.uds, GUEST_CID).unwrap();
        let mut frontend = Frontend::connect(&paths.vhost, NUM_QUEUES as u64).unwrap();
        negotiate(&mut frontend);

        let result = backend.stop();

        assert!(result.is_ok(), "{result:?}");
        assert!(frontend.get_features().is_err());
    }

    #[test]
    fn packets_flow_through_shared_rings_both_ways() {
        let paths = paths();
        let backend = spawn_vhost_user_vsock(&paths.vhost, &paths.uds, GUEST_CID).unwrap();
        let mut frontend = Frontend::connect(&paths.vhost, NUM_QUEUES as u64).unwrap();
        negotiate(&mut frontend);
        let mem = shared_test_memory();
        let mut guest = GuestDriver::new(&mem);
        let kicks: Vec<EventFd> = (0..2)
            .map(|_| EventFd::new(EFD_NONBLOCK).unwrap())
            .collect();
        let calls: Vec<EventFd> = (0..2)
            .map(|_| EventFd::new(EFD_NONBLOCK).unwrap())
            .collect();
        start_rings(&mut frontend, &mem, &guest, &kicks, &calls);
        guest.offer_rx(4, 4096);
        kicks[RXQ_INDEX].write(1).unwrap();

        // Guest to host: nobody serves port 1234, so the answer is RST.
        guest.send(guest_header(OP_REQUEST, 50_000, 1234), &[]);
        kicks[TXQ_INDEX].write(1).unwrap();
        let tx_signalled = wait_readable(calls[TXQ_INDEX].as_raw_fd(), 2000);
        let rx_signalled = wait_readable(calls[RXQ_INDEX].as_raw_fd(), 2000);
        let refused = guest.take_rx();
        calls[RXQ_INDEX].read().unwrap();
        // Host to guest: the CONNECT line arrives through the muxer's fd.
        let mut client = UnixStream::connect(&paths.uds).unwrap();
        client.write_all(b"CONNECT 1024\n").unwrap();
        let request_signalled = wait_readable(calls[RXQ_INDEX].as_raw_fd(), 2000);
        let request = guest.take_rx();

        assert!(tx_signalled && rx_signalled && request_signalled);
        assert_eq!(guest.take_tx_used(), 1);
        assert_eq!(refused.len(), 1);
        assert_eq!(refused[0].header.op, OP_RST);
        assert_eq!(refused[0].header.dst_port, 50_000);
        assert_eq!(request.len(), 1);
        assert_eq!(request[0].header.op, OP_REQUEST);
        assert_eq!(request[0].header.dst_port, 1024);
        assert_eq!(request[0].header.dst_cid, GUEST_CID);
        drop(frontend);
        assert!(backend.wait().is_ok());
    }
}
