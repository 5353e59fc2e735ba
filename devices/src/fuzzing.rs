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

use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};

use virtio_bindings::virtio_ring::{VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::Queue;
use virtio_queue::desc::{RawDescriptor, split::Descriptor as SplitDescriptor};
use virtio_queue::mock::MockSplitQueue;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

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
/// Where the vsock target's receive buffers start.
pub const RX_BUFFERS: u64 = 0x3000;
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

const RX_BUFFER_COUNT: u16 = 16;
const RX_BUFFER_LEN: u32 = 256;

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

fn guest_memory() -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE as usize)])
        .expect("a 64 KiB anonymous mapping can be made")
}

/// Writes the queue an input describes at `at` and returns the driver's view of it; None if
/// the mock refuses (it cannot, for the sizes used here).
fn driver_queue<'m>(
    input: &mut Input<'_>,
    mem: &'m GuestMemoryMmap,
    at: GuestAddress,
) -> Option<MockSplitQueue<'m, GuestMemoryMmap>> {
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

fn write_payload(mem: &GuestMemoryMmap, payload: &[u8]) {
    let n = payload.len().min((MEM_SIZE - PAYLOAD) as usize);
    // In bounds by construction.
    let _ = mem.write_slice(&payload[..n], GuestAddress(PAYLOAD));
}

/// The used ring's entries (descriptor head, bytes written), in order.
fn used_entries(mq: &MockSplitQueue<'_, GuestMemoryMmap>) -> Vec<(u32, u32)> {
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
    mem: GuestMemoryMmap,
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
fn run_queue(
    input: &mut Input<'_>,
    serve: impl FnOnce(&mut Queue, &GuestMemoryMmap),
) -> QueueOutcome {
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
/// process that connected first. Then the device fills a receive queue of sixteen 256-byte
/// buffers with what it owes the guest (responses, resets, credit).
///
/// Option bytes come first: a length L (at most 64); if non-zero, a host process connects to
/// the device's socket and sends the next L bytes (its `CONNECT <port>\n` line and early
/// data) before the guest's packets. The queue input follows.
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
    let rx_bufs: Vec<RawDescriptor> = (0..RX_BUFFER_COUNT)
        .map(|i| {
            let addr = RX_BUFFERS + u64::from(i) * u64::from(RX_BUFFER_LEN);
            let d = SplitDescriptor::new(addr, RX_BUFFER_LEN, VRING_DESC_F_WRITE as u16, 0);
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

/// A small deterministic generator (xorshift64), so an input that fails is found again.
#[derive(Debug, Clone)]
pub struct XorShift(u64);

impl XorShift {
    /// A generator from a seed (zero is replaced, as it would stay zero).
    pub fn new(seed: u64) -> Self {
        Self(if seed == 0 {
            0x9e37_79b9_7f4a_7c15
        } else {
            seed
        })
    }

    /// The next value.
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// A value below `n` (`n` > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }
}

/// The seed corpus of a target, `fuzz/corpus/<target>/*`, sorted by name (empty if absent).
pub fn seed_corpus(target: &str) -> Vec<Vec<u8>> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/corpus")
        .join(target);
    let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|d| d.filter_map(Result::ok).map(|e| e.path()).collect())
        .unwrap_or_default();
    paths.sort();
    paths.iter().filter_map(|p| std::fs::read(p).ok()).collect()
}

/// The inputs of a smoke run: the seed corpus, then `count` deterministic pseudo-random
/// inputs, half random bytes and half seeds with a few bytes changed, inserted or cut.
pub fn smoke_inputs(target: &str, count: usize) -> Vec<Vec<u8>> {
    let seeds = seed_corpus(target);
    let mut r = XorShift::new(0x5eed_f022 ^ target.len() as u64);
    let mut out = seeds.clone();
    for i in 0..count {
        let mut v = match seeds.get(r.below(seeds.len() as u64) as usize) {
            Some(seed) if i % 2 == 1 => seed.clone(),
            _ => (0..r.below(300)).map(|_| r.next_u64() as u8).collect(),
        };
        for _ in 0..=r.below(4) {
            let at = r.below(v.len() as u64 + 1) as usize;
            match r.below(6) {
                0 => v.insert(at, r.next_u64() as u8),
                1 => v.truncate(at),
                2 => {
                    // An interesting value: all ones, or a small number.
                    let b = if r.below(2) == 0 {
                        0xff
                    } else {
                        r.below(4) as u8
                    };
                    if let Some(x) = v.get_mut(at) {
                        *x = b;
                    }
                }
                _ => {
                    if let Some(x) = v.get_mut(at) {
                        *x ^= 1 << r.below(8);
                    }
                }
            }
        }
        out.push(v);
    }
    out
}

/// Runs `target_fn` on every smoke input of `target`; on a panic, fails naming the input.
pub fn smoke(target: &str, count: usize, target_fn: fn(&[u8])) {
    for (i, input) in smoke_inputs(target, count).iter().enumerate() {
        let slice: &[u8] = input;
        let outcome = std::panic::catch_unwind(|| target_fn(slice));
        if let Err(payload) = outcome {
            let hex: String = input.iter().map(|b| format!("{b:02x}")).collect();
            // The panic itself was printed above by the panic hook.
            eprintln!("{target}: smoke input {i} panicked; its bytes in hex: {hex}");
            std::panic::resume_unwind(payload);
        }
    }
}

#[cfg(test)]
mod tests {
    //! The seeds are built here and must equal the checked-in files
    //! (`VMM_UPDATE_FUZZ_SEEDS=1` rewrites them), and each seed must reach the code it is for.

    use super::*;

    /// Named seeds of one target.
    type Seeds = Vec<(&'static str, Vec<u8>)>;

    const NEXT: u8 = VRING_DESC_F_NEXT as u8;
    const WRITE: u8 = VRING_DESC_F_WRITE as u8;
    const INDIRECT: u8 = VRING_DESC_F_INDIRECT as u8;

    /// Encodes a queue: size exponent, descriptors (addr, len, flags, next), heads, payload.
    fn queue(size_exp: u8, descs: &[(u64, u32, u8, u8)], heads: &[u8], payload: &[u8]) -> Vec<u8> {
        let mut v = vec![size_exp, descs.len() as u8];
        for &(addr, len, flags, next) in descs {
            let mut f = flags;
            if addr > u64::from(u16::MAX) {
                f |= WIDE_ADDR;
            }
            if len > u32::from(u16::MAX) {
                f |= WIDE_LEN;
            }
            v.push(f);
            if f & WIDE_ADDR != 0 {
                v.extend_from_slice(&addr.to_le_bytes());
            } else {
                v.extend_from_slice(&(addr as u16).to_le_bytes());
            }
            if f & WIDE_LEN != 0 {
                v.extend_from_slice(&len.to_le_bytes());
            } else {
                v.extend_from_slice(&(len as u16).to_le_bytes());
            }
            v.push(next);
        }
        v.push(heads.len() as u8);
        v.extend_from_slice(heads);
        v.extend_from_slice(payload);
        v
    }

    fn blk_header(kind: u32, sector: u64) -> Vec<u8> {
        let mut h = vec![0u8; 16];
        h[..4].copy_from_slice(&kind.to_le_bytes());
        h[8..].copy_from_slice(&sector.to_le_bytes());
        h
    }

    /// Payload offsets as guest addresses.
    const fn at(off: u64) -> u64 {
        PAYLOAD + off
    }

    fn block_seeds() -> Seeds {
        let mut write = blk_header(1, 5);
        write.resize(0x100, 0);
        write.extend_from_slice(&[0xab; 512]);
        // Indirect: one descriptor pointing at a table of three in the payload.
        let mut indirect = blk_header(0, 1);
        indirect.resize(0x200, 0);
        for (addr, len, flags, next) in [
            (at(0), 16u32, NEXT, 1u16),
            (at(0x400), 512, NEXT | WRITE, 2),
            (at(0x800), 1, WRITE, 0),
        ] {
            let d = SplitDescriptor::new(addr, len, u16::from(flags), next);
            indirect.extend_from_slice(&u64::to_le_bytes(d.addr().0));
            indirect.extend_from_slice(&d.len().to_le_bytes());
            indirect.extend_from_slice(&d.flags().to_le_bytes());
            indirect.extend_from_slice(&d.next().to_le_bytes());
        }
        let mut flush_and_id = blk_header(4, 0);
        flush_and_id.resize(0x100, 0);
        flush_and_id.extend_from_slice(&blk_header(8, 0));
        vec![
            (
                "read",
                [2u8]
                    .into_iter()
                    .chain(queue(
                        4,
                        &[
                            (at(0), 16, NEXT, 1),
                            (at(0x100), 1024, NEXT | WRITE, 2),
                            (at(0x1000), 1, WRITE, 0),
                        ],
                        &[0],
                        &blk_header(0, 3),
                    ))
                    .collect(),
            ),
            (
                "write",
                [2u8]
                    .into_iter()
                    .chain(queue(
                        4,
                        &[
                            (at(0), 16, NEXT, 1),
                            (at(0x100), 512, NEXT, 2),
                            (at(0x1000), 1, WRITE, 0),
                        ],
                        &[0],
                        &write,
                    ))
                    .collect(),
            ),
            (
                "flush-and-get-id",
                [2u8]
                    .into_iter()
                    .chain(queue(
                        4,
                        &[
                            (at(0), 16, NEXT, 1),
                            (at(0x1000), 1, WRITE, 0),
                            (at(0x100), 16, NEXT, 3),
                            (at(0x200), 20, NEXT | WRITE, 4),
                            (at(0x1001), 1, WRITE, 0),
                        ],
                        &[0, 2],
                        &flush_and_id,
                    ))
                    .collect(),
            ),
            (
                "indirect-read",
                [0u8]
                    .into_iter()
                    .chain(queue(4, &[(at(0x200), 48, INDIRECT, 0)], &[0], &indirect))
                    .collect(),
            ),
        ]
    }

    fn rng_seeds() -> Seeds {
        vec![
            ("one-buffer", queue(4, &[(at(0), 64, WRITE, 0)], &[0], &[])),
            (
                "chain",
                queue(
                    4,
                    &[(at(0), 32, NEXT | WRITE, 1), (at(0x100), 32, WRITE, 0)],
                    &[0],
                    &[],
                ),
            ),
        ]
    }

    fn vsock_hdr(op: u16, src_port: u32, dst_port: u32, len: u32, flags: u32) -> Vec<u8> {
        Header {
            src_cid: GUEST_CID,
            dst_cid: packet::HOST_CID,
            src_port,
            dst_port,
            len,
            kind: packet::TYPE_STREAM,
            op,
            flags,
            buf_alloc: 1 << 16,
            fwd_cnt: 0,
        }
        .to_bytes()
        .to_vec()
    }

    /// A guest connection to the listening port: REQUEST, then data, then SHUTDOWN.
    fn vsock_guest_connects() -> Vec<u8> {
        let mut payload = vsock_hdr(op::REQUEST, 5000, LISTENING_PORT, 0, 0);
        payload.resize(0x40, 0);
        payload.extend_from_slice(&vsock_hdr(op::RW, 5000, LISTENING_PORT, 5, 0));
        payload.resize(0x80, 0);
        payload.extend_from_slice(b"hello");
        payload.resize(0xc0, 0);
        let flags = packet::SHUTDOWN_SEND;
        payload.extend_from_slice(&vsock_hdr(op::SHUTDOWN, 5000, LISTENING_PORT, 0, flags));
        [0u8]
            .into_iter()
            .chain(queue(
                4,
                &[
                    (at(0), HDR_LEN as u32, 0, 0),
                    (at(0x40), HDR_LEN as u32, NEXT, 2),
                    (at(0x80), 5, 0, 0),
                    (at(0xc0), HDR_LEN as u32, 0, 0),
                ],
                &[0, 1, 3],
                &payload,
            ))
            .collect()
    }

    /// A host process connects to guest port 52 and the guest accepts.
    fn vsock_host_connects() -> Vec<u8> {
        let line = b"CONNECT 52\nearly";
        let mut v = vec![line.len() as u8];
        v.extend_from_slice(line);
        let first_host_port = 1 << 30;
        v.extend(queue(
            4,
            &[(at(0), HDR_LEN as u32, 0, 0)],
            &[0],
            &vsock_hdr(op::RESPONSE, 52, first_host_port, 0, 0),
        ));
        v
    }

    fn vsock_tx_seeds() -> Seeds {
        let stray = [0u8]
            .into_iter()
            .chain(queue(
                4,
                &[(at(0), HDR_LEN as u32, 0, 0)],
                &[0],
                &vsock_hdr(op::RW, 7, 9999, 0, 0),
            ))
            .collect();
        vec![
            ("guest-connects", vsock_guest_connects()),
            ("host-connects", vsock_host_connects()),
            ("stray-packet", stray),
        ]
    }

    fn vsock_packet_seeds() -> Seeds {
        let mut rw = vsock_hdr(op::RW, 5000, 52, 3, 0);
        rw.extend_from_slice(b"abc");
        vec![
            ("request", vsock_hdr(op::REQUEST, 5000, 52, 0, 0)),
            ("rw", rw),
        ]
    }

    fn connect_line_seeds() -> Seeds {
        vec![
            ("connect", b"CONNECT 52\n".to_vec()),
            ("connect-crlf-early-data", b"CONNECT 1024\r\nabc".to_vec()),
        ]
    }

    fn net_seeds() -> Seeds {
        let mut tx = vec![0u8; 12];
        tx.resize(0x100, 0);
        tx.extend_from_slice(&[0xee; 1000]);
        vec![
            (
                // A 5000-byte frame over three of four 2 KiB mergeable buffers.
                "rx-mergeable",
                [3u8, 0x88, 0x13]
                    .into_iter()
                    .chain(queue(
                        4,
                        &[
                            (at(0), 2048, WRITE, 0),
                            (at(0x800), 2048, WRITE, 0),
                            (at(0x1000), 2048, WRITE, 0),
                            (at(0x1800), 2048, WRITE, 0),
                        ],
                        &[0, 1, 2, 3],
                        &[],
                    ))
                    .collect(),
            ),
            (
                // A 1500-byte frame into one 4 KiB buffer.
                "rx-one-buffer",
                [2u8, 0xdc, 0x05]
                    .into_iter()
                    .chain(queue(4, &[(at(0), 4096, WRITE, 0)], &[0], &[]))
                    .collect(),
            ),
            (
                // A header and 1000 bytes of frame in two buffers.
                "tx-frame",
                [0u8, 0, 0]
                    .into_iter()
                    .chain(queue(
                        4,
                        &[(at(0), 12, NEXT, 1), (at(0x100), 1000, 0, 0)],
                        &[0],
                        &tx,
                    ))
                    .collect(),
            ),
        ]
    }

    #[test]
    fn net_seeds_are_served() {
        let seeds: std::collections::HashMap<_, _> = net_seeds().into_iter().collect();
        let out = run_net(&seeds["rx-mergeable"]);
        assert_eq!(out.queue.used, vec![(0, 2048), (1, 2048), (2, 904)]);
        let mut hdr = [0u8; 12];
        out.queue
            .mem
            .read_slice(&mut hdr, GuestAddress(at(0)))
            .unwrap();
        assert_eq!(u16::from_le_bytes([hdr[10], hdr[11]]), 3, "num_buffers");
        let out = run_net(&seeds["rx-one-buffer"]);
        assert_eq!(out.queue.used, vec![(0, 1500)]);
        let out = run_net(&seeds["tx-frame"]);
        assert_eq!(out.queue.used, vec![(0, 0)]);
        assert_eq!(out.sent.len(), 1);
        assert_eq!(out.sent[0].len(), 1012);
        assert!(out.sent[0][12..].iter().all(|b| *b == 0xee));
        // Without mergeable buffers a frame larger than the one buffer is dropped.
        let mut big = seeds["rx-mergeable"].clone();
        big[0] = 2;
        assert_eq!(run_net(&big).queue.used, vec![(0, 0)]);
    }

    fn all_seeds() -> Vec<(&'static str, Seeds)> {
        vec![
            ("block_request", block_seeds()),
            ("net_queue", net_seeds()),
            ("rng_queue", rng_seeds()),
            ("vsock_tx", vsock_tx_seeds()),
            ("vsock_packet", vsock_packet_seeds()),
            ("vsock_connect_line", connect_line_seeds()),
        ]
    }

    #[test]
    fn the_checked_in_seeds_are_the_encoded_ones() {
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus");
        let update = std::env::var_os("VMM_UPDATE_FUZZ_SEEDS").is_some();
        for (target, seeds) in all_seeds() {
            let dir = root.join(target);
            for (name, bytes) in seeds {
                let path = dir.join(name);
                if update {
                    std::fs::create_dir_all(&dir).unwrap();
                    std::fs::write(&path, &bytes).unwrap();
                }
                let on_disk =
                    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
                assert_eq!(on_disk, bytes, "{} is stale", path.display());
            }
        }
    }

    fn status(mem: &GuestMemoryMmap, addr: u64) -> u8 {
        mem.read_obj(GuestAddress(addr)).unwrap()
    }

    #[test]
    fn block_seeds_are_served() {
        let seeds: std::collections::HashMap<_, _> = block_seeds().into_iter().collect();
        let out = run_block(&seeds["read"]);
        assert_eq!(out.used, vec![(0, 1025)]);
        assert_eq!(status(&out.mem, at(0x1000)), 0, "read OK");
        let out = run_block(&seeds["write"]);
        assert_eq!(
            (out.used.clone(), status(&out.mem, at(0x1000))),
            (vec![(0, 1)], 0)
        );
        let out = run_block(&seeds["flush-and-get-id"]);
        assert_eq!(out.used, vec![(0, 1), (2, 21)]);
        assert_eq!(
            (status(&out.mem, at(0x1000)), status(&out.mem, at(0x1001))),
            (0, 0)
        );
        let mut id = [0u8; 4];
        out.mem
            .read_slice(&mut id, GuestAddress(at(0x200)))
            .unwrap();
        assert_eq!(&id, b"fuzz");
        let out = run_block(&seeds["indirect-read"]);
        assert_eq!(out.used, vec![(0, 513)]);
        assert_eq!(status(&out.mem, at(0x800)), 0);
        // Read-only: the same write is refused.
        let mut ro = seeds["write"].clone();
        ro[0] |= 1;
        let out = run_block(&ro);
        assert_eq!(status(&out.mem, at(0x1000)), 1, "IOERR");
    }

    #[test]
    fn rng_seeds_are_served() {
        for (name, seed) in rng_seeds() {
            let mut dev = Rng::new();
            let out = run_queue(&mut Input(&seed), |q, mem| {
                dev.process_queue(0, q, mem);
            });
            assert_eq!(out.used, vec![(0, 64)], "{name}");
        }
    }

    fn rx_headers(out: &VsockOutcome) -> Vec<Header> {
        out.rx
            .iter()
            .map(|&(id, len)| {
                assert!(len as usize >= HDR_LEN, "a whole header");
                let mut b = [0u8; HDR_LEN];
                let addr = RX_BUFFERS + u64::from(id) * u64::from(RX_BUFFER_LEN);
                out.tx.mem.read_slice(&mut b, GuestAddress(addr)).unwrap();
                Header::from_bytes(&b)
            })
            .collect()
    }

    #[test]
    fn vsock_seeds_reach_connections() {
        let out = run_vsock(&vsock_guest_connects());
        assert_eq!(out.tx.used.len(), 3);
        let ops: Vec<u16> = rx_headers(&out).iter().map(|h| h.op).collect();
        assert_eq!(
            ops,
            vec![op::RESPONSE],
            "the guest's connection is accepted"
        );

        let out = run_vsock(&vsock_host_connects());
        assert_eq!(out.tx.used.len(), 1);
        let got: Vec<(u16, u32)> = rx_headers(&out)
            .iter()
            .map(|h| (h.op, h.dst_port))
            .collect();
        // The REQUEST was still owed when the guest's RESPONSE came; then the early bytes.
        assert_eq!(got, vec![(op::REQUEST, 52), (op::RW, 52)]);
        let (id, len) = out.rx[1];
        let mut early = vec![0u8; len as usize - HDR_LEN];
        let addr = RX_BUFFERS + u64::from(id) * u64::from(RX_BUFFER_LEN) + HDR_LEN as u64;
        out.tx
            .mem
            .read_slice(&mut early, GuestAddress(addr))
            .unwrap();
        assert_eq!(early, b"early");

        let stray = &vsock_tx_seeds()[2].1;
        let out = run_vsock(stray);
        let ops: Vec<u16> = rx_headers(&out).iter().map(|h| h.op).collect();
        assert_eq!(ops, vec![op::RST]);
    }

    #[test]
    fn vsock_leaves_no_socket_files() {
        for (_, seed) in vsock_tx_seeds() {
            let out = run_vsock(&seed);
            let mut port = out.uds.clone().into_os_string();
            port.push(format!("_{LISTENING_PORT}"));
            for p in [out.uds, PathBuf::from(port)] {
                assert!(!p.exists(), "{} is left behind", p.display());
            }
        }
    }

    #[test]
    fn short_and_empty_inputs_are_harmless() {
        for data in [&b""[..], &[0xff], &[0xff; 8]] {
            block_queue(data);
            net_queue(data);
            rng_queue(data);
            vsock_tx(data);
            vsock_packet(data);
            vsock_connect_line(data);
        }
    }

    #[test]
    fn smoke_block() {
        smoke("block_request", 2000, block_queue);
    }

    #[test]
    fn smoke_net() {
        smoke("net_queue", 2000, net_queue);
    }

    #[test]
    fn smoke_rng() {
        smoke("rng_queue", 2000, rng_queue);
    }

    #[test]
    fn smoke_vsock_tx() {
        smoke("vsock_tx", 2000, vsock_tx);
    }

    #[test]
    fn smoke_vsock_parsers() {
        smoke("vsock_packet", 2000, vsock_packet);
        smoke("vsock_connect_line", 2000, vsock_connect_line);
    }
}
