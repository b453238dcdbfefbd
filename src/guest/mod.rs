//! Guest image assembly: the kernel the utility VM boots, the kernel modules
//! it needs and the initramfs that carries `distroctl-init`, the agent and
//! those modules.

// The VM backends that call into this module land separately; until then
// nothing in the binary uses it outside tests.
#![allow(
    dead_code,
    reason = "used by the VM backends, which are not wired in yet"
)]

mod cpio;
pub mod initramfs;
pub mod kernel;
mod modinfo;
pub mod modules;
