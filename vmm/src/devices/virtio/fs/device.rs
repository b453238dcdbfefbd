//! The virtio-fs device: features (the daemon's, filtered), the
//! configuration space (tag and request queue count), and starting or
//! stopping the daemon when the driver starts or resets the device.

use std::io;
use std::sync::Arc;

use virtio_queue::Queue;
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::daemon_connection::{guest_features, DaemonConnection, DaemonError};
use super::defs::{
    CONFIG_SPACE_SIZE, FS_TAG_MAX_LEN, NUM_QUEUES, NUM_REQUEST_QUEUES, QUEUE_SIZE, VIRTIO_ID_FS,
};
use super::event_handler::FsEventHandler;
use crate::config::FsConfig;
use crate::devices::virtio::mmio::InterruptLine;
use crate::devices::virtio::VirtioDevice;
use crate::vm::guest_ram::{GuestRam, RamSharing};

/// Why the virtio-fs device could not be created or started.
#[derive(Debug, thiserror::Error)]
pub enum FsError {
    /// Guest RAM is private memory the daemon cannot map.
    #[error("guest RAM is not shared memory; virtiofsd could not map it")]
    RamNotShared,
    /// The tag does not fit the configuration space.
    #[error("the virtio-fs tag {0:?} is empty or longer than {FS_TAG_MAX_LEN} bytes")]
    Tag(String),
    /// An eventfd could not be created or duplicated.
    #[error("cannot create the virtio-fs eventfds")]
    EventFd(#[source] io::Error),
    /// The vhost-user session with the daemon could not be opened.
    #[error("cannot open the vhost-user session")]
    Session(#[source] DaemonError),
    /// The daemon did not take the guest's queues.
    #[error("cannot start the daemon on the guest's queues")]
    Start(#[source] DaemonError),
    /// Activation got the wrong number of queues.
    #[error("the virtio-fs device needs {NUM_QUEUES} queues, got {0}")]
    QueueCount(usize),
}

/// The configuration space, `struct virtio_fs_config`: the tag, NUL-padded
/// (not NUL-terminated when it fills all 36 bytes), then `le32
/// num_request_queues`.
pub fn config_space(tag: &str) -> Option<[u8; CONFIG_SPACE_SIZE]> {
    if tag.is_empty() || tag.len() > FS_TAG_MAX_LEN {
        return None;
    }
    let mut space = [0u8; CONFIG_SPACE_SIZE];
    space[..tag.len()].copy_from_slice(tag.as_bytes());
    space[FS_TAG_MAX_LEN..].copy_from_slice(&NUM_REQUEST_QUEUES.to_le_bytes());
    Some(space)
}

/// A virtio-fs device whose queues an external `virtiofsd` serves.
#[derive(Debug)]
pub struct FsDevice {
    tag: String,
    config_space: [u8; CONFIG_SPACE_SIZE],
    daemon: DaemonConnection,
    ram: GuestRam,
    avail_features: u64,
    acked_features: u64,
    /// The daemon waits on these; the transport writes them (or KVM does,
    /// as ioeventfds) when the driver notifies a queue.
    kick_events: Vec<EventFd>,
    /// The daemon writes these when it used buffers.
    call_events: Vec<EventFd>,
    /// Queues the daemon serves now; empty while not activated.
    started_queues: Vec<usize>,
    activated: bool,
}

impl FsDevice {
    /// Connects to the daemon of `share` (so a missing daemon fails now, not
    /// when the guest loads its driver) for a guest whose RAM is `ram`,
    /// which must be shared memory.
    pub fn new(share: &FsConfig, ram: GuestRam) -> Result<FsDevice, FsError> {
        if ram.sharing() != RamSharing::Shared {
            return Err(FsError::RamNotShared);
        }
        let config_space =
            config_space(&share.tag).ok_or_else(|| FsError::Tag(share.tag.clone()))?;
        let daemon = DaemonConnection::connect(&share.socket).map_err(FsError::Session)?;
        // `connect` checked VERSION_1 is there.
        let avail_features = guest_features(daemon.features()).unwrap_or_default();
        let eventfds = || {
            (0..NUM_QUEUES)
                .map(|_| EventFd::new(EFD_NONBLOCK))
                .collect::<io::Result<Vec<_>>>()
                .map_err(FsError::EventFd)
        };
        Ok(FsDevice {
            tag: share.tag.clone(),
            config_space,
            daemon,
            ram,
            avail_features,
            acked_features: 0,
            kick_events: eventfds()?,
            call_events: eventfds()?,
            started_queues: Vec::new(),
            activated: false,
        })
    }

    /// The mount tag.
    pub fn tag(&self) -> &str {
        &self.tag
    }

    /// Whether the daemon serves the driver's queues now.
    pub fn is_activated(&self) -> bool {
        self.activated
    }

    /// Duplicates of the kick eventfds, in queue order: the transport's
    /// queue notification eventfds
    /// ([`MmioTransport::with_queue_events`](crate::devices::virtio::mmio::MmioTransport::with_queue_events)).
    pub fn kick_events(&self) -> Result<Vec<EventFd>, FsError> {
        self.kick_events
            .iter()
            .map(EventFd::try_clone)
            .collect::<io::Result<_>>()
            .map_err(FsError::EventFd)
    }

    /// The event-loop side: turns the daemon's call eventfds into
    /// interrupts on `interrupt` and watches the daemon's socket.
    pub fn event_handler(&self, interrupt: Arc<InterruptLine>) -> Result<FsEventHandler, FsError> {
        let call_events = self
            .call_events
            .iter()
            .map(EventFd::try_clone)
            .collect::<io::Result<_>>()
            .map_err(FsError::EventFd)?;
        let socket = self.daemon.socket().map_err(FsError::EventFd)?;
        Ok(FsEventHandler::new(
            self.tag.clone(),
            self.daemon.path().to_owned(),
            call_events,
            socket,
            interrupt,
        ))
    }
}

impl VirtioDevice for FsDevice {
    type Error = FsError;

    fn device_type(&self) -> u32 {
        VIRTIO_ID_FS
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE; NUM_QUEUES]
    }

    fn avail_features(&self) -> u64 {
        self.avail_features
    }

    fn acked_features(&self) -> u64 {
        self.acked_features
    }

    fn ack_features(&mut self, features: u64) {
        self.acked_features = features & self.avail_features;
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        let Ok(start) = usize::try_from(offset) else {
            return;
        };
        if let Some(bytes) = start
            .checked_add(data.len())
            .and_then(|end| self.config_space.get(start..end))
        {
            data.copy_from_slice(bytes);
        }
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        tracing::debug!(
            offset,
            len = data.len(),
            "virtio-fs: ignored a write to the read-only configuration space"
        );
    }

    fn activate(&mut self, mem: GuestMemoryMmap, queues: Vec<Queue>) -> Result<(), FsError> {
        if queues.len() != NUM_QUEUES {
            return Err(FsError::QueueCount(queues.len()));
        }
        let file = self.ram.shared_file().ok_or(FsError::RamNotShared)?;
        let regions = self.ram.shared_regions();
        let started = self.daemon.start(
            self.acked_features,
            &mem,
            file,
            &regions,
            &queues,
            &self.kick_events,
            &self.call_events,
        );
        // Queues started before a failure are stopped on the next reset.
        match started {
            Ok(started) => {
                tracing::info!(tag = %self.tag, queues = ?started, "virtio-fs: the daemon serves the guest's queues");
                self.started_queues = started;
                self.activated = true;
                Ok(())
            }
            Err(e) => {
                self.started_queues = (0..NUM_QUEUES).collect();
                Err(FsError::Start(e))
            }
        }
    }

    fn reset(&mut self) {
        if !self.started_queues.is_empty() {
            let queues = std::mem::take(&mut self.started_queues);
            if let Err(e) = self.daemon.stop(&queues) {
                tracing::warn!(tag = %self.tag, error = %e, "virtio-fs: cannot stop the daemon's rings cleanly");
            }
        }
        for call in &self.call_events {
            // A signal for the old rings must not interrupt the new driver.
            let _ = call.read();
        }
        self.acked_features = 0;
        self.activated = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_space_is_the_nul_padded_tag_then_one_request_queue_le32() {
        let space = config_space("home").unwrap();

        assert_eq!(space.len(), 40);
        assert_eq!(&space[..4], b"home");
        assert!(space[4..36].iter().all(|&b| b == 0));
        assert_eq!(&space[36..], &[1, 0, 0, 0]);
    }

    #[test]
    fn a_36_byte_tag_fills_the_field_without_a_nul() {
        let tag = "t".repeat(36);

        let space = config_space(&tag).unwrap();

        assert_eq!(&space[..36], tag.as_bytes());
        assert_eq!(u32::from_le_bytes(space[36..].try_into().unwrap()), 1);
        assert!(config_space(&"t".repeat(37)).is_none());
        assert!(config_space("").is_none());
    }

    #[test]
    fn private_guest_ram_is_refused_before_connecting() {
        use vm_memory::GuestAddress;

        use crate::vm::guest_ram::RamBacking;

        let ram = GuestRam::new(
            &[(GuestAddress(0), 2 << 20)],
            RamBacking::TransparentHugePages,
        )
        .unwrap();
        let share = FsConfig::parse("home=/nonexistent/fs.sock").unwrap();

        let error = FsDevice::new(&share, ram).unwrap_err();

        assert!(matches!(error, FsError::RamNotShared), "{error:?}");
    }
}
