//! The saved state of the entropy device: its rate limiter (it has nothing else; the bytes
//! served are the process's counter).

use migration::state::{Section, StateError, Stateful, decode, encode};
use serde::{Deserialize, Serialize};

use super::device::Rng;
use crate::rate_limiter::state::{RateLimiterState, restore_limiter, save_limiter};
use crate::state::{first_version, refused};

/// The entropy device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RngState {
    /// The rate limiter's buckets.
    pub rate_limiter: Option<RateLimiterState>,
}

first_version!(RngState);

impl Stateful for Rng {
    fn save(&self) -> Result<Section, StateError> {
        encode(
            "virtio/rng/device",
            &RngState {
                rate_limiter: save_limiter(self.limiter.as_ref()),
            },
        )
    }

    fn restore(&mut self, section: &Section) -> Result<(), StateError> {
        let s: RngState = decode(section)?;
        self.limiter = restore_limiter(s.rate_limiter.as_ref())
            .map_err(|e| refused(section, format!("rate limiter: {e}")))?;
        Ok(())
    }
}
