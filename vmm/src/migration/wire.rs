//! One end of a migration connection: every message, sent or received, passes through the
//! protocol's phase machine, so neither side can act on (or send) a message out of order;
//! the bytes each way are counted. Guest pages take the protocol's fast paths, and the
//! engine's `Transport` is implemented on top. Portable: tested over loopback sockets.

use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::time::Duration;

use migration::engine::{PageRecord, Transport, TransportError};
use migration::protocol::{
    Incoming, Message, Phase, ProtocolError, Side, encode_memory_frame, encode_message,
    read_incoming,
};

/// A connection and where its conversation is.
#[derive(Debug)]
pub struct Conn<S> {
    stream: S,
    side: Side,
    phase: Phase,
    /// The last frame read, its allocation reused.
    inbuf: Vec<u8>,
    /// The last frame written, its allocation reused.
    outbuf: Vec<u8>,
    /// Bytes written.
    pub bytes_out: u64,
    /// Bytes read.
    pub bytes_in: u64,
}

/// A stream that counts what is read through it.
struct Counted<'a, S> {
    inner: &'a mut S,
    n: &'a mut u64,
}

impl<S: Read> Read for Counted<'_, S> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        *self.n += n as u64;
        Ok(n)
    }
}

fn other(side: Side) -> Side {
    match side {
        Side::Source => Side::Destination,
        Side::Destination => Side::Source,
    }
}

impl<S: Read + Write> Conn<S> {
    /// A connection at the start of the conversation, as `side`.
    pub fn new(stream: S, side: Side) -> Self {
        Self {
            stream,
            side,
            phase: Phase::START,
            inbuf: Vec::new(),
            outbuf: Vec::new(),
            bytes_out: 0,
            bytes_in: 0,
        }
    }

    /// Where the conversation is.
    pub fn phase(&self) -> Phase {
        self.phase
    }

    /// The stream.
    pub fn stream(&self) -> &S {
        &self.stream
    }

    /// Sends `m`, if the phase allows this side to send it now.
    pub fn send(&mut self, m: &Message) -> Result<(), ProtocolError> {
        let next = self.phase.next(self.side, m)?;
        let frame = encode_message(m)?;
        self.write_frame(&frame)?;
        self.phase = next;
        Ok(())
    }

    fn write_frame(&mut self, frame: &[u8]) -> Result<(), ProtocolError> {
        self.stream.write_all(frame).map_err(ProtocolError::Write)?;
        self.bytes_out += frame.len() as u64;
        Ok(())
    }

    /// Sends guest pages (a `Memory` message).
    pub fn send_pages(&mut self, records: &[PageRecord<'_>]) -> Result<(), ProtocolError> {
        let next = self
            .phase
            .next(self.side, &Message::Memory { pages: Vec::new() })?;
        let mut out = std::mem::take(&mut self.outbuf);
        let r = encode_memory_frame(records, &mut out).and_then(|()| self.write_frame(&out));
        self.outbuf = out;
        r?;
        self.phase = next;
        Ok(())
    }

    /// Receives the next message, if the phase allows the peer to send it now.
    pub fn recv(&mut self) -> Result<Message, ProtocolError> {
        match self.recv_incoming()? {
            Incoming::Message(m) => Ok(m),
            Incoming::Pages(_) => Err(ProtocolError::Unexpected {
                expected: "a message other than Memory".into(),
                got: "Memory".into(),
            }),
        }
    }

    /// Receives the next message, leaving guest pages in the connection's buffer.
    pub fn recv_incoming(&mut self) -> Result<Incoming<'_>, ProtocolError> {
        let mut counted = Counted {
            inner: &mut self.stream,
            n: &mut self.bytes_in,
        };
        let incoming = read_incoming(&mut counted, &mut self.inbuf)?;
        let peer = other(self.side);
        self.phase = match &incoming {
            Incoming::Pages(_) => self
                .phase
                .next(peer, &Message::Memory { pages: Vec::new() })?,
            Incoming::Message(m) => self.phase.next(peer, m)?,
        };
        Ok(incoming)
    }
}

/// How long a peer may take to take our bytes or to answer before the connection counts as
/// stalled. The slowest legitimate answer is a destination building a large guest.
pub const STALL_TIMEOUT: Duration = Duration::from_secs(20);

/// The engine's `Transport` over a source's connection.
#[derive(Debug)]
pub struct PageSender<'a, S> {
    /// The connection.
    pub conn: &'a mut Conn<S>,
}

fn transport_error(e: ProtocolError) -> TransportError {
    match e {
        ProtocolError::Write(io) if is_timeout(&io) => TransportError::Stalled(STALL_TIMEOUT),
        ProtocolError::Write(io) => TransportError::Io(io),
        ProtocolError::Closed => TransportError::Closed,
        other => TransportError::Protocol(other.to_string()),
    }
}

/// Whether an I/O error is a socket timeout (`SO_SNDTIMEO`/`SO_RCVTIMEO` ran out).
pub fn is_timeout(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
    )
}

/// Whether the peer has sent something that waits to be read (without reading it).
fn peer_spoke(stream: &impl AsRawFd) -> bool {
    let mut byte = 0u8;
    // SAFETY: recv(2) with MSG_PEEK into one valid byte; it neither blocks nor consumes.
    let n = unsafe {
        libc::recv(
            stream.as_raw_fd(),
            (&raw mut byte).cast(),
            1,
            libc::MSG_PEEK | libc::MSG_DONTWAIT,
        )
    };
    n > 0
}

impl<S: Read + Write + AsRawFd> Transport for PageSender<'_, S> {
    fn send_pages(&mut self, batch: &[PageRecord<'_>]) -> Result<(), TransportError> {
        // A destination that gave up says why before it closes: stop at once, with its
        // reason, instead of writing on until the connection breaks.
        if peer_spoke(&self.conn.stream) {
            return Err(match self.conn.recv() {
                Ok(Message::Abort { reason }) => TransportError::Refused(reason),
                Ok(m) => TransportError::Protocol(format!(
                    "unexpected {} from the destination",
                    m.name()
                )),
                Err(e) => transport_error(e),
            });
        }
        self.conn.send_pages(batch).map_err(transport_error)
    }

    fn end_round(&mut self, round: u32) -> Result<(), TransportError> {
        self.conn
            .send(&Message::RoundEnd { round })
            .map_err(transport_error)
    }

    fn flush(&mut self) -> Result<(), TransportError> {
        self.conn
            .stream
            .flush()
            .map_err(|e| transport_error(ProtocolError::Write(e)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use migration::engine::PageData;
    use std::os::unix::net::UnixStream;

    #[test]
    fn both_ends_follow_the_phases_and_count_the_bytes() {
        let (a, b) = UnixStream::pair().unwrap();
        let mut src = Conn::new(a, Side::Source);
        let mut dst = Conn::new(b, Side::Destination);
        src.send(&migration::protocol::hello("test")).unwrap();
        assert!(matches!(dst.recv().unwrap(), Message::Hello { .. }));
        dst.send(&Message::Welcome {
            protocol_version: 1,
        })
        .unwrap();
        assert!(matches!(src.recv().unwrap(), Message::Welcome { .. }));
        // Out of order: pages before the pre-flight are refused on the sending side.
        let page = vec![1u8; 4096];
        let records = [PageRecord {
            index: 0,
            data: PageData::Bytes(&page),
        }];
        let e = src.send_pages(&records).unwrap_err();
        assert!(e.to_string().contains("Memory from the source"), "{e}");
        src.send(&Message::Preflight {
            sections: migration::SectionSet::new(),
        })
        .unwrap();
        dst.recv().unwrap();
        dst.send(&Message::Ready).unwrap();
        src.recv().unwrap();
        let mut t = PageSender { conn: &mut src };
        t.send_pages(&records).unwrap();
        t.end_round(1).unwrap();
        match dst.recv_incoming().unwrap() {
            Incoming::Pages(p) => assert_eq!(p.iter().next(), Some((0, Some(&page[..])))),
            Incoming::Message(m) => panic!("{}", m.name()),
        }
        assert_eq!(dst.recv().unwrap(), Message::RoundEnd { round: 1 });
        assert_eq!(src.bytes_out, dst.bytes_in);
        assert!(src.bytes_out > 4096);
        // A destination that aborts stops the sender at its next batch, with its reason.
        dst.send(&Message::Abort {
            reason: "disk full".into(),
        })
        .unwrap();
        let mut t = PageSender { conn: &mut src };
        let e = t.send_pages(&records).unwrap_err();
        assert!(e.to_string().contains("refused: disk full"), "{e}");
    }

    #[test]
    fn a_message_out_of_order_from_the_peer_is_refused() {
        let (a, b) = UnixStream::pair().unwrap();
        let mut dst = Conn::new(b, Side::Destination);
        // A raw writer that ignores the phases.
        let mut raw = a;
        migration::protocol::write_message(&mut raw, &Message::Commit).unwrap();
        let e = dst.recv().unwrap_err();
        assert!(
            e.to_string().contains("unexpected Commit from the source"),
            "{e}"
        );
    }
}
