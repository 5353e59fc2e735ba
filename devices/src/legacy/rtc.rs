//! The PL031 real-time clock (vm-superio) on MMIO; it reads the host's wall clock.

use vm_superio::Rtc;
use vm_superio::rtc_pl031::NoEvents;

use crate::bus::MmioDevice;

/// A PL031 RTC.
pub struct RtcDevice {
    pub(super) rtc: Rtc<NoEvents>,
}

impl std::fmt::Debug for RtcDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RtcDevice").finish()
    }
}

impl Default for RtcDevice {
    fn default() -> Self {
        Self::new()
    }
}

impl RtcDevice {
    /// An RTC showing the host's time.
    pub fn new() -> Self {
        Self { rtc: Rtc::new() }
    }
}

impl MmioDevice for RtcDevice {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let mut word = [0u8; 4];
        if data.len() == 4 {
            if let Ok(off) = u16::try_from(offset) {
                self.rtc.read(off, &mut word);
            }
        }
        data.fill(0);
        let n = data.len().min(4);
        data[..n].copy_from_slice(&word[..n]);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if let (Ok(off), Ok(word)) = (u16::try_from(offset), <[u8; 4]>::try_from(data)) {
            self.rtc.write(off, &word);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_register_shows_the_host_time() {
        let mut rtc = RtcDevice::new();
        let mut b = [0u8; 4];
        rtc.read(0, &mut b);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        assert!((i64::from(u32::from_le_bytes(b)) - now as i64).abs() <= 2);
    }

    #[test]
    fn primecell_id_is_readable() {
        let mut rtc = RtcDevice::new();
        let mut id = Vec::new();
        for off in [0xff0u64, 0xff4, 0xff8, 0xffc] {
            let mut b = [0u8; 4];
            rtc.read(off, &mut b);
            id.push(b[0]);
        }
        assert_eq!(id, vec![0x0d, 0xf0, 0x05, 0xb1], "AMBA cell ID");
    }
}
