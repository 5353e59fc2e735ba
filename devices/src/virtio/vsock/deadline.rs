//! The deadline for a host process's `CONNECT <port>\n` line. A connection that has not sent
//! it in time is closed, so that host processes which connect and say nothing cannot hold the
//! device's connection slots. One timerfd, in the device's epoll, is armed for the earliest
//! pending deadline.

use std::os::fd::{AsRawFd, RawFd};
use std::time::{Duration, Instant};

use vmm_sys_util::timerfd::TimerFd;

/// How long a host process has, from its connection being accepted, to send its whole
/// `CONNECT <port>\n` line. The line is one short write, so a well-behaved process needs
/// microseconds; two seconds (Firecracker's value) leave room for a loaded host.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(2);

/// The shortest time the timer is armed for: a zero duration would disarm it.
const MIN_ARM: Duration = Duration::from_millis(1);

/// The handshake timer.
#[derive(Debug)]
pub struct HandshakeTimer {
    timer: TimerFd,
    /// The deadline the timer is armed for, if any.
    armed_for: Option<Instant>,
    /// How long a host process has for its line.
    pub timeout: Duration,
}

impl HandshakeTimer {
    /// A disarmed timer with the default timeout.
    pub fn new() -> std::io::Result<Self> {
        Ok(Self {
            timer: TimerFd::new()?,
            armed_for: None,
            timeout: HANDSHAKE_TIMEOUT,
        })
    }

    /// A connection accepted at `now` has until the returned instant; the timer is armed for
    /// it unless it is already armed for an earlier deadline.
    pub fn start(&mut self, now: Instant) -> std::io::Result<Instant> {
        let deadline = now + self.timeout;
        if self.armed_for.is_none_or(|t| t > deadline) {
            self.arm(Some(deadline), now)?;
        }
        Ok(deadline)
    }

    /// Arms the timer for `next` (disarms it for None). Setting the timer also clears its
    /// expiry count, so the timerfd is never read: the device's epoll watches it
    /// edge-triggered, and each expiry after a setting is a new edge.
    pub fn arm(&mut self, next: Option<Instant>, now: Instant) -> std::io::Result<()> {
        self.armed_for = None;
        match next {
            Some(t) => {
                let wait = t.saturating_duration_since(now).max(MIN_ARM);
                self.timer.reset(wait, None)?;
                self.armed_for = Some(t);
            }
            None => self.timer.clear()?,
        }
        Ok(())
    }

    /// The deadline the timer is armed for.
    #[cfg(test)]
    pub fn armed_for(&self) -> Option<Instant> {
        self.armed_for
    }
}

impl AsRawFd for HandshakeTimer {
    fn as_raw_fd(&self) -> RawFd {
        self.timer.as_raw_fd()
    }
}
