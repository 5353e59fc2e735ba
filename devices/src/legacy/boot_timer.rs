//! The boot timer: the guest writes a magic byte when it has booted, and the VMM reports the
//! time since it started, as Firecracker's boot-timer device does.

use std::time::{Duration, Instant};

use crate::bus::MmioDevice;

/// The value a guest writes to say it has booted.
pub const MAGIC_BOOT_COMPLETE: u8 = 123;

/// Calls `report` with the boot duration on each magic write.
pub struct BootTimer {
    start: Instant,
    report: Box<dyn FnMut(Duration) + Send>,
}

impl std::fmt::Debug for BootTimer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BootTimer")
            .field("start", &self.start)
            .finish()
    }
}

impl BootTimer {
    /// A timer counting from `start`.
    pub fn new(start: Instant, report: Box<dyn FnMut(Duration) + Send>) -> Self {
        Self { start, report }
    }
}

impl MmioDevice for BootTimer {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset == 0 && data.first() == Some(&MAGIC_BOOT_COMPLETE) {
            (self.report)(self.start.elapsed());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[test]
    fn only_the_magic_write_reports() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s = seen.clone();
        let mut t = BootTimer::new(Instant::now(), Box::new(move |d| s.lock().unwrap().push(d)));
        t.write(0, &[1]);
        t.write(4, &[MAGIC_BOOT_COMPLETE]);
        assert!(seen.lock().unwrap().is_empty());
        t.write(0, &[MAGIC_BOOT_COMPLETE]);
        assert_eq!(seen.lock().unwrap().len(), 1);
    }
}
