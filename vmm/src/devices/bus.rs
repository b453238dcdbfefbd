//! An address bus: the port I/O space or the MMIO space, mapping address
//! ranges to the devices that answer them.
//!
//! The bus is filled before the vCPUs start and is read-only afterwards, so
//! lookups need no lock; each device has its own lock, so vCPUs touching
//! different devices never wait on each other.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use thiserror::Error;

/// A device on a bus. Offsets are relative to the start of the device's
/// range; an access may be 1, 2, 4 or 8 bytes.
pub trait BusDevice: Send {
    /// Reads at `offset` into `data`.
    fn read(&mut self, offset: u64, data: &mut [u8]);
    /// Writes `data` at `offset`.
    fn write(&mut self, offset: u64, data: &[u8]);
}

/// A device shared between the bus and whoever else drives it.
pub type SharedBusDevice = Arc<Mutex<dyn BusDevice>>;

/// What can go wrong placing a device on the bus.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum BusError {
    /// The range overlaps one already taken.
    #[error("bus range {base:#x}+{len:#x} overlaps a device already at {other:#x}")]
    Overlap {
        /// Start of the new range.
        base: u64,
        /// Its length.
        len: u64,
        /// Start of the range it collides with.
        other: u64,
    },
    /// A zero-length or wrapping range.
    #[error("bus range {base:#x}+{len:#x} is empty or wraps")]
    BadRange {
        /// Start.
        base: u64,
        /// Length.
        len: u64,
    },
}

struct Entry {
    len: u64,
    device: SharedBusDevice,
}

/// An address space with devices in non-overlapping ranges.
#[derive(Default)]
pub struct Bus {
    ranges: BTreeMap<u64, Entry>,
}

impl std::fmt::Debug for Bus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.ranges.iter().map(|(&base, e)| base..base + e.len))
            .finish()
    }
}

impl Bus {
    /// An empty bus.
    pub fn new() -> Self {
        Self::default()
    }

    /// Places `device` at `[base, base + len)`.
    pub fn insert(&mut self, device: SharedBusDevice, base: u64, len: u64) -> Result<(), BusError> {
        let end = base
            .checked_add(len)
            .filter(|_| len > 0)
            .ok_or(BusError::BadRange { base, len })?;
        let before = self.ranges.range(..end).next_back();
        if let Some((&other, entry)) = before {
            if other + entry.len > base {
                return Err(BusError::Overlap { base, len, other });
            }
        }
        self.ranges.insert(base, Entry { len, device });
        Ok(())
    }

    fn find(&self, addr: u64, size: usize) -> Option<(u64, &SharedBusDevice)> {
        let (&base, entry) = self.ranges.range(..=addr).next_back()?;
        let offset = addr - base;
        (offset + size as u64 <= entry.len).then_some((offset, &entry.device))
    }

    /// Reads from the device at `addr`. Returns false, leaving `data`
    /// untouched, when no device covers the access.
    pub fn read(&self, addr: u64, data: &mut [u8]) -> bool {
        match self.find(addr, data.len()) {
            Some((offset, device)) => {
                lock(device).read(offset, data);
                true
            }
            None => false,
        }
    }

    /// Writes to the device at `addr`. Returns false when no device covers
    /// the access.
    pub fn write(&self, addr: u64, data: &[u8]) -> bool {
        match self.find(addr, data.len()) {
            Some((offset, device)) => {
                lock(device).write(offset, data);
                true
            }
            None => false,
        }
    }
}

/// A poisoned device lock means a device panicked on another vCPU; its state
/// is still the best we have, and one broken device must not stop the VM.
fn lock(device: &SharedBusDevice) -> std::sync::MutexGuard<'_, dyn BusDevice + 'static> {
    device
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Recorder {
        writes: Vec<(u64, Vec<u8>)>,
    }

    impl BusDevice for Recorder {
        fn read(&mut self, offset: u64, data: &mut [u8]) {
            data.fill(offset as u8);
        }
        fn write(&mut self, offset: u64, data: &[u8]) {
            self.writes.push((offset, data.to_vec()));
        }
    }

    #[test]
    fn accesses_reach_the_device_with_the_offset_inside_its_range() {
        let recorder = Arc::new(Mutex::new(Recorder::default()));
        let mut bus = Bus::new();
        bus.insert(recorder.clone(), 0x3f8, 8).unwrap();

        let mut data = [0u8; 1];
        assert!(bus.read(0x3fd, &mut data));
        assert!(bus.write(0x3f8, b"x"));

        assert_eq!(data, [5]);
        assert_eq!(recorder.lock().unwrap().writes, vec![(0, vec![b'x'])]);
    }

    #[test]
    fn accesses_outside_every_range_are_reported() {
        let mut bus = Bus::new();
        bus.insert(Arc::new(Mutex::new(Recorder::default())), 0x1000, 0x100)
            .unwrap();

        let mut data = [0xaa; 4];
        assert!(!bus.read(0xfff, &mut data));
        assert!(!bus.read(0x10fe, &mut data), "straddles the end");
        assert!(!bus.write(0x1100, &[0]));
        assert_eq!(data, [0xaa; 4]);
    }

    #[test]
    fn overlapping_ranges_are_refused() {
        let mut bus = Bus::new();
        let dev = || Arc::new(Mutex::new(Recorder::default()));
        bus.insert(dev(), 0x1000, 0x100).unwrap();

        assert_eq!(
            bus.insert(dev(), 0x10ff, 1),
            Err(BusError::Overlap {
                base: 0x10ff,
                len: 1,
                other: 0x1000
            })
        );
        assert!(bus.insert(dev(), 0xf00, 0x101).is_err());
        assert!(bus.insert(dev(), 0x1100, 0x10).is_ok());
        assert!(bus.insert(dev(), 0xf00, 0x100).is_ok());
    }

    #[test]
    fn empty_or_wrapping_ranges_are_refused() {
        let mut bus = Bus::new();
        let dev = Arc::new(Mutex::new(Recorder::default()));

        assert!(bus.insert(dev.clone(), 0x10, 0).is_err());
        assert!(bus.insert(dev, u64::MAX, 2).is_err());
    }
}
