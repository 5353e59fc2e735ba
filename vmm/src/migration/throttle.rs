//! Auto-converge's vCPU throttle: for a share of every 100 ms period, every vCPU is held out
//! of KVM_RUN (`VcpuHold`), so a guest that dirties memory faster than the link carries it
//! slows down. A hold is not a pause: a guest the user paused stays paused when the throttle
//! lifts. Dropping the throttle lifts it.
//!
//! ```text
//! engine                 throttle thread                vCPU threads
//!   set_throttle(30) -->  hold every vCPU -----------> out of KVM_RUN, parked
//!                         sleep 30 ms
//!                         release every vCPU --------> back into KVM_RUN
//!                         sleep 70 ms, again
//!   set_throttle(0)  -->  waits for a new share
//! ```

use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::vcpu::VcpuHold;

/// The throttle's period.
pub const PERIOD: Duration = Duration::from_millis(100);
/// The largest share of a period the vCPUs are held.
pub const MAX_PERCENT: u8 = 99;

#[derive(Debug, Default)]
struct Shared {
    percent: AtomicU8,
    stop: AtomicBool,
    /// Periods in which the vCPUs were held, for reports and tests.
    held_periods: AtomicU64,
    wake: Mutex<()>,
    cv: Condvar,
}

/// A running throttle over a VM's vCPUs.
#[derive(Debug)]
pub struct VcpuThrottle {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl VcpuThrottle {
    /// Starts the throttle thread at 0%.
    pub fn start(holds: Vec<VcpuHold>) -> std::io::Result<Self> {
        let shared = Arc::new(Shared::default());
        let s = shared.clone();
        let thread = std::thread::Builder::new()
            .name("throttle".into())
            .stack_size(crate::THREAD_STACK)
            .spawn(move || run(&s, &holds))?;
        Ok(Self {
            shared,
            thread: Some(thread),
        })
    }

    /// The share of each period the vCPUs are held now.
    pub fn percent(&self) -> u8 {
        self.shared.percent.load(Ordering::Relaxed)
    }

    /// How many periods the vCPUs have been held so far.
    pub fn held_periods(&self) -> u64 {
        self.shared.held_periods.load(Ordering::Relaxed)
    }
}

impl migration::engine::Throttle for VcpuThrottle {
    fn set_throttle(&mut self, percent: u8) {
        self.shared
            .percent
            .store(percent.min(MAX_PERCENT), Ordering::Relaxed);
        self.shared.cv.notify_all();
    }
}

impl Drop for VcpuThrottle {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        self.shared.cv.notify_all();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn run(s: &Shared, holds: &[VcpuHold]) {
    while !s.stop.load(Ordering::Relaxed) {
        let percent = u32::from(s.percent.load(Ordering::Relaxed));
        if percent == 0 {
            let guard = s
                .wake
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let _ = s.cv.wait_timeout(guard, PERIOD);
            continue;
        }
        for h in holds {
            h.hold();
        }
        std::thread::sleep(PERIOD * percent / 100);
        for h in holds {
            h.release();
        }
        s.held_periods.fetch_add(1, Ordering::Relaxed);
        std::thread::sleep(PERIOD * (100 - percent) / 100);
    }
    for h in holds {
        h.release();
    }
}
