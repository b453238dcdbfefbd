//! Serves the vsock device to one QEMU over vhost-user, for trying the
//! backend by hand:
//!
//! ```text
//! cargo run -p vmm --example vhost_user_vsock -- /tmp/vhost.sock /tmp/vsock 3
//! qemu-system-x86_64 -M microvm,memory-backend=mem \
//!     -object memory-backend-memfd,id=mem,size=512M,share=on \
//!     -chardev socket,id=c,path=/tmp/vhost.sock \
//!     -device vhost-user-vsock-device,chardev=c ...
//! ```
//!
//! Exits when QEMU disconnects.

use std::path::PathBuf;
use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [vhost, uds, cid] = args.as_slice() else {
        eprintln!("usage: vhost_user_vsock VHOST_SOCKET UDS_PATH GUEST_CID");
        return ExitCode::from(2);
    };
    let Ok(cid) = cid.parse::<u64>() else {
        eprintln!("guest CID must be a number, got {cid:?}");
        return ExitCode::from(2);
    };
    let backend = match vmm::vhost_user::spawn_vhost_user_vsock(
        &PathBuf::from(vhost),
        &PathBuf::from(uds),
        cid,
    ) {
        Ok(backend) => backend,
        Err(e) => {
            eprintln!("cannot start the vsock backend: {e}");
            return ExitCode::FAILURE;
        }
    };
    eprintln!("vhost-user vsock: waiting for QEMU on {vhost}, host clients on {uds}");
    match backend.wait() {
        Ok(()) => {
            eprintln!("vhost-user vsock: front end gone, exiting");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("vhost-user vsock: {e}");
            ExitCode::FAILURE
        }
    }
}
