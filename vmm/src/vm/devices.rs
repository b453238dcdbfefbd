//! Building the VM's buses: legacy ports on the PIO bus, virtio-mmio
//! windows on the MMIO bus, their interrupts and queue notifications wired
//! into KVM, and their event-loop halves collected for [`super::Vm::run`].
//!
//! Interrupts use a KVM irqfd when the VM has an in-kernel irqchip; if
//! registering it fails, the event loop reads the eventfd and pulses the
//! line with `KVM_IRQ_LINE` ([`IrqLine`]). Queue notifications use a KVM
//! ioeventfd when it can be registered, and otherwise arrive as ordinary MMIO
//! writes, which the transport turns into the same eventfd write.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};

use event_manager::MutEventSubscriber;
use kvm_ioctls::{IoEventAddress, VmFd};
use thiserror::Error;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::acpi::dsdt::{MmioDeviceInfo, PortDeviceInfo};
use crate::acpi::AcpiPlatform;
use crate::arch::layout::{IRQ_MAX, SERIAL_IRQ, VIRTIO_IRQ_BASE, VIRTIO_MMIO_START};
use crate::config::{FsConfig, VmConfig};
use crate::devices::bus::{Bus, BusDevice, BusError};
use crate::devices::legacy::acpi_pm::{AcpiPowerManagement, ACPI_PM_PORTS, SLEEP_CONTROL_PORT};
use crate::devices::legacy::i8042::{I8042, I8042_PORT, I8042_PORTS};
use crate::devices::legacy::serial::{SerialConsole, COM1_PORT, SERIAL_PORTS};
use crate::devices::legacy::{EventFdTrigger, ExitTrigger};
use crate::devices::virtio::balloon::discard::Discard;
use crate::devices::virtio::balloon::BalloonDevice;
use crate::devices::virtio::block::{BlockConfig, BlockDevice, BlockError};
use crate::devices::virtio::fs::{FsDevice, FsError};
use crate::devices::virtio::mmio::{
    lock_device, MmioError, MmioTransport, MMIO_WINDOW_SIZE, QUEUE_NOTIFY_OFFSET,
};
use crate::devices::virtio::net::{NetDevice, NetError};
use crate::devices::virtio::rng::RngDevice;
use crate::devices::virtio::vsock::{DeviceError as VsockError, VsockDevice};
use crate::devices::virtio::{EventDrivenDevice, VirtioDevice};
use crate::event_loop::IrqLine;
use crate::vm::guest_ram::GuestRam;
use crate::vm_exit::{ExitReason, ExitSignal};

/// A subscriber of the VM's event loop.
pub type Subscriber = Arc<Mutex<dyn MutEventSubscriber + Send>>;

/// What failed while creating a device.
#[derive(Debug, Error)]
pub enum DeviceSetupError {
    /// Opening the console log.
    #[error("cannot open the console log {}", path.display())]
    Console {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// Creating an eventfd.
    #[error("cannot create an eventfd")]
    EventFd(#[source] std::io::Error),
    /// Placing a device on a bus.
    #[error("cannot place a device on the bus")]
    Bus(#[source] BusError),
    /// Opening the data disk.
    #[error("cannot create the virtio-blk device")]
    Block(#[source] BlockError),
    /// Creating the vsock device.
    #[error("cannot create the vsock device")]
    Vsock(#[source] VsockError),
    /// Creating the network device.
    #[error("cannot create the virtio-net device")]
    Net(#[source] NetError),
    /// Creating a virtio-fs device.
    #[error("cannot create the virtio-fs device for tag {tag:?}")]
    Fs {
        /// The share's tag.
        tag: String,
        /// What failed.
        #[source]
        source: FsError,
    },
    /// Creating a virtio-mmio transport.
    #[error("cannot create the virtio-mmio transport")]
    Transport(#[source] MmioError),
    /// More virtio devices than GSIs.
    #[error("no interrupt line left for another virtio device")]
    OutOfIrqs,
}

/// The buses and what else the devices need at run time.
pub struct Devices {
    /// Port I/O devices.
    pub pio: Bus,
    /// MMIO devices.
    pub mmio: Bus,
    /// What the ACPI tables must describe.
    pub acpi: AcpiPlatform,
    /// Event-loop halves of the devices.
    pub subscribers: Vec<Subscriber>,
    /// Bytes the balloon has given back to the host, when there is one.
    pub memory_returned: Option<Arc<AtomicU64>>,
}

impl<D: VirtioDevice + Send> BusDevice for MmioTransport<D> {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        MmioTransport::read(self, offset, data);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        MmioTransport::write(self, offset, data);
    }
}

/// Connects an interrupt eventfd to `gsi`: an irqfd if possible, else an
/// [`IrqLine`] the event loop serves.
fn connect_irq(
    vm: &Arc<VmFd>,
    irqchip: bool,
    event: EventFd,
    gsi: u32,
    subscribers: &mut Vec<Subscriber>,
) {
    if irqchip {
        match vm.register_irqfd(&event, gsi) {
            Ok(()) => return,
            Err(e) => tracing::warn!(gsi, error = %e, "no irqfd; the event loop raises this line"),
        }
    }
    let line = IrqLine::new(event, gsi, irqchip.then(|| Arc::clone(vm)));
    subscribers.push(Arc::new(Mutex::new(line)));
}

struct Builder<'a> {
    vm: &'a Arc<VmFd>,
    irqchip: bool,
    ram: &'a GuestRam,
    devices: Devices,
}

impl Builder<'_> {
    fn add_pio(
        &mut self,
        device: impl BusDevice + 'static,
        base: u64,
        len: u64,
    ) -> Result<(), DeviceSetupError> {
        self.devices
            .pio
            .insert(Arc::new(Mutex::new(device)), base, len)
            .map_err(DeviceSetupError::Bus)
    }

    fn add_virtio<D: EventDrivenDevice + Send + 'static>(
        &mut self,
        device: D,
    ) -> Result<(), DeviceSetupError> {
        let transport = MmioTransport::new((**self.ram).clone(), Arc::new(Mutex::new(device)))
            .map_err(DeviceSetupError::Transport)?;
        let handler = transport
            .event_handler()
            .map_err(DeviceSetupError::Transport)?;
        self.place_virtio(transport, Arc::new(Mutex::new(handler)))
    }

    /// A virtio-fs device served by the `virtiofsd` of `share`: its queue
    /// notifications go straight to the daemon (the device's kick eventfds
    /// are the transport's), and its own handler relays the daemon's
    /// signals to the guest.
    fn add_vhost_user_fs(&mut self, share: &FsConfig) -> Result<(), DeviceSetupError> {
        let fs_error = |source| DeviceSetupError::Fs {
            tag: share.tag.clone(),
            source,
        };
        let device = FsDevice::new(share, self.ram.clone()).map_err(fs_error)?;
        let kicks = device.kick_events().map_err(fs_error)?;
        let transport = MmioTransport::with_queue_events(
            (**self.ram).clone(),
            Arc::new(Mutex::new(device)),
            kicks,
        )
        .map_err(DeviceSetupError::Transport)?;
        let handler = lock_device(transport.device())
            .event_handler(Arc::clone(transport.interrupt()))
            .map_err(fs_error)?;
        self.place_virtio(transport, Arc::new(Mutex::new(handler)))
    }

    /// Gives `transport` the next virtio-mmio window and GSI, wires its
    /// queue notifications and interrupt into KVM, puts `handler` on the
    /// event loop and describes the device in the DSDT.
    fn place_virtio<D: VirtioDevice + Send + 'static>(
        &mut self,
        transport: MmioTransport<D>,
        handler: Subscriber,
    ) -> Result<(), DeviceSetupError> {
        let index = self.devices.acpi.virtio.len() as u64;
        let gsi = VIRTIO_IRQ_BASE + index as u32;
        if gsi > IRQ_MAX {
            return Err(DeviceSetupError::OutOfIrqs);
        }
        let base = VIRTIO_MMIO_START + index * MMIO_WINDOW_SIZE;
        for (queue, event) in transport.queue_events().iter().enumerate() {
            let addr = IoEventAddress::Mmio(base + QUEUE_NOTIFY_OFFSET);
            if let Err(e) = self.vm.register_ioevent(event, &addr, queue as u32) {
                tracing::debug!(error = %e, "no ioeventfd; queue notifications take the MMIO exit");
            }
        }
        let interrupt = transport
            .interrupt()
            .event()
            .try_clone()
            .map_err(DeviceSetupError::EventFd)?;
        connect_irq(
            self.vm,
            self.irqchip,
            interrupt,
            gsi,
            &mut self.devices.subscribers,
        );
        self.devices.subscribers.push(handler);
        self.devices
            .mmio
            .insert(Arc::new(Mutex::new(transport)), base, MMIO_WINDOW_SIZE)
            .map_err(DeviceSetupError::Bus)?;
        self.devices.acpi.virtio.push(MmioDeviceInfo {
            base,
            len: MMIO_WINDOW_SIZE,
            irq: gsi,
        });
        Ok(())
    }
}

fn console_output(config: &VmConfig) -> Result<Box<dyn Write + Send>, DeviceSetupError> {
    match &config.console {
        Some(path) => OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map(|f| Box::new(f) as Box<dyn Write + Send>)
            .map_err(|source| DeviceSetupError::Console {
                path: path.clone(),
                source,
            }),
        None => Ok(Box::new(std::io::stdout())),
    }
}

/// Creates every device `config` asks for. Virtio windows are handed out in
/// a fixed order — data disk, vsock, rng, network, balloon, then one
/// virtio-fs device per share — and the data disk comes first so it is
/// `/dev/vda` (virtio-mmio devices probe in DSDT order). Guest RAM must be
/// shared memory when `config` has shares ([`VmConfig::ram_sharing`]).
pub fn create_devices(
    vm: &Arc<VmFd>,
    irqchip: bool,
    ram: &GuestRam,
    config: &VmConfig,
    exit: &Arc<ExitSignal>,
) -> Result<Devices, DeviceSetupError> {
    let mut builder = Builder {
        vm,
        irqchip,
        ram,
        devices: Devices {
            pio: Bus::new(),
            mmio: Bus::new(),
            acpi: AcpiPlatform {
                cpus: config.cpus,
                ..Default::default()
            },
            subscribers: Vec::new(),
            memory_returned: None,
        },
    };

    let serial_irq = EventFd::new(EFD_NONBLOCK).map_err(DeviceSetupError::EventFd)?;
    let irq_for_kvm = serial_irq.try_clone().map_err(DeviceSetupError::EventFd)?;
    connect_irq(
        vm,
        irqchip,
        irq_for_kvm,
        SERIAL_IRQ,
        &mut builder.devices.subscribers,
    );
    let serial = SerialConsole::new(EventFdTrigger(serial_irq), console_output(config)?);
    builder.add_pio(serial, COM1_PORT, SERIAL_PORTS)?;
    builder.devices.acpi.serial.push(PortDeviceInfo {
        base: COM1_PORT as u16,
        len: SERIAL_PORTS as u8,
        irq: SERIAL_IRQ,
    });
    let reset = ExitTrigger::new(Arc::clone(exit), ExitReason::Reset);
    builder.add_pio(I8042::new(reset), I8042_PORT, I8042_PORTS)?;
    builder.add_pio(
        AcpiPowerManagement::new(Arc::clone(exit)),
        u64::from(SLEEP_CONTROL_PORT),
        ACPI_PM_PORTS,
    )?;

    if let Some(disk) = &config.disk {
        let block = BlockDevice::new(BlockConfig::new(disk)).map_err(DeviceSetupError::Block)?;
        builder.add_virtio(block)?;
    }
    if let Some(vsock) = &config.vsock {
        let device =
            VsockDevice::new(vsock.cid, &vsock.uds_path).map_err(DeviceSetupError::Vsock)?;
        builder.add_virtio(device)?;
    }
    if config.rng {
        builder.add_virtio(RngDevice::new())?;
    }
    if let Some(net) = &config.net {
        let device = NetDevice::new(net).map_err(DeviceSetupError::Net)?;
        builder.add_virtio(device)?;
    }
    if config.balloon {
        let balloon = BalloonDevice::new(Discard::for_backing(config.ram_backing, ram.sharing()));
        builder.devices.memory_returned = Some(balloon.returned_counter());
        builder.add_virtio(balloon)?;
    }
    for share in &config.fs {
        builder.add_vhost_user_fs(share)?;
    }
    Ok(builder.devices)
}

#[cfg(test)]
mod tests {
    use vm_memory::GuestAddress;

    use super::*;
    use crate::acpi::dsdt::dsdt_aml;
    use crate::boot::BootSource;
    use crate::devices::virtio::balloon::defs::VIRTIO_ID_BALLOON;
    use crate::devices::virtio::mmio::defs::REG_DEVICE_ID;

    /// A config with no virtio device but (maybe) the balloon.
    fn config(balloon: bool, console: PathBuf) -> VmConfig {
        VmConfig {
            boot: BootSource::Kernel {
                kernel: "/k".into(),
                initramfs: None,
                cmdline: String::new(),
            },
            memory_mib: 64,
            cpus: 1,
            disk: None,
            vsock: None,
            rng: false,
            balloon,
            net: None,
            console: Some(console),
            ram_backing: Default::default(),
            stats_file: None,
            fs: Vec::new(),
        }
    }

    #[test]
    fn balloon_gets_a_virtio_window_and_a_dsdt_entry_unless_left_out() {
        let vm = match kvm_ioctls::Kvm::new().and_then(|kvm| kvm.create_vm()) {
            Ok(vm) => Arc::new(vm),
            Err(e) => {
                eprintln!("SKIP: no usable /dev/kvm ({e})");
                return;
            }
        };
        let dir = tempfile::tempdir().unwrap();
        let mem = GuestRam::new(
            &[(GuestAddress(0), 64 << 20)],
            crate::vm::guest_ram::RamBacking::TransparentHugePages,
        )
        .unwrap();
        let exit = Arc::new(ExitSignal::new().unwrap());
        let console = dir.path().join("console.log");

        let with = create_devices(&vm, false, &mem, &config(true, console.clone()), &exit).unwrap();
        let without = create_devices(&vm, false, &mem, &config(false, console), &exit).unwrap();

        assert_eq!(
            with.acpi.virtio,
            vec![MmioDeviceInfo {
                base: VIRTIO_MMIO_START,
                len: MMIO_WINDOW_SIZE,
                irq: VIRTIO_IRQ_BASE,
            }]
        );
        let mut device_id = [0u8; 4];
        assert!(with
            .mmio
            .read(VIRTIO_MMIO_START + REG_DEVICE_ID, &mut device_id));
        assert_eq!(u32::from_le_bytes(device_id), VIRTIO_ID_BALLOON);
        let aml = dsdt_aml(&with.acpi.serial, &with.acpi.virtio);
        assert!(
            aml.windows(4).any(|w| w == b"V000"),
            "no virtio device in the DSDT"
        );
        assert!(without.acpi.virtio.is_empty());
    }
}
