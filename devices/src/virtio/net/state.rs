//! The saved state of a network device: the MAC in its config space, the features the driver
//! accepted (from which activation sets the tap's offloads again) and both rate limiters. The
//! tap itself is reopened by name by whoever builds the device; a frame that was waiting for a
//! receive buffer is not saved (the network may drop frames).

use migration::state::{Section, StateError, Stateful, decode, encode};
use serde::{Deserialize, Serialize};

use super::device::{Net, feature};
use crate::rate_limiter::state::{RateLimiterState, restore_limiter, save_limiter};
use crate::state::{first_version, refused};

/// A network interface.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetState {
    /// The interface id.
    pub id: String,
    /// The MAC the config space shows, if the device offers one.
    pub mac: Option<[u8; 6]>,
    /// The features the driver accepted when it set DRIVER_OK; 0 if it had not.
    pub features: u64,
    /// The tap offloads those features call for (`TUNSETOFFLOAD` flags), for the record.
    pub offloads: u32,
    /// Receive limiter.
    pub rx_rate_limiter: Option<RateLimiterState>,
    /// Transmit limiter.
    pub tx_rate_limiter: Option<RateLimiterState>,
}

first_version!(NetState);

impl Stateful for Net {
    fn save(&self) -> Result<Section, StateError> {
        let mut mac = [0u8; 6];
        mac.copy_from_slice(&self.config[..6]);
        encode(
            &format!("virtio/{}/device", self.id),
            &NetState {
                id: self.id.clone(),
                mac: self.mac.then_some(mac),
                features: self.features,
                offloads: Net::tap_offloads(self.features),
                rx_rate_limiter: save_limiter(self.rx_limiter.as_ref()),
                tx_rate_limiter: save_limiter(self.tx_limiter.as_ref()),
            },
        )
    }

    fn restore(&mut self, section: &Section) -> Result<(), StateError> {
        let s: NetState = decode(section)?;
        let id = &self.id;
        if s.id != *id {
            return Err(refused(
                section,
                format!("it holds interface {}, not interface {id}", s.id),
            ));
        }
        if s.offloads != Net::tap_offloads(s.features) {
            return Err(refused(
                section,
                format!(
                    "interface {id}: offloads {:#x} do not follow from features {:#x}",
                    s.offloads, s.features
                ),
            ));
        }
        let limiter = |l: Option<&RateLimiterState>, which: &str| {
            restore_limiter(l)
                .map_err(|e| refused(section, format!("interface {id}: {which}: {e}")))
        };
        let rx = limiter(s.rx_rate_limiter.as_ref(), "rx_rate_limiter")?;
        let tx = limiter(s.tx_rate_limiter.as_ref(), "tx_rate_limiter")?;
        self.mac = s.mac.is_some();
        self.config[..6].copy_from_slice(&s.mac.unwrap_or_default());
        // The tap gets its offloads when the transport activates the device again.
        self.features = s.features;
        self.mergeable = s.features & feature::MRG_RXBUF != 0;
        self.rx_limiter = rx;
        self.tx_limiter = tx;
        Ok(())
    }
}
