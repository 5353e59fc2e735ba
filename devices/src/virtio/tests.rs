//! A hostile guest against the virtio devices and the transport, with virtio-queue's mock
//! driver: loops, overflow, buffers outside memory, wrong directions, oversized requests,
//! queue sizes that are not powers of two, and notifications before DRIVER_OK.

use crate::GuestRam;
use std::io::Write;

use virtio_bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::Queue;
use virtio_queue::desc::{RawDescriptor, split::Descriptor as SplitDescriptor};
use virtio_queue::mock::MockSplitQueue;
use vm_memory::{Bytes, GuestAddress};

use super::block::{Block, BlockConfig, CacheType};
use super::mmio::{MmioTransport, status};
use super::rng::Rng;
use super::{VIRTIO_F_VERSION_1, VirtioDevice};
use crate::bus::MmioDevice;
use crate::irq::IrqLine;

mod snapshot;

const MEM: u64 = 0x10_0000;
const DATA: u64 = 0x4_0000;

fn mem() -> GuestRam {
    GuestRam::from_ranges(&[(GuestAddress(0), MEM as usize)]).unwrap()
}

/// Adds one chain of (addr, len, device-writes) descriptors at table index `at`.
fn add_chain(q: &MockSplitQueue<'_, GuestRam>, at: u16, descs: &[(u64, u32, bool)]) {
    let raw: Vec<RawDescriptor> = descs
        .iter()
        .enumerate()
        .map(|(i, (addr, len, write))| {
            let mut flags = 0u16;
            if *write {
                flags |= VRING_DESC_F_WRITE as u16;
            }
            if i + 1 < descs.len() {
                flags |= VRING_DESC_F_NEXT as u16;
            }
            RawDescriptor::from(SplitDescriptor::new(*addr, *len, flags, at + i as u16 + 1))
        })
        .collect();
    q.add_desc_chains(&raw, at).unwrap();
}

fn used(q: &MockSplitQueue<'_, GuestRam>) -> Vec<(u32, u32)> {
    let n = q.used().idx().load();
    (0..n)
        .map(|i| q.used().ring().ref_at(i as usize).unwrap().load())
        .map(|e| (e.id(), e.len()))
        .collect()
}

fn image(tag: &str, sectors: u64) -> std::path::PathBuf {
    let p = std::env::temp_dir().join(format!("vmm-blk-{tag}-{}", std::process::id()));
    let mut f = std::fs::File::create(&p).unwrap();
    for s in 0..sectors {
        f.write_all(&[s as u8; 512]).unwrap();
    }
    p
}

fn block(tag: &str, read_only: bool) -> (Block, std::path::PathBuf) {
    let path = image(tag, 64);
    let b = Block::new(BlockConfig {
        id: "rootfs".into(),
        path: path.clone(),
        read_only,
        cache: CacheType::Writeback,
        rate_limiter: None,
    })
    .unwrap();
    (b, path)
}

fn header(m: &GuestRam, at: u64, kind: u32, sector: u64) {
    let mut h = [0u8; 16];
    h[..4].copy_from_slice(&kind.to_le_bytes());
    h[8..].copy_from_slice(&sector.to_le_bytes());
    m.write_slice(&h, GuestAddress(at)).unwrap();
}

fn status_byte(m: &GuestRam, at: u64) -> u8 {
    m.read_obj(GuestAddress(at)).unwrap()
}

#[test]
fn block_reads_and_writes_the_image() {
    let m = mem();
    let (mut b, path) = block("rw", false);
    let mq = MockSplitQueue::create(&m, GuestAddress(0), 16);
    header(&m, DATA, 0, 3); // IN, sector 3
    add_chain(
        &mq,
        0,
        &[
            (DATA, 16, false),
            (DATA + 0x100, 1024, true),
            (DATA + 0x1000, 1, true),
        ],
    );
    header(&m, DATA + 0x2000, 1, 5); // OUT, sector 5
    m.write_slice(&[0xab; 512], GuestAddress(DATA + 0x3000))
        .unwrap();
    add_chain(
        &mq,
        3,
        &[
            (DATA + 0x2000, 16, false),
            (DATA + 0x3000, 512, false),
            (DATA + 0x4000, 1, true),
        ],
    );
    let mut q: Queue = mq.create_queue().unwrap();
    assert!(b.process_queue(0, &mut q, &m));
    assert_eq!(used(&mq), vec![(0, 1025), (3, 1)]);
    let stats = b.metrics();
    for want in [
        ("read_count", 1),
        ("read_bytes", 1024),
        ("write_count", 1),
        ("write_bytes", 512),
    ] {
        assert!(stats.contains(&want), "{want:?} in {stats:?}");
    }
    let mut got = [0u8; 1024];
    m.read_slice(&mut got, GuestAddress(DATA + 0x100)).unwrap();
    assert!(got[..512].iter().all(|b| *b == 3) && got[512..].iter().all(|b| *b == 4));
    assert_eq!(
        (
            status_byte(&m, DATA + 0x1000),
            status_byte(&m, DATA + 0x4000)
        ),
        (0, 0)
    );
    let file = std::fs::read(&path).unwrap();
    assert!(file[5 * 512..6 * 512].iter().all(|b| *b == 0xab));
    std::fs::remove_file(path).unwrap();
}

#[test]
fn read_only_drives_refuse_writes() {
    let m = mem();
    let (mut b, path) = block("ro", true);
    assert_ne!(
        b.avail_features() & (1 << 5),
        0,
        "VIRTIO_BLK_F_RO is offered"
    );
    let mq = MockSplitQueue::create(&m, GuestAddress(0), 16);
    header(&m, DATA, 1, 0);
    add_chain(
        &mq,
        0,
        &[
            (DATA, 16, false),
            (DATA + 0x100, 512, false),
            (DATA + 0x1000, 1, true),
        ],
    );
    let mut q: Queue = mq.create_queue().unwrap();
    b.process_queue(0, &mut q, &m);
    assert_eq!(status_byte(&m, DATA + 0x1000), 1, "IOERR");
    assert!(b.metrics().contains(&("invalid_reqs_count", 1)));
    assert!(b.metrics().contains(&("write_count", 0)));
    assert!(
        std::fs::read(&path).unwrap()[..512].iter().all(|b| *b == 0),
        "the image is unchanged"
    );
    std::fs::remove_file(path).unwrap();
}

#[test]
fn bad_requests_get_ioerr_and_nothing_breaks() {
    let m = mem();
    let (mut b, path) = block("bad", false);
    let mq = MockSplitQueue::create(&m, GuestAddress(0), 32);
    // Past the end of the image (64 sectors).
    header(&m, DATA, 0, 64);
    add_chain(
        &mq,
        0,
        &[
            (DATA, 16, false),
            (DATA + 0x100, 512, true),
            (DATA + 0x1000, 1, true),
        ],
    );
    // Sector number that overflows when multiplied.
    header(&m, DATA + 0x2000, 0, u64::MAX / 2);
    add_chain(
        &mq,
        3,
        &[
            (DATA + 0x2000, 16, false),
            (DATA + 0x100, 512, true),
            (DATA + 0x1001, 1, true),
        ],
    );
    // Data buffer outside guest memory.
    header(&m, DATA + 0x3000, 0, 0);
    add_chain(
        &mq,
        6,
        &[
            (DATA + 0x3000, 16, false),
            (MEM - 256, 512, true),
            (DATA + 0x1002, 1, true),
        ],
    );
    // Wrong direction: a read into a buffer the device may not write.
    header(&m, DATA + 0x4000, 0, 0);
    add_chain(
        &mq,
        9,
        &[
            (DATA + 0x4000, 16, false),
            (DATA + 0x100, 512, false),
            (DATA + 0x1003, 1, true),
        ],
    );
    // Short header.
    add_chain(
        &mq,
        12,
        &[(DATA + 0x5000, 8, false), (DATA + 0x1004, 1, true)],
    );
    // No writable status byte: completed with nothing written.
    add_chain(
        &mq,
        14,
        &[(DATA + 0x6000, 16, false), (DATA + 0x1005, 1, false)],
    );
    // Unknown type.
    header(&m, DATA + 0x7000, 77, 0);
    add_chain(
        &mq,
        16,
        &[(DATA + 0x7000, 16, false), (DATA + 0x1006, 1, true)],
    );
    // Oversized: buffers adding up to more than the device serves.
    header(&m, DATA + 0x8000, 0, 0);
    add_chain(
        &mq,
        18,
        &[
            (DATA + 0x8000, 16, false),
            (0, u32::MAX, true),
            (0, u32::MAX, true),
            (DATA + 0x1007, 1, true),
        ],
    );
    m.write_slice(&[0xff; 8], GuestAddress(DATA + 0x1000))
        .unwrap();
    let mut q: Queue = mq.create_queue().unwrap();
    b.process_queue(0, &mut q, &m);
    let statuses: Vec<u8> = (0..8).map(|i| status_byte(&m, DATA + 0x1000 + i)).collect();
    assert_eq!(statuses, vec![1, 1, 1, 1, 1, 0xff, 2, 0xff]);
    assert_eq!(used(&mq).len(), 8, "every chain is completed");
    std::fs::remove_file(path).unwrap();
}

#[test]
fn a_looping_chain_ends() {
    let m = mem();
    let (mut b, path) = block("loop", false);
    let mq = MockSplitQueue::create(&m, GuestAddress(0), 8);
    header(&m, DATA, 0, 0);
    // Each descriptor points at itself as next.
    let raw = RawDescriptor::from(SplitDescriptor::new(DATA, 16, VRING_DESC_F_NEXT as u16, 0));
    mq.add_desc_chains(&[raw], 0).unwrap();
    let mut q: Queue = mq.create_queue().unwrap();
    b.process_queue(0, &mut q, &m);
    assert_eq!(used(&mq).len(), 1);
    std::fs::remove_file(path).unwrap();
}

#[test]
fn get_id_returns_the_drive_id() {
    let m = mem();
    let (mut b, path) = block("id", false);
    let mq = MockSplitQueue::create(&m, GuestAddress(0), 8);
    header(&m, DATA, 8, 0);
    add_chain(
        &mq,
        0,
        &[
            (DATA, 16, false),
            (DATA + 0x100, 20, true),
            (DATA + 0x1000, 1, true),
        ],
    );
    let mut q: Queue = mq.create_queue().unwrap();
    b.process_queue(0, &mut q, &m);
    let mut id = [0u8; 20];
    m.read_slice(&mut id, GuestAddress(DATA + 0x100)).unwrap();
    assert_eq!(&id[..6], b"rootfs");
    assert_eq!(used(&mq), vec![(0, 21)]);
    std::fs::remove_file(path).unwrap();
}

#[test]
fn rng_fills_writable_buffers_only() {
    let m = mem();
    let mq = MockSplitQueue::create(&m, GuestAddress(0), 8);
    add_chain(&mq, 0, &[(DATA, 4096, true)]);
    add_chain(&mq, 1, &[(DATA + 0x2000, 64, false)]);
    add_chain(&mq, 2, &[(MEM - 16, 4096, true)]);
    let mut q: Queue = mq.create_queue().unwrap();
    let mut rng = Rng::new();
    assert!(rng.process_queue(0, &mut q, &m));
    assert_eq!(used(&mq), vec![(0, 4096), (1, 0), (2, 0)]);
    let mut buf = [0u8; 4096];
    m.read_slice(&mut buf, GuestAddress(DATA)).unwrap();
    assert!(
        buf.iter().filter(|b| **b == 0).count() < 100,
        "random, not zeros"
    );
}

/// Drives the transport's registers as a guest driver would.
fn write_reg(t: &mut MmioTransport, off: u64, v: u32) {
    t.write(off, &v.to_le_bytes());
}

fn read_reg(t: &mut MmioTransport, off: u64) -> u32 {
    let mut b = [0u8; 4];
    t.read(off, &mut b);
    u32::from_le_bytes(b)
}

fn setup_queue(t: &mut MmioTransport, mq: &MockSplitQueue<'_, GuestRam>, size: u32) {
    write_reg(t, 0x30, 0);
    write_reg(t, 0x38, size);
    write_reg(t, 0x80, mq.desc_table_addr().0 as u32);
    write_reg(t, 0x90, mq.avail_addr().0 as u32);
    write_reg(t, 0xa0, mq.used_addr().0 as u32);
    write_reg(t, 0x44, 1);
}

fn handshake(t: &mut MmioTransport, features_hi: u32) {
    write_reg(t, 0x70, status::ACKNOWLEDGE | status::DRIVER);
    write_reg(t, 0x24, 1);
    write_reg(t, 0x20, features_hi);
    write_reg(
        t,
        0x70,
        status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK,
    );
}

#[test]
fn transport_identifies_and_negotiates() {
    let m = mem();
    let mut t =
        MmioTransport::new(Box::new(Rng::new()), m.clone(), IrqLine::new().unwrap()).unwrap();
    assert_eq!(read_reg(&mut t, 0), 0x7472_6976);
    assert_eq!(read_reg(&mut t, 4), 2);
    assert_eq!(read_reg(&mut t, 8), 4);
    write_reg(&mut t, 0x14, 1);
    assert_eq!(u64::from(read_reg(&mut t, 0x10)) << 32, VIRTIO_F_VERSION_1);
    // A driver that does not accept VERSION_1 does not get FEATURES_OK.
    handshake(&mut t, 0);
    assert_eq!(read_reg(&mut t, 0x70) & status::FEATURES_OK, 0);
    write_reg(&mut t, 0x70, 0);
    assert_eq!(read_reg(&mut t, 0x70), 0, "reset");
    handshake(&mut t, 1);
    assert_ne!(read_reg(&mut t, 0x70) & status::FEATURES_OK, 0);
    assert_eq!(t.acked_features(), VIRTIO_F_VERSION_1);
}

#[test]
fn notifications_before_driver_ok_are_ignored_and_served_after() {
    let m = mem();
    let mq = MockSplitQueue::create(&m, GuestAddress(0), 16);
    let mut t =
        MmioTransport::new(Box::new(Rng::new()), m.clone(), IrqLine::new().unwrap()).unwrap();
    handshake(&mut t, 1);
    setup_queue(&mut t, &mq, 16);
    add_chain(&mq, 0, &[(DATA, 64, true)]);
    t.process(0);
    assert!(used(&mq).is_empty(), "nothing before DRIVER_OK");
    write_reg(
        &mut t,
        0x70,
        status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK | status::DRIVER_OK,
    );
    assert!(t.is_activated());
    t.process(0);
    assert_eq!(used(&mq), vec![(0, 64)]);
    assert_eq!(read_reg(&mut t, 0x60), 1, "used-buffer interrupt");
    write_reg(&mut t, 0x64, 1);
    assert_eq!(read_reg(&mut t, 0x60), 0);
    t.process(7); // a queue that does not exist
}

#[test]
fn a_queue_size_that_is_not_a_power_of_two_is_refused() {
    let m = mem();
    let mq = MockSplitQueue::create(&m, GuestAddress(0), 16);
    let mut t =
        MmioTransport::new(Box::new(Rng::new()), m.clone(), IrqLine::new().unwrap()).unwrap();
    handshake(&mut t, 1);
    setup_queue(&mut t, &mq, 12);
    write_reg(
        &mut t,
        0x70,
        status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK | status::DRIVER_OK,
    );
    assert!(!t.is_activated());
    assert_ne!(read_reg(&mut t, 0x70) & status::DEVICE_NEEDS_RESET, 0);
    add_chain(&mq, 0, &[(DATA, 64, true)]);
    t.process(0);
    assert!(used(&mq).is_empty());
}

#[test]
fn odd_register_accesses_are_harmless() {
    let m = mem();
    let mut t = MmioTransport::new(Box::new(Rng::new()), m, IrqLine::new().unwrap()).unwrap();
    let mut one = [0u8; 1];
    t.read(0, &mut one);
    t.write(0x70, &[1]);
    write_reg(&mut t, 0x30, 99); // a queue that does not exist
    assert_eq!(read_reg(&mut t, 0x34), 0);
    write_reg(&mut t, 0x38, 8);
    write_reg(&mut t, 0x50, 99);
    let mut cfg = [0xffu8; 8];
    t.read(0x100, &mut cfg);
    t.write(0x1000, &[0; 4]);
}

#[test]
fn a_rate_limited_device_puts_requests_back_and_says_when_to_retry() {
    use crate::rate_limiter::{RateLimiter, TokenBucket};
    let m = mem();
    let now = std::time::Instant::now();
    let limiter = RateLimiter {
        bandwidth: Some(TokenBucket::new(
            4096,
            0,
            std::time::Duration::from_secs(1),
            now,
        )),
        ops: None,
    };
    let mq = MockSplitQueue::create(&m, GuestAddress(0), 8);
    add_chain(&mq, 0, &[(DATA, 4096, true)]);
    add_chain(&mq, 1, &[(DATA + 0x2000, 4096, true)]);
    let mut q: Queue = mq.create_queue().unwrap();
    let mut rng = Rng::with_limiter(limiter);
    assert!(rng.process_queue(0, &mut q, &m));
    assert_eq!(used(&mq), vec![(0, 4096)], "the second request waits");
    let wait = rng.retry_after().expect("a retry time");
    // From the bucket's arithmetic alone: a 4096-token deficit in a 4096-token, 1 s bucket
    // is at most a full refill away, and at least what is left of it since `now`. No
    // bound depends on how fast this machine runs the test.
    let since = now.elapsed();
    assert!(
        wait <= std::time::Duration::from_secs(1) + std::time::Duration::from_nanos(1),
        "{wait:?}"
    );
    assert!(
        wait + since >= std::time::Duration::from_secs(1),
        "{wait:?} + {since:?}"
    );
    assert_eq!(rng.retry_after(), None, "taken once");
    // Still throttled right away: nothing more is served and the request stays queued.
    assert!(!rng.process_queue(0, &mut q, &m));
    assert_eq!(used(&mq).len(), 1);
}

#[test]
fn the_device_thread_retries_a_throttled_queue_on_its_timer() {
    use crate::rate_limiter::{RateLimiter, TokenBucket};
    use crate::virtio::mmio::QueueEvents;
    use event_manager::{EventManager, SubscriberOps};
    use std::sync::{Arc, Mutex};
    let m = mem();
    let now = std::time::Instant::now();
    let limiter = RateLimiter {
        bandwidth: Some(TokenBucket::new(
            4096,
            0,
            std::time::Duration::from_millis(200),
            now,
        )),
        ops: None,
    };
    let mq = MockSplitQueue::create(&m, GuestAddress(0), 8);
    let mut t = MmioTransport::new(
        Box::new(Rng::with_limiter(limiter)),
        m.clone(),
        IrqLine::new().unwrap(),
    )
    .unwrap();
    handshake(&mut t, 1);
    setup_queue(&mut t, &mq, 8);
    write_reg(
        &mut t,
        0x70,
        status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK | status::DRIVER_OK,
    );
    for i in 0..3 {
        add_chain(&mq, i, &[(DATA + u64::from(i) * 0x2000, 4096, true)]);
    }
    let kick = t.queue_evts()[0].try_clone().unwrap();
    let t = Arc::new(Mutex::new(t));
    let mut em: EventManager<QueueEvents> = EventManager::new().unwrap();
    em.add_subscriber(QueueEvents::new(t.clone()).unwrap());
    kick.write(1).unwrap();
    // Not a timing assertion: the deadline only turns a hang into a failure.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let mut served = Vec::new();
    while used(&mq).len() < 3 {
        assert!(
            std::time::Instant::now() < deadline,
            "throttled requests were never retried: {:?}",
            used(&mq)
        );
        let before = used(&mq).len();
        em.run_with_timeout(50).unwrap();
        let after = used(&mq).len();
        if after > before {
            served.push(after - before);
        }
    }
    // The bucket holds 4096 tokens, one request's worth, however long a pass was delayed:
    // every pass serves at most one request, so the three went out in three passes, the
    // last two on the retry timer.
    assert_eq!(served, vec![1, 1, 1]);
}

/// A small deterministic generator, so a failure repeats.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// Random descriptor tables and rings, inside and outside guest memory, with random flags
/// (NEXT, WRITE, INDIRECT) and links: the devices must neither panic nor loop forever.
#[test]
fn random_rings_never_break_a_device() {
    use virtio_bindings::virtio_ring::VRING_DESC_F_INDIRECT;
    let m = mem();
    let (mut blk, path) = block("random", false);
    let mut rng_dev = Rng::new();
    let mut r = XorShift(0x5eed_1234_abcd_0001);
    let mut served = 0u64;
    for round in 0..3000 {
        let mq = MockSplitQueue::create(&m, GuestAddress(0), 16);
        let chains = 1 + r.next() % 4;
        for c in 0..chains as u16 {
            let len = 1 + (r.next() % 5) as u16;
            for i in 0..len {
                let addr = match r.next() % 4 {
                    0 => r.next(),                   // anywhere at all
                    1 => MEM - (r.next() % 64),      // straddling the end
                    _ => DATA + (r.next() % 0x8000), // inside memory
                };
                let dlen = match r.next() % 4 {
                    0 => r.next() as u32,
                    _ => (r.next() % 4096) as u32,
                };
                let mut flags = (r.next() % 8) as u16
                    & (VRING_DESC_F_NEXT | VRING_DESC_F_WRITE | VRING_DESC_F_INDIRECT) as u16;
                if i + 1 == len && r.next() % 2 == 0 {
                    flags &= !(VRING_DESC_F_NEXT as u16);
                }
                let next = (r.next() % 20) as u16;
                let raw = RawDescriptor::from(SplitDescriptor::new(addr, dlen, flags, next));
                mq.desc_table().store((c * 4 + i) % 16, raw).unwrap();
            }
            // Random headers in the data area.
            let mut junk = [0u8; 64];
            junk.iter_mut().for_each(|b| *b = r.next() as u8);
            m.write_slice(&junk, GuestAddress(DATA + (r.next() % 0x7000)))
                .unwrap();
            let slot = mq.avail().idx().load();
            let head = if r.next() % 8 == 0 {
                (r.next() % 40) as u16
            } else {
                (c * 4) % 16
            };
            mq.avail()
                .ring()
                .ref_at(usize::from(slot % 16))
                .unwrap()
                .store(head);
            mq.avail().idx().store(slot.wrapping_add(1));
        }
        let mut q: Queue = mq.create_queue().unwrap();
        if round % 2 == 0 {
            blk.process_queue(0, &mut q, &m);
        } else {
            rng_dev.process_queue(0, &mut q, &m);
        }
        served += u64::from(mq.used().idx().load());
    }
    assert!(
        served > 3000,
        "only {served} chains were served: the generator is too tame"
    );
    std::fs::remove_file(path).unwrap();
}

#[test]
fn event_indices_suppress_interrupts_until_the_drivers_used_event() {
    let m = mem();
    let size = 16u16;
    let mq = MockSplitQueue::create(&m, GuestAddress(0), size);
    // The mock's used ring overlaps the avail ring's used_event field; use a ring of our own.
    let used_ring = 0x3000u64;
    let used_idx = |m: &GuestRam| -> u16 { m.read_obj(GuestAddress(used_ring + 2)).unwrap() };
    let used_event = mq.avail_addr().0 + 4 + 2 * u64::from(size);
    let avail_event = used_ring + 4 + 8 * u64::from(size);
    let mut t =
        MmioTransport::new(Box::new(Rng::new()), m.clone(), IrqLine::new().unwrap()).unwrap();
    write_reg(&mut t, 0x14, 0);
    assert_ne!(read_reg(&mut t, 0x10) & (1 << 29), 0, "EVENT_IDX offered");
    write_reg(&mut t, 0x70, status::ACKNOWLEDGE | status::DRIVER);
    write_reg(&mut t, 0x24, 0);
    write_reg(&mut t, 0x20, 1 << 29);
    handshake(&mut t, 1);
    setup_queue(&mut t, &mq, u32::from(size));
    write_reg(&mut t, 0x44, 0);
    write_reg(&mut t, 0xa0, used_ring as u32);
    write_reg(&mut t, 0x44, 1);
    write_reg(
        &mut t,
        0x70,
        status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK | status::DRIVER_OK,
    );
    assert!(t.is_activated());
    // The driver wants an interrupt once the used index passes 1.
    m.write_obj(1u16, GuestAddress(used_event)).unwrap();
    add_chain(&mq, 0, &[(DATA, 64, true)]);
    t.process(0);
    assert_eq!(used_idx(&m), 1);
    assert_eq!(
        read_reg(&mut t, 0x60),
        0,
        "no interrupt before the used event"
    );
    let ev: u16 = m.read_obj(GuestAddress(avail_event)).unwrap();
    assert_eq!(ev, 1, "the driver is asked to notify at the next entry");
    add_chain(&mq, 1, &[(DATA + 0x1000, 64, true)]);
    t.process(0);
    assert_eq!(used_idx(&m), 2);
    assert_eq!(read_reg(&mut t, 0x60), 1, "interrupt at the used event");
    let ev: u16 = m.read_obj(GuestAddress(avail_event)).unwrap();
    assert_eq!(ev, 2);
}

#[test]
fn a_request_over_scattered_buffers_moves_in_order() {
    let m = mem();
    let (mut b, path) = block("scatter", false);
    let mq = MockSplitQueue::create(&m, GuestAddress(0), 16);
    // Write sectors 10..13 from three buffers out of address order, then read them back
    // into three others.
    header(&m, DATA, 1, 10);
    for (i, at) in [0x3000u64, 0x1000, 0x2000].iter().enumerate() {
        m.write_slice(&[0x10 + i as u8; 512], GuestAddress(DATA + at))
            .unwrap();
    }
    add_chain(
        &mq,
        0,
        &[
            (DATA, 16, false),
            (DATA + 0x3000, 512, false),
            (DATA + 0x1000, 512, false),
            (DATA + 0x2000, 512, false),
            (DATA + 0x4000, 1, true),
        ],
    );
    header(&m, DATA + 0x5000, 0, 10);
    add_chain(
        &mq,
        5,
        &[
            (DATA + 0x5000, 16, false),
            (DATA + 0x8000, 700, true),
            (DATA + 0x6000, 824, true),
            (DATA + 0x7000, 1, true),
        ],
    );
    let mut q: Queue = mq.create_queue().unwrap();
    assert!(b.process_queue(0, &mut q, &m));
    assert_eq!(used(&mq), vec![(0, 1), (5, 1525)]);
    let file = std::fs::read(&path).unwrap();
    let want: Vec<u8> = [0x10u8, 0x11, 0x12]
        .iter()
        .flat_map(|v| [*v; 512])
        .collect();
    assert_eq!(file[10 * 512..13 * 512], want[..]);
    let mut got = vec![0u8; 1524];
    m.read_slice(&mut got[..700], GuestAddress(DATA + 0x8000))
        .unwrap();
    m.read_slice(&mut got[700..], GuestAddress(DATA + 0x6000))
        .unwrap();
    assert_eq!(got[..], want[..1524]);
    std::fs::remove_file(path).unwrap();
}
