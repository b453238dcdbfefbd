//! The VM's identity and loopback networking, done with plain syscalls
//! because the initramfs carries no `ip` or `hostname` tools.

use std::os::fd::AsRawFd;

use nix::errno::Errno;
use nix::sys::socket::{socket, AddressFamily, SockFlag, SockType};
use thiserror::Error;

/// The utility VM's hostname (distros get their own in their UTS namespace).
pub const HOSTNAME: &str = "distroctl";

/// The loopback interface.
const LOOPBACK: &str = "lo";

/// Failure to set up the VM's name or loopback.
#[derive(Debug, Error)]
pub enum NetworkError {
    /// `sethostname` failed.
    #[error("could not set hostname")]
    Hostname(#[source] Errno),
    /// The socket used for interface ioctls could not be opened.
    #[error("could not open a socket for interface control")]
    Socket(#[source] Errno),
    /// Reading or writing the interface flags failed.
    #[error("could not {step} of interface {interface}")]
    Flags {
        /// Which ioctl.
        step: &'static str,
        /// The interface.
        interface: &'static str,
        /// Cause.
        #[source]
        source: Errno,
    },
}

/// Sets the hostname to [`HOSTNAME`].
pub fn set_hostname() -> Result<(), NetworkError> {
    nix::unistd::sethostname(HOSTNAME).map_err(NetworkError::Hostname)
}

/// Brings `lo` up (`SIOCGIFFLAGS`, then `SIOCSIFFLAGS` with `IFF_UP`).
pub fn bring_up_loopback() -> Result<(), NetworkError> {
    let sock = socket(
        AddressFamily::Inet,
        SockType::Datagram,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .map_err(NetworkError::Socket)?;
    let mut request = interface_request(LOOPBACK);

    // SAFETY: `sock` is an open socket for the whole call and `request` is a
    // properly initialised `ifreq` that lives across the ioctl, which only
    // writes `ifr_flags` inside it.
    let got = unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut request) };
    Errno::result(got).map_err(|source| NetworkError::Flags {
        step: "read the flags",
        interface: LOOPBACK,
        source,
    })?;

    // SAFETY: SIOCGIFFLAGS above filled the `ifru_flags` member, so reading
    // and updating that member of the union is reading initialised memory.
    unsafe {
        request.ifr_ifru.ifru_flags |= up_flags();
    }

    // SAFETY: as for SIOCGIFFLAGS; SIOCSIFFLAGS only reads `request`.
    let set = unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &request) };
    Errno::result(set)
        .map(drop)
        .map_err(|source| NetworkError::Flags {
            step: "set the flags",
            interface: LOOPBACK,
            source,
        })
}

/// `IFF_UP | IFF_RUNNING` in the `c_short` the ioctl uses.
fn up_flags() -> libc::c_short {
    // Both flags are small (0x1, 0x40) so they fit a c_short.
    (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short
}

/// An `ifreq` naming `interface`, the rest zeroed.
fn interface_request(interface: &str) -> libc::ifreq {
    // SAFETY: `ifreq` is a plain C struct of integers, arrays and a union of
    // such; all-zero bytes are a valid value for every member.
    let mut request: libc::ifreq = unsafe { std::mem::zeroed() };
    // IFNAMSIZ includes the terminating NUL, which the zeroing supplies.
    for (slot, byte) in request
        .ifr_name
        .iter_mut()
        .zip(interface.bytes().take(libc::IFNAMSIZ - 1))
    {
        *slot = byte as libc::c_char;
    }
    request
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interface_request_names_interface_nul_terminated() {
        let request = interface_request("lo");

        assert_eq!(request.ifr_name[0], b'l' as libc::c_char);
        assert_eq!(request.ifr_name[1], b'o' as libc::c_char);
        assert_eq!(request.ifr_name[2], 0);
    }

    #[test]
    fn interface_request_truncates_overlong_names() {
        let request = interface_request("a-very-long-interface-name");

        assert_eq!(request.ifr_name[libc::IFNAMSIZ - 1], 0);
    }

    #[test]
    fn up_flags_include_up() {
        assert_ne!(i32::from(up_flags()) & libc::IFF_UP, 0);
    }
}
