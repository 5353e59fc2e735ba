//! The saved state of a block device: what the driver was told (capacity, read-only, cache
//! type) and its rate limiter. Pausing drains the device thread, so no request is in flight
//! and none is saved. The counters are the process's, not the guest's, and start again.

use migration::state::{Section, StateError, Stateful, decode, encode};
use serde::{Deserialize, Serialize};

use super::device::{Block, CacheType};
use crate::rate_limiter::state::{RateLimiterState, restore_limiter, save_limiter};
use crate::state::{first_version, refused};

/// A drive.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockState {
    /// The drive's id (its serial for GET_ID).
    pub id: String,
    /// The capacity in the config space, in 512-byte sectors.
    pub capacity: u64,
    /// Whether the driver was offered VIRTIO_BLK_F_RO and writes were refused.
    pub read_only: bool,
    /// The cache type, which decides whether flush was offered.
    pub cache: CacheType,
    /// The rate limiter's buckets.
    pub rate_limiter: Option<RateLimiterState>,
}

first_version!(BlockState);

impl Stateful for Block {
    fn save(&self) -> Result<Section, StateError> {
        encode(
            &format!("virtio/{}/device", self.cfg.id),
            &BlockState {
                id: self.cfg.id.clone(),
                capacity: self.capacity,
                read_only: self.cfg.read_only,
                cache: self.cfg.cache,
                rate_limiter: save_limiter(self.cfg.rate_limiter.as_ref()),
            },
        )
    }

    fn restore(&mut self, section: &Section) -> Result<(), StateError> {
        let s: BlockState = decode(section)?;
        let id = &self.cfg.id;
        if s.id != *id {
            return Err(refused(
                section,
                format!("it holds drive {}, not drive {id}", s.id),
            ));
        }
        if s.capacity != self.capacity {
            return Err(refused(
                section,
                format!(
                    "drive {id} had {} sectors at the snapshot; its file {} now has {}",
                    s.capacity,
                    self.cfg.path.display(),
                    self.capacity
                ),
            ));
        }
        if !s.read_only && self.cfg.read_only {
            return Err(refused(
                section,
                format!("drive {id} was writable at the snapshot; its file is now read-only"),
            ));
        }
        let limiter = restore_limiter(s.rate_limiter.as_ref())
            .map_err(|e| refused(section, format!("drive {id}: rate limiter: {e}")))?;
        self.cfg.read_only = s.read_only;
        self.cfg.cache = s.cache;
        self.cfg.rate_limiter = limiter;
        self.update_config();
        Ok(())
    }
}
