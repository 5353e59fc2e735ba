//! The vsock device against a simulated guest (virtio-queue's mock rings) and real Unix
//! sockets on the host side.

use crate::GuestRam;
use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;

use virtio_bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::Queue;
use virtio_queue::desc::{RawDescriptor, split::Descriptor as SplitDescriptor};
use virtio_queue::mock::MockSplitQueue;
use vm_memory::{Bytes, GuestAddress};

use super::packet::{HDR_LEN, Header, SHUTDOWN_RCV, SHUTDOWN_SEND, TYPE_STREAM, op};
use super::{BUF_ALLOC, Vsock, VsockConfig};
use crate::virtio::VirtioDevice;

mod limits;
mod snapshot;

const CID: u64 = 3;
const RX_BUF: u32 = HDR_LEN as u32 + 64 * 1024;
const RX_BUFS: u16 = 64;
const RX_DATA: u64 = 0x10_0000;
const TX_DATA: u64 = 0x80_0000;

struct Guest {
    mem: &'static GuestRam,
    rxq: MockSplitQueue<'static, GuestRam>,
    txq: MockSplitQueue<'static, GuestRam>,
    queues: Vec<Queue>,
    rx_seen: u16,
    tx_next: u16,
    dev: Vsock,
    uds: PathBuf,
}

fn uds(tag: &str) -> PathBuf {
    std::env::temp_dir().join(format!("vmm-vsock-{tag}-{}", std::process::id()))
}

impl Guest {
    fn new(tag: &str) -> Self {
        Self::with_rx_bufs(tag, &[RX_BUF; RX_BUFS as usize])
    }

    /// A guest whose receive queue offers one buffer of each length in `lens` (at most
    /// `RX_BUF` each), in order.
    fn with_rx_bufs(tag: &str, lens: &[u32]) -> Self {
        let mem: &'static GuestRam = Box::leak(Box::new(
            GuestRam::from_ranges(&[(GuestAddress(0), 0x100_0000)]).unwrap(),
        ));
        let rxq = MockSplitQueue::create(mem, GuestAddress(0), 256);
        let txq = MockSplitQueue::create(mem, GuestAddress(0x8000), 256);
        let raw: Vec<RawDescriptor> = (0u64..)
            .zip(lens)
            .map(|(i, &len)| {
                assert!(len <= RX_BUF);
                let addr = RX_DATA + i * u64::from(RX_BUF);
                RawDescriptor::from(SplitDescriptor::new(
                    addr,
                    len,
                    VRING_DESC_F_WRITE as u16,
                    0,
                ))
            })
            .collect();
        rxq.add_desc_chains(&raw, 0).unwrap();
        let queues = vec![
            rxq.create_queue().unwrap(),
            txq.create_queue().unwrap(),
            MockSplitQueue::create(mem, GuestAddress(0x1_0000), 16)
                .create_queue()
                .unwrap(),
        ];
        let uds = uds(tag);
        let dev = Vsock::new(&VsockConfig {
            guest_cid: CID,
            uds_path: uds.clone(),
        })
        .unwrap();
        Self {
            mem,
            rxq,
            txq,
            queues,
            rx_seen: 0,
            tx_next: 0,
            dev,
            uds,
        }
    }

    /// Sends a packet; the header goes in its own descriptor, as Linux does.
    fn send(&mut self, mut h: Header, payload: &[u8]) {
        if h.len == 0 {
            h.len = payload.len() as u32;
        }
        let at = TX_DATA + u64::from(self.tx_next) * 0x1_1000;
        self.mem
            .write_slice(&h.to_bytes(), GuestAddress(at))
            .unwrap();
        self.mem
            .write_slice(payload, GuestAddress(at + 0x100))
            .unwrap();
        let mut raw = vec![RawDescriptor::from(SplitDescriptor::new(
            at,
            HDR_LEN as u32,
            if payload.is_empty() {
                0
            } else {
                VRING_DESC_F_NEXT as u16
            },
            self.tx_next + 1,
        ))];
        if !payload.is_empty() {
            raw.push(RawDescriptor::from(SplitDescriptor::new(
                at + 0x100,
                payload.len() as u32,
                0,
                0,
            )));
        }
        self.txq.add_desc_chains(&raw, self.tx_next).unwrap();
        self.tx_next += raw.len() as u16;
        self.dev.process_queue(1, &mut self.queues[1], self.mem);
    }

    fn hdr(&self, op: u16, src_port: u32, dst_port: u32) -> Header {
        Header {
            src_cid: CID,
            dst_cid: 2,
            src_port,
            dst_port,
            kind: TYPE_STREAM,
            op,
            buf_alloc: 1 << 20,
            ..Header::default()
        }
    }

    /// Lets the device act on host events; returns the packets it gave the guest.
    fn pump(&mut self) -> Vec<(Header, Vec<u8>)> {
        self.dev.process_event(0, &mut self.queues, self.mem);
        let n = self.rxq.used().idx().load();
        let mut out = Vec::new();
        while self.rx_seen != n {
            let e = self
                .rxq
                .used()
                .ring()
                .ref_at(self.rx_seen as usize)
                .unwrap()
                .load();
            let addr = RX_DATA + u64::from(e.id()) * u64::from(RX_BUF);
            let mut buf = vec![0u8; e.len() as usize];
            self.mem.read_slice(&mut buf, GuestAddress(addr)).unwrap();
            let h = Header::from_bytes(buf[..HDR_LEN].try_into().unwrap());
            assert_eq!(h.len as usize, buf.len() - HDR_LEN, "{h:?}");
            out.push((h, buf[HDR_LEN..].to_vec()));
            self.rx_seen += 1;
        }
        out
    }
}

fn pattern(n: usize, seed: u8) -> Vec<u8> {
    (0..n)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

fn read_line(s: &mut UnixStream) -> String {
    let mut line = Vec::new();
    let mut b = [0u8; 1];
    while s.read(&mut b).unwrap() == 1 && b[0] != b'\n' {
        line.push(b[0]);
    }
    String::from_utf8(line).unwrap()
}

#[test]
fn host_connects_to_a_guest_listener_and_data_flows_both_ways() {
    let mut g = Guest::new("h2g");
    let mut host = UnixStream::connect(&g.uds).unwrap();
    host.write_all(b"CONNECT 52\nhello").unwrap();
    let pkts = g.pump();
    assert_eq!(pkts.len(), 1, "{pkts:?}");
    let req = pkts[0].0;
    assert_eq!(
        (req.op, req.src_cid, req.dst_cid, req.dst_port),
        (op::REQUEST, 2, CID, 52)
    );
    assert_eq!(req.buf_alloc, BUF_ALLOC);
    let host_port = req.src_port;
    g.send(g.hdr(op::RESPONSE, 52, host_port), &[]);
    assert_eq!(read_line(&mut host), format!("OK {host_port}"));

    let data = pattern(200 * 1024, 7);
    host.write_all(&data).unwrap();
    let mut got = Vec::new();
    for (h, p) in g.pump() {
        assert_eq!((h.op, h.src_port, h.dst_port), (op::RW, host_port, 52));
        got.extend_from_slice(&p);
    }
    assert_eq!(&got[..5], b"hello");
    assert_eq!(&got[5..], &data[..]);

    let back = pattern(100 * 1024, 9);
    for chunk in back.chunks(4096) {
        g.send(g.hdr(op::RW, 52, host_port), chunk);
    }
    let mut echoed = vec![0u8; back.len()];
    host.read_exact(&mut echoed).unwrap();
    assert_eq!(echoed, back);

    let mut h = g.hdr(op::SHUTDOWN, 52, host_port);
    h.flags = SHUTDOWN_RCV | SHUTDOWN_SEND;
    g.send(h, &[]);
    let pkts = g.pump();
    assert_eq!(pkts.last().unwrap().0.op, op::RST, "{pkts:?}");
    assert_eq!(
        host.read(&mut [0u8; 8]).unwrap(),
        0,
        "the host process sees end of file"
    );
    assert_eq!(g.dev.connections(), 0);
}

#[test]
fn guest_connects_to_a_host_port_and_sees_the_host_close() {
    let mut g = Guest::new("g2h");
    let mut name = g.uds.clone().into_os_string();
    name.push("_6000");
    let listener = UnixListener::bind(&name).unwrap();
    g.send(g.hdr(op::REQUEST, 1234, 6000), &[]);
    let pkts = g.pump();
    assert_eq!(pkts.len(), 1, "{pkts:?}");
    assert_eq!(
        (pkts[0].0.op, pkts[0].0.src_port, pkts[0].0.dst_port),
        (op::RESPONSE, 6000, 1234)
    );
    let (mut host, _) = listener.accept().unwrap();

    let data = pattern(192 * 1024 + 3, 1);
    for chunk in data.chunks(60_000) {
        g.send(g.hdr(op::RW, 1234, 6000), chunk);
    }
    let mut got = vec![0u8; data.len()];
    host.read_exact(&mut got).unwrap();
    assert_eq!(got, data);

    host.write_all(b"reply").unwrap();
    drop(host);
    let pkts = g.pump();
    // More than 192 KiB of the 256 KiB buffer reached the host: the guest, which sees less
    // than 64 KiB of credit left, is told it is back.
    assert_eq!(pkts[0].0.op, op::CREDIT_UPDATE, "{pkts:?}");
    assert_eq!(pkts[0].0.fwd_cnt, data.len() as u32);
    let ops: Vec<u16> = pkts[1..].iter().map(|p| p.0.op).collect();
    assert_eq!(ops, vec![op::RW, op::SHUTDOWN], "{pkts:?}");
    assert_eq!(pkts[1].1, b"reply");
    assert_eq!(pkts[2].0.flags, SHUTDOWN_SEND);
    let _ = std::fs::remove_file(&name);
}

#[test]
fn a_guest_connect_to_a_port_nobody_serves_is_reset() {
    let mut g = Guest::new("refused");
    g.send(g.hdr(op::REQUEST, 1, 7777), &[]);
    let pkts = g.pump();
    assert_eq!(pkts.len(), 1);
    let h = pkts[0].0;
    assert_eq!(
        (h.op, h.src_port, h.dst_port, h.dst_cid),
        (op::RST, 7777, 1, CID)
    );
    assert_eq!(g.dev.connections(), 0);
}

#[test]
fn the_host_respects_the_guest_credit() {
    let mut g = Guest::new("credit");
    let mut host = UnixStream::connect(&g.uds).unwrap();
    host.write_all(b"CONNECT 9\n").unwrap();
    let port = g.pump()[0].0.src_port;
    let mut resp = g.hdr(op::RESPONSE, 9, port);
    resp.buf_alloc = 8192;
    g.send(resp, &[]);
    assert_eq!(read_line(&mut host), format!("OK {port}"));
    host.write_all(&pattern(64 * 1024, 3)).unwrap();
    let pkts = g.pump();
    let bytes: usize = pkts.iter().map(|p| p.1.len()).sum();
    assert_eq!(bytes, 8192, "exactly the guest's buffer");
    assert_eq!(pkts.last().unwrap().0.op, op::CREDIT_REQUEST);
    assert!(g.pump().is_empty(), "nothing more without credit");
    let mut upd = g.hdr(op::CREDIT_UPDATE, 9, port);
    upd.buf_alloc = 8192;
    upd.fwd_cnt = 8192;
    g.send(upd, &[]);
    let bytes: usize = g.pump().iter().map(|p| p.1.len()).sum();
    assert_eq!(bytes, 8192);
}

#[test]
fn a_guest_overrunning_its_credit_is_reset() {
    let mut g = Guest::new("overrun");
    let mut name = g.uds.clone().into_os_string();
    name.push("_5");
    let listener = UnixListener::bind(&name).unwrap();
    g.send(g.hdr(op::REQUEST, 77, 5), &[]);
    assert_eq!(g.pump()[0].0.op, op::RESPONSE);
    let (_host, _) = listener.accept().unwrap(); // never reads
    let chunk = vec![0u8; 60 * 1024];
    for _ in 0..40 {
        g.send(g.hdr(op::RW, 77, 5), &chunk);
        if g.dev.connections() == 0 || g.pump().iter().any(|p| p.0.op == op::RST) {
            break;
        }
    }
    assert_eq!(g.dev.connections(), 0, "the connection is gone");
    let _ = std::fs::remove_file(&name);
}

#[test]
fn bad_handshakes_and_bad_packets_are_dropped() {
    let mut g = Guest::new("bad");
    let mut host = UnixStream::connect(&g.uds).unwrap();
    host.write_all(b"HELLO 5\n").unwrap();
    assert!(g.pump().is_empty());
    assert_eq!(host.read(&mut [0u8; 4]).unwrap(), 0, "closed");
    let mut long = UnixStream::connect(&g.uds).unwrap();
    long.write_all(&[b'7'; 100]).unwrap();
    assert!(g.pump().is_empty());
    // Closed with unread bytes: a reset rather than end of file.
    assert!(
        !matches!(long.read(&mut [0u8; 4]), Ok(n) if n > 0),
        "closed"
    );

    let mut h = g.hdr(op::REQUEST, 1, 2);
    h.src_cid = 99; // spoofed
    g.send(h, &[]);
    let mut h = g.hdr(op::RW, 1, 2);
    h.len = 1000; // more than follows
    g.send(h, b"abc");
    h.kind = 2; // seqpacket
    h.len = 0;
    g.send(h, &[]);
    let pkts = g.pump();
    assert!(pkts.iter().all(|p| p.0.op == op::RST), "{pkts:?}");
    let fails = g
        .dev
        .metrics()
        .into_iter()
        .find(|m| m.0 == "tx_fails")
        .unwrap()
        .1;
    assert_eq!(fails, 2);
    assert_eq!(g.dev.connections(), 0);
}

#[test]
fn a_uds_path_in_use_is_refused_and_removed_on_drop() {
    let g = Guest::new("inuse");
    let e = Vsock::new(&VsockConfig {
        guest_cid: CID,
        uds_path: g.uds.clone(),
    })
    .unwrap_err()
    .to_string();
    assert!(e.contains("in use"), "{e}");
    let path = g.uds.clone();
    drop(g);
    assert!(!path.exists());
}

#[test]
fn guest_bytes_wait_for_a_slow_host_reader_and_flow_when_it_reads() {
    let mut g = Guest::new("slow");
    let mut host = UnixStream::connect(&g.uds).unwrap();
    host.write_all(b"CONNECT 53\n").unwrap();
    let req = g.pump()[0].0;
    g.send(g.hdr(op::RESPONSE, 53, req.src_port), &[]);
    assert_eq!(read_line(&mut host), format!("OK {}", req.src_port));
    // The guest fills its credit while the host process reads nothing.
    let data = pattern(BUF_ALLOC as usize, 3);
    for chunk in data.chunks(64 * 1024) {
        g.send(g.hdr(op::RW, 53, req.src_port), chunk);
    }
    let waiting = |g: &Guest| {
        g.dev
            .metrics()
            .iter()
            .find(|(k, _)| *k == "bytes_waiting_for_host")
            .map(|(_, v)| *v)
            .unwrap()
    };
    assert!(waiting(&g) > 0, "the host stream took everything at once");
    let reader = std::thread::spawn(move || {
        let mut got = vec![0u8; BUF_ALLOC as usize];
        host.read_exact(&mut got).unwrap();
        got
    });
    // Room on the host stream is reported to the device, which writes the rest.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while waiting(&g) > 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the rest never went out"
        );
        g.pump();
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    assert_eq!(reader.join().unwrap(), data);
}

#[test]
fn a_guest_with_a_small_buffer_is_told_its_credit_early() {
    let mut g = Guest::new("smallbuf");
    let mut host = UnixStream::connect(&g.uds).unwrap();
    host.write_all(b"CONNECT 54\n").unwrap();
    let req = g.pump()[0].0;
    let mut resp = g.hdr(op::RESPONSE, 54, req.src_port);
    // Linux keeps at most its own buffer in flight: 128 KiB here.
    resp.buf_alloc = 128 * 1024;
    g.send(resp, &[]);
    assert_eq!(read_line(&mut host), format!("OK {}", req.src_port));
    let data = pattern(64 * 1024, 5);
    let mut h = g.hdr(op::RW, 54, req.src_port);
    h.buf_alloc = 128 * 1024;
    g.send(h, &data);
    let mut got = vec![0u8; data.len()];
    host.read_exact(&mut got).unwrap();
    let pkts = g.pump();
    assert_eq!(pkts.len(), 1, "{pkts:?}");
    assert_eq!(
        (pkts[0].0.op, pkts[0].0.fwd_cnt),
        (op::CREDIT_UPDATE, 64 * 1024),
        "64 KiB of a 128 KiB window consumed: the guest is told"
    );
}
