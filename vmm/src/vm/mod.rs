//! A whole VM: KVM setup, guest memory, devices, boot, vCPU threads, and the
//! event loop that runs until the guest powers off or resets.
//!
//! ```no_run
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use vmm::boot::BootSource;
//! use vmm::config::VmConfig;
//! use vmm::vm::Vm;
//!
//! let config = VmConfig {
//!     boot: BootSource::Kernel {
//!         kernel: "vmlinuz".into(),
//!         initramfs: Some("initramfs.cpio".into()),
//!         cmdline: "console=ttyS0 panic=-1".into(),
//!     },
//!     memory_mib: 1024,
//!     cpus: 2,
//!     disk: Some("data.img".into()),
//!     vsock: None,
//!     rng: true,
//!     balloon: true,
//!     net: None,
//!     console: Some("console.log".into()),
//!     ram_backing: Default::default(),
//!     stats_file: None,
//!     fs: Vec::new(),
//! };
//! let reason = Vm::new(config)?.run()?;
//! println!("guest ended: {reason:?}");
//! # Ok(()) }
//! ```
//!
//! Without a usable in-kernel irqchip (some paravirtual KVM hosts) the VM
//! still starts, without interrupts: enough for polling guests, not for
//! Linux. [`Vm::has_irqchip`] says which one this is.

pub mod devices;
pub mod guest_ram;

use std::sync::{Arc, Mutex};

use event_manager::SubscriberOps;
use kvm_bindings::{
    kvm_pit_config, kvm_userspace_memory_region, CpuId, KVM_MAX_CPUID_ENTRIES,
    KVM_PIT_SPEAKER_DUMMY,
};
use kvm_ioctls::{Cap, Kvm, VcpuFd, VmFd};
use thiserror::Error;
use vm_memory::{GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion, MemoryRegionAddress};

use crate::acpi::{write_tables, AcpiError};
use crate::arch::cpuid::adjust_cpuid;
use crate::arch::layout::{ram_ranges, LayoutError};
use crate::arch::regs::{configure_vcpu, RegsError};
use crate::boot::{prepare_boot, BootError, BootPlan};
use crate::config::{ConfigError, VmConfig};
use crate::event_loop::{EventLoop, ExitWatcher};
use crate::monitor_stats::StatsFile;
use crate::vcpu::{RunState, Vcpu, VcpuControl, VcpuError};
use crate::vm_exit::{ExitReason, ExitSignal};
use devices::{create_devices, DeviceSetupError};
use guest_ram::{GuestRam, GuestRamError};

/// Where KVM puts the TSS it needs on Intel hosts (three pages just below
/// the BIOS ROM, inside the MMIO hole, never RAM).
const KVM_TSS_ADDRESS: usize = 0xfffb_d000;

/// What failed while creating or running the VM.
#[derive(Debug, Error)]
pub enum VmError {
    /// The configuration is invalid.
    #[error("invalid VM configuration")]
    Config(#[source] ConfigError),
    /// `/dev/kvm` could not be opened or used.
    #[error("cannot use /dev/kvm")]
    Kvm(#[source] kvm_ioctls::Error),
    /// A KVM VM-level ioctl failed.
    #[error("cannot {what}")]
    VmSetup {
        /// The step.
        what: &'static str,
        /// The ioctl's error.
        #[source]
        source: kvm_ioctls::Error,
    },
    /// Guest memory layout.
    #[error("invalid guest memory size")]
    Layout(#[source] LayoutError),
    /// Allocating guest memory.
    #[error("cannot allocate guest memory")]
    Memory(#[source] GuestRamError),
    /// A guest memory region has no host mapping to hand to KVM.
    #[error("guest memory region at {0:#x} has no host mapping")]
    NoHostMapping(u64),
    /// KVM's CPUID table holds fewer entries than needed.
    #[error("the CPUID table of {0} entries is too large for KVM")]
    CpuidTooLarge(usize),
    /// Loading the kernel and boot structures.
    #[error("cannot prepare the guest for boot")]
    Boot(#[source] BootError),
    /// Writing the ACPI tables.
    #[error("cannot write the ACPI tables")]
    Acpi(#[source] AcpiError),
    /// Creating devices.
    #[error("cannot create the devices")]
    Devices(#[source] DeviceSetupError),
    /// Writing the `--stats-file` for the first time.
    #[error("cannot write the stats file {}", path.display())]
    StatsFile {
        /// The file.
        path: std::path::PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Setting up a vCPU.
    #[error("cannot set up vCPU {id}")]
    VcpuSetup {
        /// The vCPU.
        id: u8,
        /// The cause.
        #[source]
        source: RegsError,
    },
    /// A vCPU thread failed.
    #[error("a vCPU failed")]
    Vcpu(#[source] VcpuError),
    /// The exit signal could not be created.
    #[error("cannot create the VM exit signal")]
    ExitSignal(#[source] std::io::Error),
    /// The event loop could not be created or polled.
    #[error("the VMM event loop failed")]
    EventLoop(#[source] event_manager::Error),
}

fn setup(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> VmError {
    move |source| VmError::VmSetup { what, source }
}

/// Lets another thread stop or pause a running VM.
#[derive(Debug, Clone)]
pub struct VmHandle {
    exit: Arc<ExitSignal>,
    control: Arc<VcpuControl>,
}

impl VmHandle {
    /// Ends the VM; [`Vm::run`] returns [`ExitReason::Stopped`].
    pub fn stop(&self) {
        self.exit.request(ExitReason::Stopped);
    }

    /// Takes every vCPU out of the guest and parks it.
    pub fn pause(&self) {
        self.control.set_state_and_kick(RunState::Paused);
    }

    /// Lets parked vCPUs enter the guest again.
    pub fn resume(&self) {
        self.control.set_state(RunState::Running);
    }
}

/// A VM ready to run.
pub struct Vm {
    vm: Arc<VmFd>,
    vcpus: Vec<Vcpu>,
    events: EventLoop,
    exit: Arc<ExitSignal>,
    control: Arc<VcpuControl>,
    boot: BootPlan,
    irqchip: bool,
    // Dropped after the VM and vCPU fds, which reference it.
    _kvm: Kvm,
    // Dropped last: devices and vCPUs above hold views of it.
    memory: GuestRam,
}

impl Vm {
    /// Creates the VM from `config`: memory, devices, boot image, vCPUs.
    pub fn new(config: VmConfig) -> Result<Self, VmError> {
        config.validate().map_err(VmError::Config)?;
        let kvm = Kvm::new().map_err(VmError::Kvm)?;
        let vm = Arc::new(kvm.create_vm().map_err(VmError::Kvm)?);
        let mem_size = config.memory_mib << 20;
        let memory = GuestRam::with_sharing(
            &ram_ranges(mem_size).map_err(VmError::Layout)?,
            config.ram_backing,
            config.ram_sharing(),
        )
        .map_err(VmError::Memory)?;
        register_memory(&vm, &memory)?;
        if let Err(e) = vm.set_tss_address(KVM_TSS_ADDRESS) {
            tracing::debug!(error = %e, "KVM_SET_TSS_ADDR not available");
        }
        let irqchip = create_irqchip(&vm);

        let exit = Arc::new(ExitSignal::new().map_err(VmError::ExitSignal)?);
        // The image files first: a wrong path fails before devices open the
        // disk or bind the vsock socket.
        let boot = prepare_boot(&memory, mem_size, &config.boot).map_err(VmError::Boot)?;
        let devices =
            create_devices(&vm, irqchip, &memory, &config, &exit).map_err(VmError::Devices)?;
        write_tables(&memory, &devices.acpi).map_err(VmError::Acpi)?;

        let mut events = EventLoop::new().map_err(VmError::EventLoop)?;
        events.add_subscriber(Arc::new(Mutex::new(ExitWatcher::new(Arc::clone(&exit)))));
        for subscriber in devices.subscribers {
            events.add_subscriber(subscriber);
        }
        if let Some(path) = &config.stats_file {
            // Without a balloon nothing is ever returned; the file says 0.
            let returned = devices.memory_returned.unwrap_or_default();
            let stats =
                StatsFile::new(path.clone(), returned).map_err(|source| VmError::StatsFile {
                    path: path.clone(),
                    source,
                })?;
            events.add_subscriber(Arc::new(Mutex::new(stats)));
        }

        let control = Arc::new(VcpuControl::new(usize::from(config.cpus)));
        let pio = Arc::new(devices.pio);
        let mmio = Arc::new(devices.mmio);
        let supported = kvm
            .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
            .map_err(VmError::Kvm)?;
        let tsc_deadline = irqchip && kvm.check_extension(Cap::TscDeadlineTimer);
        let mut vcpus = Vec::with_capacity(usize::from(config.cpus));
        for id in 0..config.cpus {
            let fd = create_vcpu(&vm, &supported, id, config.cpus, tsc_deadline)?;
            let entry = (id == 0).then_some(&boot.entry);
            configure_vcpu(&fd, entry, irqchip)
                .map_err(|source| VmError::VcpuSetup { id, source })?;
            vcpus.push(Vcpu {
                id,
                fd,
                pio: Arc::clone(&pio),
                mmio: Arc::clone(&mmio),
                exit: Arc::clone(&exit),
                control: Arc::clone(&control),
            });
        }
        Ok(Self {
            vm,
            memory,
            vcpus,
            events,
            exit,
            control,
            boot,
            irqchip,
            _kvm: kvm,
        })
    }

    /// What was loaded and handed to the guest.
    pub fn boot_plan(&self) -> &BootPlan {
        &self.boot
    }

    /// Guest memory (clone it to keep it beyond the VM: clones keep the
    /// mapping alive).
    pub fn memory(&self) -> &GuestRam {
        &self.memory
    }

    /// Whether the VM has KVM's in-kernel interrupt controllers.
    pub fn has_irqchip(&self) -> bool {
        self.irqchip
    }

    /// A handle to stop or pause the VM from another thread.
    pub fn handle(&self) -> VmHandle {
        VmHandle {
            exit: Arc::clone(&self.exit),
            control: Arc::clone(&self.control),
        }
    }

    /// Runs the VM until the guest powers off or resets, all vCPUs halt for
    /// good, or [`VmHandle::stop`] is called. The calling thread runs the
    /// device event loop.
    pub fn run(mut self) -> Result<ExitReason, VmError> {
        let mut threads = Vec::with_capacity(self.vcpus.len());
        let mut spawn_error = None;
        for vcpu in self.vcpus.drain(..) {
            match vcpu.spawn() {
                Ok(thread) => threads.push(thread),
                Err(e) => {
                    spawn_error = Some(e);
                    self.exit.request(ExitReason::Stopped);
                    break;
                }
            }
        }
        let mut loop_error = None;
        while self.exit.reason().is_none() {
            if let Err(e) = self.events.run() {
                loop_error = Some(e);
                break;
            }
        }
        self.control.set_state_and_kick(RunState::Stopped);
        let mut vcpu_error = spawn_error;
        for thread in threads {
            match thread.join() {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    vcpu_error.get_or_insert(e);
                }
                Err(panic) => std::panic::resume_unwind(panic),
            }
        }
        if let Some(e) = vcpu_error {
            return Err(VmError::Vcpu(e));
        }
        if let Some(e) = loop_error {
            return Err(VmError::EventLoop(e));
        }
        let reason = self.exit.reason().unwrap_or(ExitReason::Stopped);
        tracing::info!(?reason, "VM ended");
        drop(self.vm);
        Ok(reason)
    }
}

fn register_memory(vm: &VmFd, memory: &GuestMemoryMmap) -> Result<(), VmError> {
    for (slot, region) in memory.iter().enumerate() {
        let host = region
            .get_host_address(MemoryRegionAddress(0))
            .map_err(|_| VmError::NoHostMapping(region.start_addr().0))?;
        let mapping = kvm_userspace_memory_region {
            slot: slot as u32,
            flags: 0,
            guest_phys_addr: region.start_addr().0,
            memory_size: region.len(),
            userspace_addr: host as u64,
        };
        // SAFETY: the region is a live mmap owned by `memory`, which the Vm
        // keeps for as long as the VM fd exists, and slots do not overlap.
        unsafe { vm.set_user_memory_region(mapping) }
            .map_err(setup("register guest memory with KVM"))?;
    }
    Ok(())
}

/// Creates the in-kernel PIC/IOAPIC/LAPICs and PIT. Returns false (and the
/// VM runs without interrupts) where the host's KVM cannot.
fn create_irqchip(vm: &VmFd) -> bool {
    if let Err(e) = vm.create_irq_chip() {
        tracing::warn!(error = %e, "KVM cannot create an in-kernel irqchip; the guest gets no interrupts");
        return false;
    }
    let pit = kvm_pit_config {
        flags: KVM_PIT_SPEAKER_DUMMY,
        ..Default::default()
    };
    if let Err(e) = vm.create_pit2(pit) {
        tracing::warn!(error = %e, "KVM cannot create an in-kernel PIT");
    }
    true
}

fn create_vcpu(
    vm: &VmFd,
    supported: &CpuId,
    id: u8,
    cpus: u8,
    tsc_deadline: bool,
) -> Result<VcpuFd, VmError> {
    let fd = vm
        .create_vcpu(u64::from(id))
        .map_err(setup("create a vCPU"))?;
    let mut entries = supported.as_slice().to_vec();
    adjust_cpuid(&mut entries, id, cpus, tsc_deadline);
    let cpuid = CpuId::from_entries(&entries).map_err(|_| VmError::CpuidTooLarge(entries.len()))?;
    fd.set_cpuid2(&cpuid)
        .map_err(setup("set the vCPU's CPUID"))?;
    Ok(fd)
}
