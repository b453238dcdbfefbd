//! The distroctl virtual machine monitor: memory, vCPUs, boot and virtio
//! devices for the shared utility VM.
//!
//! Not built yet: the QEMU backend carries the utility VM until this crate
//! can boot it (see DESIGN.md). What exists is the vsock device, which QEMU
//! already uses through [`vhost_user`].

pub mod devices;
pub mod vhost_user;
