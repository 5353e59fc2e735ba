//! Placing a received frame in the guest's receive buffers: one chain per frame, or with
//! mergeable buffers as many chains as the frame needs, counted in the header's num_buffers.

use crate::GuestRam;
use virtio_queue::{Queue, QueueT};
use vm_memory::Bytes;

use super::tap::VNET_HDR_LEN;
use crate::virtio::{Desc, descriptors};

/// Where num_buffers sits in the 12-byte header.
const NUM_BUFFERS: std::ops::Range<usize> = 10..12;

/// What became of a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placed {
    /// It is in the chains listed in `placed`.
    Delivered,
    /// It did not fit the one buffer given for it (no mergeable buffers); it is gone, and the
    /// buffer is returned empty.
    Dropped,
    /// A chain was unusable (read-only buffers, bad addresses); the chains taken for the frame
    /// are returned empty and the frame waits for the next ones.
    BadBuffers,
    /// Not enough buffers yet: nothing was taken from the ring.
    NoRoom,
}

/// Puts `frame` (vnet header first) into the receive chains at the front of `queue`.
/// `placed` receives (head, bytes written) for each chain taken, to be marked used.
pub fn place(
    queue: &mut Queue,
    mem: &GuestRam,
    frame: &mut [u8],
    mergeable: bool,
    placed: &mut Vec<(u16, u32)>,
) -> Placed {
    placed.clear();
    let mut chains: Vec<Vec<Desc>> = Vec::new();
    let mut room = 0usize;
    while room < frame.len() || chains.is_empty() {
        let Some(chain) = queue.pop_descriptor_chain(mem) else {
            unpop(queue, chains.len());
            return Placed::NoRoom;
        };
        let head = chain.head_index();
        placed.push((head, 0));
        match descriptors(chain, u64::from(u32::MAX)) {
            Ok(descs) if descs.iter().all(|d| d.write) => {
                room += descs.iter().map(|d| d.len as usize).sum::<usize>();
                chains.push(descs);
            }
            _ => return Placed::BadBuffers,
        }
        if !mergeable {
            break;
        }
    }
    if room < frame.len() || frame.len() < VNET_HDR_LEN {
        return Placed::Dropped;
    }
    // At most one chain per byte of a frame of at most 64 KiB, and at most a queue's worth.
    let count = u16::try_from(chains.len()).unwrap_or(u16::MAX);
    frame[NUM_BUFFERS].copy_from_slice(&count.to_le_bytes());
    let mut off = 0usize;
    for (descs, slot) in chains.iter().zip(placed.iter_mut()) {
        let start = off;
        for d in descs {
            if off == frame.len() {
                break;
            }
            let n = (d.len as usize).min(frame.len() - off);
            if mem.write_slice(&frame[off..off + n], d.addr).is_err() {
                placed.iter_mut().for_each(|p| p.1 = 0);
                return Placed::BadBuffers;
            }
            off += n;
        }
        // Bounded by the frame length, itself at most 64 KiB and some.
        slot.1 = u32::try_from(off - start).unwrap_or(u32::MAX);
    }
    Placed::Delivered
}

/// Returns the last `n` chains taken to the available ring.
pub fn unpop(queue: &mut Queue, n: usize) {
    // A queue holds at most 32768 chains, so `n` fits.
    let back = u16::try_from(n).unwrap_or(u16::MAX);
    queue.set_next_avail(queue.next_avail().wrapping_sub(back));
}

#[cfg(test)]
mod tests {
    use super::*;
    use virtio_bindings::virtio_ring::VRING_DESC_F_WRITE;
    use virtio_queue::desc::{RawDescriptor, split::Descriptor};
    use virtio_queue::mock::MockSplitQueue;
    use vm_memory::GuestAddress;

    const BUFS: u64 = 0x1_0000;

    fn mem() -> GuestRam {
        GuestRam::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap()
    }

    /// A queue offering `n` one-descriptor receive chains of `len` bytes each (`write`
    /// false makes them read-only).
    fn ring(m: &GuestRam, n: u16, len: u32, write: bool) -> Queue {
        let mq = MockSplitQueue::create(m, GuestAddress(0), 16);
        let flags = if write { VRING_DESC_F_WRITE as u16 } else { 0 };
        for i in 0..n {
            let d = Descriptor::new(BUFS + u64::from(i) * 0x1000, len, flags, 0);
            mq.add_desc_chains(&[RawDescriptor::from(d)], i).unwrap();
        }
        mq.create_queue().unwrap()
    }

    fn frame(len: usize) -> Vec<u8> {
        let mut f: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
        f[..VNET_HDR_LEN].fill(0);
        f
    }

    #[test]
    fn a_large_frame_spreads_over_mergeable_buffers() {
        let m = mem();
        let mut q = ring(&m, 4, 2048, true);
        let mut f = frame(5000);
        let mut placed = Vec::new();
        assert_eq!(
            place(&mut q, &m, &mut f, true, &mut placed),
            Placed::Delivered
        );
        assert_eq!(placed, vec![(0, 2048), (1, 2048), (2, 904)]);
        assert_eq!(q.next_avail(), 3, "the fourth buffer stays available");
        let mut got = vec![0u8; 5000];
        for (i, chunk) in got.chunks_mut(2048).enumerate() {
            m.read_slice(chunk, GuestAddress(BUFS + i as u64 * 0x1000))
                .unwrap();
        }
        assert_eq!(u16::from_le_bytes([got[10], got[11]]), 3, "num_buffers");
        assert_eq!(got[VNET_HDR_LEN..], f[VNET_HDR_LEN..]);
    }

    #[test]
    fn too_few_buffers_take_nothing() {
        let m = mem();
        let mut q = ring(&m, 2, 2048, true);
        let mut placed = Vec::new();
        assert_eq!(
            place(&mut q, &m, &mut frame(5000), true, &mut placed),
            Placed::NoRoom
        );
        assert_eq!(q.next_avail(), 0);
        // A frame that fits goes into the same buffers afterwards.
        assert_eq!(
            place(&mut q, &m, &mut frame(3000), true, &mut placed),
            Placed::Delivered
        );
        assert_eq!(placed, vec![(0, 2048), (1, 952)]);
    }

    #[test]
    fn without_mergeable_buffers_a_frame_too_large_is_dropped() {
        let m = mem();
        let mut q = ring(&m, 4, 2048, true);
        let mut placed = Vec::new();
        assert_eq!(
            place(&mut q, &m, &mut frame(5000), false, &mut placed),
            Placed::Dropped
        );
        assert_eq!(placed, vec![(0, 0)]);
        let mut f = frame(1500);
        assert_eq!(
            place(&mut q, &m, &mut f, false, &mut placed),
            Placed::Delivered
        );
        assert_eq!(placed, vec![(1, 1500)]);
        let mut hdr = [0u8; 12];
        m.read_slice(&mut hdr, GuestAddress(BUFS + 0x1000)).unwrap();
        assert_eq!(u16::from_le_bytes([hdr[10], hdr[11]]), 1);
    }

    #[test]
    fn read_only_buffers_are_returned_empty_and_the_frame_waits() {
        let m = mem();
        let mut q = ring(&m, 2, 2048, false);
        let mut placed = Vec::new();
        assert_eq!(
            place(&mut q, &m, &mut frame(100), true, &mut placed),
            Placed::BadBuffers
        );
        assert_eq!(placed, vec![(0, 0)]);
        assert_eq!(q.next_avail(), 1);
    }

    #[test]
    fn buffers_outside_memory_are_returned_empty() {
        let m = mem();
        let mq = MockSplitQueue::create(&m, GuestAddress(0), 16);
        let d = Descriptor::new(0x10_0000 - 16, 4096, VRING_DESC_F_WRITE as u16, 0);
        mq.add_desc_chains(&[RawDescriptor::from(d)], 0).unwrap();
        let mut q: Queue = mq.create_queue().unwrap();
        let mut placed = Vec::new();
        assert_eq!(
            place(&mut q, &m, &mut frame(100), true, &mut placed),
            Placed::BadBuffers
        );
        assert_eq!(placed, vec![(0, 0)]);
    }
}
