//! Saving and restoring the virtio devices and their transport: every device goes through the
//! same round trip (save, restore into a freshly built device, save again, equal), then shows
//! it behaves as before; bad sections are refused and change nothing.

use std::time::{Duration, Instant};

use migration::state::{Section, StateError, Stateful, decode, encode};
use virtio_queue::mock::MockSplitQueue;
use vm_memory::{Bytes, GuestAddress};

use super::{DATA, MEM};
use super::{add_chain, handshake, header, image, mem, read_reg, setup_queue, used, write_reg};
use crate::GuestRam;
use crate::irq::IrqLine;
use crate::rate_limiter::{RateLimiter, TokenBucket};
use crate::state::testing::{refuses, refuses_newer, round_trip};
use crate::virtio::block::{Block, BlockConfig, BlockState, CacheType};
use crate::virtio::mmio::{MmioTransport, MmioTransportState, status};
use crate::virtio::net::{Net, NetConfig, NetState, Tap, feature};
use crate::virtio::rng::Rng;
use crate::virtio::{VIRTIO_F_VERSION_1, VirtioDevice};

const DAY: Duration = Duration::from_secs(86_400);
const DRIVER_OK: u32 =
    status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK | status::DRIVER_OK;

/// A limiter whose buckets refill so slowly that no token arrives during a test.
fn limiter() -> RateLimiter {
    let now = Instant::now();
    RateLimiter {
        bandwidth: Some(TokenBucket::new(1 << 20, 4096, DAY, now)),
        ops: Some(TokenBucket::new(100, 0, DAY, now)),
    }
}

fn drive(path: &std::path::Path, limit: bool) -> Block {
    Block::new(BlockConfig {
        id: "rootfs".into(),
        path: path.to_path_buf(),
        read_only: false,
        cache: CacheType::Writeback,
        rate_limiter: limit.then(limiter),
    })
    .unwrap()
}

fn transport(dev: Box<dyn VirtioDevice>, m: &GuestRam) -> MmioTransport {
    MmioTransport::new(dev, m.clone(), IrqLine::new().unwrap()).unwrap()
}

/// A block read of `sector` into a 512-byte buffer, at table index `at`.
fn read_request(m: &GuestRam, mq: &MockSplitQueue<'_, GuestRam>, at: u16, sector: u64) {
    let base = DATA + u64::from(at) * 0x1000;
    header(m, base, 0, sector);
    add_chain(
        mq,
        at,
        &[
            (base, 16, false),
            (base + 0x100, 512, true),
            (base + 0x400, 1, true),
        ],
    );
}

#[test]
fn block_round_trips_and_its_limiter_keeps_its_budget() {
    let path = image("snap-rt", 64);
    let mut a = drive(&path, true);
    let m = mem();
    let mq = MockSplitQueue::create(&m, GuestAddress(0), 16);
    read_request(&m, &mq, 0, 1);
    let mut q = mq.create_queue().unwrap();
    assert!(a.process_queue(0, &mut q, &m), "one op of the 100 spent");
    let mut b = drive(&path, false);
    let s = round_trip(&a, &mut b);
    assert_eq!(s.name, "virtio/rootfs/device");
    let st: BlockState = decode(&s).unwrap();
    assert_eq!(
        (st.capacity, st.read_only, st.cache),
        (64, false, CacheType::Writeback)
    );
    let ops = st.rate_limiter.unwrap().ops.unwrap();
    assert_eq!(ops.budget, 99);
    assert_eq!(b.avail_features(), a.avail_features());
    refuses_newer(&a, &mut b);
    std::fs::remove_file(path).unwrap();
}

#[test]
fn block_on_a_disk_of_another_size_is_refused() {
    let (big, small) = (image("snap-big", 64), image("snap-small", 32));
    let a = drive(&big, false);
    let mut b = drive(&small, false);
    let s = a.save().unwrap();
    refuses(&mut b, &s, "drive rootfs had 64 sectors at the snapshot");
    let msg = b.restore(&s).unwrap_err().to_string();
    assert!(msg.contains("now has 32"), "{msg}");
    for p in [big, small] {
        std::fs::remove_file(p).unwrap();
    }
}

#[test]
fn a_writable_drive_is_not_restored_onto_a_read_only_file() {
    let path = image("snap-ro", 8);
    let a = drive(&path, false);
    let mut b = Block::new(BlockConfig {
        id: "rootfs".into(),
        path: path.clone(),
        read_only: true,
        cache: CacheType::Unsafe,
        rate_limiter: None,
    })
    .unwrap();
    refuses(&mut b, &a.save().unwrap(), "was writable");
    std::fs::remove_file(path).unwrap();
}

#[test]
fn rng_round_trips_its_limiter() {
    let a = Rng::with_limiter(limiter());
    let mut b = Rng::new();
    round_trip(&a, &mut b);
    refuses_newer(&a, &mut b);
}

fn net(mac: Option<[u8; 6]>) -> (Net, std::os::unix::net::UnixDatagram) {
    let (ours, theirs) = std::os::unix::net::UnixDatagram::pair().unwrap();
    let tap = Tap::from_file(
        std::fs::File::from(std::os::fd::OwnedFd::from(ours)),
        "tap0",
    );
    let dev = Net::with_tap(
        tap,
        NetConfig {
            id: "eth0".into(),
            tap: "tap0".into(),
            mac,
            rx_limiter: None,
            tx_limiter: Some(limiter()),
        },
    );
    (dev, theirs)
}

#[test]
fn net_round_trips_its_mac_offloads_and_limiters() {
    let (mut a, _pa) = net(Some([2, 0, 0, 0, 0, 7]));
    a.activate(VIRTIO_F_VERSION_1 | feature::GUEST_CSUM | feature::GUEST_TSO4 | feature::MRG_RXBUF);
    let (mut b, _pb) = net(None);
    let s = round_trip(&a, &mut b);
    let st: NetState = decode(&s).unwrap();
    assert_eq!(st.mac, Some([2, 0, 0, 0, 0, 7]));
    assert_eq!(st.offloads, 0x3, "TUN_F_CSUM | TUN_F_TSO4");
    let mut mac = [0u8; 6];
    b.read_config(0, &mut mac);
    assert_eq!(mac, [2, 0, 0, 0, 0, 7]);
    assert_ne!(b.avail_features() & feature::MAC, 0);
    refuses_newer(&a, &mut b);
    let mut bad = st.clone();
    bad.offloads = 0;
    refuses(
        &mut b,
        &encode(&s.name, &bad).unwrap(),
        "do not follow from features",
    );
}

/// A drive's transport after the driver set it up, with one request served and another
/// queued but not yet served.
struct Running {
    m: GuestRam,
    path: std::path::PathBuf,
    t: MmioTransport,
}

fn running(tag: &str) -> (Running, MockSplitQueue<'static, GuestRam>) {
    let m = mem();
    let leaked: &'static GuestRam = Box::leak(Box::new(m.clone()));
    let path = image(tag, 64);
    let mut t = transport(Box::new(drive(&path, false)), &m);
    let mq = MockSplitQueue::create(leaked, GuestAddress(0), 16);
    handshake(&mut t, 1);
    setup_queue(&mut t, &mq, 16);
    write_reg(&mut t, 0x70, DRIVER_OK);
    assert!(t.is_activated());
    read_request(&m, &mq, 0, 3);
    t.process(0);
    assert_eq!(used(&mq), vec![(0, 513)]);
    read_request(&m, &mq, 3, 5);
    (Running { m, path, t }, mq)
}

impl Running {
    /// A new transport and drive, as a restore builds them, with the device's section
    /// already restored.
    fn fresh(&self) -> MmioTransport {
        let mut t = transport(Box::new(drive(&self.path, false)), &self.m);
        t.device_mut()
            .restore(&self.t.device().save().unwrap())
            .unwrap();
        t
    }
}

#[test]
fn a_transport_restored_mid_operation_serves_the_next_request() {
    let (r, mq) = running("snap-mid");
    let mut t = r.fresh();
    let s = round_trip(&r.t, &mut t);
    assert_eq!(s.name, "virtio/rootfs");
    assert!(t.is_activated());
    assert_eq!(t.acked_features(), r.t.acked_features());
    assert_eq!(
        read_reg(&mut t, 0x60),
        1,
        "the unacknowledged interrupt is still pending"
    );
    assert_eq!(
        t.queue_evts()[0].read().unwrap(),
        1,
        "the queue is kicked once"
    );
    t.process(0);
    assert_eq!(
        used(&mq),
        vec![(0, 513), (3, 513)],
        "the queued request, and only it"
    );
    let mut sector = [0u8; 512];
    r.m.read_slice(&mut sector, GuestAddress(DATA + 0x3100))
        .unwrap();
    assert_eq!(sector, [5u8; 512]);
    assert_eq!(
        r.m.read_obj::<u8>(GuestAddress(DATA + 0x3400)).unwrap(),
        0,
        "VIRTIO_BLK_S_OK"
    );
    std::fs::remove_file(&r.path).unwrap();
}

#[test]
fn an_untouched_transport_round_trips_and_stays_inactive() {
    let m = mem();
    let a = transport(Box::new(Rng::new()), &m);
    let mut b = transport(Box::new(Rng::new()), &m);
    let s = round_trip(&a, &mut b);
    assert_eq!(s.name, "virtio/rng");
    assert!(!b.is_activated());
    refuses_newer(&a, &mut b);
}

/// The saved state of the running transport with `change` applied.
fn altered(r: &Running, change: impl FnOnce(&mut MmioTransportState)) -> Section {
    let s = r.t.save().unwrap();
    let mut st: MmioTransportState = decode(&s).unwrap();
    change(&mut st);
    encode(&s.name, &st).unwrap()
}

type Change = Box<dyn FnOnce(&mut MmioTransportState)>;

#[test]
fn malformed_transport_states_are_refused_and_change_nothing() {
    let (r, _mq) = running("snap-bad");
    let cases: [(&str, Change); 7] = [
        ("size 12", Box::new(|s| s.queues[0].size = 12)),
        ("size 512", Box::new(|s| s.queues[0].size = 512)),
        (
            "not all inside guest memory",
            Box::new(|s| s.queues[0].used_ring = MEM - 8),
        ),
        ("queue 0", Box::new(|s| s.queues[0].desc_table = 0x1001)),
        ("2 queues", Box::new(|s| s.queues.push(s.queues[0].clone()))),
        ("type 1", Box::new(|s| s.device_type = 1)),
        ("does not offer", Box::new(|s| s.acked_features |= 1 << 40)),
    ];
    for (needle, change) in cases {
        let bad = altered(&r, change);
        let mut t = r.fresh();
        refuses(&mut t, &bad, needle);
        assert!(!t.is_activated());
        assert!(
            t.queue_evts()[0].read().is_err(),
            "no kick from a refused restore"
        );
    }
    let garbage = Section {
        name: "virtio/rootfs".into(),
        version: 1,
        data: vec![0xff; 3],
    };
    assert!(matches!(
        r.fresh().restore(&garbage),
        Err(StateError::Malformed { .. })
    ));
    std::fs::remove_file(&r.path).unwrap();
}

#[test]
fn a_transport_a_driver_has_started_refuses_a_restore() {
    let (r, _mq) = running("snap-used");
    let s = r.t.save().unwrap();
    let mut t = r.fresh();
    handshake(&mut t, 1);
    refuses(&mut t, &s, "restore into a new one");
    std::fs::remove_file(&r.path).unwrap();
}
