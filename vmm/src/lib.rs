//! The distroctl virtual machine monitor: memory, vCPUs, boot and virtio
//! devices for the shared utility VM, on KVM through the rust-vmm crates.
//!
//! Entry point: [`vm::Vm::new`] with a [`config::VmConfig`], then
//! [`vm::Vm::run`], which returns the [`vm_exit::ExitReason`]. The
//! `distroctl-vmm` binary (`src/main.rs`) is a thin command line around it.
//!
//! Map:
//! - [`arch`]: x86_64 memory layout, zero page / PVH start info, GDT, page
//!   tables, CPUID and the boot vCPU's registers;
//! - [`boot`]: loading bzImage, ELF vmlinux or PVH firmware plus initramfs
//!   and command line;
//! - [`acpi`]: RSDP, XSDT, FADT (hardware-reduced), MADT and a DSDT that
//!   lists the virtio-mmio devices;
//! - [`devices`]: the PIO/MMIO [`devices::bus`], legacy PC devices and the
//!   virtio devices with their virtio-mmio transport;
//! - [`vcpu`]: vCPU threads and exit handling; [`event_loop`]: the device
//!   event loop; [`vm`]: putting it all together;
//! - [`monitor_stats`]: the `--stats-file` the host reads (memory returned).
//!
//! The vsock device is also served to QEMU through [`vhost_user`]. The
//! other way round, [`devices::virtio::fs`] is a vhost-user frontend: an
//! external `virtiofsd` serves the virtio-fs queues (`--fs TAG=SOCKET_PATH`).

#[cfg(not(target_arch = "x86_64"))]
compile_error!("the vmm crate supports x86_64 hosts only");

pub mod acpi;
pub mod arch;
pub mod boot;
pub mod config;
pub mod devices;
pub mod event_loop;
pub mod monitor_stats;
pub mod vcpu;
pub mod vhost_user;
pub mod vm;
pub mod vm_exit;
