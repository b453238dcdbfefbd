//! virtio-mmio register layout and status bits, from the virtio 1.2
//! specification, section 4.2.2 ("MMIO Device Register Layout"), and Linux's
//! `include/uapi/linux/virtio_mmio.h` and `virtio_config.h`.

/// `MagicValue`: "virt" in little endian.
pub const REG_MAGIC_VALUE: u64 = 0x000;
/// `Version`: 2 for the modern (non-legacy) interface.
pub const REG_VERSION: u64 = 0x004;
/// `DeviceID`: the virtio device type.
pub const REG_DEVICE_ID: u64 = 0x008;
/// `VendorID`.
pub const REG_VENDOR_ID: u64 = 0x00c;
/// `DeviceFeatures`: 32 feature bits selected by `DeviceFeaturesSel`.
pub const REG_DEVICE_FEATURES: u64 = 0x010;
/// `DeviceFeaturesSel`.
pub const REG_DEVICE_FEATURES_SEL: u64 = 0x014;
/// `DriverFeatures`: 32 feature bits selected by `DriverFeaturesSel`.
pub const REG_DRIVER_FEATURES: u64 = 0x020;
/// `DriverFeaturesSel`.
pub const REG_DRIVER_FEATURES_SEL: u64 = 0x024;
/// `QueueSel`: which queue the `Queue*` registers address.
pub const REG_QUEUE_SEL: u64 = 0x030;
/// `QueueNumMax`: the largest queue size the device accepts (0: no queue).
pub const REG_QUEUE_NUM_MAX: u64 = 0x034;
/// `QueueNum`: the queue size the driver chose.
pub const REG_QUEUE_NUM: u64 = 0x038;
/// `QueueReady`.
pub const REG_QUEUE_READY: u64 = 0x044;
/// `QueueNotify`: the driver writes a queue index here.
pub const REG_QUEUE_NOTIFY: u64 = 0x050;
/// `InterruptStatus`.
pub const REG_INTERRUPT_STATUS: u64 = 0x060;
/// `InterruptACK`.
pub const REG_INTERRUPT_ACK: u64 = 0x064;
/// `Status`: the device status field.
pub const REG_STATUS: u64 = 0x070;
/// `QueueDescLow`.
pub const REG_QUEUE_DESC_LOW: u64 = 0x080;
/// `QueueDescHigh`.
pub const REG_QUEUE_DESC_HIGH: u64 = 0x084;
/// `QueueDriverLow` (the available ring).
pub const REG_QUEUE_DRIVER_LOW: u64 = 0x090;
/// `QueueDriverHigh`.
pub const REG_QUEUE_DRIVER_HIGH: u64 = 0x094;
/// `QueueDeviceLow` (the used ring).
pub const REG_QUEUE_DEVICE_LOW: u64 = 0x0a0;
/// `QueueDeviceHigh`.
pub const REG_QUEUE_DEVICE_HIGH: u64 = 0x0a4;
/// `SHMSel`: shared memory region selector.
pub const REG_SHM_SEL: u64 = 0x0ac;
/// `SHMLenLow`.
pub const REG_SHM_LEN_LOW: u64 = 0x0b0;
/// `SHMLenHigh`.
pub const REG_SHM_LEN_HIGH: u64 = 0x0b4;
/// `SHMBaseLow`.
pub const REG_SHM_BASE_LOW: u64 = 0x0b8;
/// `SHMBaseHigh`.
pub const REG_SHM_BASE_HIGH: u64 = 0x0bc;
/// `ConfigGeneration`.
pub const REG_CONFIG_GENERATION: u64 = 0x0fc;
/// Start of the device-specific configuration space.
pub const CONFIG_SPACE_OFFSET: u64 = 0x100;

/// `MagicValue`'s content.
pub const MAGIC_VALUE: u32 = 0x7472_6976;
/// The only interface version this transport speaks.
pub const MMIO_VERSION: u32 = 2;
/// Our vendor ID ("dctl" would not fit the PCI-style convention; any value is
/// allowed for MMIO, and Linux only prints it).
pub const VENDOR_ID: u32 = 0x4443_544c;

/// Status: the guest OS found the device.
pub const STATUS_ACKNOWLEDGE: u32 = 1;
/// Status: the guest OS has a driver for the device.
pub const STATUS_DRIVER: u32 = 2;
/// Status: the driver is set up and the device may run.
pub const STATUS_DRIVER_OK: u32 = 4;
/// Status: feature negotiation is complete.
pub const STATUS_FEATURES_OK: u32 = 8;
/// Status: the device hit an error it cannot recover from without a reset.
pub const STATUS_DEVICE_NEEDS_RESET: u32 = 64;
/// Status: the driver gave up on the device.
pub const STATUS_FAILED: u32 = 128;

/// `InterruptStatus` bit: a queue has used buffers.
pub const INT_USED_RING: u32 = 1;
/// `InterruptStatus` bit: the configuration space changed.
pub const INT_CONFIG_CHANGE: u32 = 2;

/// Feature bit: the device conforms to virtio 1.x (mandatory for version 2).
pub const VIRTIO_F_VERSION_1: u32 = 32;
/// Feature bit: the `used_event`/`avail_event` notification suppression.
pub const VIRTIO_RING_F_EVENT_IDX: u32 = 29;
