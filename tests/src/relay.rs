//! A TCP relay that puts one fault into a live migration's stream, for the migration tests.
//! The source VMM connects to the relay, the relay connects to the destination VMM, and at a
//! chosen frame it cuts, stalls, corrupts or pauses the stream.
//!
//! It reads the frames of both directions (the 28-byte header of migration/DESIGN.md "Wire
//! protocol", then exactly the payload it declares) only to know where each frame starts; it
//! checks no checksum. A direction whose bytes stop looking like a frame header (no `VMMG`) is
//! forwarded raw from there on. Payloads stream through in chunks of at most 256 KiB, so a
//! 4 MiB `Memory` frame is never held whole.

use std::collections::HashMap;
use std::fmt;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use migration::protocol::{FRAME_MAGIC, HEADER_LEN, MessageType};

/// The most bytes read and written at once.
const CHUNK: usize = 256 * 1024;
/// How long the relay tries to reach the destination once the source has connected.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How often a held source is checked for hanging up (milliseconds), and so how soon a
/// paused relay notices that it must end.
const HANGUP_POLL_MS: i32 = 20;
/// The bit `Fault::Corrupt` flips.
const FLIP: u8 = 0x10;

/// Which frame sets the fault off. A trigger fires at most once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    /// The `nth` (counting from 1) frame of type `kind` that the source sends.
    Frame {
        /// The message type.
        kind: MessageType,
        /// Which one of them.
        nth: u32,
    },
    /// The `nth` (counting from 1) frame of type `kind` that the destination sends.
    Reply {
        /// The message type.
        kind: MessageType,
        /// Which one of them.
        nth: u32,
    },
    /// The source's `RoundEnd` frame whose round is this one.
    RoundEnd(u32),
}

/// What happens at the trigger frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Nothing: the trigger is only observed (`Relay::triggered`).
    None,
    /// Before the trigger frame is forwarded, both connections are shut down (both
    /// directions): each peer reads to the end of what was forwarded before it, then the end
    /// of the stream; its later writes fail.
    Cut,
    /// From the trigger frame on, nothing is forwarded in either direction (not even that
    /// frame) and nothing more is read, but both connections stay open until the relay is
    /// dropped: a network that goes silent.
    Stall,
    /// One bit of the trigger frame is flipped (in the middle byte of its payload, or in
    /// header byte 14, in the payload checksum, if it has no payload), and relaying goes on.
    Corrupt,
    /// From the trigger frame on, source to destination is held (nothing more is forwarded
    /// or read, so the source's writes back up), destination to source still flows, and when
    /// either peer closes, the other connection is closed too. A source that closes while
    /// its kernel still has bytes queued behind the held ones is seen only when that kernel
    /// gives up on them.
    Pause,
}

/// The relay: a listening socket on 127.0.0.1 and, once the source connects, its threads.
/// Dropping it closes every connection and joins every thread.
#[derive(Debug)]
pub struct Relay {
    addr: SocketAddr,
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

/// A direction of the relayed stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Dir {
    ToDestination = 0,
    ToSource = 1,
}

impl fmt::Display for Dir {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Dir::ToDestination => "source to destination",
            Dir::ToSource => "destination to source",
        })
    }
}

/// `Shared::halt`: relaying as usual.
const FLOWING: u8 = 0;
/// `Shared::halt`: `Fault::Stall` fired.
const STALLED: u8 = 1;
/// `Shared::halt`: `Fault::Pause` fired.
const PAUSED: u8 = 2;

/// What the relay's threads and its owner share.
#[derive(Debug)]
struct Shared {
    trigger: Option<Trigger>,
    fault: Fault,
    /// `FLOWING`, `STALLED` or `PAUSED`; read before every write.
    halt: AtomicU8,
    /// Set once the connections are shut down (a cut, an error, a close while paused, or
    /// the relay dropped): every thread then ends.
    closed: AtomicBool,
    /// Bytes forwarded, indexed by `Dir`.
    forwarded: [AtomicU64; 2],
    state: Mutex<State>,
    /// Signalled when the trigger fires and when the relay closes.
    changed: Condvar,
}

#[derive(Debug, Default)]
struct State {
    triggered: bool,
    closed: bool,
    /// The types of the frames seen, indexed by `Dir`.
    frames: [Vec<u16>; 2],
    /// A handle on each connection, to shut them down from any thread.
    streams: Vec<TcpStream>,
    /// The first thing that went wrong, for diagnostics.
    error: Option<String>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A thread that panicked holding the lock left nothing half-done that matters here.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn note_error(&self, why: String) {
        let mut s = self.lock();
        if s.error.is_none() && !s.closed {
            s.error = Some(why);
        }
    }

    /// Shuts both connections down, both ways, and wakes every waiting thread. Threads
    /// blocked in a read see the end of the stream; in a write, an error.
    fn close(&self) {
        let streams = {
            let mut s = self.lock();
            s.closed = true;
            self.closed.store(true, Ordering::SeqCst);
            std::mem::take(&mut s.streams)
        };
        for s in &streams {
            let _ = s.shutdown(Shutdown::Both);
        }
        self.changed.notify_all();
    }

    fn fire(&self) {
        self.lock().triggered = true;
        self.changed.notify_all();
    }

    fn wait_closed(&self) {
        let s = self.lock();
        let _s = self
            .changed
            .wait_while(s, |s| !s.closed)
            .unwrap_or_else(PoisonError::into_inner);
    }
}

impl Relay {
    /// Listens on 127.0.0.1 (a free port) for one connection from the source; when it
    /// comes, connects to `destination` and relays between them, with `fault` at `trigger`.
    pub fn start(
        destination: SocketAddr,
        trigger: Option<Trigger>,
        fault: Fault,
    ) -> io::Result<Relay> {
        let listener = TcpListener::bind(("127.0.0.1", 0))?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            trigger,
            fault,
            halt: AtomicU8::new(FLOWING),
            closed: AtomicBool::new(false),
            forwarded: [AtomicU64::new(0), AtomicU64::new(0)],
            state: Mutex::new(State::default()),
            changed: Condvar::new(),
        });
        let s = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name("relay".into())
            .spawn(move || serve(listener, destination, &s))?;
        Ok(Relay {
            addr,
            shared,
            thread: Some(thread),
        })
    }

    /// The port the source connects to, on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Whether the trigger frame has been seen.
    pub fn triggered(&self) -> bool {
        self.shared.lock().triggered
    }

    /// Waits up to `timeout` for the trigger frame; whether it has been seen.
    pub fn wait_triggered(&self, timeout: Duration) -> bool {
        let s = self.shared.lock();
        let (s, _) = self
            .shared
            .changed
            .wait_timeout_while(s, timeout, |s| !s.triggered)
            .unwrap_or_else(PoisonError::into_inner);
        s.triggered
    }

    /// The bytes forwarded so far: source to destination, destination to source.
    pub fn bytes_forwarded(&self) -> (u64, u64) {
        let f = &self.shared.forwarded;
        (
            f[Dir::ToDestination as usize].load(Ordering::SeqCst),
            f[Dir::ToSource as usize].load(Ordering::SeqCst),
        )
    }

    /// The message types of the frames the source sent, in order (each counted when its
    /// header arrived, whether or not it was forwarded).
    pub fn frames_seen(&self) -> Vec<u16> {
        self.shared.lock().frames[Dir::ToDestination as usize].clone()
    }

    /// The message types of the frames the destination sent, in order.
    pub fn replies_seen(&self) -> Vec<u16> {
        self.shared.lock().frames[Dir::ToSource as usize].clone()
    }

    /// What went wrong in the relay, if anything did (the destination refused the
    /// connection, a peer reset it), for a test's failure message.
    pub fn error(&self) -> Option<String> {
        self.shared.lock().error.clone()
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.shared.close();
        // The accept may still be waiting for a source that never came: be that source.
        // Once it has a connection it sees that the relay is closed and ends. (If the
        // listener is gone, the connection is refused, which is as good.)
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The relay's first thread: accepts the source, connects to the destination, relays
/// destination to source on a second thread and source to destination on this one.
fn serve(listener: TcpListener, destination: SocketAddr, shared: &Arc<Shared>) {
    let source = match listener.accept() {
        Ok((s, _)) => s,
        Err(e) => return shared.note_error(format!("accepting the source: {e}")),
    };
    // One connection only.
    drop(listener);
    if shared.closed.load(Ordering::SeqCst) {
        return;
    }
    let dest = match TcpStream::connect_timeout(&destination, CONNECT_TIMEOUT) {
        Ok(d) => d,
        Err(e) => {
            shared.note_error(format!("connecting to the destination {destination}: {e}"));
            let _ = source.shutdown(Shutdown::Both);
            return;
        }
    };
    match start_pumps(source, dest, shared) {
        Ok(()) => {}
        Err(e) => {
            shared.note_error(format!("starting the relay: {e}"));
            shared.close();
        }
    }
    // Both directions are over: let the connections go.
    drop(std::mem::take(&mut shared.lock().streams));
}

fn start_pumps(source: TcpStream, dest: TcpStream, shared: &Arc<Shared>) -> io::Result<()> {
    // The relay must not add Nagle's delay to the protocol's small messages.
    source.set_nodelay(true)?;
    dest.set_nodelay(true)?;
    let up = Pump::new(
        Dir::ToDestination,
        source.try_clone()?,
        dest.try_clone()?,
        shared,
    );
    let down = Pump::new(
        Dir::ToSource,
        dest.try_clone()?,
        source.try_clone()?,
        shared,
    );
    {
        let mut s = shared.lock();
        if s.closed {
            // Dropped while connecting.
            let _ = source.shutdown(Shutdown::Both);
            let _ = dest.shutdown(Shutdown::Both);
            return Ok(());
        }
        s.streams = vec![source, dest];
    }
    let down = std::thread::Builder::new()
        .name("relay-down".into())
        .spawn(move || down.run())?;
    up.run();
    let _ = down.join();
    Ok(())
}

/// Why a pump stopped before the end of its stream.
#[derive(Debug)]
enum Stop {
    /// The relay closed (or was told to stay silent until dropped): nothing to report.
    Closed,
    /// A read or a write failed.
    Io(io::Error),
}

impl From<io::Error> for Stop {
    fn from(e: io::Error) -> Self {
        Stop::Io(e)
    }
}

/// One direction: reads frames from `from`, writes them to `to`.
struct Pump {
    dir: Dir,
    from: TcpStream,
    to: TcpStream,
    shared: Arc<Shared>,
    /// How many frames of each type this direction has carried.
    counts: HashMap<u16, u32>,
    /// Whether this direction's trigger has fired.
    fired: bool,
    buf: Vec<u8>,
}

impl Pump {
    fn new(dir: Dir, from: TcpStream, to: TcpStream, shared: &Arc<Shared>) -> Pump {
        Pump {
            dir,
            from,
            to,
            shared: Arc::clone(shared),
            counts: HashMap::new(),
            fired: false,
            buf: vec![0; CHUNK],
        }
    }

    fn run(mut self) {
        match self.frames() {
            Ok(()) | Err(Stop::Closed) => {}
            Err(Stop::Io(e)) => {
                self.shared.note_error(format!("{}: {e}", self.dir));
                self.shared.close();
            }
        }
    }

    /// Relays frame after frame until the stream ends.
    fn frames(&mut self) -> Result<(), Stop> {
        loop {
            // The header, checking the magic on each part that arrives: a peer that is not
            // a migration peer may send less than a header and wait for an answer.
            let mut have = 0;
            while have < HEADER_LEN {
                let n = read_some(&mut self.from, &mut self.buf[have..HEADER_LEN])?;
                if n == 0 {
                    self.forward(have)?;
                    return self.end_of_stream();
                }
                have += n;
                let m = have.min(FRAME_MAGIC.len());
                if self.buf[..m] != FRAME_MAGIC[..m] {
                    self.forward(have)?;
                    return self.raw();
                }
            }
            let kind = u16::from_le_bytes([self.buf[4], self.buf[5]]);
            let len = u32::from_le_bytes([self.buf[8], self.buf[9], self.buf[10], self.buf[11]]);
            let len = len as usize;
            // A `RoundEnd`'s round decides whether it is the trigger: read it first.
            if kind == MessageType::RoundEnd as u16 && len == 4 {
                let n = read_full(&mut self.from, &mut self.buf[HEADER_LEN..HEADER_LEN + 4])?;
                have += n;
                if n < 4 {
                    self.forward(have)?;
                    return self.end_of_stream();
                }
            }
            let mut left = len - (have - HEADER_LEN);
            let mut corrupt_at = None;
            if self.is_trigger(kind, have) {
                self.fired = true;
                match self.shared.fault {
                    Fault::None => self.shared.fire(),
                    Fault::Cut => {
                        self.shared.fire();
                        self.shared.close();
                        return Ok(());
                    }
                    Fault::Stall => {
                        self.shared.halt.store(STALLED, Ordering::SeqCst);
                        self.shared.fire();
                        // Not a byte more is read from a halted direction.
                        self.gate()?;
                    }
                    Fault::Pause => {
                        self.shared.halt.store(PAUSED, Ordering::SeqCst);
                        self.shared.fire();
                        // Not a byte more is read from a halted direction.
                        self.gate()?;
                    }
                    Fault::Corrupt => {
                        corrupt_at = Some(if len == 0 { 14 } else { HEADER_LEN + len / 2 });
                        self.shared.fire();
                    }
                }
            }
            // The rest of the frame, chunk by chunk; the first chunk carries the header.
            let mut at = 0; // the frame offset of self.buf[0]
            loop {
                if left > 0 {
                    let want = left.min(CHUNK - have);
                    let n = read_some(&mut self.from, &mut self.buf[have..have + want])?;
                    if n == 0 {
                        self.forward(have)?;
                        return self.end_of_stream();
                    }
                    have += n;
                    left -= n;
                }
                match corrupt_at {
                    Some(c) if (at..at + have).contains(&c) => self.buf[c - at] ^= FLIP,
                    _ => {}
                }
                self.forward(have)?;
                at += have;
                have = 0;
                if left == 0 {
                    break;
                }
            }
        }
    }

    /// Counts the frame whose header (and, for a `RoundEnd`, round) is in `self.buf[..have]`
    /// and says whether it is the trigger.
    fn is_trigger(&mut self, kind: u16, have: usize) -> bool {
        self.shared.lock().frames[self.dir as usize].push(kind);
        let nth = self.counts.entry(kind).or_insert(0);
        *nth += 1;
        if self.fired {
            return false;
        }
        match (self.shared.trigger, self.dir) {
            (Some(Trigger::Frame { kind: k, nth: n }), Dir::ToDestination)
            | (Some(Trigger::Reply { kind: k, nth: n }), Dir::ToSource) => {
                k as u16 == kind && n == *nth
            }
            (Some(Trigger::RoundEnd(r)), Dir::ToDestination) => {
                kind == MessageType::RoundEnd as u16
                    && self.buf[HEADER_LEN..have] == r.to_le_bytes()
            }
            _ => false,
        }
    }

    /// Relays the rest of a stream that is not made of frames.
    fn raw(&mut self) -> Result<(), Stop> {
        loop {
            let n = read_some(&mut self.from, &mut self.buf)?;
            if n == 0 {
                return self.end_of_stream();
            }
            self.forward(n)?;
        }
    }

    /// Writes `self.buf[..n]` on, unless the relay is halted for this direction.
    fn forward(&mut self, n: usize) -> Result<(), Stop> {
        if n == 0 {
            return Ok(());
        }
        self.gate()?;
        self.to.write_all(&self.buf[..n])?;
        self.shared.forwarded[self.dir as usize].fetch_add(n as u64, Ordering::SeqCst);
        Ok(())
    }

    /// Returns once this direction may go on: at once, unless the relay is halted for it
    /// (then when the relay closes, with `Stop::Closed`) or closed.
    fn gate(&mut self) -> Result<(), Stop> {
        match self.shared.halt.load(Ordering::SeqCst) {
            STALLED => {
                self.shared.wait_closed();
                return Err(Stop::Closed);
            }
            PAUSED if self.dir == Dir::ToDestination => return self.hold(),
            _ => {}
        }
        if self.shared.closed.load(Ordering::SeqCst) {
            return Err(Stop::Closed);
        }
        Ok(())
    }

    /// Paused: holds the source's bytes, reads no more, and closes everything when the
    /// source hangs up (the destination's hang-up is seen by the other pump).
    fn hold(&mut self) -> Result<(), Stop> {
        while !self.shared.closed.load(Ordering::SeqCst) {
            if hung_up(&self.from, HANGUP_POLL_MS) {
                self.shared.close();
            }
        }
        Err(Stop::Closed)
    }

    /// The peer this pump reads from closed its side.
    fn end_of_stream(&mut self) -> Result<(), Stop> {
        match self.shared.halt.load(Ordering::SeqCst) {
            // Silent until dropped, ends included.
            STALLED => self.shared.wait_closed(),
            PAUSED => self.shared.close(),
            // Pass the half-close on; the other direction may still have things to say.
            _ => {
                let _ = self.to.shutdown(Shutdown::Write);
            }
        }
        Ok(())
    }
}

/// One read, retried if interrupted; 0 at the end of the stream.
fn read_some(r: &mut TcpStream, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        match r.read(buf) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            other => return other,
        }
    }
}

/// Fills `buf` unless the stream ends first; how much arrived.
fn read_full(r: &mut TcpStream, buf: &mut [u8]) -> io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        let n = read_some(r, &mut buf[got..])?;
        if n == 0 {
            break;
        }
        got += n;
    }
    Ok(got)
}

/// Whether the peer of `s` closed its side (or the connection failed), waiting up to
/// `timeout_ms` for it; unread bytes do not hide it.
fn hung_up(s: &TcpStream, timeout_ms: i32) -> bool {
    let mut p = libc::pollfd {
        fd: s.as_raw_fd(),
        events: libc::POLLRDHUP,
        revents: 0,
    };
    // SAFETY: `p` is one valid pollfd that outlives the call, and the count says one.
    let r = unsafe { libc::poll(&mut p, 1, timeout_ms) };
    r > 0 && p.revents & (libc::POLLRDHUP | libc::POLLHUP | libc::POLLERR) != 0
}

#[cfg(test)]
mod tests;
