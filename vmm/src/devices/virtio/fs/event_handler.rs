//! The virtio-fs device on the VMM's event loop: the daemon's call
//! eventfds become used-buffer interrupts (`InterruptStatus` bit set, then
//! the device's interrupt fired), and the daemon's socket is watched for a
//! hang-up so its death is logged while the VM keeps running.

use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::Arc;

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};
use vmm_sys_util::eventfd::EventFd;

use crate::devices::virtio::mmio::{InterruptLine, InterruptReason};

/// Relays one virtio-fs device's interrupts and watches its daemon; made by
/// [`FsDevice::event_handler`](super::FsDevice::event_handler).
#[derive(Debug)]
pub struct FsEventHandler {
    tag: String,
    socket_path: PathBuf,
    call_events: Vec<EventFd>,
    socket: UnixStream,
    interrupt: Arc<InterruptLine>,
    daemon_gone: bool,
}

impl FsEventHandler {
    /// A handler for the share `tag` served over `socket` (a handle on the
    /// vhost-user session, watched only for hang-ups, connected to
    /// `socket_path`) whose daemon signals `call_events` (in queue order).
    pub fn new(
        tag: String,
        socket_path: PathBuf,
        call_events: Vec<EventFd>,
        socket: UnixStream,
        interrupt: Arc<InterruptLine>,
    ) -> Self {
        Self {
            tag,
            socket_path,
            call_events,
            socket,
            interrupt,
            daemon_gone: false,
        }
    }

    /// Whether the daemon has hung up.
    pub fn daemon_gone(&self) -> bool {
        self.daemon_gone
    }

    /// Handles readiness of `fd` (`events` as epoll reported them).
    /// Returns whether `fd` should no longer be watched.
    pub fn handle_fd(&mut self, fd: RawFd, events: EventSet) -> bool {
        if let Some(call) = self.call_events.iter().find(|e| e.as_raw_fd() == fd) {
            // Empty counter: another wakeup already took it.
            if call.read().is_ok() {
                if let Err(e) = self.interrupt.trigger(InterruptReason::UsedRing) {
                    tracing::error!(tag = %self.tag, error = %e, "virtio-fs: cannot interrupt the guest");
                }
            }
            return false;
        }
        if fd == self.socket.as_raw_fd() {
            self.daemon_gone = true;
            tracing::error!(
                tag = %self.tag,
                socket = %self.socket_path.display(),
                ?events,
                "virtio-fs: the virtiofs daemon went away; requests on this share are no longer served"
            );
            return true;
        }
        false
    }
}

impl MutEventSubscriber for FsEventHandler {
    fn process(&mut self, events: Events, ops: &mut EventOps) {
        let stop_watching = self.handle_fd(events.fd(), events.event_set())
            || events
                .event_set()
                .intersects(EventSet::HANG_UP | EventSet::ERROR);
        if stop_watching {
            // Level-triggered: a hung-up fd would wake the loop forever.
            if let Err(e) = ops.remove(events) {
                tracing::error!(tag = %self.tag, error = ?e, "virtio-fs: cannot stop watching an fd");
            }
        }
    }

    fn init(&mut self, ops: &mut EventOps) {
        for call in &self.call_events {
            if let Err(e) = ops.add(Events::new(call, EventSet::IN)) {
                tracing::error!(tag = %self.tag, error = ?e, "virtio-fs: cannot watch a call eventfd");
            }
        }
        // Only the hang-up: the vhost-user replies on this socket are read
        // by whoever sent the request.
        if let Err(e) = ops.add(Events::new(&self.socket, EventSet::READ_HANG_UP)) {
            tracing::error!(tag = %self.tag, error = ?e, "virtio-fs: cannot watch the daemon's socket");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::virtio::mmio::defs::INT_USED_RING;

    fn handler() -> (FsEventHandler, EventFd, UnixStream, Arc<InterruptLine>) {
        let call = EventFd::new(vmm_sys_util::eventfd::EFD_NONBLOCK).unwrap();
        let (ours, daemon) = UnixStream::pair().unwrap();
        let interrupt = Arc::new(InterruptLine::new().unwrap());
        let handler = FsEventHandler::new(
            "home".into(),
            "/run/home.sock".into(),
            vec![call.try_clone().unwrap()],
            ours,
            Arc::clone(&interrupt),
        );
        (handler, call, daemon, interrupt)
    }

    #[test]
    fn a_daemon_signal_sets_the_used_ring_bit_and_fires_the_interrupt() {
        let (mut handler, call, _daemon, interrupt) = handler();
        call.write(1).unwrap();
        let watched = handler.call_events[0].as_raw_fd();

        let stop = handler.handle_fd(watched, EventSet::IN);

        assert!(!stop);
        assert_eq!(interrupt.status(), INT_USED_RING);
        assert_eq!(interrupt.event().read().unwrap(), 1);
    }

    #[test]
    fn a_spurious_wakeup_raises_nothing() {
        let (mut handler, _call, _daemon, interrupt) = handler();
        let watched = handler.call_events[0].as_raw_fd();

        handler.handle_fd(watched, EventSet::IN);

        assert_eq!(interrupt.status(), 0);
    }

    #[test]
    fn the_daemon_hanging_up_is_noticed_through_the_event_loop() {
        use event_manager::{EventManager, SubscriberOps};
        use std::sync::Mutex;

        let (handler, _call, daemon, _interrupt) = handler();
        let handler = Arc::new(Mutex::new(handler));
        let mut events = EventManager::<Arc<Mutex<FsEventHandler>>>::new().unwrap();
        events.add_subscriber(Arc::clone(&handler));
        assert_eq!(events.run_with_timeout(0).unwrap(), 0);

        drop(daemon);
        let woken = events.run_with_timeout(1000).unwrap();

        assert_eq!(woken, 1);
        assert!(handler.lock().unwrap().daemon_gone());
        assert_eq!(
            events.run_with_timeout(50).unwrap(),
            0,
            "the hung-up socket is no longer watched"
        );
    }
}
