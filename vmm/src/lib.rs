//! The distroctl virtual machine monitor: memory, vCPUs, boot and virtio
//! devices for the shared utility VM.
//!
//! Not built yet: the QEMU backend carries the utility VM until this crate
//! can boot it (see DESIGN.md).
