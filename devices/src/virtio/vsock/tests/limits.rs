//! What a hostile guest or host process must not be able to do: stall the device thread with
//! receive buffers too small for data, or hold every connection slot with handshakes that
//! never finish.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use virtio_queue::QueueT;

use super::super::packet::{HDR_LEN, op};
use super::super::{HANDSHAKE_TIMEOUT, MAX_CONNECTIONS};
use super::{Guest, RX_BUF, read_line};
use crate::virtio::VirtioDevice;

fn metric(g: &Guest, name: &str) -> u64 {
    g.dev
        .metrics()
        .into_iter()
        .find(|m| m.0 == name)
        .unwrap_or_else(|| panic!("no metric {name}"))
        .1
}

/// Whether the host end of a connection the device closed sees it closed.
fn closed(s: &mut UnixStream) -> bool {
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    // End of file, or a reset if the device closed with bytes unread.
    !matches!(s.read(&mut [0u8; 8]), Ok(n) if n > 0)
}

/// A guest handed to another thread.
struct Moved(Guest);

// SAFETY: the mock rings hold raw pointers into the leaked guest memory, which lives for the
// whole run; the guest is used by one thread at a time (the caller waits for it to come back).
unsafe impl Send for Moved {}

impl Moved {
    /// Takes the guest out (a method, so a closure captures all of `Moved`, not its field).
    fn take(self) -> Guest {
        self.0
    }
}

/// Runs `g.pump()` on another thread and returns the guest and the packets, or fails if it
/// does not come back: the device thread must never spin.
fn pump_must_return(g: Guest) -> (Guest, Vec<(super::Header, Vec<u8>)>) {
    let (tx, rx) = std::sync::mpsc::channel();
    let moved = Moved(g);
    std::thread::spawn(move || {
        let mut g = moved.take();
        let pkts = g.pump();
        let _ = tx.send((Moved(g), pkts));
    });
    // A hang guard only: processing takes microseconds.
    let (Moved(g), pkts) = rx
        .recv_timeout(Duration::from_secs(10))
        .expect("the device returned from processing");
    (g, pkts)
}

#[test]
fn header_only_receive_buffers_take_control_packets_and_data_waits_for_room() {
    let hdr = HDR_LEN as u32;
    let mut g = Guest::with_rx_bufs("hdronly", &[hdr, hdr, RX_BUF]);
    let mut host = UnixStream::connect(&g.uds).unwrap();
    host.write_all(b"CONNECT 52\nhello").unwrap();
    let pkts = g.pump();
    assert_eq!(pkts.len(), 1, "{pkts:?}");
    assert_eq!(
        pkts[0].0.op,
        op::REQUEST,
        "a control packet fits a header-only buffer"
    );
    let port = pkts[0].0.src_port;
    g.send(g.hdr(op::RESPONSE, 52, port), &[]);
    assert_eq!(read_line(&mut host), format!("OK {port}"));
    host.write_all(b" world").unwrap();

    // Data is pending and the next buffer has no room for any: the device used to try that
    // buffer again and again, holding the device thread for ever.
    let (mut g, pkts) = pump_must_return(g);
    assert!(pkts.is_empty(), "{pkts:?}");
    assert_eq!(
        g.queues[0].next_avail(),
        1,
        "the header-only buffer is left to the guest"
    );
    assert_eq!(g.dev.connections(), 1);

    // A control packet takes the header-only buffer; the data then goes into the large one.
    g.send(g.hdr(op::CREDIT_REQUEST, 52, port), &[]);
    let (_g, pkts) = pump_must_return(g);
    let got: Vec<(u16, &[u8])> = pkts.iter().map(|p| (p.0.op, &p.1[..])).collect();
    assert_eq!(
        got,
        vec![(op::CREDIT_UPDATE, &b""[..]), (op::RW, &b"hello"[..])]
    );
}

#[test]
fn only_header_only_receive_buffers_and_pending_data_return_at_once() {
    let mut g = Guest::with_rx_bufs("hdronly2", &[HDR_LEN as u32; 8]);
    let mut host = UnixStream::connect(&g.uds).unwrap();
    host.write_all(b"CONNECT 53\n").unwrap();
    let port = g.pump()[0].0.src_port;
    g.send(g.hdr(op::RESPONSE, 53, port), &[]);
    assert_eq!(read_line(&mut host), format!("OK {port}"));
    host.write_all(&[7u8; 1000]).unwrap();
    for _ in 0..3 {
        let (back, pkts) = pump_must_return(g);
        g = back;
        assert!(pkts.is_empty(), "{pkts:?}");
    }
    assert_eq!(
        g.queues[0].next_avail(),
        1,
        "seven buffers left to the guest"
    );
    assert_eq!(metric(&g, "rx_fails"), 0);
}

#[test]
fn a_host_process_that_never_finishes_connect_is_closed_at_its_deadline() {
    let mut g = Guest::new("hs-expire");
    let before = Instant::now();
    let mut silent = UnixStream::connect(&g.uds).unwrap();
    let mut partial = UnixStream::connect(&g.uds).unwrap();
    partial.write_all(b"CONNE").unwrap();
    let mut done = UnixStream::connect(&g.uds).unwrap();
    done.write_all(b"CONNECT 52\n").unwrap();
    let pkts = g.pump();
    let after = Instant::now();
    assert_eq!(pkts.len(), 1, "{pkts:?}");
    assert_eq!(g.dev.connections(), 3);
    let armed = g
        .dev
        .handshake_timer_deadline()
        .expect("the timer is armed");
    assert!(before + HANDSHAKE_TIMEOUT <= armed && armed <= after + HANDSHAKE_TIMEOUT);

    // Accepted no earlier than `before`: not due yet.
    g.dev
        .expire_handshakes(before + HANDSHAKE_TIMEOUT - Duration::from_nanos(1));
    assert_eq!(g.dev.connections(), 3);
    assert_eq!(metric(&g, "handshake_timeouts"), 0);

    // Accepted no later than `after`: due.
    g.dev.expire_handshakes(after + HANDSHAKE_TIMEOUT);
    assert_eq!(g.dev.connections(), 1, "the finished handshake stays");
    assert_eq!(metric(&g, "handshake_timeouts"), 2);
    assert_eq!(metric(&g, "conns_removed"), 2);
    assert!(closed(&mut silent));
    assert!(closed(&mut partial));
    assert_eq!(
        g.dev.handshake_timer_deadline(),
        None,
        "no handshake left to time"
    );
}

#[test]
fn pending_handshakes_cannot_hold_every_slot_past_their_deadline() {
    let mut g = Guest::new("hs-slots");
    let mut silent = Vec::with_capacity(MAX_CONNECTIONS);
    // In batches, so that the listener's backlog never fills.
    while silent.len() < MAX_CONNECTIONS {
        for _ in 0..64 {
            silent.push(UnixStream::connect(&g.uds).unwrap());
        }
        g.pump();
    }
    let after = Instant::now();
    assert_eq!(g.dev.connections(), MAX_CONNECTIONS);
    let mut refused = UnixStream::connect(&g.uds).unwrap();
    refused.write_all(b"CONNECT 52\n").unwrap();
    assert!(g.pump().is_empty());
    assert!(closed(&mut refused), "every slot is taken");

    g.dev.expire_handshakes(after + HANDSHAKE_TIMEOUT);
    assert_eq!(g.dev.connections(), 0);
    assert_eq!(metric(&g, "handshake_timeouts"), MAX_CONNECTIONS as u64);
    assert!(silent.iter_mut().all(closed));

    let mut host = UnixStream::connect(&g.uds).unwrap();
    host.write_all(b"CONNECT 52\n").unwrap();
    let pkts = g.pump();
    assert_eq!(pkts.len(), 1, "{pkts:?}");
    assert_eq!(pkts[0].0.op, op::REQUEST, "a new connection is taken");
}

#[test]
fn the_handshake_timer_wakes_the_device() {
    let mut g = Guest::new("hs-timer");
    g.dev.set_handshake_timeout(Duration::from_millis(1));
    let mut silent = UnixStream::connect(&g.uds).unwrap();
    g.pump();
    assert_eq!(g.dev.connections(), 1);
    // The device thread sleeps until the device's epoll reports something: the timer.
    let mut pfd = libc::pollfd {
        fd: g.dev.event_fds()[0],
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd; a hang guard of 10 s, not a measured time.
    let n = unsafe { libc::poll(&raw mut pfd, 1, 10_000) };
    assert_eq!(n, 1, "the device's epoll reports the timer");
    g.pump();
    assert_eq!(g.dev.connections(), 0);
    assert_eq!(metric(&g, "handshake_timeouts"), 1);
    assert!(closed(&mut silent));
}
