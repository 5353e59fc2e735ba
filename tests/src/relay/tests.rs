//! The relay's tests: each fault over loopback TCP, with frames from the protocol's encoder.

use std::thread;
use std::time::Instant;

use migration::protocol::{
    Message, PAGE_SIZE, PageData, PageRecord, ProtocolError, decode_message, encode_message,
};

use super::*;

/// Longer than anything on loopback takes; only a broken relay makes a test wait this long.
const PATIENCE: Duration = Duration::from_secs(20);
/// How long a connection must carry nothing to count as silent.
const QUIET: Duration = Duration::from_millis(300);

fn frame(m: &Message) -> Vec<u8> {
    encode_message(m).expect("encodable")
}

/// The frames of `ms` back to back.
fn frames(ms: &[Message]) -> Vec<u8> {
    ms.iter().flat_map(frame).collect()
}

/// `pages` records, every seventh a zero page, the others patterned by `seed`.
fn memory(pages: usize, seed: u8) -> Message {
    let page = |i: usize| {
        if i % 7 == 3 {
            return PageData::Zero;
        }
        let b = (0..PAGE_SIZE).map(|j| (j as u8).wrapping_mul(31) ^ (i as u8) ^ seed);
        PageData::Bytes(b.collect())
    };
    let pages = (0..pages).map(|i| PageRecord {
        index: i as u64,
        data: page(i),
    });
    Message::Memory {
        pages: pages.collect(),
    }
}

fn hello() -> Message {
    migration::protocol::hello("relay-test")
}

fn round_end(round: u32) -> Message {
    Message::RoundEnd { round }
}

/// A relay with `fault` at `trigger` between a source and a destination socket.
struct Link {
    relay: Relay,
    source: TcpStream,
    dest: TcpStream,
}

fn link(trigger: Option<Trigger>, fault: Fault) -> Link {
    let listener = TcpListener::bind(("127.0.0.1", 0)).expect("bind the destination");
    let addr = listener.local_addr().expect("destination address");
    let relay = Relay::start(addr, trigger, fault).expect("start the relay");
    let source = TcpStream::connect(("127.0.0.1", relay.port())).expect("connect");
    listener.set_nonblocking(true).expect("nonblocking");
    let begun = Instant::now();
    let dest = loop {
        match listener.accept() {
            Ok((d, _)) => break d,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock && begun.elapsed() < PATIENCE => {
                thread::sleep(Duration::from_millis(2));
            }
            Err(e) => panic!("the relay never connected: {e} ({:?})", relay.error()),
        }
    };
    dest.set_nonblocking(false).expect("blocking");
    for s in [&source, &dest] {
        s.set_read_timeout(Some(PATIENCE)).expect("read timeout");
        s.set_write_timeout(Some(PATIENCE)).expect("write timeout");
    }
    Link {
        relay,
        source,
        dest,
    }
}

/// Writes `bytes` to `s` on a thread (the peer reads meanwhile); half-closes if `close`.
/// A relay that cut the connection makes the writes fail, which the caller may ignore.
fn send(s: &TcpStream, bytes: Vec<u8>, close: bool) -> JoinHandle<io::Result<()>> {
    let mut s = s.try_clone().expect("clone");
    thread::spawn(move || {
        s.write_all(&bytes)?;
        if close {
            s.shutdown(Shutdown::Write)?;
        }
        Ok(())
    })
}

fn is_end(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionReset | io::ErrorKind::ConnectionAborted
    )
}

/// Everything up to the end of the stream (a reset counts as the end).
fn read_to_end(s: &mut TcpStream) -> Vec<u8> {
    let mut out = Vec::new();
    let mut buf = vec![0; 64 * 1024];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return out,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if is_end(&e) => return out,
            Err(e) => panic!("no end of stream after {} bytes: {e}", out.len()),
        }
    }
}

fn read_exactly(s: &mut TcpStream, n: usize) -> Vec<u8> {
    let mut out = vec![0; n];
    s.read_exact(&mut out).expect("the bytes relayed");
    out
}

/// The stream ends (or is reset) with no more bytes.
fn expect_end(s: &mut TcpStream, what: &str) {
    match s.read(&mut [0; 4096]) {
        Ok(0) => {}
        Err(e) if is_end(&e) => {}
        Ok(n) => panic!("{what}: {n} bytes more instead of the end"),
        Err(e) => panic!("{what}: no end of stream: {e}"),
    }
}

/// Nothing arrives for `QUIET`, and the connection stays open.
fn expect_silent(s: &mut TcpStream, what: &str) {
    s.set_read_timeout(Some(QUIET)).expect("read timeout");
    match s.read(&mut [0; 4096]) {
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
            ) => {}
        Ok(0) => panic!("{what}: closed instead of silent"),
        Ok(n) => panic!("{what}: {n} bytes arrived"),
        Err(e) => panic!("{what}: {e} instead of silence"),
    }
    s.set_read_timeout(Some(PATIENCE)).expect("read timeout");
}

fn kinds(ms: &[Message]) -> Vec<u16> {
    ms.iter().map(|m| m.kind() as u16).collect()
}

#[test]
fn relays_both_directions_byte_exact_without_a_trigger() {
    let mut l = link(None, Fault::Cut);
    let up = [
        hello(),
        memory(1024, 1),
        memory(5, 2),
        round_end(1),
        memory(1024, 3),
        round_end(2),
        Message::Commit,
    ];
    let down = [
        Message::Welcome {
            protocol_version: 1,
        },
        Message::Ready,
        Message::Loaded,
        Message::Running,
    ];
    let (up_bytes, down_bytes) = (frames(&up), frames(&down));
    let w1 = send(&l.source, up_bytes.clone(), true);
    let w2 = send(&l.dest, down_bytes.clone(), true);
    assert!(
        read_to_end(&mut l.dest) == up_bytes,
        "source to destination differs"
    );
    assert_eq!(read_to_end(&mut l.source), down_bytes);
    w1.join().expect("writer").expect("source writes");
    w2.join().expect("writer").expect("destination writes");
    let lens = (up_bytes.len() as u64, down_bytes.len() as u64);
    assert_eq!(l.relay.bytes_forwarded(), lens);
    assert_eq!(l.relay.frames_seen(), kinds(&up));
    assert_eq!(l.relay.replies_seen(), kinds(&down));
    assert!(!l.relay.triggered());
    assert_eq!(l.relay.error(), None);
}

#[test]
fn cut_closes_both_sides_before_the_trigger_frame() {
    let trigger = Trigger::Frame {
        kind: MessageType::Memory,
        nth: 2,
    };
    let mut l = link(Some(trigger), Fault::Cut);
    let before = frames(&[hello(), memory(8, 1), round_end(1)]);
    let after = frames(&[memory(8, 2), round_end(2)]);
    let w = send(&l.source, [before.clone(), after].concat(), false);
    assert_eq!(read_to_end(&mut l.dest), before);
    expect_end(&mut l.source, "the source");
    assert!(l.relay.triggered());
    assert_eq!(l.relay.frames_seen(), [1, 6, 7, 6]);
    assert_eq!(l.relay.bytes_forwarded(), (before.len() as u64, 0));
    let _ = w.join().expect("writer");
}

#[test]
fn round_end_trigger_is_the_round_end_of_that_round() {
    let mut l = link(Some(Trigger::RoundEnd(2)), Fault::Cut);
    let before = frames(&[memory(2, 1), round_end(1), memory(2, 2)]);
    let after = frames(&[round_end(2), memory(2, 3), round_end(3)]);
    let w = send(&l.source, [before.clone(), after].concat(), false);
    assert_eq!(read_to_end(&mut l.dest), before);
    expect_end(&mut l.source, "the source");
    assert_eq!(l.relay.frames_seen(), [6, 7, 6, 7]);
    let _ = w.join().expect("writer");
}

#[test]
fn reply_trigger_is_a_destination_frame() {
    let trigger = Trigger::Reply {
        kind: MessageType::Loaded,
        nth: 1,
    };
    let mut l = link(Some(trigger), Fault::Cut);
    let before = frames(&[Message::Welcome {
        protocol_version: 1,
    }]);
    let after = frames(&[Message::Loaded, Message::Running]);
    let w = send(&l.dest, [before.clone(), after].concat(), false);
    assert_eq!(read_to_end(&mut l.source), before);
    expect_end(&mut l.dest, "the destination");
    assert_eq!(l.relay.replies_seen(), [2, 9]);
    let _ = w.join().expect("writer");
}

#[test]
fn stall_silences_both_directions_and_keeps_them_open_until_dropped() {
    let mut l = link(Some(Trigger::RoundEnd(1)), Fault::Stall);
    let before = frames(&[hello(), memory(4, 1)]);
    let after = frames(&[round_end(1), memory(4, 2)]);
    let w = send(&l.source, [before.clone(), after].concat(), false);
    assert_eq!(read_exactly(&mut l.dest, before.len()), before);
    assert!(l.relay.wait_triggered(PATIENCE));
    let reply = frame(&Message::Ready);
    l.dest.write_all(&reply).expect("destination writes");
    expect_silent(&mut l.dest, "the destination");
    expect_silent(&mut l.source, "the source");
    assert_eq!(l.relay.bytes_forwarded(), (before.len() as u64, 0));
    w.join().expect("writer").expect("source writes");
    drop(l.relay);
    expect_end(&mut l.dest, "the destination after the drop");
    expect_end(&mut l.source, "the source after the drop");
}

/// The single difference between what was sent and what arrived.
fn one_difference(sent: &[u8], got: &[u8]) -> usize {
    assert_eq!(sent.len(), got.len());
    let diffs: Vec<usize> = (0..sent.len()).filter(|&i| sent[i] != got[i]).collect();
    assert_eq!(diffs.len(), 1, "bytes that differ: {diffs:?}");
    assert_eq!((sent[diffs[0]] ^ got[diffs[0]]).count_ones(), 1);
    diffs[0]
}

#[test]
fn corrupt_flips_one_bit_in_the_middle_of_the_payload() {
    let trigger = Trigger::Frame {
        kind: MessageType::Memory,
        nth: 1,
    };
    let mut l = link(Some(trigger), Fault::Corrupt);
    let (head, big) = (frame(&hello()), frame(&memory(1024, 7)));
    let tail = frames(&[round_end(1), memory(3, 8), Message::Commit]);
    let sent = [head.clone(), big.clone(), tail].concat();
    let w = send(&l.source, sent.clone(), true);
    let got = read_to_end(&mut l.dest);
    let payload = big.len() - HEADER_LEN;
    assert_eq!(
        one_difference(&sent, &got),
        head.len() + HEADER_LEN + payload / 2
    );
    let corrupt = &got[head.len()..head.len() + big.len()];
    assert!(matches!(
        decode_message(corrupt),
        Err(ProtocolError::ChecksumMismatch { .. })
    ));
    assert!(l.relay.triggered());
    w.join().expect("writer").expect("source writes");
}

#[test]
fn corrupt_flips_one_bit_of_the_header_of_a_frame_without_payload() {
    let trigger = Trigger::Frame {
        kind: MessageType::Commit,
        nth: 1,
    };
    let mut l = link(Some(trigger), Fault::Corrupt);
    let head = frames(&[hello(), round_end(1)]);
    let commit = frame(&Message::Commit);
    let sent = [head.clone(), commit.clone(), frame(&Message::Cancelled)].concat();
    let w = send(&l.source, sent.clone(), true);
    let got = read_to_end(&mut l.dest);
    assert_eq!(one_difference(&sent, &got), head.len() + 14);
    assert!(matches!(
        decode_message(&got[head.len()..]),
        Err(ProtocolError::ChecksumMismatch { .. })
    ));
    w.join().expect("writer").expect("source writes");
}

#[test]
fn pause_holds_the_source_forwards_the_destination_and_passes_its_close_on() {
    let trigger = Trigger::Frame {
        kind: MessageType::Memory,
        nth: 2,
    };
    let mut l = link(Some(trigger), Fault::Pause);
    let before = frames(&[hello(), memory(4, 1)]);
    let after = frames(&[memory(4, 2), round_end(1)]);
    let w = send(&l.source, [before.clone(), after].concat(), false);
    assert_eq!(read_exactly(&mut l.dest, before.len()), before);
    assert!(l.relay.wait_triggered(PATIENCE));
    let abort = frame(&Message::Abort {
        reason: "paused".into(),
    });
    l.dest.write_all(&abort).expect("destination writes");
    assert_eq!(read_exactly(&mut l.source, abort.len()), abort);
    expect_silent(&mut l.dest, "the destination");
    drop(l.dest);
    expect_end(&mut l.source, "the source");
    assert_eq!(
        l.relay.bytes_forwarded(),
        (before.len() as u64, abort.len() as u64)
    );
    let _ = w.join().expect("writer");
}

#[test]
fn pause_passes_the_close_of_the_source_on() {
    let trigger = Trigger::Frame {
        kind: MessageType::Memory,
        nth: 2,
    };
    let mut l = link(Some(trigger), Fault::Pause);
    let before = frames(&[hello(), memory(4, 1)]);
    let after = frames(&[memory(4, 2), round_end(1)]);
    let w = send(&l.source, [before.clone(), after].concat(), false);
    assert_eq!(read_exactly(&mut l.dest, before.len()), before);
    assert!(l.relay.wait_triggered(PATIENCE));
    expect_silent(&mut l.dest, "the destination");
    w.join().expect("writer").expect("source writes");
    drop(l.source);
    expect_end(&mut l.dest, "the destination");
}

#[test]
fn a_stream_that_is_not_frames_is_forwarded_raw() {
    let trigger = Trigger::Frame {
        kind: MessageType::Hello,
        nth: 2,
    };
    let mut l = link(Some(trigger), Fault::Cut);
    // Less than a header, then silence: it must arrive without waiting for more.
    let first = [frame(&hello()), b"PING\n".to_vec()].concat();
    l.source.write_all(&first).expect("source writes");
    assert_eq!(read_exactly(&mut l.dest, first.len()), first);
    // A frame after that is just bytes: no second Hello, no cut.
    let second = frame(&hello());
    l.source.write_all(&second).expect("source writes");
    assert_eq!(read_exactly(&mut l.dest, second.len()), second);
    l.dest.write_all(b"PONG").expect("destination writes");
    assert_eq!(read_exactly(&mut l.source, 4), b"PONG");
    assert!(!l.relay.triggered());
    assert_eq!(l.relay.frames_seen(), [1]);
}

#[test]
fn drop_returns_when_nobody_connects() {
    let listener = TcpListener::bind(("127.0.0.1", 0)).expect("bind");
    let relay =
        Relay::start(listener.local_addr().expect("addr"), None, Fault::Stall).expect("start");
    assert!(!relay.triggered());
    drop(relay);
}

#[test]
fn a_destination_that_refuses_closes_the_source() {
    let addr = {
        let l = TcpListener::bind(("127.0.0.1", 0)).expect("bind");
        l.local_addr().expect("addr")
    };
    let relay = Relay::start(addr, None, Fault::None).expect("start");
    let mut source = TcpStream::connect(("127.0.0.1", relay.port())).expect("connect");
    source
        .set_read_timeout(Some(PATIENCE))
        .expect("read timeout");
    expect_end(&mut source, "the source");
    let error = relay.error().expect("an error");
    assert!(error.contains("connecting to the destination"), "{error}");
}
