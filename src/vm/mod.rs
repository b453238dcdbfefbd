//! The utility VM: choosing how to run it, preparing its kernel, initramfs
//! and data disk, booting it in a detached runner process, and stopping it.

pub mod accel;
pub mod control;
pub mod data_disk;
pub mod passt;
pub mod qemu;
pub mod runner;
pub mod shares;
pub mod state;
pub mod virtiofsd;
