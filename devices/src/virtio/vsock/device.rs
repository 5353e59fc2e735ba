//! The vsock device with Firecracker's hybrid backend: guest streams become Unix streams.
//! - A host process connects to `uds_path`, sends `CONNECT <port>\n`, and once the guest's
//!   listener on `port` accepts, receives `OK <hostport>\n` and then the stream.
//! - A guest connecting to host port P reaches the Unix socket `<uds_path>_P`.
//!
//! The listener, every connection and the handshake timer sit in the device's own epoll (edge
//! triggered), and that epoll is the one descriptor the device thread watches for it. A host
//! process has [`HANDSHAKE_TIMEOUT`] to send its `CONNECT` line, else it is closed.

use crate::GuestRam;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::Instant;

use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vm_memory::{Bytes, GuestMemoryBackend};
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};

use super::conn::{Conn, Payload, ReadOutcome, State, connect_nonblocking, due};
pub use super::deadline::HANDSHAKE_TIMEOUT;
use super::deadline::HandshakeTimer;
use super::packet::{
    HDR_LEN, Header, MAX_PAYLOAD, PacketError, SHUTDOWN_RCV, SHUTDOWN_SEND, TYPE_STREAM, op,
    parse_guest_header, payload_len,
};
use crate::virtio::{
    Desc, VIRTIO_F_VERSION_1, VirtioDevice, descriptors, device_type,
    iov::{self, IovError},
    read_config_bytes,
};

const RX: usize = 0;
const TX: usize = 1;
/// The event queue, which carries transport resets.
pub(super) const EVT: usize = 2;
const QUEUE_SIZES: [u16; 3] = [256, 256, 256];
/// The most connections at once; more are refused.
pub const MAX_CONNECTIONS: usize = 1024;
/// Resets owed for packets of unknown connections; more are dropped.
const MAX_STRAY_RESETS: usize = 256;
/// Host ports handed to host-initiated connections start here.
const FIRST_HOST_PORT: u32 = 1 << 30;
/// Payload bytes per packet to the guest.
const RX_CHUNK: usize = 64 * 1024;

const TOKEN_LISTENER: u64 = 0;
const TOKEN_TIMER: u64 = 1;
const FIRST_CONN_TOKEN: u64 = 2;

/// How to build a vsock device.
#[derive(Debug, Clone)]
pub struct VsockConfig {
    /// The guest's context id (3 or more).
    pub guest_cid: u64,
    /// The Unix socket host processes connect to.
    pub uds_path: PathBuf,
}

/// Why a vsock device cannot be built.
#[derive(Debug, thiserror::Error)]
pub enum VsockError {
    /// The socket path cannot be bound.
    #[error("vsock uds_path: {0}")]
    Bind(#[from] crate::unix_socket::BindError),
    /// epoll or eventfd failed.
    #[error("vsock: {0}")]
    Io(#[from] std::io::Error),
}

/// A virtio-vsock device.
#[derive(Debug)]
pub struct Vsock {
    pub(super) cid: u64,
    uds_path: PathBuf,
    listener: UnixListener,
    epoll: Epoll,
    conns: BTreeMap<u64, Conn>,
    by_ports: HashMap<(u32, u32), u64>,
    next_token: u64,
    next_port: u32,
    last_served: u64,
    stray_resets: VecDeque<Header>,
    scratch: Vec<u8>,
    handshake_timer: HandshakeTimer,
    stats: Stats,
    /// Restored from a snapshot: the guest is owed a transport reset event.
    pub(super) reset_pending: bool,
}

#[derive(Debug, Default, Clone, Copy)]
struct Stats {
    rx_packets: u64,
    rx_bytes: u64,
    tx_packets: u64,
    tx_bytes: u64,
    conns_added: u64,
    conns_removed: u64,
    conns_killed: u64,
    handshake_timeouts: u64,
    rx_fails: u64,
    tx_fails: u64,
}

impl Vsock {
    /// Binds `uds_path` (a stale socket file is replaced; a live one is refused).
    pub fn new(cfg: &VsockConfig) -> Result<Self, VsockError> {
        let listener = crate::unix_socket::bind(&cfg.uds_path)?;
        listener.set_nonblocking(true)?;
        let epoll = Epoll::new()?;
        let et = EventSet::IN | EventSet::EDGE_TRIGGERED;
        epoll.ctl(
            ControlOperation::Add,
            listener.as_raw_fd(),
            EpollEvent::new(et, TOKEN_LISTENER),
        )?;
        let handshake_timer = HandshakeTimer::new()?;
        epoll.ctl(
            ControlOperation::Add,
            handshake_timer.as_raw_fd(),
            EpollEvent::new(et, TOKEN_TIMER),
        )?;
        Ok(Self {
            cid: cfg.guest_cid,
            uds_path: cfg.uds_path.clone(),
            listener,
            epoll,
            conns: BTreeMap::new(),
            by_ports: HashMap::new(),
            next_token: FIRST_CONN_TOKEN,
            next_port: FIRST_HOST_PORT,
            last_served: 0,
            stray_resets: VecDeque::new(),
            scratch: vec![0; HDR_LEN + RX_CHUNK],
            handshake_timer,
            stats: Stats::default(),
            reset_pending: false,
        })
    }

    /// Live connections.
    pub fn connections(&self) -> usize {
        self.conns.len()
    }

    fn add_conn(&mut self, conn: Conn) -> std::io::Result<u64> {
        let token = self.next_token;
        self.next_token += 1;
        self.epoll.ctl(
            ControlOperation::Add,
            conn.stream.as_raw_fd(),
            EpollEvent::new(interest(false), token),
        )?;
        if !matches!(conn.state, State::Handshake { .. }) {
            self.by_ports
                .insert((conn.local_port, conn.peer_port), token);
        }
        self.conns.insert(token, conn);
        self.stats.conns_added += 1;
        Ok(token)
    }

    fn remove(&mut self, token: u64) {
        if let Some(c) = self.conns.remove(&token) {
            let _ = self.epoll.ctl(
                ControlOperation::Delete,
                c.stream.as_raw_fd(),
                EpollEvent::default(),
            );
            if self.by_ports.get(&(c.local_port, c.peer_port)) == Some(&token) {
                self.by_ports.remove(&(c.local_port, c.peer_port));
            }
            self.stats.conns_removed += 1;
        }
    }

    /// Resets a connection: the RST goes out with the next receive buffer, then it is gone.
    fn kill(&mut self, token: u64, why: &str) {
        log::debug!("vsock: resetting a connection: {why}");
        self.stats.conns_killed += 1;
        match self.conns.get_mut(&token) {
            Some(c) if !matches!(c.state, State::Handshake { .. }) => c.due = due::RST,
            _ => self.remove(token),
        }
    }

    fn accept(&mut self) {
        loop {
            match self.listener.accept() {
                Ok((stream, _)) => {
                    if self.conns.len() >= MAX_CONNECTIONS {
                        log::warn!("vsock: {MAX_CONNECTIONS} connections open; refusing another");
                        continue;
                    }
                    if stream.set_nonblocking(true).is_err() {
                        continue;
                    }
                    let deadline = match self.handshake_timer.start(Instant::now()) {
                        Ok(d) => d,
                        Err(e) => {
                            // Without the timer it could hold its slot for ever.
                            log::warn!("vsock: cannot arm the handshake timer: {e}");
                            continue;
                        }
                    };
                    let state = State::Handshake {
                        line: Vec::new(),
                        deadline,
                    };
                    let conn = Conn::new(stream, 0, 0, state);
                    if let Err(e) = self.add_conn(conn) {
                        log::warn!("vsock: cannot watch a connection: {e}");
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => break,
            }
        }
    }

    /// Closes the host connections whose `CONNECT` line was not complete by `now`, then arms
    /// the timer for the earliest deadline left. Time comes in as `now` so that tests can
    /// expire deadlines without waiting for them.
    pub(super) fn expire_handshakes(&mut self, now: Instant) {
        let expired: Vec<u64> = self
            .conns
            .iter()
            .filter(
                |(_, c)| matches!(c.state, State::Handshake { deadline, .. } if deadline <= now),
            )
            .map(|(t, _)| *t)
            .collect();
        for token in expired {
            log::debug!("vsock: a host process did not send its CONNECT line in time");
            self.stats.handshake_timeouts += 1;
            self.remove(token);
        }
        let next = self
            .conns
            .values()
            .filter_map(|c| match c.state {
                State::Handshake { deadline, .. } => Some(deadline),
                _ => None,
            })
            .min();
        if let Err(e) = self.handshake_timer.arm(next, now) {
            log::error!("vsock: cannot arm the handshake timer: {e}");
        }
    }

    /// Gives host processes `timeout` for their `CONNECT` line from now on.
    #[cfg(test)]
    pub(super) fn set_handshake_timeout(&mut self, timeout: std::time::Duration) {
        self.handshake_timer.timeout = timeout;
    }

    /// The deadline the handshake timer is armed for.
    #[cfg(test)]
    pub(super) fn handshake_timer_deadline(&self) -> Option<Instant> {
        self.handshake_timer.armed_for()
    }

    fn free_host_port(&mut self) -> u32 {
        loop {
            let p = self.next_port;
            self.next_port = self.next_port.checked_add(1).unwrap_or(FIRST_HOST_PORT);
            if !self.by_ports.keys().any(|(local, _)| *local == p) {
                return p;
            }
        }
    }

    /// Reads the device's epoll until it is empty and acts on what it reports.
    fn poll(&mut self) {
        let mut events = [EpollEvent::default(); 64];
        loop {
            let n = match self.epoll.wait(0, &mut events) {
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    log::error!("vsock: epoll_wait: {e}");
                    return;
                }
            };
            for ev in &events[..n] {
                match ev.data() {
                    TOKEN_LISTENER => self.accept(),
                    TOKEN_TIMER => self.expire_handshakes(Instant::now()),
                    token => self.conn_event(token, ev.event_set()),
                }
            }
            // Until empty: a connection accepted above may report at once.
            if n == 0 {
                return;
            }
        }
    }

    fn conn_event(&mut self, token: u64, set: EventSet) {
        let Some(c) = self.conns.get_mut(&token) else {
            return;
        };
        if set
            .intersects(EventSet::IN | EventSet::READ_HANG_UP | EventSet::HANG_UP | EventSet::ERROR)
        {
            c.readable = true;
        }
        if matches!(c.state, State::Handshake { .. }) {
            match c.handshake() {
                Ok(Some(port)) => {
                    let local = self.free_host_port();
                    if let Some(c) = self.conns.get_mut(&token) {
                        c.local_port = local;
                        c.peer_port = port;
                    }
                    self.by_ports.insert((local, port), token);
                }
                Ok(None) => {}
                Err(e) => {
                    log::debug!("vsock: host handshake refused: {e}");
                    self.remove(token);
                }
            }
            return;
        }
        if set.contains(EventSet::OUT) || !c.drained() {
            match c.flush() {
                Ok(()) => self.after_flush(token),
                Err(e) => self.kill(token, &format!("writing to the host: {e}")),
            }
        }
    }

    /// A connection whose guest side has closed is reset once its bytes reached the host.
    /// The host stream is watched for room only while guest bytes wait for it: a reader
    /// would otherwise wake the device each time it frees some.
    fn after_flush(&mut self, token: u64) {
        let Some(c) = self.conns.get_mut(&token) else {
            return;
        };
        if c.guest_shut_send && c.guest_shut_rcv && c.drained() {
            c.due |= due::RST;
        }
        let want_out = !c.drained();
        if want_out != c.watching_out {
            let ev = EpollEvent::new(interest(want_out), token);
            match self
                .epoll
                .ctl(ControlOperation::Modify, c.stream.as_raw_fd(), ev)
            {
                Ok(()) => c.watching_out = want_out,
                Err(e) => self.kill(token, &format!("cannot watch the host stream: {e}")),
            }
        }
    }

    /// Connects a guest's request for host port `port` to `<uds_path>_<port>`, without
    /// blocking: a listener with a full backlog counts as refusing.
    fn connect_host(&self, port: u32) -> std::io::Result<UnixStream> {
        let mut path = self.uds_path.clone().into_os_string();
        path.push(format!("_{port}"));
        connect_nonblocking(Path::new(&path))
    }

    fn handle_tx_packet(&mut self, h: Header, payload: &(impl Payload + ?Sized)) {
        if h.kind != TYPE_STREAM {
            self.stray_reset(&h);
            return;
        }
        let Some(&token) = self.by_ports.get(&(h.dst_port, h.src_port)) else {
            match h.op {
                op::REQUEST => self.guest_connect(&h),
                op::RST => {}
                _ => self.stray_reset(&h),
            }
            return;
        };
        let Some(c) = self.conns.get_mut(&token) else {
            return;
        };
        c.peer_credit(&h);
        let outcome: Result<(), String> = match h.op {
            op::RST => {
                self.remove(token);
                return;
            }
            op::RESPONSE if c.state == State::Requested => c
                .established()
                .map_err(|e| format!("telling the host process: {e}")),
            op::RW if c.state == State::Established => {
                self.stats.tx_bytes += payload.len() as u64;
                c.push(payload)
                    .and_then(|()| c.flush().map_err(|e| format!("writing to the host: {e}")))
            }
            op::SHUTDOWN => {
                c.guest_shut_rcv |= h.flags & SHUTDOWN_RCV != 0;
                c.guest_shut_send |= h.flags & SHUTDOWN_SEND != 0;
                c.flush().map_err(|e| format!("writing to the host: {e}"))
            }
            op::CREDIT_UPDATE => Ok(()),
            op::CREDIT_REQUEST => {
                c.due |= due::CREDIT_UPDATE;
                Ok(())
            }
            other => Err(format!("unexpected op {other} in state {:?}", c.state)),
        };
        match outcome {
            Ok(()) => self.after_flush(token),
            Err(e) => self.kill(token, &e),
        }
    }

    fn guest_connect(&mut self, h: &Header) {
        if self.conns.len() >= MAX_CONNECTIONS {
            self.stray_reset(h);
            return;
        }
        match self.connect_host(h.dst_port) {
            Ok(stream) => {
                let mut c = Conn::new(stream, h.dst_port, h.src_port, State::Established);
                c.peer_credit(h);
                c.due = due::RESPONSE;
                if self.add_conn(c).is_err() {
                    self.stray_reset(h);
                }
            }
            Err(e) => {
                log::debug!("vsock: guest connect to host port {}: {e}", h.dst_port);
                self.stray_reset(h);
            }
        }
    }

    fn stray_reset(&mut self, h: &Header) {
        if self.stray_resets.len() < MAX_STRAY_RESETS {
            self.stray_resets.push_back(Conn::rst_for(h));
        }
    }

    fn transmit(&mut self, queue: &mut Queue, mem: &GuestRam) -> bool {
        let mut used = false;
        while let Some(chain) = queue.pop_descriptor_chain(mem) {
            let head = chain.head_index();
            match descriptors(chain, (HDR_LEN as u64) + u64::from(MAX_PAYLOAD)) {
                Ok(descs) => match read_guest_packet(mem, &descs, self.cid) {
                    Ok((h, payload)) => {
                        self.stats.tx_packets += 1;
                        self.handle_tx_packet(h, &payload);
                    }
                    Err(e) => {
                        log::debug!("vsock: dropped a guest packet: {e}");
                        self.stats.tx_fails += 1;
                    }
                },
                Err(_) => self.stats.tx_fails += 1,
            }
            if queue.add_used(mem, head, 0).is_err() {
                break;
            }
            used = true;
        }
        used
    }

    /// The next connection with a packet for the guest, taking connections in turn. With
    /// `data` false only control packets count.
    fn next_token_with_work(&self, data: bool) -> Option<u64> {
        let after = self.conns.range(self.last_served + 1..);
        let before = self.conns.range(..=self.last_served);
        after
            .chain(before)
            .find(|(_, c)| c.due != 0 || (data && c.wants_rx()))
            .map(|(t, _)| *t)
    }

    fn has_rx_work(&self) -> bool {
        !self.stray_resets.is_empty() || self.next_token_with_work(true).is_some()
    }

    /// Builds the next packet, for a receive buffer of `room` bytes (at least a header), into
    /// `self.scratch`; returns its length, or None if nothing is left to send in such a buffer.
    /// A buffer with no room for payload carries control packets only: data waits for a
    /// larger one.
    ///
    /// Each turn of the loop either returns or makes the connection it tried want nothing
    /// more (`Conn::read`), or owe a reset that a later turn returns; so it ends.
    fn next_rx_packet(&mut self, room: usize) -> Option<usize> {
        if let Some(h) = self.stray_resets.pop_front() {
            self.scratch[..HDR_LEN].copy_from_slice(&h.to_bytes());
            return Some(HDR_LEN);
        }
        let max = room.saturating_sub(HDR_LEN).min(RX_CHUNK);
        loop {
            let token = self.next_token_with_work(max > 0)?;
            self.last_served = token;
            let cid = self.cid;
            let c = self.conns.get_mut(&token)?;
            if c.due != 0 {
                let (op, flags, clear) = control_packet(c.due);
                let h = c.header(cid, op, 0, flags);
                c.due &= !clear;
                self.scratch[..HDR_LEN].copy_from_slice(&h.to_bytes());
                if op == op::RST {
                    self.remove(token);
                }
                return Some(HDR_LEN);
            }
            match c.read(&mut self.scratch[HDR_LEN..HDR_LEN + max]) {
                Ok(ReadOutcome::Data(n)) => {
                    let h = c.header(cid, op::RW, n as u32, 0);
                    self.scratch[..HDR_LEN].copy_from_slice(&h.to_bytes());
                    self.stats.rx_bytes += n as u64;
                    return Some(HDR_LEN + n);
                }
                Ok(ReadOutcome::WouldBlock | ReadOutcome::Eof) => {}
                // Not reached: data is only tried with room for it.
                Ok(ReadOutcome::NoRoom) => return None,
                Err(e) => self.kill(token, &format!("reading from the host: {e}")),
            }
        }
    }

    fn fill_rx(&mut self, queue: &mut Queue, mem: &GuestRam) -> bool {
        let mut used = false;
        while self.has_rx_work() {
            let Some(chain) = queue.pop_descriptor_chain(mem) else {
                break;
            };
            let head = chain.head_index();
            let descs = match descriptors(chain, u64::from(u32::MAX)) {
                Ok(d) if d.iter().all(|d| d.write) => d,
                _ => {
                    self.stats.rx_fails += 1;
                    if queue.add_used(mem, head, 0).is_err() {
                        break;
                    }
                    used = true;
                    continue;
                }
            };
            let room: usize = descs.iter().map(|d| d.len as usize).sum();
            if room < HDR_LEN {
                self.stats.rx_fails += 1;
                if queue.add_used(mem, head, 0).is_err() {
                    break;
                }
                used = true;
                continue;
            }
            let Some(len) = self.next_rx_packet(room) else {
                queue.go_to_previous_position();
                break;
            };
            let mut off = 0;
            for d in &descs {
                if off == len {
                    break;
                }
                let n = (d.len as usize).min(len - off);
                if mem
                    .write_slice(&self.scratch[off..off + n], d.addr)
                    .is_err()
                {
                    self.stats.rx_fails += 1;
                    break;
                }
                off += n;
            }
            self.stats.rx_packets += 1;
            if queue.add_used(mem, head, off as u32).is_err() {
                break;
            }
            used = true;
        }
        used
    }
}

/// A packet's payload where the guest put it.
struct GuestPayload<'a> {
    mem: &'a GuestRam,
    bufs: Vec<Desc>,
    len: usize,
}

impl Payload for GuestPayload<'_> {
    fn len(&self) -> usize {
        self.len
    }

    fn write_to(&self, stream: &UnixStream) -> std::io::Result<usize> {
        match iov::write_from_guest(stream.as_raw_fd(), self.mem, &self.bufs) {
            Ok(n) => Ok(n),
            // Copied into the connection's buffer instead.
            Err(IovError::NotContiguous) => Ok(0),
            Err(IovError::Io(e)) => Err(e),
        }
    }

    fn append_to(&self, skip: usize, out: &mut Vec<u8>) -> Result<(), String> {
        if iov::copy_from_guest(self.mem, &self.bufs, skip, out) {
            Ok(())
        } else {
            Err("the payload is outside guest memory".into())
        }
    }
}

/// Why a packet from the guest is dropped.
#[derive(Debug, thiserror::Error)]
enum TxError {
    #[error("{0}")]
    Packet(#[from] PacketError),
    #[error("the driver wrote to a device-writable buffer or outside guest memory")]
    Buffers,
}

/// Reads the header of the packet in the guest's buffers `descs`, and finds its payload
/// without copying it.
fn read_guest_packet<'a>(
    mem: &'a GuestRam,
    descs: &[Desc],
    guest_cid: u64,
) -> Result<(Header, GuestPayload<'a>), TxError> {
    if descs.iter().any(|d| d.write) {
        return Err(TxError::Buffers);
    }
    let total: usize = descs.iter().map(|d| d.len as usize).sum();
    let mut head = Vec::with_capacity(HDR_LEN);
    if !iov::copy_from_guest(mem, &iov::sub_range(descs, 0, HDR_LEN), 0, &mut head) {
        return Err(TxError::Buffers);
    }
    let head: &[u8; HDR_LEN] = head
        .as_slice()
        .try_into()
        .map_err(|_| PacketError::Short(total))?;
    let h = parse_guest_header(head, guest_cid)?;
    let len = payload_len(&h, total - HDR_LEN)?;
    let bufs = iov::sub_range(descs, HDR_LEN, len);
    if bufs
        .iter()
        .any(|d| !mem.check_range(d.addr, d.len as usize))
    {
        return Err(TxError::Buffers);
    }
    Ok((h, GuestPayload { mem, bufs, len }))
}

/// What the device's epoll watches on a connection's host stream.
fn interest(out: bool) -> EventSet {
    let base = EventSet::IN | EventSet::READ_HANG_UP | EventSet::EDGE_TRIGGERED;
    if out { base | EventSet::OUT } else { base }
}

/// The control packet to send for a set of `due` flags, and the flags it settles.
fn control_packet(flags: u8) -> (u16, u32, u8) {
    if flags & due::RST != 0 {
        (op::RST, 0, u8::MAX)
    } else if flags & due::REQUEST != 0 {
        (op::REQUEST, 0, due::REQUEST)
    } else if flags & due::RESPONSE != 0 {
        (op::RESPONSE, 0, due::RESPONSE | due::CREDIT_UPDATE)
    } else if flags & due::SHUTDOWN != 0 {
        (op::SHUTDOWN, SHUTDOWN_SEND, due::SHUTDOWN)
    } else if flags & due::CREDIT_UPDATE != 0 {
        (op::CREDIT_UPDATE, 0, due::CREDIT_UPDATE)
    } else {
        (op::CREDIT_REQUEST, 0, due::CREDIT_REQUEST)
    }
}

impl Drop for Vsock {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.uds_path);
    }
}

impl VirtioDevice for Vsock {
    fn device_type(&self) -> u32 {
        device_type::VSOCK
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &QUEUE_SIZES
    }

    fn avail_features(&self) -> u64 {
        VIRTIO_F_VERSION_1
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.cid.to_le_bytes(), offset, data);
    }

    fn process_queue(&mut self, index: usize, queue: &mut Queue, mem: &GuestRam) -> bool {
        // Host events arrive through the device's epoll (`process_event`), not here.
        match index {
            RX => self.fill_rx(queue, mem),
            TX => self.transmit(queue, mem),
            EVT => self.send_reset_event(queue, mem),
            _ => false,
        }
    }

    fn process_queues(&mut self, index: usize, queues: &mut [Queue], mem: &GuestRam) -> bool {
        let Some(q) = queues.get_mut(index) else {
            return false;
        };
        let mut used = self.process_queue(index, q, mem);
        // What the guest sent may call for replies (responses, credit updates, resets).
        if index == TX && self.has_rx_work() {
            if let Some(rx) = queues.get_mut(RX).filter(|q| q.ready()) {
                used |= self.fill_rx(rx, mem);
            }
        }
        used
    }

    fn reset(&mut self) {
        // A driver that starts again has no sockets to reset.
        self.reset_pending = false;
        let tokens: Vec<u64> = self.conns.keys().copied().collect();
        for t in tokens {
            self.remove(t);
        }
        self.stray_resets.clear();
    }

    fn event_fds(&self) -> Vec<RawFd> {
        vec![self.epoll.as_raw_fd()]
    }

    fn process_event(&mut self, _fd: usize, queues: &mut [Queue], mem: &GuestRam) -> bool {
        self.poll();
        match queues.get_mut(RX) {
            Some(q) if q.ready() => self.fill_rx(q, mem),
            _ => false,
        }
    }

    fn metrics(&self) -> Vec<(&'static str, u64)> {
        let s = self.stats;
        vec![
            ("rx_packets_count", s.rx_packets),
            ("rx_bytes_count", s.rx_bytes),
            ("tx_packets_count", s.tx_packets),
            ("tx_bytes_count", s.tx_bytes),
            ("conns_added", s.conns_added),
            ("conns_removed", s.conns_removed),
            ("conns_killed", s.conns_killed),
            ("handshake_timeouts", s.handshake_timeouts),
            ("rx_fails", s.rx_fails),
            ("tx_fails", s.tx_fails),
            ("conns_open", self.conns.len() as u64),
            (
                "conns_waiting_for_guest_credit",
                self.conns
                    .values()
                    .filter(|c| c.readable && c.credit() == 0)
                    .count() as u64,
            ),
            (
                "bytes_waiting_for_host",
                self.conns.values().map(|c| c.waiting() as u64).sum(),
            ),
            (
                "packets_due",
                (self.stray_resets.len() + self.conns.values().filter(|c| c.due != 0).count())
                    as u64,
            ),
        ]
    }
}
