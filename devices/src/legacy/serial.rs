//! The 16550 UART (vm-superio) on MMIO, with input buffered beyond its 64-byte FIFO.
//!
//! Input waits in the VMM until the guest's driver has enabled the received-data interrupt,
//! and enters the FIFO only as the guest drains it. A driver probing or starting the port
//! reads and discards whatever the FIFO holds, so bytes typed (or piped) before the guest is
//! ready would otherwise be lost.

use std::collections::VecDeque;
use std::io::Write;

use vm_superio::Serial;
use vm_superio::serial::NoEvents;

use crate::bus::MmioDevice;
use crate::irq::IrqLine;

/// Input beyond this is dropped rather than grow without bound.
pub(super) const MAX_PENDING_INPUT: usize = 1 << 20;
/// Offset of the receive buffer register.
const RBR: u8 = 0;
/// Offset of the interrupt enable register (with DLAB clear).
const IER: u8 = 1;
/// Offset of the line control register.
const LCR: u8 = 3;
/// IER: received data available interrupt enabled.
const IER_RDA: u8 = 1;
/// LCR: divisor latch access; offsets 0 and 1 are the divisor while it is set.
const LCR_DLAB: u8 = 0x80;

/// The writer inside vm-superio's UART. It is empty only for the moment a restore moves the
/// writer from the old UART to the one rebuilt from the saved registers.
pub(super) struct Output<W>(pub(super) Option<W>);

impl<W: Write> Write for Output<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self.0.as_mut() {
            Some(w) => w.write(buf),
            None => Ok(buf.len()),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.0.as_mut().map_or(Ok(()), Write::flush)
    }
}

/// A serial port whose output goes to `W`.
pub struct SerialDevice<W: Write + Send> {
    pub(super) serial: Serial<IrqLine, NoEvents, Output<W>>,
    pub(super) pending: VecDeque<u8>,
}

impl<W: Write + Send> std::fmt::Debug for SerialDevice<W> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SerialDevice")
            .field("pending", &self.pending.len())
            .finish()
    }
}

impl<W: Write + Send> SerialDevice<W> {
    /// A serial port raising `irq` and writing to `out`.
    pub fn new(irq: IrqLine, out: W) -> Self {
        Self {
            serial: Serial::new(irq, Output(Some(out))),
            pending: VecDeque::new(),
        }
    }

    /// Queues bytes for the guest to read; they enter the FIFO once the guest's driver has
    /// enabled receiving, and then as it drains.
    pub fn queue_input(&mut self, bytes: &[u8]) {
        let room = MAX_PENDING_INPUT.saturating_sub(self.pending.len());
        self.pending.extend(&bytes[..bytes.len().min(room)]);
        self.refill();
    }

    /// Whether the guest has enabled the received-data interrupt (reading LCR and IER has
    /// no side effects).
    fn receiving(&mut self) -> bool {
        self.serial.read(LCR) & LCR_DLAB == 0 && self.serial.read(IER) & IER_RDA != 0
    }

    pub(super) fn refill(&mut self) {
        if self.pending.is_empty() || !self.receiving() {
            return;
        }
        let n = self.serial.fifo_capacity().min(self.pending.len());
        if n == 0 {
            return;
        }
        let chunk: Vec<u8> = self.pending.iter().take(n).copied().collect();
        match self.serial.enqueue_raw_bytes(&chunk) {
            Ok(done) => {
                self.pending.drain(..done);
            }
            Err(e) => log::warn!("serial input: {e:?}"),
        }
    }

    /// Bytes waiting beyond the FIFO.
    pub fn pending_input(&self) -> usize {
        self.pending.len()
    }

    /// The output writer.
    pub fn writer_mut(&mut self) -> &mut W {
        self.serial
            .writer_mut()
            .0
            .as_mut()
            .expect("the writer is only out of the UART inside a restore")
    }
}

impl<W: Write + Send> MmioDevice for SerialDevice<W> {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        if let (Ok(off), Some(first)) = (u8::try_from(offset), data.first_mut()) {
            *first = self.serial.read(off);
            if off == RBR {
                self.refill();
            }
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if let (Ok(off), Some(&value)) = (u8::try_from(offset), data.first()) {
            if let Err(e) = self.serial.write(off, value) {
                log::warn!("serial output: {e:?}");
            }
            if off == IER {
                self.refill();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LSR: u64 = 5;
    const LSR_DATA_READY: u8 = 1;

    #[test]
    fn output_reaches_the_writer() {
        let mut s = SerialDevice::new(IrqLine::new().unwrap(), Vec::new());
        for b in b"hi\n" {
            s.write(0, &[*b]);
        }
        assert_eq!(s.writer_mut().as_slice(), b"hi\n");
    }

    #[test]
    fn input_longer_than_the_fifo_is_delivered_in_order() {
        let irq = IrqLine::new().unwrap();
        let mut s = SerialDevice::new(irq, Vec::new());
        // Enable the received-data interrupt as a driver would.
        s.write(1, &[1]);
        let input: Vec<u8> = (0..200u32).map(|i| (i % 251) as u8).collect();
        s.queue_input(&input);
        assert_eq!(s.pending_input(), 200 - 64);
        let mut got = Vec::new();
        let mut b = [0u8; 1];
        loop {
            s.read(LSR, &mut b);
            if b[0] & LSR_DATA_READY == 0 {
                break;
            }
            s.read(0, &mut b);
            got.push(b[0]);
        }
        assert_eq!(got, input);
        assert_eq!(s.pending_input(), 0);
    }

    /// Reads everything the FIFO holds, as a driver's receive path does.
    fn drain(s: &mut SerialDevice<Vec<u8>>) -> Vec<u8> {
        let mut got = Vec::new();
        let mut b = [0u8; 1];
        loop {
            s.read(LSR, &mut b);
            if b[0] & LSR_DATA_READY == 0 {
                return got;
            }
            s.read(0, &mut b);
            got.push(b[0]);
        }
    }

    #[test]
    fn input_typed_before_the_driver_is_ready_waits_for_it() {
        // Regression: input given before the guest's driver was up went into the FIFO,
        // which the driver's probe and startup read and discard: `nproc` ran as `roc`.
        let mut s = SerialDevice::new(IrqLine::new().unwrap(), Vec::new());
        s.queue_input(b"nproc\n");
        // The driver's startup: discards the FIFO, toggles IER with the divisor latch set
        // (offset 1 is then the divisor), and reads RBR again.
        assert_eq!(drain(&mut s), b"");
        s.write(3, &[0x80]);
        s.write(1, &[0x01]);
        assert_eq!(drain(&mut s), b"");
        s.write(3, &[0x03]);
        s.read(0, &mut [0u8]);
        assert_eq!(s.pending_input(), 6);
        // The console's write path masks interrupts, then restores them.
        s.write(1, &[0x00]);
        assert_eq!(drain(&mut s), b"");
        // Receiving is enabled: the input arrives, whole and in order.
        s.write(1, &[0x05]);
        assert_eq!(drain(&mut s), b"nproc\n");
        assert_eq!(s.pending_input(), 0);
    }

    #[test]
    fn odd_offsets_and_empty_accesses_are_harmless() {
        let mut s = SerialDevice::new(IrqLine::new().unwrap(), Vec::new());
        let mut big = [0xffu8; 4];
        s.read(0x1_0000, &mut big);
        assert_eq!(big, [0; 4]);
        s.write(0x1_0000, &[1]);
        s.write(0, &[]);
        s.read(0, &mut []);
    }
}
