//! Fuzz-target bodies for everything in this crate that reads untrusted bytes: virtio rings
//! and buffers a guest wrote (block, net, vsock TX, rng), the vsock packet header, and the line a
//! host process sends to the vsock socket. Each takes arbitrary bytes and must neither panic
//! nor hang; `fuzz/` wraps them for libFuzzer, and the unit tests below run them on seeds and
//! pseudo-random inputs.
//!
//! The queue targets share one input format (little-endian, every field read as zero once
//! the input runs out), which describes a driver's split queue in a 64 KiB guest memory:
//!
//! | bytes | meaning |
//! |---|---|
//! | 1 | queue size: `1 << (b % 9)` (1 to 256) |
//! | 1 | descriptor count D; descriptor `i` goes to table slot `i % size` |
//! | D x (1 + 2/8 + 2/4 + 1) | flags (bit 0 NEXT, 1 WRITE, 2 INDIRECT, 6 wide length, 7 wide address), address (u16, or u64 if wide), length (u16, or u32 if wide), next (u8) |
//! | 1 | available count A, also the ring's `idx` |
//! | A x 1 | head indices, in ring slots `j % size` |
//! | rest | copied to guest memory at [`PAYLOAD`] |
//!
//! Each target reads its own option bytes before the queue; see the target's doc.

use crate::GuestRam;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};

use virtio_bindings::virtio_ring::{VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::Queue;
use virtio_queue::desc::{RawDescriptor, split::Descriptor as SplitDescriptor};
use virtio_queue::mock::MockSplitQueue;
use vm_memory::{Bytes, GuestAddress};

use crate::virtio::VirtioDevice;
use crate::virtio::block::{Block, BlockConfig, CacheType};
use crate::virtio::net::{Net, NetConfig, Tap, feature as net_feature};
use crate::virtio::rng::Rng;
use crate::virtio::vsock::packet::{self, HDR_LEN, Header, MAX_CONNECT_LINE, op};
use crate::virtio::vsock::{Vsock, VsockConfig};

/// Size of the guest memory the queue targets build.
pub const MEM_SIZE: u64 = 0x1_0000;
/// Where the (first) queue's descriptor table starts.
pub const RING: u64 = 0;
/// Where the vsock target's receive queue starts.
pub const RX_RING: u64 = 0x2000;
/// Where the vsock target's receive buffers start, [`RX_BUFFER_MAX`] bytes apart.
pub const RX_BUFFERS: u64 = 0x2400;
/// The largest receive buffer of the vsock target.
pub const RX_BUFFER_MAX: u16 = 0x1c0;
/// The most receive buffers the vsock target offers.
pub const RX_BUFFER_COUNT: u16 = 16;
/// Where the payload at the end of an input is copied.
pub const PAYLOAD: u64 = 0x4000;
/// Flag bit of an encoded descriptor: its address is a u64 (else a u16).
pub const WIDE_ADDR: u8 = 0x80;
/// Flag bit of an encoded descriptor: its length is a u32 (else a u16).
pub const WIDE_LEN: u8 = 0x40;
/// The vsock target's guest context id.
pub const GUEST_CID: u64 = 3;
/// The host port on which the vsock target has a Unix listener, so guest connections to it
/// succeed.
pub const LISTENING_PORT: u32 = 1024;
/// Sectors in the block target's image.
pub const IMAGE_SECTORS: u64 = 64;

/// Reads fields off the front of a fuzz input; past its end every field is zero.
struct Input<'a>(&'a [u8]);

impl<'a> Input<'a> {
    fn take<const N: usize>(&mut self) -> [u8; N] {
        let mut out = [0u8; N];
        let n = N.min(self.0.len());
        out[..n].copy_from_slice(&self.0[..n]);
        self.0 = &self.0[n..];
        out
    }

    fn u8(&mut self) -> u8 {
        self.take::<1>()[0]
    }

    fn u16(&mut self) -> u16 {
        u16::from_le_bytes(self.take())
    }

    fn u32(&mut self) -> u32 {
        u32::from_le_bytes(self.take())
    }

    fn u64(&mut self) -> u64 {
        u64::from_le_bytes(self.take())
    }

    fn bytes(&mut self, n: usize) -> &'a [u8] {
        let (head, tail) = self.0.split_at(n.min(self.0.len()));
        self.0 = tail;
        head
    }

    fn rest(&mut self) -> &'a [u8] {
        self.bytes(self.0.len())
    }
}

fn guest_memory() -> GuestRam {
    GuestRam::from_ranges(&[(GuestAddress(0), MEM_SIZE as usize)])
        .expect("a 64 KiB anonymous mapping can be made")
}

/// Writes the queue an input describes at `at` and returns the driver's view of it; None if
/// the mock refuses (it cannot, for the sizes used here).
fn driver_queue<'m>(
    input: &mut Input<'_>,
    mem: &'m GuestRam,
    at: GuestAddress,
) -> Option<MockSplitQueue<'m, GuestRam>> {
    let size = 1u16 << (input.u8() % 9);
    let mq = MockSplitQueue::create(mem, at, size);
    for i in 0..u16::from(input.u8()) {
        let flags = input.u8();
        let addr = if flags & WIDE_ADDR != 0 {
            input.u64()
        } else {
            u64::from(input.u16())
        };
        let len = if flags & WIDE_LEN != 0 {
            input.u32()
        } else {
            u32::from(input.u16())
        };
        let next = u16::from(input.u8());
        let ring_flags = u16::from(flags)
            & (VRING_DESC_F_NEXT | VRING_DESC_F_WRITE | VRING_DESC_F_INDIRECT) as u16;
        let desc = SplitDescriptor::new(addr, len, ring_flags, next);
        mq.desc_table()
            .store(i % size, RawDescriptor::from(desc))
            .ok()?;
    }
    let avail = input.u8();
    for j in 0..u16::from(avail) {
        mq.avail()
            .ring()
            .ref_at(usize::from(j % size))
            .ok()?
            .store(u16::from(input.u8()));
    }
    mq.avail().idx().store(u16::from(avail));
    Some(mq)
}

fn write_payload(mem: &GuestRam, payload: &[u8]) {
    let n = payload.len().min((MEM_SIZE - PAYLOAD) as usize);
    // In bounds by construction.
    let _ = mem.write_slice(&payload[..n], GuestAddress(PAYLOAD));
}

/// The used ring's entries (descriptor head, bytes written), in order.
fn used_entries(mq: &MockSplitQueue<'_, GuestRam>) -> Vec<(u32, u32)> {
    let n = mq.used().idx().load();
    (0..n)
        .filter_map(|i| mq.used().ring().ref_at(usize::from(i)).ok())
        .map(|e| e.load())
        .map(|e| (e.id(), e.len()))
        .collect()
}

/// A name no other call (in any process) uses, for a file in the temporary directory.
fn unique_temp_path(tag: &str) -> PathBuf {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    std::env::temp_dir().join(format!("vmm-fuzz-{tag}-{}-{n}", std::process::id()))
}

/// Removes a path when dropped, so a socket file does not outlive its call.
struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// What a queue target left behind, for tests.
#[cfg_attr(not(test), allow(dead_code))]
struct QueueOutcome {
    mem: GuestRam,
    used: Vec<(u32, u32)>,
}

/// virtio-blk: a Block device on a 64-sector image (zeros) serves the queue an input
/// describes, so every chain goes through descriptor reading, `request::parse` and the
/// request's execution. One option byte comes first: bit 0 read-only, bit 1 writeback cache.
pub fn block_queue(data: &[u8]) {
    run_block(data);
}

fn run_block(data: &[u8]) -> QueueOutcome {
    let mut input = Input(data);
    let opts = input.u8();
    let image = unique_temp_path("blk");
    let file = std::fs::File::create(&image).expect("the temporary directory is writable");
    file.set_len(IMAGE_SECTORS * 512)
        .expect("a sparse image can be sized");
    let device = Block::new(BlockConfig {
        id: "fuzz".into(),
        path: image.clone(),
        read_only: opts & 1 != 0,
        cache: if opts & 2 != 0 {
            CacheType::Writeback
        } else {
            CacheType::Unsafe
        },
        rate_limiter: None,
    });
    // The device keeps the file open; unlinked, it leaves nothing behind.
    let _ = std::fs::remove_file(&image);
    let mut device = device.expect("a fresh image opens");
    run_queue(&mut input, |q, mem| {
        device.process_queue(0, q, mem);
    })
}

/// virtio-rng: an entropy device serves the queue an input describes.
pub fn rng_queue(data: &[u8]) {
    let mut device = Rng::new();
    run_queue(&mut Input(data), |q, mem| {
        device.process_queue(0, q, mem);
    });
}

/// Builds memory and the queue, copies the payload, and runs `serve` once on the queue.
fn run_queue(input: &mut Input<'_>, serve: impl FnOnce(&mut Queue, &GuestRam)) -> QueueOutcome {
    let mem = guest_memory();
    let used = {
        let Some(mq) = driver_queue(input, &mem, GuestAddress(RING)) else {
            return QueueOutcome {
                mem,
                used: Vec::new(),
            };
        };
        write_payload(&mem, input.rest());
        if let Ok(mut q) = mq.create_queue::<Queue>() {
            serve(&mut q, &mem);
        }
        used_entries(&mq)
    };
    QueueOutcome { mem, used }
}

/// virtio-net: the device serves the queue an input describes, with a datagram socket pair
/// standing in for the tap (one datagram per frame, as a tap reads and writes).
///
/// Option bytes come first: one of flags (bit 0: the driver merges receive buffers; bit 1:
/// the queue is the receive queue, else the transmit queue), then a u16 frame length F. On
/// the receive side a frame of F bytes (at most 64 KiB and some) waits on the "tap" and the
/// device places it in the queue's buffers; on the transmit side the device sends each chain
/// to the "tap".
pub fn net_queue(data: &[u8]) {
    run_net(data);
}

#[cfg_attr(not(test), allow(dead_code))]
struct NetOutcome {
    queue: QueueOutcome,
    /// The frames the device sent to the tap.
    sent: Vec<Vec<u8>>,
}

fn run_net(data: &[u8]) -> NetOutcome {
    use std::os::unix::net::UnixDatagram;
    let mut input = Input(data);
    let opts = input.u8();
    let frame_len = usize::from(input.u16());
    let (ours, theirs) = UnixDatagram::pair().expect("a socket pair");
    for s in [&ours, &theirs] {
        s.set_nonblocking(true).expect("non-blocking");
    }
    let tap = Tap::from_file(
        std::fs::File::from(std::os::fd::OwnedFd::from(ours)),
        "fuzz",
    );
    let mut device = Net::with_tap(
        tap,
        NetConfig {
            id: "fuzz".into(),
            tap: "fuzz".into(),
            mac: None,
            rx_limiter: None,
            tx_limiter: None,
        },
    );
    if opts & 1 != 0 {
        device.activate(crate::virtio::VIRTIO_F_VERSION_1 | net_feature::MRG_RXBUF);
    }
    let receive = opts & 2 != 0;
    if receive {
        let frame: Vec<u8> = (0..frame_len).map(|i| (i % 251) as u8).collect();
        // A frame the socket refuses (too large) just does not arrive.
        let _ = theirs.send(&frame);
    }
    let queue = run_queue(&mut input, |q, mem| {
        if receive {
            device.process_event(0, std::slice::from_mut(q), mem);
        } else {
            device.process_queue(1, q, mem);
        }
    });
    let mut sent = Vec::new();
    let mut buf = vec![0u8; 1 << 17];
    while let Ok(n) = theirs.recv(&mut buf) {
        sent.push(buf[..n].to_vec());
    }
    NetOutcome { queue, sent }
}

/// The vsock device's transmit path: packets the guest sends (queue 1), with a host
/// listener on [`LISTENING_PORT`] so a guest's REQUEST to it connects, and optionally a host
/// process that connected first. Then the device fills a receive queue, whose buffer sizes
/// the input gives, with what it owes the guest (responses, resets, credit, the host's data).
///
/// Option bytes come first: a length L (at most 64); if non-zero, a host process connects to
/// the device's socket and sends the next L bytes (its `CONNECT <port>\n` line and early
/// data) before the guest's packets. Then the receive buffers: a count byte C (`1 + C % 16`
/// buffers), and C u16 lengths, each capped at [`RX_BUFFER_MAX`] (448): so 0, header-only
/// (44) and other buffers too small for a packet or its payload are all reachable. The queue
/// input follows.
pub fn vsock_tx(data: &[u8]) {
    run_vsock(data);
}

#[cfg_attr(not(test), allow(dead_code))]
struct VsockOutcome {
    tx: QueueOutcome,
    rx: Vec<(u32, u32)>,
    uds: PathBuf,
}

fn run_vsock(data: &[u8]) -> VsockOutcome {
    let mut input = Input(data);
    let line = usize::from(input.u8()).min(64);
    let line = input.bytes(line);
    let rx_count = 1 + u16::from(input.u8()) % RX_BUFFER_COUNT;
    let rx_lens: Vec<u16> = (0..rx_count)
        .map(|_| input.u16().min(RX_BUFFER_MAX))
        .collect();
    let uds = unique_temp_path("vsock");
    let mut port_path = uds.clone().into_os_string();
    port_path.push(format!("_{LISTENING_PORT}"));
    let port_path = RemoveOnDrop(port_path.into());
    let _listener = UnixListener::bind(&port_path.0).expect("a fresh socket path binds");
    // The device unlinks `uds` when it is dropped, on every return below.
    let mut device = Vsock::new(&VsockConfig {
        guest_cid: GUEST_CID,
        uds_path: uds.clone(),
    })
    .expect("a fresh socket path binds");
    let _host = (!line.is_empty()).then(|| {
        let mut s = UnixStream::connect(&uds).expect("the device listens");
        let _ = std::io::Write::write_all(&mut s, line);
        s
    });
    let mem = guest_memory();
    let rx_mq = MockSplitQueue::create(&mem, GuestAddress(RX_RING), RX_BUFFER_COUNT);
    let rx_bufs: Vec<RawDescriptor> = (0u64..)
        .zip(&rx_lens)
        .map(|(i, &len)| {
            let addr = RX_BUFFERS + i * u64::from(RX_BUFFER_MAX);
            let d = SplitDescriptor::new(addr, u32::from(len), VRING_DESC_F_WRITE as u16, 0);
            RawDescriptor::from(d)
        })
        .collect();
    let rx_ready = rx_mq.add_desc_chains(&rx_bufs, 0).is_ok();
    let used = {
        let Some(mq) = driver_queue(&mut input, &mem, GuestAddress(RING)) else {
            return VsockOutcome {
                tx: QueueOutcome {
                    mem,
                    used: Vec::new(),
                },
                rx: Vec::new(),
                uds,
            };
        };
        write_payload(&mem, input.rest());
        // The device thread sees the host connection and its line first.
        device.process_event(0, &mut [], &mem);
        if let Ok(mut q) = mq.create_queue::<Queue>() {
            device.process_queue(1, &mut q, &mem);
        }
        used_entries(&mq)
    };
    if rx_ready {
        if let Ok(mut rxq) = rx_mq.create_queue::<Queue>() {
            device.process_queue(0, &mut rxq, &mem);
        }
    }
    let rx = used_entries(&rx_mq);
    VsockOutcome {
        tx: QueueOutcome { mem, used },
        rx,
        uds,
    }
}

/// The vsock packet header and payload split of a packet the guest sent, checking that what
/// it accepts is consistent with the bytes.
pub fn vsock_packet(data: &[u8]) {
    if let Some(head) = data
        .get(..HDR_LEN)
        .and_then(|h| <&[u8; HDR_LEN]>::try_from(h).ok())
    {
        assert_eq!(
            &Header::from_bytes(head).to_bytes(),
            head,
            "header round trip"
        );
    }
    if let Ok((h, payload)) = packet::parse_guest_packet(data, GUEST_CID) {
        assert_eq!((h.src_cid, h.dst_cid), (GUEST_CID, packet::HOST_CID));
        let want = if h.op == op::RW { h.len as usize } else { 0 };
        assert_eq!(payload.len(), want, "payload length");
    }
}

/// The `CONNECT <port>\n` line a host process sends, checking that an accepted line is
/// complete and within the limit.
pub fn vsock_connect_line(data: &[u8]) {
    if let Ok(Some((_, used))) = packet::parse_connect_line(data) {
        assert!(
            used <= MAX_CONNECT_LINE && used <= data.len(),
            "line length"
        );
        assert_eq!(
            data.get(used.wrapping_sub(1)),
            Some(&b'\n'),
            "ends the line"
        );
    }
}

mod smoke;
pub use smoke::{XorShift, seed_corpus, smoke, smoke_inputs};

#[cfg(test)]
mod tests;
