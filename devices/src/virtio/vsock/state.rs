//! The saved state of the vsock device: the guest's CID. As in Firecracker, connections to
//! host processes are not saved: a restored device starts with none, and once the driver is
//! running again the guest gets a `VIRTIO_VSOCK_EVENT_TRANSPORT_RESET` on the event queue, so
//! its connected sockets fail cleanly and its listeners go on listening.

use migration::state::{Section, StateError, Stateful, decode, encode};
use serde::{Deserialize, Serialize};
use virtio_queue::{Queue, QueueT};
use vm_memory::Bytes;

use super::device::Vsock;
use crate::GuestRam;
use crate::state::first_version;
use crate::virtio::{VirtioDevice, descriptors};

/// `VIRTIO_VSOCK_EVENT_TRANSPORT_RESET`, the only event (virtio 1.2 section 5.10.6.5).
const EVENT_TRANSPORT_RESET: u32 = 0;
/// A `struct virtio_vsock_event`: one little-endian u32.
const EVENT_LEN: u32 = 4;

/// The vsock device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VsockState {
    /// The guest's context id.
    pub guest_cid: u64,
}

first_version!(VsockState);

impl Stateful for Vsock {
    fn save(&self) -> Result<Section, StateError> {
        encode(
            "virtio/vsock/device",
            &VsockState {
                guest_cid: self.cid,
            },
        )
    }

    fn restore(&mut self, section: &Section) -> Result<(), StateError> {
        let s: VsockState = decode(section)?;
        // Whatever this device had belongs to no guest the restored one knows.
        self.reset();
        self.cid = s.guest_cid;
        self.reset_pending = true;
        Ok(())
    }
}

impl Vsock {
    /// Writes the owed transport reset into the next buffer of the event queue (the driver
    /// keeps some posted). A buffer that cannot hold the event is returned empty and the
    /// next one is tried; with none posted, the event waits for the next notification.
    pub(super) fn send_reset_event(&mut self, queue: &mut Queue, mem: &GuestRam) -> bool {
        let mut used = false;
        while self.reset_pending {
            let Some(chain) = queue.pop_descriptor_chain(mem) else {
                break;
            };
            let head = chain.head_index();
            let mut len = 0;
            if let Ok(descs) = descriptors(chain, u64::from(u32::MAX)) {
                let first = descs.first().filter(|d| d.write && d.len >= EVENT_LEN);
                if let Some(d) = first {
                    let event = EVENT_TRANSPORT_RESET.to_le_bytes();
                    if mem.write_slice(&event, d.addr).is_ok() {
                        len = EVENT_LEN;
                        self.reset_pending = false;
                    }
                }
            }
            if len == 0 {
                log::debug!("vsock: an event buffer too small for an event");
            }
            if let Err(e) = queue.add_used(mem, head, len) {
                log::warn!("vsock: event queue: {e:?}");
                break;
            }
            used = true;
        }
        used
    }
}
