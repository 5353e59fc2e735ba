//! One hybrid-vsock connection: a host Unix stream paired with a guest stream socket, with
//! virtio-vsock's credit-based flow control in both directions.

use std::io::{ErrorKind, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Instant;

use super::packet::{HOST_CID, Header, TYPE_STREAM, op};

/// The receive buffer this end advertises for each connection: bytes from the guest that
/// may wait here for the host process.
pub const BUF_ALLOC: u32 = 256 * 1024;

/// Bytes from the guest on their way to a connection's host stream.
pub trait Payload {
    /// How many bytes.
    fn len(&self) -> usize;
    /// Writes as many bytes from the start as the stream takes now.
    fn write_to(&self, stream: &UnixStream) -> std::io::Result<usize>;
    /// Appends the bytes from `skip` on to `out`.
    fn append_to(&self, skip: usize, out: &mut Vec<u8>) -> Result<(), String>;
}

impl Payload for [u8] {
    fn len(&self) -> usize {
        <[u8]>::len(self)
    }

    fn write_to(&self, mut stream: &UnixStream) -> std::io::Result<usize> {
        stream.write(self)
    }

    fn append_to(&self, skip: usize, out: &mut Vec<u8>) -> Result<(), String> {
        out.extend_from_slice(self.get(skip..).unwrap_or_default());
        Ok(())
    }
}

/// Where a connection is in its life.
#[derive(Debug, PartialEq, Eq)]
pub enum State {
    /// A host process connected and has not finished its `CONNECT <port>` line (`line` holds
    /// what came so far); it is closed if the line is not complete by `deadline`.
    Handshake {
        /// The bytes of the line so far.
        line: Vec<u8>,
        /// When the connection is given up.
        deadline: Instant,
    },
    /// The guest was asked to accept (a REQUEST is due or sent).
    Requested,
    /// Data flows.
    Established,
}

/// Control packets owed to the guest.
pub mod due {
    /// Ask the guest to accept.
    pub const REQUEST: u8 = 1;
    /// Accept the guest's request.
    pub const RESPONSE: u8 = 2;
    /// Tell the guest how much it may send.
    pub const CREDIT_UPDATE: u8 = 4;
    /// Ask the guest for its credit.
    pub const CREDIT_REQUEST: u8 = 8;
    /// The host will send no more.
    pub const SHUTDOWN: u8 = 16;
    /// Reset, then forget the connection.
    pub const RST: u8 = 32;
}

/// What reading the host stream gave.
#[derive(Debug, PartialEq, Eq)]
pub enum ReadOutcome {
    /// This many bytes.
    Data(usize),
    /// Nothing now: the host stream is drained (`readable` is cleared) or the guest has no
    /// credit.
    WouldBlock,
    /// Nothing was read because the buffer was empty; nothing changed, so reading again into
    /// the same buffer cannot make progress.
    NoRoom,
    /// The host process will send no more.
    Eof,
}

/// A connection.
#[derive(Debug)]
pub struct Conn {
    /// The host side.
    pub stream: UnixStream,
    /// The host-side port.
    pub local_port: u32,
    /// The guest-side port.
    pub peer_port: u32,
    /// Its state.
    pub state: State,
    /// Control packets owed to the guest (`due::*`).
    pub due: u8,
    /// The host stream may have bytes to read.
    pub readable: bool,
    /// The host stream reached end of file.
    pub host_eof: bool,
    /// The guest will send no more; the host stream's write side is shut once drained.
    pub guest_shut_send: bool,
    /// The guest will receive no more.
    pub guest_shut_rcv: bool,
    /// Bytes read with the handshake line that belong to the stream.
    early: Vec<u8>,
    /// Guest bytes not yet written to the host stream.
    pending: Vec<u8>,
    /// Bytes of `pending` already written.
    pending_off: usize,
    /// Guest bytes written to the host stream, ever (wrapping).
    fwd_cnt: u32,
    /// `fwd_cnt` as last told to the guest.
    fwd_told: u32,
    /// Bytes sent to the guest, ever (wrapping).
    tx_cnt: u32,
    /// The guest's receive buffer.
    peer_buf_alloc: u32,
    /// Bytes the guest has consumed, ever (wrapping).
    peer_fwd_cnt: u32,
    /// The host write side has been shut.
    write_shut: bool,
    /// The device's epoll reports room on the host stream.
    pub watching_out: bool,
}

impl Conn {
    /// A connection in `state`.
    pub fn new(stream: UnixStream, local_port: u32, peer_port: u32, state: State) -> Self {
        Self {
            stream,
            local_port,
            peer_port,
            state,
            due: 0,
            readable: true,
            host_eof: false,
            guest_shut_send: false,
            guest_shut_rcv: false,
            early: Vec::new(),
            pending: Vec::new(),
            pending_off: 0,
            fwd_cnt: 0,
            fwd_told: 0,
            tx_cnt: 0,
            peer_buf_alloc: 0,
            peer_fwd_cnt: 0,
            write_shut: false,
            watching_out: false,
        }
    }

    /// A header for a packet of this connection, telling the guest our credit.
    pub fn header(&mut self, guest_cid: u64, op: u16, len: u32, flags: u32) -> Header {
        self.fwd_told = self.fwd_cnt;
        Header {
            src_cid: HOST_CID,
            dst_cid: guest_cid,
            src_port: self.local_port,
            dst_port: self.peer_port,
            len,
            kind: TYPE_STREAM,
            op,
            flags,
            buf_alloc: BUF_ALLOC,
            fwd_cnt: self.fwd_cnt,
        }
    }

    /// Takes the guest's credit from one of its headers.
    pub fn peer_credit(&mut self, h: &Header) {
        self.peer_buf_alloc = h.buf_alloc;
        self.peer_fwd_cnt = h.fwd_cnt;
    }

    /// How many bytes the guest can take now.
    pub fn credit(&self) -> u32 {
        let in_flight = self.tx_cnt.wrapping_sub(self.peer_fwd_cnt);
        self.peer_buf_alloc.saturating_sub(in_flight)
    }

    /// Whether data could go to the guest now (given receive buffers).
    pub fn wants_rx(&self) -> bool {
        self.state == State::Established
            && !self.guest_shut_rcv
            && !self.host_eof
            && (self.readable || !self.early.is_empty())
            && self.credit() > 0
    }

    /// Reads at most `buf.len()` bytes (and at most the guest's credit) from the host stream.
    /// Unless it returns `Data` or `NoRoom`, the connection stops wanting to send
    /// (`wants_rx` turns false): `WouldBlock` clears `readable` or finds no credit, and `Eof`
    /// sets `host_eof`. A caller that loops over connections relies on that to end.
    pub fn read(&mut self, buf: &mut [u8]) -> std::io::Result<ReadOutcome> {
        if buf.is_empty() {
            return Ok(ReadOutcome::NoRoom);
        }
        let max = buf.len().min(self.credit() as usize);
        if max == 0 {
            return Ok(ReadOutcome::WouldBlock);
        }
        let n = if self.early.is_empty() {
            loop {
                match self.stream.read(&mut buf[..max]) {
                    Ok(0) => {
                        self.host_eof = true;
                        self.due |= due::SHUTDOWN;
                        return Ok(ReadOutcome::Eof);
                    }
                    Ok(n) => break n,
                    Err(e) if e.kind() == ErrorKind::WouldBlock => {
                        self.readable = false;
                        return Ok(ReadOutcome::WouldBlock);
                    }
                    // Interrupted before reading anything: try again, so that `WouldBlock`
                    // always means the stream is drained.
                    Err(e) if e.kind() == ErrorKind::Interrupted => {}
                    Err(e) => return Err(e),
                }
            }
        } else {
            let n = max.min(self.early.len());
            buf[..n].copy_from_slice(&self.early[..n]);
            self.early.drain(..n);
            n
        };
        self.tx_cnt = self.tx_cnt.wrapping_add(n as u32);
        if self.credit() == 0 {
            self.due |= due::CREDIT_REQUEST;
        }
        Ok(ReadOutcome::Data(n))
    }

    /// Takes data from the guest. Refuses data beyond the credit this end gave. When nothing
    /// is waiting, the data goes to the host stream at once and only what it does not take is
    /// kept.
    pub fn push(&mut self, data: &(impl Payload + ?Sized)) -> Result<(), String> {
        let len = data.len();
        let waiting = self.waiting();
        if waiting + len > BUF_ALLOC as usize {
            return Err(format!(
                "the guest sent {} bytes beyond its credit",
                waiting + len - BUF_ALLOC as usize
            ));
        }
        if self.guest_shut_send {
            return Err("the guest sent data after shutting down sending".into());
        }
        let mut taken = 0;
        if waiting == 0 && len > 0 {
            self.pending.clear();
            self.pending_off = 0;
            match data.write_to(&self.stream) {
                Ok(n) => taken = n.min(len),
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::Interrupted) => {}
                Err(e) => return Err(format!("writing to the host: {e}")),
            }
            // At most 64 KiB.
            self.fwd_cnt = self.fwd_cnt.wrapping_add(taken as u32);
        }
        if taken < len {
            data.append_to(taken, &mut self.pending)?;
        }
        Ok(())
    }

    /// Writes waiting guest bytes to the host stream until it would block; then, if the
    /// guest has shut its sending side, shuts the stream's write side.
    pub fn flush(&mut self) -> std::io::Result<()> {
        while self.pending_off < self.pending.len() {
            match self.stream.write(&self.pending[self.pending_off..]) {
                Ok(0) => return Err(ErrorKind::WriteZero.into()),
                Ok(n) => {
                    self.pending_off += n;
                    self.fwd_cnt = self.fwd_cnt.wrapping_add(n as u32);
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        if self.pending_off == self.pending.len() {
            self.pending.clear();
            self.pending_off = 0;
            if self.guest_shut_send && !self.write_shut {
                self.write_shut = true;
                let _ = self.stream.shutdown(std::net::Shutdown::Write);
            }
        } else if self.pending_off > BUF_ALLOC as usize {
            self.pending.drain(..self.pending_off);
            self.pending_off = 0;
        }
        if self.fwd_cnt.wrapping_sub(self.fwd_told) >= self.credit_update_after() {
            self.due |= due::CREDIT_UPDATE;
        }
        Ok(())
    }

    /// How many consumed bytes the guest may go untold of. The guest is told once it sees
    /// less than one full packet (64 KiB) of room: few updates, and it never waits for one.
    /// Linux keeps no more in flight than its own buffer (its buf_alloc) even when ours is
    /// larger, so the room it sees is measured against the smaller of the two.
    fn credit_update_after(&self) -> u32 {
        let window = BUF_ALLOC.min(self.peer_buf_alloc);
        window.saturating_sub(super::packet::MAX_PAYLOAD).max(1)
    }

    /// Guest bytes waiting for the host stream.
    pub fn waiting(&self) -> usize {
        self.pending.len() - self.pending_off
    }

    /// Whether every guest byte reached the host stream.
    pub fn drained(&self) -> bool {
        self.pending_off == self.pending.len()
    }

    /// Feeds the handshake: reads what is there (at most a line's worth). Returns the port
    /// once the line is complete; bytes after it are kept for the guest.
    pub fn handshake(&mut self) -> Result<Option<u32>, String> {
        let State::Handshake { line, .. } = &mut self.state else {
            return Ok(None);
        };
        let mut buf = [0u8; super::packet::MAX_CONNECT_LINE];
        loop {
            let room = buf.len() - line.len().min(buf.len());
            if room == 0 {
                break;
            }
            match self.stream.read(&mut buf[..room]) {
                Ok(0) => return Err("the host process closed before CONNECT".into()),
                Ok(n) => {
                    line.extend_from_slice(&buf[..n]);
                    if buf[..n].contains(&b'\n') {
                        break;
                    }
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    self.readable = false;
                    break;
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(e.to_string()),
            }
        }
        match super::packet::parse_connect_line(line) {
            Ok(Some((port, used))) => {
                let rest = line[used..].to_vec();
                self.early = rest;
                self.state = State::Requested;
                self.due |= due::REQUEST;
                Ok(Some(port))
            }
            Ok(None) => Ok(None),
            Err(e) => Err(e.to_string()),
        }
    }

    /// The guest accepted: tell the host process which port it got.
    pub fn established(&mut self) -> std::io::Result<()> {
        self.state = State::Established;
        let line = format!("OK {}\n", self.local_port);
        // A fresh socket has room for a line; a full one means the peer misbehaves.
        match self.stream.write(line.as_bytes()) {
            Ok(n) if n == line.len() => Ok(()),
            Ok(_) => Err(ErrorKind::WriteZero.into()),
            Err(e) => Err(e),
        }
    }

    /// A reply to a packet with no connection: reset.
    pub fn rst_for(h: &Header) -> Header {
        Header {
            src_cid: h.dst_cid,
            dst_cid: h.src_cid,
            src_port: h.dst_port,
            dst_port: h.src_port,
            kind: TYPE_STREAM,
            op: op::RST,
            ..Header::default()
        }
    }
}

/// connect(2) on a non-blocking Unix stream socket.
pub fn connect_nonblocking(path: &Path) -> std::io::Result<UnixStream> {
    use std::os::unix::ffi::OsStrExt;
    let bytes = path.as_os_str().as_bytes();
    // SAFETY: sockaddr_un is plain old data; all zeroes is a valid value.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    if bytes.len() >= addr.sun_path.len() {
        return Err(std::io::Error::new(
            ErrorKind::InvalidInput,
            "socket path too long",
        ));
    }
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    for (d, s) in addr.sun_path.iter_mut().zip(bytes) {
        *d = *s as libc::c_char;
    }
    // SAFETY: socket(2) has no memory arguments; the result is checked.
    let fd = unsafe {
        libc::socket(
            libc::AF_UNIX,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: fd is a new socket owned by nothing else.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    let len = (size_of::<libc::sa_family_t>() + bytes.len() + 1) as libc::socklen_t;
    // SAFETY: addr is a valid sockaddr_un of at least `len` bytes, and fd is open.
    let rc = unsafe {
        libc::connect(
            owned.as_raw_fd(),
            (&raw const addr).cast::<libc::sockaddr>(),
            len,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(UnixStream::from(owned))
}
