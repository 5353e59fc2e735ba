//! Fakes for the engine's traits, sharing one simulated world: a clock that moves only when
//! the transport carries bytes (at the link's bandwidth) or the engine sleeps, a guest that
//! writes pages at a scripted rate as that clock moves (slowed by the throttle, stopped by
//! the pause), and a destination that rebuilds memory from the records it receives.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::engine::{
    Clock, DirtyBitmap, DirtySource, PageData, PageRecord, Throttle, Transport, TransportError,
};

pub const PAGE: usize = 4096;
/// What the fake wire spends per record (index and tag) and per batch (a header).
pub const RECORD_OVERHEAD: u64 = 9;
pub const BATCH_OVERHEAD: u64 = 16;

/// The simulated world the fakes share.
#[derive(Debug, Default)]
pub struct World {
    pub now: Cell<Duration>,
    pub slept: Cell<Duration>,
    pub throttle: Cell<u8>,
    pub throttle_log: RefCell<Vec<u8>>,
    pub paused: Cell<bool>,
}

pub type Shared = Rc<World>;

#[derive(Debug)]
pub struct FakeClock(pub Shared);

impl Clock for FakeClock {
    fn now(&self) -> Duration {
        self.0.now.get()
    }

    fn sleep(&self, duration: Duration) {
        self.0.now.set(self.0.now.get() + duration);
        self.0.slept.set(self.0.slept.get() + duration);
    }
}

#[derive(Debug)]
pub struct FakeThrottle(pub Shared);

impl Throttle for FakeThrottle {
    fn set_throttle(&mut self, percent: u8) {
        self.0.throttle.set(percent);
        self.0.throttle_log.borrow_mut().push(percent);
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceOp {
    Start,
    TakeDirty,
    IsZero,
    Read,
    Stop,
}

#[derive(Debug, thiserror::Error)]
#[error("fake guest memory failed at {0:?}")]
pub struct FakeSourceError(pub SourceOp);

#[derive(Debug)]
pub struct GuestState {
    pub mem: Vec<u8>,
    pub tracking: bool,
    pub start_calls: u32,
    pub stop_calls: u32,
    pub dirty: DirtyBitmap,
    /// Pages per second the guest writes, by dirty-log read (the last repeats).
    pub rates: Vec<f64>,
    pub log_reads: usize,
    owed: f64,
    last_run: Duration,
    cursor: u64,
    /// The guest rewrites pages `working_set.0 .. working_set.0 + working_set.1` in turn.
    pub working_set: (u64, u64),
    seq: u64,
    /// Every this many writes, a write stores zeros (0: never).
    pub zero_every: u64,
    /// Page writes the guest made.
    pub writes: u64,
    /// Fail the `n`th (1-based) call of an operation.
    pub fail: Option<(SourceOp, u32)>,
    /// Calls of each operation, indexed by `SourceOp as usize`.
    pub calls: [u32; 5],
    /// Answer bitmaps of this many pages instead of the right number.
    pub bitmap_pages: Option<u64>,
}

#[derive(Debug)]
pub struct FakeGuest {
    w: Shared,
    pages: u64,
    pub s: RefCell<GuestState>,
}

impl FakeGuest {
    /// `pages` pages; page `i` starts non-zero when `i % nonzero_every == 0`.
    pub fn new(w: &Shared, pages: u64, nonzero_every: u64, rate: f64) -> Self {
        let mut mem = vec![0u8; pages as usize * PAGE];
        for (i, page) in mem.chunks_mut(PAGE).enumerate() {
            if i as u64 % nonzero_every == 0 {
                page[..8].copy_from_slice(&(i as u64 | 0xA5 << 56).to_le_bytes());
                page[PAGE - 1] = 0x5A;
            }
        }
        Self {
            w: Rc::clone(w),
            pages,
            s: RefCell::new(GuestState {
                mem,
                tracking: false,
                start_calls: 0,
                stop_calls: 0,
                dirty: DirtyBitmap::new(pages),
                rates: vec![rate],
                log_reads: 0,
                owed: 0.0,
                last_run: w.now.get(),
                cursor: 0,
                working_set: (0, pages),
                seq: 0,
                zero_every: 0,
                writes: 0,
                fail: None,
                calls: [0; 5],
                bitmap_pages: None,
            }),
        }
    }

    /// The guest writes what it owes for the time passed, then the VM is paused.
    pub fn pause(&self) {
        self.run();
        self.w.paused.set(true);
    }

    pub fn nonzero_pages(&self) -> u64 {
        let s = self.s.borrow();
        s.mem
            .chunks(PAGE)
            .filter(|p| p.iter().any(|&b| b != 0))
            .count() as u64
    }

    /// Writes the pages owed for the time since the last run, at the scripted rate scaled by
    /// what the throttle leaves of the vCPUs' time.
    fn run(&self) {
        let mut s = self.s.borrow_mut();
        let now = self.w.now.get();
        let dt = now.saturating_sub(s.last_run);
        s.last_run = now;
        if self.w.paused.get() {
            return;
        }
        let rate = s.rates[s.log_reads.min(s.rates.len() - 1)];
        let share = f64::from(100 - self.w.throttle.get()) / 100.0;
        s.owed += rate * share * dt.as_secs_f64();
        while s.owed >= 1.0 {
            s.owed -= 1.0;
            let (first, len) = s.working_set;
            let index = first + s.cursor % len;
            s.cursor += 1;
            s.seq += 1;
            s.writes += 1;
            let seq = s.seq;
            let zero = s.zero_every != 0 && seq % s.zero_every == 0;
            let page = &mut s.mem[index as usize * PAGE..(index as usize + 1) * PAGE];
            page.fill(0);
            if !zero {
                page[8..16].copy_from_slice(&seq.to_le_bytes());
                page[(seq as usize * 8) % (PAGE - 8)] |= 0x80;
            }
            if s.tracking {
                s.dirty.set(index);
            }
        }
    }

    fn call(&self, op: SourceOp) -> Result<(), FakeSourceError> {
        self.run();
        let mut s = self.s.borrow_mut();
        s.calls[op as usize] += 1;
        let n = s.calls[op as usize];
        match s.fail {
            Some((fail_op, at)) if fail_op == op && at == n => Err(FakeSourceError(op)),
            _ => Ok(()),
        }
    }
}

impl DirtySource for FakeGuest {
    type Error = FakeSourceError;

    fn page_count(&self) -> u64 {
        self.pages
    }

    fn page_size(&self) -> usize {
        PAGE
    }

    fn start_tracking(&mut self) -> Result<(), FakeSourceError> {
        self.s.borrow_mut().start_calls += 1;
        self.call(SourceOp::Start)?;
        let mut s = self.s.borrow_mut();
        s.tracking = true;
        // INITIALLY_SET: every page starts dirty.
        s.dirty = DirtyBitmap::full(self.pages);
        Ok(())
    }

    fn take_dirty(&mut self) -> Result<DirtyBitmap, FakeSourceError> {
        self.call(SourceOp::TakeDirty)?;
        let mut s = self.s.borrow_mut();
        s.log_reads += 1;
        let pages = s.bitmap_pages.unwrap_or(self.pages);
        let mut taken = std::mem::replace(&mut s.dirty, DirtyBitmap::new(self.pages));
        if pages != self.pages {
            taken = DirtyBitmap::new(pages);
        }
        Ok(taken)
    }

    fn is_zero(&self, index: u64) -> Result<bool, FakeSourceError> {
        self.call(SourceOp::IsZero)?;
        let s = self.s.borrow();
        let i = index as usize * PAGE;
        Ok(s.mem[i..i + PAGE].iter().all(|&b| b == 0))
    }

    fn read_page(&self, index: u64, buf: &mut [u8]) -> Result<(), FakeSourceError> {
        self.call(SourceOp::Read)?;
        let s = self.s.borrow();
        let i = index as usize * PAGE;
        buf.copy_from_slice(&s.mem[i..i + PAGE]);
        Ok(())
    }

    fn stop_tracking(&mut self) -> Result<(), FakeSourceError> {
        self.s.borrow_mut().stop_calls += 1;
        self.call(SourceOp::Stop)?;
        self.s.borrow_mut().tracking = false;
        Ok(())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransportOp {
    Send,
    EndRound(u32),
    Flush,
}

/// One `send_pages` call as the wire saw it.
#[derive(Debug, Clone, Copy)]
pub struct SendLog {
    pub at: Duration,
    /// Page bytes sent before this call.
    pub page_bytes_before: u64,
    /// Whether the VM was paused (the final round).
    pub paused: bool,
    pub throttle: u8,
}

#[derive(Debug)]
pub struct FakeTransport {
    w: Shared,
    /// Bytes per second the link carries.
    pub link: u64,
    /// Memory as the destination rebuilds it.
    pub dest: Vec<Option<Vec<u8>>>,
    pub ops: Vec<TransportOp>,
    pub sends: Vec<SendLog>,
    pub wire_bytes: u64,
    pub page_bytes: u64,
    pub zero_records: u64,
    pub byte_records: u64,
    /// Fail the `n`th (1-based) call of any kind.
    pub fail_at_call: Option<usize>,
    /// Fail the call that would carry wire byte `n`.
    pub fail_at_byte: Option<u64>,
    /// Set the flag during the `n`th call (which itself succeeds).
    pub cancel_at_call: Option<(usize, Rc<AtomicBool>)>,
}

impl FakeTransport {
    pub fn new(w: &Shared, pages: u64, link: u64) -> Self {
        Self {
            w: Rc::clone(w),
            link,
            dest: vec![None; pages as usize],
            ops: Vec::new(),
            sends: Vec::new(),
            wire_bytes: 0,
            page_bytes: 0,
            zero_records: 0,
            byte_records: 0,
            fail_at_call: None,
            fail_at_byte: None,
            cancel_at_call: None,
        }
    }

    fn call(&mut self, op: TransportOp, wire: u64) -> Result<(), TransportError> {
        self.ops.push(op);
        let n = self.ops.len();
        if let Some((at, flag)) = &self.cancel_at_call {
            if *at == n {
                flag.store(true, Ordering::Release);
            }
        }
        if self.fail_at_call == Some(n) {
            return Err(TransportError::Closed);
        }
        if self
            .fail_at_byte
            .is_some_and(|b| self.wire_bytes + wire > b)
        {
            return Err(TransportError::Io(std::io::ErrorKind::BrokenPipe.into()));
        }
        self.wire_bytes += wire;
        let nanos = (u128::from(wire) * 1_000_000_000).div_ceil(u128::from(self.link));
        self.w
            .now
            .set(self.w.now.get() + Duration::from_nanos(nanos as u64));
        Ok(())
    }
}

impl Transport for FakeTransport {
    fn send_pages(&mut self, batch: &[PageRecord<'_>]) -> Result<(), TransportError> {
        let page_bytes: u64 = batch
            .iter()
            .map(|r| match r.data {
                PageData::Zero => 0,
                PageData::Bytes(b) => b.len() as u64,
            })
            .sum();
        let wire = BATCH_OVERHEAD + RECORD_OVERHEAD * batch.len() as u64 + page_bytes;
        let at = self.w.now.get();
        self.call(TransportOp::Send, wire)?;
        self.sends.push(SendLog {
            at,
            page_bytes_before: self.page_bytes,
            paused: self.w.paused.get(),
            throttle: self.w.throttle.get(),
        });
        self.page_bytes += page_bytes;
        for record in batch {
            let page = match record.data {
                PageData::Zero => {
                    self.zero_records += 1;
                    vec![0; PAGE]
                }
                PageData::Bytes(b) => {
                    self.byte_records += 1;
                    b.to_vec()
                }
            };
            self.dest[record.index as usize] = Some(page);
        }
        Ok(())
    }

    fn end_round(&mut self, round: u32) -> Result<(), TransportError> {
        self.call(TransportOp::EndRound(round), BATCH_OVERHEAD)
    }

    fn flush(&mut self) -> Result<(), TransportError> {
        self.call(TransportOp::Flush, 0)
    }
}
