//! The seeds are built here and must equal the checked-in files
//! (`VMM_UPDATE_FUZZ_SEEDS=1` rewrites them), and each seed must reach the code it is for.

use super::*;
use crate::GuestRam;

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

/// Encodes the vsock target's receive buffers.
fn rx_bufs(lens: &[u16]) -> Vec<u8> {
    let mut v = vec![(lens.len() - 1) as u8];
    for l in lens {
        v.extend_from_slice(&l.to_le_bytes());
    }
    v
}

/// Four receive buffers of 256 bytes.
fn roomy() -> Vec<u8> {
    rx_bufs(&[256; 4])
}

/// A guest connection to the listening port: REQUEST, then data, then SHUTDOWN.
fn vsock_guest_connects() -> Vec<u8> {
    vsock_guest_connects_rx(&roomy())
}

/// The same, with receive buffers `rx` (encoded).
fn vsock_guest_connects_rx(rx: &[u8]) -> Vec<u8> {
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
        .chain(rx.iter().copied())
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
    vsock_host_connects_rx(&roomy())
}

/// The same, with receive buffers `rx` (encoded).
fn vsock_host_connects_rx(rx: &[u8]) -> Vec<u8> {
    let line = b"CONNECT 52\nearly";
    let mut v = vec![line.len() as u8];
    v.extend_from_slice(line);
    v.extend_from_slice(rx);
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
        .chain(roomy())
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
        // Data waits on the host side while the next buffer has room for a header only.
        (
            "host-data-header-only-rx",
            vsock_host_connects_rx(&rx_bufs(&[HDR_LEN as u16, HDR_LEN as u16, RX_BUFFER_MAX])),
        ),
        // Buffers too small for a header, then one that fits a header only.
        (
            "guest-connects-tiny-rx",
            vsock_guest_connects_rx(&rx_bufs(&[0, 10, HDR_LEN as u16, RX_BUFFER_MAX])),
        ),
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
            // A 40-byte frame over header-sized (12-byte) mergeable buffers.
            "rx-header-sized-mergeable",
            [3u8, 40, 0]
                .into_iter()
                .chain(queue(
                    4,
                    &[
                        (at(0), 12, WRITE, 0),
                        (at(0x100), 12, WRITE, 0),
                        (at(0x200), 12, WRITE, 0),
                        (at(0x300), 12, WRITE, 0),
                    ],
                    &[0, 1, 2, 3],
                    &[],
                ))
                .collect(),
        ),
        (
            // Zero-length mergeable buffers: the frame waits.
            "rx-zero-length-mergeable",
            [3u8, 40, 0]
                .into_iter()
                .chain(queue(
                    4,
                    &[(at(0), 0, WRITE, 0), (at(0x100), 0, WRITE, 0)],
                    &[0, 1],
                    &[],
                ))
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
    let out = run_net(&seeds["rx-header-sized-mergeable"]);
    assert_eq!(out.queue.used, vec![(0, 12), (1, 12), (2, 12), (3, 4)]);
    let out = run_net(&seeds["rx-zero-length-mergeable"]);
    assert_eq!(out.queue.used, vec![], "no room: nothing taken");
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

fn status(mem: &GuestRam, addr: u64) -> u8 {
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
            let addr = RX_BUFFERS + u64::from(id) * u64::from(RX_BUFFER_MAX);
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
    let addr = RX_BUFFERS + u64::from(id) * u64::from(RX_BUFFER_MAX) + HDR_LEN as u64;
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
fn vsock_seeds_with_small_receive_buffers_return() {
    let seeds: std::collections::HashMap<_, _> = vsock_tx_seeds().into_iter().collect();
    // This input used to spin for ever: data pending, and a buffer without room for any.
    let out = run_vsock(&seeds["host-data-header-only-rx"]);
    let got: Vec<(u16, u32)> = rx_headers(&out)
        .iter()
        .map(|h| (h.op, h.dst_port))
        .collect();
    assert_eq!(got, vec![(op::REQUEST, 52)], "the data waits for room");

    let out = run_vsock(&seeds["guest-connects-tiny-rx"]);
    assert_eq!(&out.rx[..2], &[(0, 0), (1, 0)], "returned empty");
    let (id, len) = out.rx[2];
    assert_eq!((id, len as usize), (2, HDR_LEN));
    let mut b = [0u8; HDR_LEN];
    let addr = RX_BUFFERS + 2 * u64::from(RX_BUFFER_MAX);
    out.tx.mem.read_slice(&mut b, GuestAddress(addr)).unwrap();
    assert_eq!(Header::from_bytes(&b).op, op::RESPONSE);
    assert_eq!(out.rx.len(), 3);
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
