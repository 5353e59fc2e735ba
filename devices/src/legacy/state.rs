//! The saved state of the legacy devices: every register of the 16550 with its receive FIFO
//! and the input held back for the guest, the PL031's registers (its offset from the host's
//! clock included), and the boot timer's empty state.

use std::io::Write;

use migration::state::{Section, StateError, Stateful, decode, encode};
use serde::{Deserialize, Serialize};
use vm_superio::serial::NoEvents;
use vm_superio::{Rtc, Serial};

use super::serial::{MAX_PENDING_INPUT, Output};
use super::{BootTimer, RtcDevice, SerialDevice};
use crate::state::{first_version, refused};

/// Bytes the 16550's receive FIFO holds.
const FIFO_SIZE: usize = 64;

/// The 16550 and the input waiting beyond its FIFO.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SerialState {
    /// Divisor latch, low byte.
    pub divisor_low: u8,
    /// Divisor latch, high byte.
    pub divisor_high: u8,
    /// IER.
    pub interrupt_enable: u8,
    /// IIR.
    pub interrupt_identification: u8,
    /// LCR.
    pub line_control: u8,
    /// LSR.
    pub line_status: u8,
    /// MCR.
    pub modem_control: u8,
    /// MSR.
    pub modem_status: u8,
    /// SCR.
    pub scratch: u8,
    /// The receive FIFO, oldest byte first (at most 64).
    pub fifo: Vec<u8>,
    /// Input held in the VMM until the guest enables IER.RDA and drains the FIFO, in order.
    pub held_input: Vec<u8>,
}

/// The PL031.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RtcState {
    /// Load register.
    pub lr: u32,
    /// Seconds added to the host's clock to give the RTC's value.
    pub offset: i64,
    /// Match register.
    pub mr: u32,
    /// Interrupt mask.
    pub imsc: u32,
    /// Raw interrupt status.
    pub ris: u32,
}

/// The boot timer has nothing the guest can see: it reports a write and keeps nothing. The
/// section exists so that the timer is saved explicitly, not forgotten.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BootTimerState {}

first_version!(SerialState, RtcState, BootTimerState);

impl<W: Write + Send> Stateful for SerialDevice<W> {
    fn save(&self) -> Result<Section, StateError> {
        let s = self.serial.state();
        encode(
            "serial",
            &SerialState {
                divisor_low: s.baud_divisor_low,
                divisor_high: s.baud_divisor_high,
                interrupt_enable: s.interrupt_enable,
                interrupt_identification: s.interrupt_identification,
                line_control: s.line_control,
                line_status: s.line_status,
                modem_control: s.modem_control,
                modem_status: s.modem_status,
                scratch: s.scratch,
                fifo: s.in_buffer,
                held_input: self.pending.iter().copied().collect(),
            },
        )
    }

    fn restore(&mut self, section: &Section) -> Result<(), StateError> {
        let s: SerialState = decode(section)?;
        if s.fifo.len() > FIFO_SIZE {
            return Err(refused(
                section,
                format!(
                    "a FIFO of {} bytes (the 16550 holds {FIFO_SIZE})",
                    s.fifo.len()
                ),
            ));
        }
        if s.held_input.len() > MAX_PENDING_INPUT {
            return Err(refused(
                section,
                format!(
                    "{} bytes of held input (at most {MAX_PENDING_INPUT})",
                    s.held_input.len()
                ),
            ));
        }
        let regs = vm_superio::serial::SerialState {
            baud_divisor_low: s.divisor_low,
            baud_divisor_high: s.divisor_high,
            interrupt_enable: s.interrupt_enable,
            interrupt_identification: s.interrupt_identification,
            line_control: s.line_control,
            line_status: s.line_status,
            modem_control: s.modem_control,
            modem_status: s.modem_status,
            scratch: s.scratch,
            in_buffer: s.fifo,
        };
        let irq = self
            .serial
            .interrupt_evt()
            .try_clone()
            .map_err(|e| refused(section, format!("cannot share the interrupt line: {e}")))?;
        // The UART is rebuilt without a writer, which moves over once nothing can fail.
        let mut fresh = Serial::from_state(&regs, irq, NoEvents, Output(None))
            .map_err(|e| refused(section, format!("the UART refuses the registers: {e:?}")))?;
        std::mem::swap(fresh.writer_mut(), self.serial.writer_mut());
        self.serial = fresh;
        self.pending = s.held_input.into();
        self.refill();
        Ok(())
    }
}

impl Stateful for RtcDevice {
    fn save(&self) -> Result<Section, StateError> {
        let s = self.rtc.state();
        encode(
            "rtc",
            &RtcState {
                lr: s.lr,
                offset: s.offset,
                mr: s.mr,
                imsc: s.imsc,
                ris: s.ris,
            },
        )
    }

    fn restore(&mut self, section: &Section) -> Result<(), StateError> {
        let s: RtcState = decode(section)?;
        let regs = vm_superio::rtc_pl031::RtcState {
            lr: s.lr,
            offset: s.offset,
            mr: s.mr,
            imsc: s.imsc,
            ris: s.ris,
        };
        self.rtc = Rtc::from_state(&regs, vm_superio::rtc_pl031::NoEvents);
        Ok(())
    }
}

impl Stateful for BootTimer {
    fn save(&self) -> Result<Section, StateError> {
        encode("boot_timer", &BootTimerState {})
    }

    fn restore(&mut self, section: &Section) -> Result<(), StateError> {
        let BootTimerState {} = decode(section)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bus::MmioDevice;
    use crate::irq::IrqLine;
    use crate::state::testing::{refuses, refuses_newer, round_trip};
    use std::time::Instant;

    const RBR: u64 = 0;
    const IER: u64 = 1;
    const LCR: u64 = 3;
    const LSR: u64 = 5;
    const SCR: u64 = 7;

    fn serial() -> SerialDevice<Vec<u8>> {
        SerialDevice::new(IrqLine::new().unwrap(), Vec::new())
    }

    fn reg(s: &mut SerialDevice<Vec<u8>>, off: u64) -> u8 {
        let mut b = [0u8];
        s.read(off, &mut b);
        b[0]
    }

    fn drain(s: &mut SerialDevice<Vec<u8>>) -> Vec<u8> {
        let mut got = Vec::new();
        while reg(s, LSR) & 1 != 0 {
            got.push(reg(s, RBR));
        }
        got
    }

    #[test]
    fn serial_round_trips_with_bytes_in_its_fifo_and_held_input() {
        let mut a = serial();
        a.write(LCR, &[0x03]);
        a.write(SCR, &[0x5a]);
        a.write(IER, &[0x01]);
        let input: Vec<u8> = (0..100u8).collect();
        a.queue_input(&input);
        assert_eq!(a.pending_input(), 100 - FIFO_SIZE);
        let mut b = serial();
        round_trip(&a, &mut b);
        assert_eq!(reg(&mut b, SCR), 0x5a);
        assert_eq!(reg(&mut b, IER), 0x01);
        assert_eq!(b.pending_input(), 100 - FIFO_SIZE);
        assert_eq!(drain(&mut b), input, "FIFO then held input, in order");
        // Output still reaches the writer of the restored device.
        b.write(RBR, b"x");
        assert_eq!(b.writer_mut().as_slice(), b"x");
    }

    #[test]
    fn serial_input_held_until_rda_stays_held() {
        let mut a = serial();
        a.queue_input(b"ls\n");
        let mut b = serial();
        round_trip(&a, &mut b);
        assert_eq!(drain(&mut b), b"", "the driver has not enabled receiving");
        b.write(IER, &[0x01]);
        assert_eq!(drain(&mut b), b"ls\n");
    }

    #[test]
    fn serial_refuses_a_fifo_larger_than_the_uart_and_newer_versions() {
        let a = serial();
        let mut b = serial();
        refuses_newer(&a, &mut b);
        let mut s: SerialState = decode(&a.save().unwrap()).unwrap();
        s.fifo = vec![0; FIFO_SIZE + 1];
        let bad = encode("serial", &s).unwrap();
        refuses(&mut b, &bad, "FIFO of 65 bytes");
    }

    #[test]
    fn rtc_round_trips_its_time_base() {
        let mut a = RtcDevice::new();
        // Set the clock 1000 s behind the host's, as a guest writing RTCLR would.
        let mut now = [0u8; 4];
        a.read(0, &mut now);
        let behind = u32::from_le_bytes(now) - 1000;
        a.write(0x8, &behind.to_le_bytes());
        a.write(0x10, &1u32.to_le_bytes()); // IMSC
        let mut b = RtcDevice::new();
        round_trip(&a, &mut b);
        let (mut x, mut y) = ([0u8; 4], [0u8; 4]);
        a.read(0, &mut x);
        b.read(0, &mut y);
        let (x, y) = (u32::from_le_bytes(x), u32::from_le_bytes(y));
        assert!(x.abs_diff(y) <= 1, "{x} vs {y}");
        let mut host = [0u8; 4];
        RtcDevice::new().read(0, &mut host);
        assert!(u32::from_le_bytes(host) - y >= 999, "the offset came along");
        let mut imsc = [0u8; 4];
        b.read(0x10, &mut imsc);
        assert_eq!(u32::from_le_bytes(imsc), 1);
        refuses_newer(&a, &mut b);
    }

    #[test]
    fn boot_timer_round_trips_an_empty_state() {
        let a = BootTimer::new(Instant::now(), Box::new(|_| {}));
        let mut b = BootTimer::new(Instant::now(), Box::new(|_| {}));
        let s = round_trip(&a, &mut b);
        assert!(s.data.is_empty());
        refuses_newer(&a, &mut b);
    }
}
