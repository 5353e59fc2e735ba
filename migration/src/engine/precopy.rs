//! The rounds, the convergence rule, auto-converge, the bandwidth cap and the cleanup on
//! every way out. The rules are written in migration/DESIGN.md ("Pre-copy engine").

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use super::{
    Clock, DirtyBitmap, DirtySource, EngineError, MigrationState, PageData, PageRecord, Params,
    Progress, Throttle, Transport,
};

/// The first throttle auto-converge sets, in percent.
pub(crate) const THROTTLE_START: u8 = 20;
/// What each further round without convergence adds.
pub(crate) const THROTTLE_STEP: u8 = 10;
/// The most it goes to.
pub(crate) const THROTTLE_MAX: u8 = 99;
/// Rounds in a row whose dirty bytes did not shrink before the guest counts as not converging.
pub(crate) const STALL_ROUNDS: u32 = 2;

type Result<T, E> = std::result::Result<T, EngineError<E>>;

/// Pre-copy converged: the caller must now pause the VM and call [`finish`] (or, if it cannot
/// pause, [`Switchover::abort`]). Dirty tracking is still on and the throttle still set, so
/// that nothing the guest writes until the pause is lost or runs faster.
#[must_use = "dirty tracking is still on: call finish() after pausing the VM, or abort()"]
#[derive(Debug)]
pub struct Switchover {
    /// Pages dirty at the last read of the log, not yet sent.
    pending: DirtyBitmap,
    progress: Progress,
    /// When the attempt began (the clock's time).
    start: Duration,
    /// The bandwidth the convergence decision used.
    bandwidth: Option<u64>,
    params: Params,
}

impl Switchover {
    /// The engine's last report: the round, bytes, bandwidths, throttle, expected downtime.
    pub fn progress(&self) -> &Progress {
        &self.progress
    }

    /// Dirty pages known to be left before the pause (more may come until it).
    pub fn pending_pages(&self) -> u64 {
        self.pending.count()
    }

    /// Gives up after convergence (the VM could not be paused, or the caller changed its
    /// mind): stops tracking and lifts the throttle. Returns the final progress (`Failed`).
    pub fn abort<S: DirtySource, H: Throttle>(
        self,
        source: &mut S,
        throttle: &mut H,
    ) -> std::result::Result<Progress, S::Error> {
        throttle.set_throttle(0);
        let mut progress = self.progress;
        progress.throttle_percent = 0;
        progress.state = MigrationState::Failed;
        source.stop_tracking().map(|()| progress)
    }
}

/// What the final round did, for the caller's report and its downtime bookkeeping.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Completion {
    /// Pages sent after the pause.
    pub final_pages: u64,
    /// Page bytes sent after the pause.
    pub final_bytes: u64,
    /// How long the final round took (from the dirty-log read to the flush).
    pub final_time: Duration,
    /// What precopy expected that round to take.
    pub expected_downtime: Option<Duration>,
    /// The engine's last report (state still `Switchover`: the caller sends device state and
    /// commits, then sets `Completed`).
    pub progress: Progress,
}

/// Sends guest memory while the guest runs until the dirty bytes left fit the downtime target,
/// then returns [`Switchover`]: the caller pauses the VM and calls [`finish`].
///
/// Round 1 sends every page (zero pages as markers); each later round sends the pages the
/// dirty log names. Errors (including [`EngineError::Timeout`] and
/// [`EngineError::Cancelled`]) come back only after tracking is off and the throttle lifted.
/// `report` is called after every batch and at every change of state, round or throttle.
pub fn precopy<S, T, C, H, P>(
    params: &Params,
    source: &mut S,
    transport: &mut T,
    clock: &C,
    throttle: &mut H,
    cancel: &AtomicBool,
    report: &mut P,
) -> Result<Switchover, S::Error>
where
    S: DirtySource,
    T: Transport,
    C: Clock,
    H: Throttle,
    P: FnMut(&Progress),
{
    let start = clock.now();
    let mut run = Run {
        params: params.clone(),
        source,
        transport,
        clock,
        throttle,
        cancel,
        report,
        progress: Progress::new(),
        buf: Vec::new(),
        start,
        live: true,
    };
    run.tell();
    match run.rounds() {
        Ok((pending, bandwidth)) => {
            run.progress.state = MigrationState::Switchover;
            run.tell();
            Ok(Switchover {
                pending,
                progress: run.progress,
                start,
                bandwidth,
                params: run.params,
            })
        }
        Err(error) => Err(run.fail(error)),
    }
}

/// Sends the last dirty pages after the caller paused the VM: the pages still pending from
/// precopy and those the dirty log names now (read after the pause, so it holds every write).
/// Then ends the round, flushes the transport, stops tracking and lifts the throttle, on
/// success and on error alike. Neither the bandwidth cap nor the timeout apply here (the guest
/// is paused; the shorter the better); cancel does.
pub fn finish<S, T, C, H, P>(
    switchover: Switchover,
    source: &mut S,
    transport: &mut T,
    clock: &C,
    throttle: &mut H,
    cancel: &AtomicBool,
    report: &mut P,
) -> Result<Completion, S::Error>
where
    S: DirtySource,
    T: Transport,
    C: Clock,
    H: Throttle,
    P: FnMut(&Progress),
{
    let Switchover {
        pending,
        progress,
        start,
        bandwidth,
        params,
    } = switchover;
    let mut run = Run {
        params,
        source,
        transport,
        clock,
        throttle,
        cancel,
        report,
        progress,
        buf: Vec::new(),
        start,
        live: false,
    };
    match run.final_round(pending, bandwidth) {
        Ok(completion) => Ok(completion),
        Err(error) => Err(run.fail(error)),
    }
}

/// One attempt's borrowed parts and its running figures.
struct Run<'a, S, T, C, H, P> {
    params: Params,
    source: &'a mut S,
    transport: &'a mut T,
    clock: &'a C,
    throttle: &'a mut H,
    cancel: &'a AtomicBool,
    report: &'a mut P,
    progress: Progress,
    /// One batch of page bytes, reused.
    buf: Vec<u8>,
    start: Duration,
    /// Precopy (the guest runs: cap and timeout apply) rather than the final round.
    live: bool,
}

/// Bytes per second for `bytes` over `time`; `None` for no time.
pub(crate) fn rate(bytes: u64, time: Duration) -> Option<u64> {
    let nanos = time.as_nanos();
    if nanos == 0 {
        return None;
    }
    Some((u128::from(bytes) * 1_000_000_000 / nanos).min(u128::from(u64::MAX)) as u64)
}

/// The time `bytes` take at `bandwidth` bytes per second (> 0), rounded up.
pub(crate) fn transfer_time(bytes: u64, bandwidth: u64) -> Duration {
    let nanos = (u128::from(bytes) * 1_000_000_000).div_ceil(u128::from(bandwidth.max(1)));
    Duration::from_nanos(nanos.min(u128::from(u64::MAX)) as u64)
}

impl<S, T, C, H, P> Run<'_, S, T, C, H, P>
where
    S: DirtySource,
    T: Transport,
    C: Clock,
    H: Throttle,
    P: FnMut(&Progress),
{
    fn tell(&mut self) {
        self.progress.elapsed = self.clock.now().saturating_sub(self.start);
        (self.report)(&self.progress);
    }

    /// The cleanup invariant: lift the throttle, stop tracking, report the end.
    fn fail(&mut self, error: EngineError<S::Error>) -> EngineError<S::Error> {
        self.throttle.set_throttle(0);
        self.progress.throttle_percent = 0;
        self.progress.state = match error {
            EngineError::Cancelled => MigrationState::Cancelled,
            _ => MigrationState::Failed,
        };
        let error = match self.source.stop_tracking() {
            Ok(()) => error,
            Err(stop) => EngineError::StopTracking {
                cause: Box::new(error),
                stop,
            },
        };
        self.tell();
        error
    }

    /// Precopy: every round until convergence. Answers the pages still dirty and the
    /// bandwidth the decision used.
    fn rounds(&mut self) -> Result<(DirtyBitmap, Option<u64>), S::Error> {
        let page_size = self.source.page_size();
        self.params.check(page_size)?;
        self.check_stop()?;
        let pages = self.source.page_count();
        self.buf = vec![0; self.params.batch_pages * page_size];
        self.source.start_tracking().map_err(EngineError::Source)?;
        // Round 1 sends every page: what the log holds now is not needed, but reading it
        // resets it (with INITIALLY_SET, this read is what write-protects the pages).
        self.take_dirty(pages)?;
        self.progress.state = MigrationState::Precopy;
        let first_round_start = self.clock.now();
        let mut last_read = first_round_start;
        let mut to_send = DirtyBitmap::full(pages);
        let mut last_remaining: Option<u64> = None;
        let mut stalled_rounds = 0u32;
        loop {
            self.progress.round += 1;
            let round = self.progress.round;
            self.progress.bytes_remaining = to_send.count() * page_size as u64;
            self.tell();
            let round_start = self.clock.now();
            let sent_before = self.progress.bytes_sent;
            self.send(to_send.iter(), round_start)?;
            self.transport.end_round(round)?;
            let round_bytes = self.progress.bytes_sent - sent_before;

            self.check_stop()?;
            let dirty = self.take_dirty(pages)?;
            let now = self.clock.now();
            let remaining = dirty.count() * page_size as u64;
            let round_bandwidth = rate(round_bytes, now.saturating_sub(round_start));
            let overall = rate(
                self.progress.bytes_sent,
                now.saturating_sub(first_round_start),
            );
            // A round of zero pages only measures nothing about the link: fall back to the
            // whole attempt's figure.
            let bandwidth = round_bandwidth
                .filter(|&b| b > 0)
                .or(overall.filter(|&b| b > 0));
            let dirty_rate = rate(remaining, now.saturating_sub(last_read));
            last_read = now;
            let expected = if remaining == 0 {
                Some(Duration::ZERO)
            } else {
                bandwidth.map(|b| transfer_time(remaining, b))
            };
            self.progress.bytes_remaining = remaining;
            self.progress.round_bandwidth = round_bandwidth;
            self.progress.overall_bandwidth = overall;
            self.progress.dirty_rate = dirty_rate;
            self.progress.expected_downtime = expected;
            self.tell();

            if expected.is_some_and(|e| e <= self.params.downtime) {
                return Ok((dirty, bandwidth));
            }
            self.check_stop()?;

            // Not converging: the guest dirties at least as fast as the link carries, or the
            // dirty bytes have not shrunk for STALL_ROUNDS rounds in a row.
            if last_remaining.is_some_and(|last| remaining >= last) {
                stalled_rounds += 1;
            } else {
                stalled_rounds = 0;
            }
            last_remaining = Some(remaining);
            let outpaced = match (dirty_rate, bandwidth) {
                (Some(d), Some(b)) => d >= b,
                (Some(d), None) => d > 0,
                (None, _) => false,
            };
            if self.params.auto_converge && (outpaced || stalled_rounds >= STALL_ROUNDS) {
                let next = match self.progress.throttle_percent {
                    0 => THROTTLE_START,
                    t => t.saturating_add(THROTTLE_STEP).min(THROTTLE_MAX),
                };
                if next != self.progress.throttle_percent {
                    self.throttle.set_throttle(next);
                    self.progress.throttle_percent = next;
                    self.tell();
                }
            }
            to_send = dirty;
        }
    }

    /// After the pause: the pending pages and the last log read, then flush and cleanup.
    fn final_round(
        &mut self,
        mut pending: DirtyBitmap,
        bandwidth: Option<u64>,
    ) -> Result<Completion, S::Error> {
        self.check_stop()?;
        let pages = self.source.page_count();
        let page_size = self.source.page_size();
        self.buf = vec![0; self.params.batch_pages * page_size];
        let started = self.clock.now();
        let dirty = self.take_dirty(pages)?;
        if pending.len() != pages {
            return Err(EngineError::BitmapSize {
                expected: pages,
                got: pending.len(),
            });
        }
        pending.union_with(&dirty);
        self.progress.round += 1;
        let round = self.progress.round;
        let final_pages = pending.count();
        let remaining = final_pages * page_size as u64;
        self.progress.bytes_remaining = remaining;
        let expected_downtime = bandwidth.map(|b| transfer_time(remaining, b));
        self.progress.expected_downtime = expected_downtime;
        self.tell();
        let sent_before = self.progress.bytes_sent;
        self.send(pending.iter(), started)?;
        self.transport.end_round(round)?;
        self.transport.flush()?;
        let final_time = self.clock.now().saturating_sub(started);
        self.source.stop_tracking().map_err(EngineError::Source)?;
        self.throttle.set_throttle(0);
        self.progress.throttle_percent = 0;
        self.tell();
        Ok(Completion {
            final_pages,
            final_bytes: self.progress.bytes_sent - sent_before,
            final_time,
            expected_downtime,
            progress: self.progress.clone(),
        })
    }

    fn take_dirty(&mut self, pages: u64) -> Result<DirtyBitmap, S::Error> {
        let dirty = self.source.take_dirty().map_err(EngineError::Source)?;
        if dirty.len() != pages {
            return Err(EngineError::BitmapSize {
                expected: pages,
                got: dirty.len(),
            });
        }
        Ok(dirty)
    }

    /// Cancel, and (while the guest runs) the timeout.
    fn check_stop(&mut self) -> Result<(), S::Error> {
        if self.cancel.load(Ordering::Acquire) {
            return Err(EngineError::Cancelled);
        }
        let elapsed = self.clock.now().saturating_sub(self.start);
        if self.live && elapsed >= self.params.timeout {
            return Err(EngineError::Timeout {
                timeout: self.params.timeout,
                round: self.progress.round,
                remaining: self.progress.bytes_remaining,
                expected_downtime: self.progress.expected_downtime,
            });
        }
        Ok(())
    }

    /// Sends `indices` in batches; `since` is when the round began, for the cap.
    fn send(
        &mut self,
        indices: impl Iterator<Item = u64>,
        since: Duration,
    ) -> Result<(), S::Error> {
        let mut batch = Vec::with_capacity(self.params.batch_pages);
        let mut sent_since = 0u64;
        for index in indices {
            batch.push(index);
            if batch.len() == self.params.batch_pages {
                sent_since += self.send_batch(&batch)?;
                self.pace(sent_since, since);
                batch.clear();
            }
        }
        if !batch.is_empty() {
            sent_since += self.send_batch(&batch)?;
            self.pace(sent_since, since);
        }
        Ok(())
    }

    /// While the guest runs and a cap is set, waits until `bytes` since `since` are within it.
    fn pace(&mut self, bytes: u64, since: Duration) {
        let Some(cap) = self.params.max_bandwidth.filter(|_| self.live) else {
            return;
        };
        let due = since + transfer_time(bytes, cap);
        let now = self.clock.now();
        if due > now {
            self.clock.sleep(due - now);
        }
    }

    /// Reads and sends one batch; answers the page bytes it carried.
    fn send_batch(&mut self, batch: &[u64]) -> Result<u64, S::Error> {
        self.check_stop()?;
        let page_size = self.source.page_size();
        let mut zero = vec![false; batch.len()];
        for ((slot, &index), chunk) in batch.iter().enumerate().zip(self.buf.chunks_mut(page_size))
        {
            if self.source.is_zero(index).map_err(EngineError::Source)? {
                zero[slot] = true;
            } else {
                self.source
                    .read_page(index, chunk)
                    .map_err(EngineError::Source)?;
                // A page the source could not vouch for may still be all zeros.
                zero[slot] = all_zero(chunk);
            }
        }
        let records: Vec<PageRecord<'_>> = batch
            .iter()
            .zip(&zero)
            .zip(self.buf.chunks(page_size))
            .map(|((&index, &is_zero), chunk)| PageRecord {
                index,
                data: if is_zero {
                    PageData::Zero
                } else {
                    PageData::Bytes(chunk)
                },
            })
            .collect();
        self.transport.send_pages(&records)?;
        let zeros = zero.iter().filter(|&&z| z).count() as u64;
        let pages = batch.len() as u64;
        let bytes = (pages - zeros) * page_size as u64;
        self.progress.pages_sent += pages;
        self.progress.zero_pages_sent += zeros;
        self.progress.bytes_sent += bytes;
        self.progress.bytes_remaining = self
            .progress
            .bytes_remaining
            .saturating_sub(pages * page_size as u64);
        self.tell();
        Ok(bytes)
    }
}

/// Whether `bytes` are all zero, eight bytes at a time.
pub(crate) fn all_zero(bytes: &[u8]) -> bool {
    let mut words = bytes.chunks_exact(8);
    let mut or = 0u64;
    for w in &mut words {
        let mut a = [0u8; 8];
        a.copy_from_slice(w);
        or |= u64::from_ne_bytes(a);
    }
    or == 0 && words.remainder().iter().all(|&b| b == 0)
}

#[cfg(test)]
mod zero_tests {
    use super::all_zero;

    #[test]
    fn a_single_set_bit_anywhere_is_not_zero() {
        let mut page = vec![0u8; 4099];
        assert!(all_zero(&page));
        for i in [0, 7, 8, 4095, 4098] {
            page[i] = 0x80;
            assert!(!all_zero(&page), "byte {i}");
            page[i] = 0;
        }
    }
}
