//! The distroctl virtual machine monitor: memory, vCPUs, boot and virtio
//! devices for the shared utility VM.
//!
//! The vsock device is also served to QEMU through [`vhost_user`].

#[cfg(not(target_arch = "x86_64"))]
compile_error!("the vmm crate supports x86_64 hosts only");

pub mod acpi;
pub mod arch;
pub mod boot;
pub mod config;
pub mod devices;
pub mod event_loop;
pub mod vcpu;
pub mod vhost_user;
pub mod vm;
pub mod vm_exit;
