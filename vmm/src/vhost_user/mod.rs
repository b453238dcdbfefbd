//! Our devices served to another VMM over vhost-user.
//!
//! QEMU (the fallback backend, and the reference in tests) runs the guest;
//! the device logic that our own VMM will run in-process runs here instead,
//! in this process, with the guest's memory shared through memfd.

mod vsock;

pub use vsock::{spawn_vhost_user_vsock, DaemonFailure, VhostUserError, VhostUserVsock};
