//! Frame-level checks: every rejection with its message, truncation at every length, every
//! single-bit flip, and lengths refused before they are read.

use super::*;

fn err(bytes: &[u8]) -> ProtocolError {
    read_message(&mut &bytes[..]).expect_err("refused")
}

#[test]
fn the_header_layout_is_as_documented() {
    let f = encode_message(&Message::RoundEnd { round: 3 }).unwrap();
    assert_eq!(f.len(), HEADER_LEN + 4);
    assert_eq!(&f[0..4], b"VMMG");
    assert_eq!(&f[4..6], &7u16.to_le_bytes());
    assert_eq!(&f[6..8], &[0, 0]);
    assert_eq!(&f[8..12], &4u32.to_le_bytes());
    assert_eq!(
        &f[12..20],
        &crate::crc64::crc64(&3u32.to_le_bytes()).to_le_bytes()
    );
    assert_eq!(&f[20..28], &crate::crc64::crc64(&f[..20]).to_le_bytes());
    assert_eq!(&f[28..], &3u32.to_le_bytes());
    assert_eq!(f, raw_frame(7, 0, &3u32.to_le_bytes()));
}

#[test]
fn an_empty_stream_is_closed() {
    let e = err(b"");
    assert!(matches!(e, ProtocolError::Closed));
    assert_eq!(e.to_string(), "the migration peer closed the connection");
}

#[test]
fn bad_magic_is_refused_naming_what_came() {
    let e = err(b"HTTP/1.1 400 Bad Request\r\n\r\nand more than a header's worth");
    assert_eq!(
        e.to_string(),
        "not a migration stream: a frame starts with \"HTTP/1.1\" instead of \"VMMG\""
    );
    // Even a short answer is named as not ours rather than as a truncated frame.
    let e = err(b"SSH");
    assert!(matches!(e, ProtocolError::BadMagic { .. }), "{e}");
    let e = err(&[0, 0xff]);
    assert_eq!(
        e.to_string(),
        "not a migration stream: a frame starts with \"\\x00\\xff\" instead of \"VMMG\""
    );
}

#[test]
fn a_corrupt_header_is_refused() {
    let mut f = encode_message(&Message::Commit).unwrap();
    f[10] ^= 0x01; // the length
    let e = err(&f);
    assert!(
        e.to_string().starts_with(
            "checksum mismatch in the frame header: the migration stream is corrupt (it carries 0x"
        ),
        "{e}"
    );
}

#[test]
fn a_corrupt_payload_is_refused() {
    let mut f = encode_message(&Message::RoundEnd { round: 9 }).unwrap();
    f[HEADER_LEN] ^= 0x80;
    let e = err(&f);
    assert!(
        e.to_string().starts_with(
            "checksum mismatch in the payload of a RoundEnd frame: the migration stream is corrupt"
        ),
        "{e}"
    );
}

#[test]
fn an_unknown_type_is_refused() {
    let e = err(&raw_frame(99, 0, b""));
    assert_eq!(e.to_string(), "unknown migration message type 99");
    let e = err(&raw_frame(0, 0, b""));
    assert_eq!(e.to_string(), "unknown migration message type 0");
}

#[test]
fn flags_are_refused() {
    let e = err(&raw_frame(MessageType::Commit as u16, 0x0100, b""));
    assert_eq!(
        e.to_string(),
        "a Commit frame has flags 0x0100; no flags are defined"
    );
}

#[test]
fn a_length_over_the_limit_is_refused_before_it_is_read() {
    // The frame is the header alone: had the reader tried to read the payload, the error
    // would be a truncation.
    let mut f = raw_frame(MessageType::Memory as u16, 0, b"");
    f[8..12].copy_from_slice(&u32::MAX.to_le_bytes());
    let crc = crate::crc64::crc64(&f[..20]);
    f[20..28].copy_from_slice(&crc.to_le_bytes());
    let e = err(&f);
    assert_eq!(
        e.to_string(),
        format!(
            "a Memory frame declares 4294967295 bytes of payload, over the limit of {}",
            MessageType::Memory.payload_limit()
        )
    );
    // Control messages have no payload at all.
    let e = err(&raw_frame(MessageType::Ready as u16, 0, b"x"));
    assert_eq!(
        e.to_string(),
        "a Ready frame declares 1 bytes of payload, over the limit of 0"
    );
}

#[test]
fn the_limits_are_what_the_design_says() {
    use MessageType as T;
    assert_eq!(T::Memory.payload_limit(), 4 + 1024 * (9 + 4096));
    assert_eq!(T::State.payload_limit(), 64 << 20);
    assert_eq!(T::Preflight.payload_limit(), 64 << 20);
    assert_eq!(T::Hello.payload_limit(), 12 + 256);
    assert_eq!(T::Refuse.payload_limit(), 2 + 16384);
    for t in [T::Ready, T::Loaded, T::Commit, T::Running, T::Cancelled] {
        assert_eq!(t.payload_limit(), 0, "{}", t.name());
    }
}

#[test]
fn a_declared_payload_that_never_comes_is_truncated() {
    // A State frame of a real 8 MiB state, of which only the header and 10 bytes arrive.
    let big = sections(&[("memory-map", 1, &vec![0xab; 8 << 20])]);
    let f = encode_message(&Message::State { sections: big }).unwrap();
    let e = err(&f[..HEADER_LEN + 10]);
    assert_eq!(
        e.to_string(),
        format!(
            "the migration stream is truncated: the peer closed it 10 bytes into the {}-byte payload of a State frame",
            f.len() - HEADER_LEN
        )
    );
}

#[test]
fn truncation_at_every_length_is_reported() {
    let messages = small_of_each();
    let stream = stream_of(&messages);
    // Where each frame ends.
    let mut ends = Vec::new();
    let mut at = 0;
    for m in &messages {
        at += encode_message(m).unwrap().len();
        ends.push(at);
    }
    for len in 0..=stream.len() {
        let (got, e) = read_all(&stream[..len]);
        let whole = ends.iter().filter(|&&end| end <= len).count();
        assert_eq!(got, messages[..whole], "length {len}");
        let start = if whole == 0 { 0 } else { ends[whole - 1] };
        if len == start {
            assert!(matches!(e, ProtocolError::Closed), "length {len}: {e}");
        } else {
            let ProtocolError::Truncated { part, needed, got } = &e else {
                panic!("length {len}: {e}");
            };
            let into = len - start;
            if into < HEADER_LEN {
                assert_eq!(
                    (part.as_str(), *needed, *got),
                    ("frame header", HEADER_LEN, into)
                );
            } else {
                let name = messages[whole].name();
                assert_eq!(part, &format!("payload of a {name} frame"), "length {len}");
                assert_eq!(*got, into - HEADER_LEN);
                assert_eq!(*needed, ends[whole] - start - HEADER_LEN);
            }
        }
    }
}

#[test]
fn every_single_bit_flip_is_detected() {
    let messages = small_of_each();
    let stream = stream_of(&messages);
    assert_eq!(stream.len(), 656, "the size DESIGN.md names");
    for bit in 0..stream.len() * 8 {
        let mut s = stream.clone();
        s[bit / 8] ^= 1 << (bit % 8);
        let (got, e) = read_all(&s);
        assert!(
            got.len() < messages.len(),
            "bit {bit}: all messages decoded"
        );
        assert_eq!(
            got,
            messages[..got.len()],
            "bit {bit}: a changed message passed"
        );
        assert!(
            matches!(
                e,
                ProtocolError::BadMagic { .. } | ProtocolError::ChecksumMismatch { .. }
            ),
            "bit {bit}: {e}"
        );
    }
}

#[test]
fn read_errors_are_reported_and_interrupts_retried() {
    struct Flaky {
        bytes: Vec<u8>,
        at: usize,
        calls: usize,
    }
    impl std::io::Read for Flaky {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            self.calls += 1;
            if self.calls % 2 == 1 {
                return Err(std::io::ErrorKind::Interrupted.into());
            }
            if self.at >= 6 && self.bytes.len() > 40 {
                return Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "stalled"));
            }
            let n = buf.len().min(3).min(self.bytes.len() - self.at);
            buf[..n].copy_from_slice(&self.bytes[self.at..self.at + n]);
            self.at += n;
            Ok(n)
        }
    }
    // Three bytes at a time with interrupts between: read whole.
    let m = Message::RoundEnd { round: 2 };
    let mut r = Flaky {
        bytes: encode_message(&m).unwrap(),
        at: 0,
        calls: 0,
    };
    assert_eq!(read_message(&mut r).unwrap(), m);
    // A read that times out is a read error, naming the cause.
    let mut r = Flaky {
        bytes: encode_message(&Message::Abort {
            reason: "a reason long enough".to_string(),
        })
        .unwrap(),
        at: 0,
        calls: 0,
    };
    let e = read_message(&mut r).unwrap_err();
    assert_eq!(
        e.to_string(),
        "cannot read from the migration peer: stalled"
    );
}

#[test]
fn write_errors_are_reported() {
    struct Broken;
    impl std::io::Write for Broken {
        fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
            Err(std::io::ErrorKind::BrokenPipe.into())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let e = write_message(&mut Broken, &Message::Commit).unwrap_err();
    assert!(matches!(e, ProtocolError::Write(_)), "{e}");
    assert!(
        e.to_string()
            .starts_with("cannot write to the migration peer: ")
    );
}

#[test]
fn fixing_checksums_reaches_the_payload_checks() {
    // A State whose container is damaged inside: with the frame's and the container's
    // checksums made right, the decoder reaches the container's name check.
    let mut s = encode_message(&small_of_each()[6]).unwrap();
    // The first section's name starts after the container header (18) and its length (2).
    s[HEADER_LEN + 20] = 0xff;
    let fixed = fix_checksums(&s);
    let e = err(&fixed);
    assert!(
        e.to_string().starts_with(
            "malformed State message: its sections: section 1 has a name that is not UTF-8"
        ),
        "{e}"
    );
    // And it leaves an intact stream as it is.
    let stream = stream_of(&one_of_each());
    assert_eq!(fix_checksums(&stream), stream);
}
