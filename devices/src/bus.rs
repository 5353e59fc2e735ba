//! The MMIO bus: maps guest-physical ranges to devices and dispatches vCPU exits to them.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use migration::{Section, StateError, Stateful};

/// A device reachable through MMIO. Offsets are relative to the device's base. Every one
/// can be saved and restored (`Stateful` has no default methods), so a snapshot cannot
/// leave a device on the bus out.
pub trait MmioDevice: Send + Stateful {
    /// Handles a guest read; `data.len()` is the access width.
    fn read(&mut self, offset: u64, data: &mut [u8]);
    /// Handles a guest write.
    fn write(&mut self, offset: u64, data: &[u8]);
}

/// Errors registering a device.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BusError {
    /// The new range overlaps a registered one.
    #[error("MMIO range {base:#x}+{len:#x} overlaps a registered device")]
    Overlap {
        /// Base of the rejected range.
        base: u64,
        /// Its length.
        len: u64,
    },
    /// A zero-length range.
    #[error("MMIO range at {0:#x} has zero length")]
    Empty(u64),
}

/// A shared device on the bus.
pub type SharedDevice = Arc<Mutex<dyn MmioDevice>>;

/// The bus itself; cheap to share between vCPU threads behind an `Arc`.
#[derive(Default)]
pub struct MmioBus {
    devices: BTreeMap<u64, (u64, SharedDevice)>,
}

impl std::fmt::Debug for MmioBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MmioBus")
            .field("ranges", &self.devices.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl MmioBus {
    /// An empty bus.
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers a device at `base..base + len`.
    pub fn insert(&mut self, base: u64, len: u64, dev: SharedDevice) -> Result<(), BusError> {
        if len == 0 {
            return Err(BusError::Empty(base));
        }
        let end = base
            .checked_add(len)
            .ok_or(BusError::Overlap { base, len })?;
        let before = self.devices.range(..end).next_back();
        if let Some((b, (l, _))) = before {
            if b + l > base {
                return Err(BusError::Overlap { base, len });
            }
        }
        self.devices.insert(base, (len, dev));
        Ok(())
    }

    fn find(&self, addr: u64, width: usize) -> Option<(u64, &SharedDevice)> {
        let (base, (len, dev)) = self.devices.range(..=addr).next_back()?;
        let off = addr - base;
        (off + width as u64 <= *len).then_some((off, dev))
    }

    /// Dispatches a read; returns false (and zero-fills) when nothing is mapped there.
    pub fn read(&self, addr: u64, data: &mut [u8]) -> bool {
        match self.find(addr, data.len()) {
            Some((off, dev)) => {
                dev.lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .read(off, data);
                true
            }
            None => {
                data.fill(0);
                false
            }
        }
    }

    /// Dispatches a write; returns false when nothing is mapped there.
    pub fn write(&self, addr: u64, data: &[u8]) -> bool {
        match self.find(addr, data.len()) {
            Some((off, dev)) => {
                dev.lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .write(off, data);
                true
            }
            None => false,
        }
    }

    /// Saves every device on the bus, each under the name `name_of` gives its base address.
    /// A device `name_of` has no name for is an error naming its address: nothing on the bus
    /// is left out of a snapshot silently.
    pub fn save_all(
        &self,
        name_of: impl Fn(u64) -> Option<String>,
    ) -> Result<Vec<Section>, StateError> {
        self.devices
            .iter()
            .map(|(base, (_, dev))| {
                let name = name_of(*base).ok_or_else(|| StateError::Unsaveable {
                    name: format!("the MMIO device at {base:#x}"),
                    reason: "the VMM has no section name for it".into(),
                })?;
                let mut s = dev
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .save()?;
                s.name = name;
                Ok(s)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Echo {
        last: Vec<(u64, Vec<u8>)>,
    }

    impl MmioDevice for Echo {
        fn read(&mut self, offset: u64, data: &mut [u8]) {
            data.fill(offset as u8);
        }
        fn write(&mut self, offset: u64, data: &[u8]) {
            self.last.push((offset, data.to_vec()));
        }
    }

    impl Stateful for Echo {
        fn save(&self) -> Result<Section, StateError> {
            Ok(Section {
                name: "echo".into(),
                version: 1,
                data: vec![self.last.len() as u8],
            })
        }
        fn restore(&mut self, _: &Section) -> Result<(), StateError> {
            Ok(())
        }
    }

    #[test]
    fn every_device_is_saved_and_one_without_a_name_is_named() {
        let mut bus = MmioBus::new();
        bus.insert(0x1000, 0x100, Arc::new(Mutex::new(Echo::default())))
            .unwrap();
        bus.insert(0x2000, 0x100, Arc::new(Mutex::new(Echo::default())))
            .unwrap();
        let saved = bus.save_all(|base| Some(format!("dev{base:x}"))).unwrap();
        let names: Vec<&str> = saved.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["dev1000", "dev2000"]);
        let e = bus
            .save_all(|base| (base == 0x1000).then(|| "one".to_string()))
            .unwrap_err();
        assert!(e.to_string().contains("0x2000"), "{e}");
    }

    #[test]
    fn accesses_reach_the_device_at_their_offset() {
        let dev = Arc::new(Mutex::new(Echo::default()));
        let mut bus = MmioBus::new();
        bus.insert(0x1000, 0x100, dev.clone()).unwrap();
        let mut b = [0u8; 4];
        assert!(bus.read(0x1010, &mut b));
        assert_eq!(b, [0x10; 4]);
        assert!(bus.write(0x10fc, &[1, 2, 3, 4]));
        assert_eq!(dev.lock().unwrap().last, vec![(0xfc, vec![1, 2, 3, 4])]);
    }

    #[test]
    fn unmapped_and_straddling_accesses_miss() {
        let mut bus = MmioBus::new();
        bus.insert(0x1000, 0x100, Arc::new(Mutex::new(Echo::default())))
            .unwrap();
        let mut b = [0xffu8; 8];
        assert!(!bus.read(0x2000, &mut b));
        assert_eq!(b, [0; 8]);
        assert!(!bus.write(0x10fc, &[0; 8]), "crosses the end of the device");
        assert!(!bus.write(0xfff, &[0]));
    }

    #[test]
    fn overlaps_are_refused() {
        let mut bus = MmioBus::new();
        let d = || -> SharedDevice { Arc::new(Mutex::new(Echo::default())) };
        bus.insert(0x1000, 0x100, d()).unwrap();
        assert_eq!(
            bus.insert(0x10ff, 0x10, d()),
            Err(BusError::Overlap {
                base: 0x10ff,
                len: 0x10
            })
        );
        assert_eq!(
            bus.insert(0xf00, 0x101, d()),
            Err(BusError::Overlap {
                base: 0xf00,
                len: 0x101
            })
        );
        assert_eq!(bus.insert(0x0, 0, d()), Err(BusError::Empty(0)));
        bus.insert(0x1100, 0x100, d()).unwrap();
        bus.insert(0xf00, 0x100, d()).unwrap();
    }
}
