//! The vhost-user conversation with one `virtiofsd`: the handshake when the
//! VMM starts, handing over guest RAM and the rings when the guest driver
//! starts the device, and taking the rings back when it resets it.
//!
//! The daemon does the queue work itself. It maps guest RAM from the memfd
//! this side passes (`SET_MEM_TABLE`) and finds the rings by the addresses
//! *this process* maps them at (`SET_VRING_ADDR` carries frontend virtual
//! addresses, which the daemon translates through the memory table).

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

use vhost::vhost_user::message::{VhostUserProtocolFeatures, VhostUserVirtioFeatures};
use vhost::vhost_user::{Frontend, VhostUserFrontend};
use vhost::{VhostBackend, VhostUserMemoryRegionInfo, VringConfigData};
use virtio_queue::{Queue, QueueT};
use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

use super::defs::{GUEST_FEATURES_SUPPORTED, NUM_QUEUES, VIRTIO_F_VERSION_1};
use crate::vm::guest_ram::SharedRamRegion;

/// The vhost-user protocol features this frontend uses when the daemon
/// has them: `MQ` to check the daemon serves enough queues, `RESET_DEVICE`
/// so a guest that resets the device can send `FUSE_INIT` again.
const PROTOCOL_FEATURES_USED: VhostUserProtocolFeatures =
    VhostUserProtocolFeatures::MQ.union(VhostUserProtocolFeatures::RESET_DEVICE);

/// What went wrong talking to the daemon.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// Nobody accepts connections on the socket.
    #[error("cannot connect to the virtiofs daemon at {}", path.display())]
    Connect {
        /// The socket.
        path: PathBuf,
        /// connect's error.
        #[source]
        source: io::Error,
    },
    /// A vhost-user request failed (the daemon refused it or went away).
    #[error("the virtiofs daemon at {} did not {step}", path.display())]
    Request {
        /// The socket.
        path: PathBuf,
        /// What this side asked for.
        step: &'static str,
        /// The vhost crate's error.
        #[source]
        source: vhost::Error,
    },
    /// The daemon does not speak virtio 1.
    #[error("the virtiofs daemon at {} does not offer VIRTIO_F_VERSION_1 (features {features:#x})", path.display())]
    NoVersion1 {
        /// The socket.
        path: PathBuf,
        /// What it offers.
        features: u64,
    },
    /// The daemon serves fewer queues than the device has.
    #[error("the virtiofs daemon at {} serves {queues} queues; the device needs {NUM_QUEUES}", path.display())]
    TooFewQueues {
        /// The socket.
        path: PathBuf,
        /// What it serves.
        queues: u64,
    },
    /// A ring the driver placed is not inside one guest RAM range.
    #[error("the {ring} of queue {index} is not inside guest RAM")]
    RingOutsideMemory {
        /// The queue.
        index: usize,
        /// Which ring.
        ring: &'static str,
    },
}

/// The virtio features to offer the guest when the daemon offers
/// `daemon_features`: the ones both sides support, without vhost-user's own
/// bits. `None` when the daemon lacks `VIRTIO_F_VERSION_1`, which the
/// transport requires.
pub fn guest_features(daemon_features: u64) -> Option<u64> {
    let features = daemon_features & GUEST_FEATURES_SUPPORTED;
    (features & (1 << VIRTIO_F_VERSION_1) != 0).then_some(features)
}

/// The feature word for `SET_FEATURES`: what the guest acked (only bits
/// this side offered can be there), plus `VHOST_USER_F_PROTOCOL_FEATURES`
/// when the daemon offers it, so protocol features stay in force.
pub fn daemon_features(guest_acked: u64, daemon_features: u64) -> u64 {
    let protocol = VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits();
    (guest_acked & GUEST_FEATURES_SUPPORTED) | (daemon_features & protocol)
}

/// The protocol features to acknowledge out of the daemon's `offered`.
pub fn protocol_features(offered: VhostUserProtocolFeatures) -> VhostUserProtocolFeatures {
    offered & PROTOCOL_FEATURES_USED
}

/// An open vhost-user session with one daemon.
pub struct DaemonConnection {
    path: PathBuf,
    frontend: Frontend,
    /// The same socket, for the event loop to notice the daemon hanging up.
    socket: UnixStream,
    daemon_features: u64,
    protocol: VhostUserProtocolFeatures,
}

impl std::fmt::Debug for DaemonConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DaemonConnection")
            .field("path", &self.path)
            .field("daemon_features", &self.daemon_features)
            .field("protocol", &self.protocol)
            .finish_non_exhaustive()
    }
}

/// The guest address range of one ring, for translation.
struct Ring {
    name: &'static str,
    addr: u64,
    len: usize,
}

impl DaemonConnection {
    /// Connects to the daemon at `path` and does the handshake: takes
    /// ownership of the session, learns the daemon's features and settles
    /// the protocol features.
    pub fn connect(path: &Path) -> Result<DaemonConnection, DaemonError> {
        let connect_error = |source| DaemonError::Connect {
            path: path.to_owned(),
            source,
        };
        let stream = UnixStream::connect(path).map_err(connect_error)?;
        let socket = stream.try_clone().map_err(connect_error)?;
        let mut connection = DaemonConnection {
            path: path.to_owned(),
            frontend: Frontend::from_stream(stream, NUM_QUEUES as u64),
            socket,
            daemon_features: 0,
            protocol: VhostUserProtocolFeatures::empty(),
        };
        connection.handshake()?;
        tracing::debug!(
            path = %path.display(),
            features = connection.daemon_features,
            protocol = ?connection.protocol,
            "virtio-fs: connected to the daemon"
        );
        Ok(connection)
    }

    fn request(&self, step: &'static str) -> impl FnOnce(vhost::Error) -> DaemonError + '_ {
        move |source| DaemonError::Request {
            path: self.path.clone(),
            step,
            source,
        }
    }

    fn handshake(&mut self) -> Result<(), DaemonError> {
        self.frontend
            .set_owner()
            .map_err(self.request("accept this VMM as owner (SET_OWNER)"))?;
        self.daemon_features = self
            .frontend
            .get_features()
            .map_err(self.request("tell its features (GET_FEATURES)"))?;
        if guest_features(self.daemon_features).is_none() {
            return Err(DaemonError::NoVersion1 {
                path: self.path.clone(),
                features: self.daemon_features,
            });
        }
        if self.daemon_features & VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits() == 0 {
            return Ok(());
        }
        let offered = self
            .frontend
            .get_protocol_features()
            .map_err(self.request("tell its protocol features (GET_PROTOCOL_FEATURES)"))?;
        let protocol = protocol_features(offered);
        self.frontend
            .set_protocol_features(protocol)
            .map_err(self.request("accept the protocol features (SET_PROTOCOL_FEATURES)"))?;
        self.protocol = protocol;
        if protocol.contains(VhostUserProtocolFeatures::MQ) {
            let queues = self
                .frontend
                .get_queue_num()
                .map_err(self.request("tell its queue count (GET_QUEUE_NUM)"))?;
            if queues < NUM_QUEUES as u64 {
                return Err(DaemonError::TooFewQueues {
                    path: self.path.clone(),
                    queues,
                });
            }
        }
        Ok(())
    }

    /// The socket path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The virtio features the daemon offers (vhost-user bits included).
    pub fn features(&self) -> u64 {
        self.daemon_features
    }

    /// The protocol features in force.
    pub fn protocol(&self) -> VhostUserProtocolFeatures {
        self.protocol
    }

    /// Another handle on the session's socket: it becomes readable with a
    /// hang-up when the daemon goes away. Never read from it.
    pub fn socket(&self) -> io::Result<UnixStream> {
        self.socket.try_clone()
    }

    fn protocol_features_on(&self) -> bool {
        self.daemon_features & VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits() != 0
    }

    /// Starts the daemon on the driver's queues: features, guest RAM (the
    /// memfd `ram_file` with `ram_regions`), then each ready queue with its
    /// rings (translated through `mem`, this process's view of the same
    /// RAM), its call eventfd and its kick eventfd. Returns the indexes of
    /// the queues started.
    #[allow(clippy::too_many_arguments)]
    pub fn start(
        &mut self,
        guest_acked: u64,
        mem: &GuestMemoryMmap,
        ram_file: BorrowedFd<'_>,
        ram_regions: &[SharedRamRegion],
        queues: &[Queue],
        kick_events: &[EventFd],
        call_events: &[EventFd],
    ) -> Result<Vec<usize>, DaemonError> {
        self.frontend
            .set_features(daemon_features(guest_acked, self.daemon_features))
            .map_err(self.request("accept the features (SET_FEATURES)"))?;
        let regions: Vec<VhostUserMemoryRegionInfo> = ram_regions
            .iter()
            .map(|region| VhostUserMemoryRegionInfo {
                guest_phys_addr: region.guest_addr,
                memory_size: region.size,
                userspace_addr: region.host_addr,
                mmap_offset: region.file_offset,
                mmap_handle: ram_file.as_raw_fd(),
            })
            .collect();
        self.frontend
            .set_mem_table(&regions)
            .map_err(self.request("map guest RAM (SET_MEM_TABLE)"))?;
        let mut started = Vec::with_capacity(queues.len());
        for (index, queue) in queues.iter().enumerate() {
            if !queue.ready() {
                continue;
            }
            let (Some(kick), Some(call)) = (kick_events.get(index), call_events.get(index)) else {
                continue;
            };
            self.start_queue(index, queue, mem, kick, call)?;
            started.push(index);
        }
        Ok(started)
    }

    fn start_queue(
        &mut self,
        index: usize,
        queue: &Queue,
        mem: &GuestMemoryMmap,
        kick: &EventFd,
        call: &EventFd,
    ) -> Result<(), DaemonError> {
        let size = usize::from(queue.size());
        let host = |ring: Ring| {
            mem.get_slice(GuestAddress(ring.addr), ring.len)
                .map(|slice| slice.ptr_guard().as_ptr() as u64)
                .map_err(|_| DaemonError::RingOutsideMemory {
                    index,
                    ring: ring.name,
                })
        };
        let rings = VringConfigData {
            queue_max_size: queue.max_size(),
            queue_size: queue.size(),
            flags: 0,
            desc_table_addr: host(Ring {
                name: "descriptor table",
                addr: queue.desc_table(),
                len: 16 * size,
            })?,
            avail_ring_addr: host(Ring {
                name: "available ring",
                addr: queue.avail_ring(),
                len: 6 + 2 * size,
            })?,
            used_ring_addr: host(Ring {
                name: "used ring",
                addr: queue.used_ring(),
                len: 6 + 8 * size,
            })?,
            log_addr: None,
        };
        self.frontend
            .set_vring_num(index, queue.size())
            .map_err(self.request("take the queue size (SET_VRING_NUM)"))?;
        self.frontend
            .set_vring_addr(index, &rings)
            .map_err(self.request("take the ring addresses (SET_VRING_ADDR)"))?;
        self.frontend
            .set_vring_base(index, queue.next_avail())
            .map_err(self.request("take the ring position (SET_VRING_BASE)"))?;
        // The call eventfd before the kick: a kick starts the ring, and a
        // buffer used before the daemon has somewhere to signal would
        // interrupt nobody.
        self.frontend
            .set_vring_call(index, call)
            .map_err(self.request("take the call eventfd (SET_VRING_CALL)"))?;
        self.frontend
            .set_vring_kick(index, kick)
            .map_err(self.request("take the kick eventfd (SET_VRING_KICK)"))?;
        if self.protocol_features_on() {
            // With protocol features, rings start disabled.
            self.frontend
                .set_vring_enable(index, true)
                .map_err(self.request("enable the ring (SET_VRING_ENABLE)"))?;
        }
        Ok(())
    }

    /// Stops the daemon on `queues` (what [`DaemonConnection::start`]
    /// returned) and, where it can, resets its FUSE session so a driver
    /// that starts again is served from scratch. Every step is tried;
    /// the first failure is returned.
    pub fn stop(&mut self, queues: &[usize]) -> Result<(), DaemonError> {
        let mut first_error = None;
        for &index in queues {
            if self.protocol_features_on() {
                if let Err(e) = self
                    .frontend
                    .set_vring_enable(index, false)
                    .map_err(self.request("disable the ring (SET_VRING_ENABLE)"))
                {
                    first_error.get_or_insert(e);
                }
            }
            // GET_VRING_BASE stops the ring; where it stood does not
            // matter, a reset driver starts its rings at 0.
            if let Err(e) = self
                .frontend
                .get_vring_base(index)
                .map_err(self.request("stop the ring (GET_VRING_BASE)"))
            {
                first_error.get_or_insert(e);
            }
        }
        if self
            .protocol
            .contains(VhostUserProtocolFeatures::RESET_DEVICE)
        {
            if let Err(e) = self
                .frontend
                .reset_device()
                .map_err(self.request("reset (RESET_DEVICE)"))
            {
                first_error.get_or_insert(e);
            }
        }
        first_error.map_or(Ok(()), Err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::virtio::fs::defs::{
        VHOST_USER_F_PROTOCOL_FEATURES, VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC,
    };

    /// What virtiofsd 1.14 offers.
    const VIRTIOFSD: u64 = (1 << VIRTIO_F_VERSION_1)
        | (1 << VIRTIO_RING_F_INDIRECT_DESC)
        | (1 << VIRTIO_RING_F_EVENT_IDX)
        | (1 << VHOST_USER_F_PROTOCOL_FEATURES)
        | (1 << 26); // VHOST_F_LOG_ALL

    #[test]
    fn the_guest_gets_the_daemons_ring_features_without_vhost_user_bits() {
        let offered = guest_features(VIRTIOFSD).unwrap();

        assert_eq!(
            offered,
            (1 << VIRTIO_F_VERSION_1)
                | (1 << VIRTIO_RING_F_INDIRECT_DESC)
                | (1 << VIRTIO_RING_F_EVENT_IDX)
        );
    }

    #[test]
    fn features_the_daemon_lacks_are_not_offered() {
        let offered = guest_features((1 << VIRTIO_F_VERSION_1) | (1 << 34)).unwrap();

        assert_eq!(
            offered,
            1 << VIRTIO_F_VERSION_1,
            "ring_packed (34) stays out"
        );
    }

    #[test]
    fn a_daemon_without_version_1_is_refused() {
        assert_eq!(guest_features(VIRTIOFSD & !(1 << VIRTIO_F_VERSION_1)), None);
    }

    #[test]
    fn set_features_carries_the_guests_bits_and_keeps_protocol_features() {
        let acked = (1 << VIRTIO_F_VERSION_1) | (1 << VIRTIO_RING_F_EVENT_IDX);

        assert_eq!(
            daemon_features(acked, VIRTIOFSD),
            acked | (1 << VHOST_USER_F_PROTOCOL_FEATURES)
        );
        assert_eq!(
            daemon_features(acked, 1 << VIRTIO_F_VERSION_1),
            acked,
            "no protocol bit the daemon did not offer"
        );
        assert_eq!(
            daemon_features(acked | (1 << 26), VIRTIOFSD),
            acked | (1 << VHOST_USER_F_PROTOCOL_FEATURES),
            "LOG_ALL never"
        );
    }

    #[test]
    fn only_mq_and_reset_device_protocol_features_are_taken() {
        let offered = VhostUserProtocolFeatures::MQ
            | VhostUserProtocolFeatures::REPLY_ACK
            | VhostUserProtocolFeatures::BACKEND_REQ
            | VhostUserProtocolFeatures::RESET_DEVICE;

        assert_eq!(
            protocol_features(offered),
            VhostUserProtocolFeatures::MQ | VhostUserProtocolFeatures::RESET_DEVICE
        );
        assert_eq!(
            protocol_features(VhostUserProtocolFeatures::CONFIG),
            VhostUserProtocolFeatures::empty()
        );
    }

    #[test]
    fn a_missing_daemon_is_one_clear_error_with_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nobody.sock");

        let error = DaemonConnection::connect(&path).unwrap_err();

        assert!(matches!(error, DaemonError::Connect { .. }), "{error:?}");
        assert_eq!(
            error.to_string(),
            format!(
                "cannot connect to the virtiofs daemon at {}",
                path.display()
            )
        );
    }
}
