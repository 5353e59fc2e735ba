//! The pre-copy engine: rounds of guest pages over a transport while the guest runs, a
//! convergence rule (switch over when the dirty bytes left, at the bandwidth measured in the
//! last round, fit the downtime target), auto-converge (throttle the vCPUs when the guest
//! dirties faster than the link carries), a bandwidth cap, a timeout and cancel.
//!
//! It owns no threads, no KVM and no sockets: it is generic over a [`DirtySource`] (guest
//! memory and its dirty log), a [`Transport`] (where pages go), a [`Clock`] and a [`Throttle`],
//! and is tested with fakes. The VMM runs [`precopy`] on its migration thread, pauses the VM,
//! runs [`finish`], then sends device state and commits.
//!
//! **Cleanup invariant.** Whenever [`precopy`] or [`finish`] return an error, and whenever
//! [`finish`] or [`Switchover::abort`] return at all, dirty tracking has been stopped
//! (`stop_tracking` was called) and the throttle has been lifted (`set_throttle(0)`), so a
//! source that keeps running runs exactly as before the attempt. Only `Ok(Switchover)` leaves
//! them on, because the VM is about to be paused and its last dirty pages are still needed.

mod bitmap;
mod precopy;
#[cfg(test)]
mod tests;

use std::time::Duration;

pub use bitmap::{BitmapError, DirtyBitmap};
pub use precopy::{Completion, Switchover, finish, precopy};

/// The page size every guest of this VMM uses.
pub const PAGE_SIZE: usize = 4096;

/// The largest page size the engine accepts from a source (64 KiB host pages).
pub const MAX_PAGE_SIZE: usize = 64 * 1024;

/// The most pages one batch may hold (the batch buffer is also bounded by [`MAX_BATCH_BYTES`]).
pub const MAX_BATCH_PAGES: usize = 4096;

/// The most bytes one batch's buffer may take.
pub const MAX_BATCH_BYTES: usize = 16 * 1024 * 1024;

/// The guest memory side: its pages, their contents and the dirty log.
///
/// Reads may race with the running guest: a page written while it is read is dirty, so the
/// engine sends it again in a later round (or in the final one, after the pause).
pub trait DirtySource {
    /// The source's own error, carried out as [`EngineError::Source`].
    type Error: std::error::Error + Send + Sync + 'static;

    /// The number of guest pages.
    fn page_count(&self) -> u64;

    /// The size of a page in bytes ([`PAGE_SIZE`]).
    fn page_size(&self) -> usize;

    /// Turns dirty logging on. Must not cost time in proportion to the guest's size (KVM's
    /// manual-protect with INITIALLY_SET). The engine calls [`take_dirty`](Self::take_dirty)
    /// once right after this and discards the answer, because the first round sends every
    /// page anyway: with INITIALLY_SET, that call is what re-arms write protection.
    fn start_tracking(&mut self) -> Result<(), Self::Error>;

    /// The pages dirtied since the last call (or since tracking started), clearing them: one
    /// bit per page, `page_count` bits.
    fn take_dirty(&mut self) -> Result<DirtyBitmap, Self::Error>;

    /// Whether page `index` is known to hold only zero bytes without reading it (a hole of
    /// the backing). `false` when unsure: the engine reads the page and checks its bytes
    /// itself, so a page is read once. Zero pages travel as a marker.
    fn is_zero(&self, index: u64) -> Result<bool, Self::Error>;

    /// Copies page `index` into `buf` (`page_size` bytes).
    fn read_page(&self, index: u64, buf: &mut [u8]) -> Result<(), Self::Error>;

    /// Turns dirty logging off. Called on every way out, also after a failed or partial
    /// `start_tracking`, so it must be safe to call when logging is (partly) off.
    fn stop_tracking(&mut self) -> Result<(), Self::Error>;
}

/// A page's contents on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PageData<'a> {
    /// The page is all zeros: only a marker travels.
    Zero,
    /// The page's bytes (`page_size` of them).
    Bytes(&'a [u8]),
}

/// One page of a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageRecord<'a> {
    /// The page's index in guest memory (guest physical page number from the start of RAM).
    pub index: u64,
    /// What it holds.
    pub data: PageData<'a>,
}

/// Why the transport failed. The VMM maps its wire protocol's errors onto these.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// The peer closed the connection.
    #[error("the destination closed the connection")]
    Closed,
    /// Reading or writing the connection failed.
    #[error("connection error: {0}")]
    Io(#[from] std::io::Error),
    /// The peer did not take data or answer in time.
    #[error("the destination did not answer within {0:?}")]
    Stalled(Duration),
    /// The peer refused what was sent, with its reason.
    #[error("the destination refused: {0}")]
    Refused(String),
    /// The peer sent something the protocol does not allow.
    #[error("protocol error: {0}")]
    Protocol(String),
}

/// Where pages go.
pub trait Transport {
    /// Sends one batch of pages, in order.
    fn send_pages(&mut self, batch: &[PageRecord<'_>]) -> Result<(), TransportError>;

    /// Marks the end of round `round` (1 is the full pass; the final round after the pause is
    /// the last one [`finish`] ends).
    fn end_round(&mut self, round: u32) -> Result<(), TransportError>;

    /// Pushes out anything buffered; called once by [`finish`] after the final round, so the
    /// caller can send device state next.
    fn flush(&mut self) -> Result<(), TransportError>;
}

/// Monotonic time, and waiting (for the bandwidth cap).
pub trait Clock {
    /// Time since an arbitrary fixed point; never goes backwards.
    fn now(&self) -> Duration;

    /// Waits for `duration`.
    fn sleep(&self, duration: Duration);
}

/// The vCPU throttle of auto-converge.
pub trait Throttle {
    /// Keeps the vCPUs out of KVM_RUN for `percent` of each period (at most 99); 0 lifts it.
    fn set_throttle(&mut self, percent: u8);
}

/// How to migrate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Params {
    /// The longest pause the guest may see: switch over when the dirty bytes left take at
    /// most this long at the measured bandwidth. Default 300 ms.
    pub downtime: Duration,
    /// Bytes of page data per second at most; `None` for no cap.
    pub max_bandwidth: Option<u64>,
    /// Throttle the vCPUs when the guest dirties faster than the link carries.
    pub auto_converge: bool,
    /// Give up (and keep the source running) after this long without converging.
    pub timeout: Duration,
    /// Pages per [`Transport::send_pages`] call; cancel and timeout are checked between
    /// batches, and the cap paces them.
    pub batch_pages: usize,
}

impl Default for Params {
    fn default() -> Self {
        Self {
            downtime: Duration::from_millis(300),
            max_bandwidth: None,
            auto_converge: true,
            timeout: Duration::from_secs(3600),
            batch_pages: 256,
        }
    }
}

/// Why parameters (or the source's geometry) were refused. Nothing has started then.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParamsError {
    /// A zero downtime target can never be met.
    #[error("the downtime target must be more than 0")]
    ZeroDowntime,
    /// A zero timeout ends every attempt at once.
    #[error("the timeout must be more than 0")]
    ZeroTimeout,
    /// `Some(0)` would send nothing; no cap is `None`.
    #[error("a bandwidth cap of 0 bytes/s would send nothing (no cap is None)")]
    ZeroBandwidth,
    /// The batch size is out of range.
    #[error("batch_pages is {0}; it must be 1 to {MAX_BATCH_PAGES}")]
    BatchPages(usize),
    /// The source's page size is out of range.
    #[error("the page size is {0}; it must be 1 to {MAX_PAGE_SIZE} bytes")]
    PageSize(usize),
    /// One batch would need too big a buffer.
    #[error("{pages} pages of {page_size} bytes make a batch over {MAX_BATCH_BYTES} bytes")]
    BatchTooLarge {
        /// `batch_pages`.
        pages: usize,
        /// The source's page size.
        page_size: usize,
    },
}

impl Params {
    /// Checks the parameters against themselves and a source's page size.
    pub fn check(&self, page_size: usize) -> Result<(), ParamsError> {
        if self.downtime.is_zero() {
            return Err(ParamsError::ZeroDowntime);
        }
        if self.timeout.is_zero() {
            return Err(ParamsError::ZeroTimeout);
        }
        if self.max_bandwidth == Some(0) {
            return Err(ParamsError::ZeroBandwidth);
        }
        if self.batch_pages == 0 || self.batch_pages > MAX_BATCH_PAGES {
            return Err(ParamsError::BatchPages(self.batch_pages));
        }
        if page_size == 0 || page_size > MAX_PAGE_SIZE {
            return Err(ParamsError::PageSize(page_size));
        }
        if self.batch_pages * page_size > MAX_BATCH_BYTES {
            return Err(ParamsError::BatchTooLarge {
                pages: self.batch_pages,
                page_size,
            });
        }
        Ok(())
    }
}

/// Where a migration is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MigrationState {
    /// Checking parameters, turning dirty logging on.
    Setup,
    /// Rounds of pages while the guest runs.
    Precopy,
    /// Converged: the caller pauses the VM, [`finish`] sends the last pages, then device
    /// state goes. The engine leaves this state to the caller.
    Switchover,
    /// The destination runs the guest. Set by the caller after the commit; never by the
    /// engine, which cannot know.
    Completed,
    /// Ended by an error; the source runs on.
    Failed,
    /// Ended by cancel; the source runs on.
    Cancelled,
}

/// What the engine reports, after every batch and at every change of state, round or
/// throttle. Rates are bytes per second; `None` until there is something to measure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Progress {
    /// Where the migration is.
    pub state: MigrationState,
    /// The round being sent or just ended (1 is the full pass; 0 before it).
    pub round: u32,
    /// Page bytes sent so far (zero-page markers count nothing).
    pub bytes_sent: u64,
    /// Pages sent so far, zero pages included.
    pub pages_sent: u64,
    /// Of them, pages sent as zero markers.
    pub zero_pages_sent: u64,
    /// Dirty pages not yet sent, times the page size.
    pub bytes_remaining: u64,
    /// The bandwidth of the last round that ended.
    pub round_bandwidth: Option<u64>,
    /// Bytes sent over the time since the first round began.
    pub overall_bandwidth: Option<u64>,
    /// Bytes the guest dirtied per second, measured between the last two dirty-log reads.
    pub dirty_rate: Option<u64>,
    /// The vCPU throttle now, in percent.
    pub throttle_percent: u8,
    /// `bytes_remaining` at the measured bandwidth: what the pause would last if it started
    /// now (device state not counted).
    pub expected_downtime: Option<Duration>,
    /// Time since the attempt began.
    pub elapsed: Duration,
}

impl Progress {
    fn new() -> Self {
        Self {
            state: MigrationState::Setup,
            round: 0,
            bytes_sent: 0,
            pages_sent: 0,
            zero_pages_sent: 0,
            bytes_remaining: 0,
            round_bandwidth: None,
            overall_bandwidth: None,
            dirty_rate: None,
            throttle_percent: 0,
            expected_downtime: None,
            elapsed: Duration::ZERO,
        }
    }
}

/// Why an attempt ended without switching over. Whatever the variant, the cleanup invariant
/// (module docs) holds: tracking is off and the throttle lifted.
#[derive(Debug, thiserror::Error)]
pub enum EngineError<E: std::error::Error + 'static> {
    /// Refused before anything started.
    #[error("invalid migration parameters: {0}")]
    Params(#[from] ParamsError),
    /// Guest memory or its dirty log failed.
    #[error("guest memory: {0}")]
    Source(#[source] E),
    /// The dirty log answered a bitmap of the wrong size.
    #[error("the dirty log covers {got} pages, the guest has {expected}")]
    BitmapSize {
        /// The guest's pages.
        expected: u64,
        /// The bitmap's.
        got: u64,
    },
    /// Sending failed.
    #[error("transport: {0}")]
    Transport(#[from] TransportError),
    /// `timeout` passed without converging.
    #[error(
        "did not converge within {timeout:?} (round {round}, {remaining} bytes left, \
         expected downtime {expected_downtime:?})"
    )]
    Timeout {
        /// The limit.
        timeout: Duration,
        /// The round it stopped in.
        round: u32,
        /// Dirty bytes left.
        remaining: u64,
        /// What the pause would have lasted.
        expected_downtime: Option<Duration>,
    },
    /// The cancel flag was set.
    #[error("cancelled")]
    Cancelled,
    /// The attempt failed, and then turning dirty logging off failed too.
    // `cause` is formatted through `to_string` so that thiserror does not bound the impl on
    // `Box<EngineError<E>>: Display`, which would recurse.
    #[error("{}; then turning dirty logging off failed: {stop}", .cause.to_string())]
    StopTracking {
        /// Why the attempt ended.
        cause: Box<EngineError<E>>,
        /// Why logging could not be turned off.
        stop: E,
    },
}
