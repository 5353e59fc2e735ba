//! The saved state of a virtio-mmio transport: the registers a driver sets (status, features
//! and their selectors, the selected queue), the interrupt status, the config generation, and
//! each queue's setup and ring positions. The device's own state is a separate section.
//!
//! Restoring goes into a transport built for the same device and not yet touched by a driver,
//! after the device's own section. A transport the driver had started is active again at
//! once: the device is activated with the features the driver accepted, the queues keep their
//! positions, and each queue's notification is signalled once so that the device thread
//! serves what the guest had queued before the snapshot.

use std::sync::atomic::Ordering;

use migration::state::{Section, StateError, Stateful, decode, encode};
use serde::{Deserialize, Serialize};
use virtio_queue::{Queue, QueueState, QueueT};

use super::{INT_CONFIG, INT_VRING, MmioTransport, status};
use crate::state::{first_version, refused};
use crate::virtio::VIRTIO_F_VERSION_1;

/// One virtqueue.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VirtqueueState {
    /// The largest size the device offers.
    pub max_size: u16,
    /// The size the driver chose.
    pub size: u16,
    /// Whether the driver made the queue ready.
    pub ready: bool,
    /// Guest-physical address of the descriptor table.
    pub desc_table: u64,
    /// Guest-physical address of the available ring.
    pub avail_ring: u64,
    /// Guest-physical address of the used ring.
    pub used_ring: u64,
    /// The next available entry the device will take.
    pub next_avail: u16,
    /// The next used entry the device will fill.
    pub next_used: u16,
    /// Whether used and available event indices are in use.
    pub event_idx: bool,
    /// The driver last wrote a size that was refused (DRIVER_OK then fails).
    pub bad_size: bool,
}

/// A transport.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MmioTransportState {
    /// The virtio device type behind it.
    pub device_type: u32,
    /// The device status register.
    pub status: u32,
    /// The features the driver accepted.
    pub acked_features: u64,
    /// DeviceFeaturesSel.
    pub device_features_sel: u32,
    /// DriverFeaturesSel.
    pub driver_features_sel: u32,
    /// QueueSel.
    pub queue_sel: u32,
    /// InterruptStatus.
    pub interrupt_status: u32,
    /// ConfigGeneration.
    pub config_generation: u32,
    /// Every queue of the device, in order.
    pub queues: Vec<VirtqueueState>,
}

first_version!(VirtqueueState, MmioTransportState);

impl MmioTransport {
    /// The transport's section name: the device's, less its `/device` suffix (so a drive
    /// `rootfs` gives `virtio/rootfs` and `virtio/rootfs/device`).
    fn section_name(&self) -> Result<String, StateError> {
        let dev = self.device.save()?.name;
        Ok(match dev.strip_suffix("/device") {
            Some(base) => base.to_string(),
            None => format!("{dev}/transport"),
        })
    }

    /// Builds queue `i` from its saved state, or says why it cannot be used here.
    fn restored_queue(&self, i: usize, q: &VirtqueueState) -> Result<Queue, String> {
        let max = self.queues.get(i).map_or(0, QueueT::max_size);
        if q.max_size != max {
            return Err(format!(
                "queue {i} had at most {} entries; this device offers {max}",
                q.max_size
            ));
        }
        if q.size == 0 || q.size > max || !q.size.is_power_of_two() {
            return Err(format!(
                "queue {i} has size {}, not a power of two up to {max}",
                q.size
            ));
        }
        let restored = Queue::try_from(QueueState {
            max_size: q.max_size,
            next_avail: q.next_avail,
            next_used: q.next_used,
            event_idx_enabled: q.event_idx,
            size: q.size,
            ready: q.ready,
            desc_table: q.desc_table,
            avail_ring: q.avail_ring,
            used_ring: q.used_ring,
        })
        .map_err(|e| format!("queue {i}: {e}"))?;
        Ok(restored)
    }

    /// Checks the registers against what a driver can have set through this transport.
    fn check_registers(&self, s: &MmioTransportState) -> Result<(), String> {
        let ty = self.device.device_type();
        if s.device_type != ty {
            return Err(format!(
                "it is the transport of a device of type {}; this one has type {ty}",
                s.device_type
            ));
        }
        if self.status != 0 {
            return Err(format!(
                "this transport's driver has already set status {:#x}; restore into a new one",
                self.status
            ));
        }
        if s.queues.len() != self.queues.len() {
            return Err(format!(
                "it has {} queues; this device has {}",
                s.queues.len(),
                self.queues.len()
            ));
        }
        let extra = s.acked_features & !self.offered_features();
        if extra != 0 {
            return Err(format!(
                "the driver accepted features {extra:#x} this device does not offer"
            ));
        }
        if s.status & status::FEATURES_OK != 0 && s.acked_features & VIRTIO_F_VERSION_1 == 0 {
            return Err("FEATURES_OK without VIRTIO_F_VERSION_1".into());
        }
        let needs_reset = s.status & status::DEVICE_NEEDS_RESET != 0;
        if s.status & status::DRIVER_OK != 0 && s.status & status::FEATURES_OK == 0 && !needs_reset
        {
            return Err("DRIVER_OK without FEATURES_OK".into());
        }
        if s.interrupt_status & !(INT_VRING | INT_CONFIG) != 0 {
            return Err(format!("interrupt status {:#x}", s.interrupt_status));
        }
        Ok(())
    }
}

impl Stateful for MmioTransport {
    fn save(&self) -> Result<Section, StateError> {
        let queues = self
            .queues
            .iter()
            .zip(&self.bad_size)
            .map(|(q, bad)| {
                let s = q.state();
                VirtqueueState {
                    max_size: s.max_size,
                    size: s.size,
                    ready: s.ready,
                    desc_table: s.desc_table,
                    avail_ring: s.avail_ring,
                    used_ring: s.used_ring,
                    next_avail: s.next_avail,
                    next_used: s.next_used,
                    event_idx: s.event_idx_enabled,
                    bad_size: *bad,
                }
            })
            .collect();
        encode(
            &self.section_name()?,
            &MmioTransportState {
                device_type: self.device.device_type(),
                status: self.status,
                acked_features: self.acked_features,
                device_features_sel: self.device_features_sel,
                driver_features_sel: self.driver_features_sel,
                queue_sel: self.queue_sel,
                interrupt_status: self.interrupt_status.load(Ordering::SeqCst),
                config_generation: self.config_generation,
                queues,
            },
        )
    }

    fn restore(&mut self, section: &Section) -> Result<(), StateError> {
        let s: MmioTransportState = decode(section)?;
        self.check_registers(&s).map_err(|e| refused(section, e))?;
        let active =
            s.status & status::DRIVER_OK != 0 && s.status & status::DEVICE_NEEDS_RESET == 0;
        let mut queues = Vec::with_capacity(s.queues.len());
        for (i, q) in s.queues.iter().enumerate() {
            let restored = self.restored_queue(i, q).map_err(|e| refused(section, e))?;
            // The transport checked these rings at DRIVER_OK; the device will use them at once.
            if active && restored.ready() && !restored.is_valid(&self.mem) {
                return Err(refused(
                    section,
                    format!("queue {i}'s rings are not all inside guest memory"),
                ));
            }
            queues.push(restored);
        }
        // Nothing can fail from here on.
        self.queues = queues;
        self.bad_size = s.queues.iter().map(|q| q.bad_size).collect();
        self.status = s.status;
        self.acked_features = s.acked_features;
        self.device_features_sel = s.device_features_sel;
        self.driver_features_sel = s.driver_features_sel;
        self.queue_sel = s.queue_sel;
        self.config_generation = s.config_generation;
        self.interrupt_status
            .store(s.interrupt_status, Ordering::SeqCst);
        self.retry = None;
        if self.is_activated() {
            self.device.activate(self.acked_features);
        }
        for e in &self.queue_evts {
            if let Err(err) = e.write(1) {
                log::warn!("virtio: cannot signal a restored queue: {err}");
            }
        }
        if s.interrupt_status != 0 {
            // The driver had not yet acknowledged it; a spurious one is harmless.
            if let Err(e) = self.irq.trigger() {
                log::warn!("virtio interrupt: {e}");
            }
        }
        Ok(())
    }
}
