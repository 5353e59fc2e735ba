//! The virtio-mmio transport (version 2). Registers are served on the MMIO bus (vCPU threads);
//! queue notifications arrive as ioeventfds and are handled by an event-manager subscriber on
//! the device thread; used-buffer interrupts go out through an irqfd.

use crate::GuestRam;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use event_manager::{EventOps, Events, MutEventSubscriber};
use virtio_queue::{Queue, QueueT};

use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};
use vmm_sys_util::timerfd::TimerFd;

use super::{VIRTIO_F_VERSION_1, VIRTIO_RING_F_EVENT_IDX, VirtioDevice};
use crate::bus::MmioDevice;
use crate::irq::IrqLine;

pub mod state;
pub use state::{MmioTransportState, VirtqueueState};

const MAGIC: u32 = 0x7472_6976; // "virt"
const VERSION: u32 = 2;
const VENDOR: u32 = 0x0056_4d4d; // "MMV"

/// Register offsets.
mod reg {
    pub const MAGIC: u64 = 0x000;
    pub const VERSION: u64 = 0x004;
    pub const DEVICE_ID: u64 = 0x008;
    pub const VENDOR_ID: u64 = 0x00c;
    pub const DEVICE_FEATURES: u64 = 0x010;
    pub const DEVICE_FEATURES_SEL: u64 = 0x014;
    pub const DRIVER_FEATURES: u64 = 0x020;
    pub const DRIVER_FEATURES_SEL: u64 = 0x024;
    pub const QUEUE_SEL: u64 = 0x030;
    pub const QUEUE_NUM_MAX: u64 = 0x034;
    pub const QUEUE_NUM: u64 = 0x038;
    pub const QUEUE_READY: u64 = 0x044;
    pub const QUEUE_NOTIFY: u64 = 0x050;
    pub const INTERRUPT_STATUS: u64 = 0x060;
    pub const INTERRUPT_ACK: u64 = 0x064;
    pub const STATUS: u64 = 0x070;
    pub const QUEUE_DESC_LOW: u64 = 0x080;
    pub const QUEUE_DESC_HIGH: u64 = 0x084;
    pub const QUEUE_AVAIL_LOW: u64 = 0x090;
    pub const QUEUE_AVAIL_HIGH: u64 = 0x094;
    pub const QUEUE_USED_LOW: u64 = 0x0a0;
    pub const QUEUE_USED_HIGH: u64 = 0x0a4;
    pub const CONFIG_GENERATION: u64 = 0x0fc;
    pub const CONFIG: u64 = 0x100;
}

/// Offset of the QueueNotify register, where ioeventfds are registered.
pub const QUEUE_NOTIFY_OFFSET: u64 = reg::QUEUE_NOTIFY;

/// Device status bits.
pub mod status {
    /// The guest found the device.
    pub const ACKNOWLEDGE: u32 = 1;
    /// The guest has a driver.
    pub const DRIVER: u32 = 2;
    /// The driver is ready.
    pub const DRIVER_OK: u32 = 4;
    /// Feature negotiation is complete.
    pub const FEATURES_OK: u32 = 8;
    /// The device hit an error it cannot recover from without a reset.
    pub const DEVICE_NEEDS_RESET: u32 = 0x40;
    /// The driver gave up.
    pub const FAILED: u32 = 0x80;
}

/// The most queues a device may have.
const MAX_QUEUES: usize = 8;

const _: () = assert!(MAX_QUEUES <= 32, "QueueSet holds 32 queues");

/// Queues still to serve, one bit per index (serving allocates nothing per notification).
#[derive(Debug, Default, Clone, Copy)]
struct QueueSet(u32);

impl QueueSet {
    /// Adds queue `i`; indices past the set's width are never queues.
    fn insert(&mut self, i: usize) {
        self.0 |= u32::try_from(i)
            .ok()
            .and_then(|i| 1u32.checked_shl(i))
            .unwrap_or(0);
    }

    /// Takes the lowest queue index out of the set.
    fn pop(&mut self) -> Option<usize> {
        if self.0 == 0 {
            return None;
        }
        let i = self.0.trailing_zeros() as usize;
        self.0 &= self.0 - 1;
        Some(i)
    }
}

/// Interrupt status bits.
const INT_VRING: u32 = 1;
const INT_CONFIG: u32 = 2;

/// The transport and its device.
pub struct MmioTransport {
    device: Box<dyn VirtioDevice>,
    mem: GuestRam,
    queues: Vec<Queue>,
    queue_evts: Vec<EventFd>,
    /// Queues the driver gave a size that is zero, too large or not a power of two.
    bad_size: Vec<bool>,
    queue_sel: u32,
    device_features_sel: u32,
    driver_features_sel: u32,
    acked_features: u64,
    status: u32,
    interrupt_status: Arc<AtomicU32>,
    irq: IrqLine,
    config_generation: u32,
    /// When a rate limiter stopped the device: how long until it can go on.
    retry: Option<std::time::Duration>,
}

impl std::fmt::Debug for MmioTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MmioTransport")
            .field("device_type", &self.device.device_type())
            .field("status", &self.status)
            .field("acked_features", &self.acked_features)
            .finish_non_exhaustive()
    }
}

impl MmioTransport {
    /// A transport for `device`, with its interrupt line.
    pub fn new(
        device: Box<dyn VirtioDevice>,
        mem: GuestRam,
        irq: IrqLine,
    ) -> std::io::Result<Self> {
        let sizes = device.queue_max_sizes().to_vec();
        if sizes.len() > MAX_QUEUES {
            return Err(std::io::Error::other(format!(
                "a device with {} queues; at most {MAX_QUEUES} are supported",
                sizes.len()
            )));
        }
        let mut queues = Vec::new();
        let mut queue_evts = Vec::new();
        for max in sizes {
            queues
                .push(Queue::new(max).map_err(|e| std::io::Error::other(format!("queue: {e:?}")))?);
            queue_evts.push(EventFd::new(EFD_NONBLOCK)?);
        }
        let bad_size = vec![false; queues.len()];
        Ok(Self {
            device,
            mem,
            queues,
            queue_evts,
            bad_size,
            queue_sel: 0,
            device_features_sel: 0,
            driver_features_sel: 0,
            acked_features: 0,
            status: 0,
            interrupt_status: Arc::new(AtomicU32::new(0)),
            irq,
            config_generation: 0,
            retry: None,
        })
    }

    /// The notification EventFd of each queue, to register as ioeventfds.
    pub fn queue_evts(&self) -> &[EventFd] {
        &self.queue_evts
    }

    /// The interrupt line, to register as an irqfd.
    pub fn irq(&self) -> &IrqLine {
        &self.irq
    }

    /// Whether the driver has finished setting the device up.
    pub fn is_activated(&self) -> bool {
        self.status & status::DRIVER_OK != 0 && self.status & status::DEVICE_NEEDS_RESET == 0
    }

    /// The device status register.
    pub fn status(&self) -> u32 {
        self.status
    }

    /// The features the driver accepted.
    pub fn acked_features(&self) -> u64 {
        self.acked_features
    }

    /// The device's counters.
    pub fn device_metrics(&self) -> Vec<(&'static str, u64)> {
        self.device.metrics()
    }

    /// The device, to save its own state.
    pub fn device(&self) -> &dyn VirtioDevice {
        self.device.as_ref()
    }

    /// The device, to change its backend (for example a drive's file) or restore its state.
    pub fn device_mut(&mut self) -> &mut dyn VirtioDevice {
        self.device.as_mut()
    }

    /// Swaps the device's backing file and tells the driver its config changed.
    pub fn swap_backing(&mut self, path: &std::path::Path) -> Result<(), String> {
        self.device.swap_backing(path)?;
        self.notify_config_change();
        Ok(())
    }

    /// Tells the driver the config space changed.
    pub fn notify_config_change(&mut self) {
        self.config_generation = self.config_generation.wrapping_add(1);
        self.raise(INT_CONFIG);
    }

    fn raise(&self, bit: u32) {
        self.interrupt_status.fetch_or(bit, Ordering::SeqCst);
        if let Err(e) = self.irq.trigger() {
            log::warn!("virtio interrupt: {e}");
        }
    }

    fn selected(&mut self) -> Option<&mut Queue> {
        self.queues.get_mut(self.queue_sel as usize)
    }

    fn reset(&mut self) {
        for q in &mut self.queues {
            q.reset();
        }
        self.bad_size.iter_mut().for_each(|b| *b = false);
        self.queue_sel = 0;
        self.device_features_sel = 0;
        self.driver_features_sel = 0;
        self.acked_features = 0;
        self.status = 0;
        self.interrupt_status.store(0, Ordering::SeqCst);
        self.device.reset();
    }

    fn set_status(&mut self, value: u32) {
        if value == 0 {
            self.reset();
            return;
        }
        let mut value = value;
        // FEATURES_OK only sticks when the negotiated features are acceptable.
        if value & status::FEATURES_OK != 0
            && self.status & status::FEATURES_OK == 0
            && self.acked_features & VIRTIO_F_VERSION_1 == 0
        {
            value &= !status::FEATURES_OK;
        }
        let becoming_ok = value & status::DRIVER_OK != 0 && self.status & status::DRIVER_OK == 0;
        self.status = value;
        if becoming_ok {
            let negotiated = self.status & status::FEATURES_OK != 0;
            let queues_ok = self
                .queues
                .iter()
                .zip(&self.bad_size)
                .all(|(q, bad)| !q.ready() || (!bad && q.is_valid(&self.mem)));
            if negotiated && queues_ok {
                let event_idx = self.acked_features & VIRTIO_RING_F_EVENT_IDX != 0;
                for q in &mut self.queues {
                    q.set_event_idx(event_idx);
                }
                self.device.activate(self.acked_features);
            } else {
                log::warn!(
                    "virtio device {} refused DRIVER_OK: {}",
                    self.device.device_type(),
                    if negotiated {
                        "a ready queue is invalid"
                    } else {
                        "features were not negotiated"
                    }
                );
                self.status |= status::DEVICE_NEEDS_RESET;
                self.raise(INT_CONFIG);
            }
        }
    }

    /// Serves queue `index` after a notification; notifications before DRIVER_OK are ignored.
    pub fn process(&mut self, index: usize) {
        if !self.is_activated() {
            return;
        }
        let Some(q) = self.queues.get_mut(index) else {
            return;
        };
        if !q.ready() {
            return;
        }
        let used = self.serve(index);
        self.interrupt_if_needed(used);
        self.collect_retry();
    }

    fn event_idx(&self) -> bool {
        self.acked_features & VIRTIO_RING_F_EVENT_IDX != 0
    }

    /// What the transport offers: the device's features and used/available event indices.
    fn offered_features(&self) -> u64 {
        self.device.avail_features() | VIRTIO_RING_F_EVENT_IDX
    }

    /// Lets the device serve queue `index` (and any other queue it serves along with it)
    /// until it stops making progress. With event indices, each pass ends by asking the
    /// driver to notify at the next available entry of every queue that moved, and a queue
    /// the driver added to meanwhile is served again: its notification may not come.
    fn serve(&mut self, index: usize) -> bool {
        let mut used = false;
        let mut todo = QueueSet::default();
        todo.insert(index);
        while let Some(i) = todo.pop() {
            let starts = self.next_avails();
            used |= self.device.process_queues(i, &mut self.queues, &self.mem);
            self.rearm_moved(&starts, &mut todo);
        }
        used
    }

    fn next_avails(&self) -> [u16; MAX_QUEUES] {
        let mut starts = [0u16; MAX_QUEUES];
        for (s, q) in starts.iter_mut().zip(&self.queues) {
            *s = q.next_avail();
        }
        starts
    }

    /// Rearms the queues that moved since `starts`; those with more available go on `todo`.
    fn rearm_moved(&mut self, starts: &[u16; MAX_QUEUES], todo: &mut QueueSet) {
        if !self.event_idx() {
            return;
        }
        for (j, (q, start)) in self.queues.iter_mut().zip(starts).enumerate() {
            if q.ready() && q.next_avail() != *start && Self::rearm(q, &self.mem) {
                todo.insert(j);
            }
        }
    }

    /// Sets the available event to where the device stopped; true when the driver has added
    /// more since.
    fn rearm(q: &mut Queue, mem: &GuestRam) -> bool {
        q.enable_notification(mem).unwrap_or(false)
    }

    /// Raises the used-buffer interrupt if buffers were used and, with event indices, some
    /// queue passed the driver's used event.
    fn interrupt_if_needed(&mut self, used: bool) {
        if !used {
            return;
        }
        let mut needed = false;
        for q in self.queues.iter_mut().filter(|q| q.ready()) {
            // Every queue is asked, so that each forgets what it has already signalled.
            needed |= q.needs_notification(&self.mem).unwrap_or(true);
        }
        if needed {
            self.raise(INT_VRING);
        }
    }

    fn collect_retry(&mut self) {
        if let Some(wait) = self.device.retry_after() {
            self.retry = Some(self.retry.map_or(wait, |r| r.min(wait)));
        }
    }

    /// The device's own descriptors for the device thread to watch.
    pub fn device_event_fds(&self) -> Vec<std::os::fd::RawFd> {
        self.device.event_fds()
    }

    /// Serves readiness of the device's own descriptor `fd`.
    pub fn process_device_event(&mut self, fd: usize) {
        if !self.is_activated() {
            return;
        }
        let starts = self.next_avails();
        let mut used = self.device.process_event(fd, &mut self.queues, &self.mem);
        let mut todo = QueueSet::default();
        self.rearm_moved(&starts, &mut todo);
        while let Some(i) = todo.pop() {
            used |= self.serve(i);
        }
        self.interrupt_if_needed(used);
        self.collect_retry();
    }

    /// Serves every queue (after a rate-limiter timer).
    pub fn process_all(&mut self) {
        for i in 0..self.queues.len() {
            self.process(i);
        }
    }

    /// How long until a throttled device can go on, if it is throttled. Taken once.
    pub fn take_retry(&mut self) -> Option<std::time::Duration> {
        self.retry.take()
    }

    fn read_reg(&mut self, offset: u64) -> u32 {
        match offset {
            reg::MAGIC => MAGIC,
            reg::VERSION => VERSION,
            reg::DEVICE_ID => self.device.device_type(),
            reg::VENDOR_ID => VENDOR,
            reg::DEVICE_FEATURES => match self.device_features_sel {
                0 => self.offered_features() as u32,
                1 => (self.offered_features() >> 32) as u32,
                _ => 0,
            },
            reg::QUEUE_NUM_MAX => self.selected().map_or(0, |q| u32::from(q.max_size())),
            reg::QUEUE_READY => self.selected().map_or(0, |q| u32::from(q.ready())),
            reg::INTERRUPT_STATUS => self.interrupt_status.load(Ordering::SeqCst),
            reg::STATUS => self.status,
            reg::CONFIG_GENERATION => self.config_generation,
            _ => 0,
        }
    }

    fn write_reg(&mut self, offset: u64, v: u32) {
        let setup_allowed = self.status & status::DRIVER_OK == 0;
        match offset {
            reg::DEVICE_FEATURES_SEL => self.device_features_sel = v,
            reg::DRIVER_FEATURES_SEL => self.driver_features_sel = v,
            reg::DRIVER_FEATURES if self.status & status::FEATURES_OK == 0 => {
                let shift = match self.driver_features_sel {
                    0 => 0,
                    1 => 32,
                    _ => return,
                };
                let mask = 0xffff_ffffu64 << shift;
                let offered = self.offered_features();
                self.acked_features =
                    (self.acked_features & !mask) | ((u64::from(v) << shift) & mask & offered);
            }
            reg::QUEUE_SEL => self.queue_sel = v,
            reg::QUEUE_NUM if setup_allowed => {
                let sel = self.queue_sel as usize;
                if let Some(q) = self.queues.get_mut(sel) {
                    // virtio-queue keeps the old size on a bad one; remember it was bad.
                    let ok = v != 0 && v <= u32::from(q.max_size()) && v.is_power_of_two();
                    if ok {
                        q.set_size(v as u16);
                    }
                    self.bad_size[sel] = !ok;
                }
            }
            reg::QUEUE_READY if setup_allowed => {
                if let Some(q) = self.selected() {
                    q.set_ready(v == 1);
                }
            }
            reg::QUEUE_NOTIFY => {
                // KVM normally completes this write through the ioeventfd; this covers a missed one.
                if let Some(e) = self.queue_evts.get(v as usize) {
                    let _ = e.write(1);
                }
            }
            reg::INTERRUPT_ACK => {
                self.interrupt_status.fetch_and(!v, Ordering::SeqCst);
            }
            reg::STATUS => self.set_status(v),
            reg::QUEUE_DESC_LOW
            | reg::QUEUE_DESC_HIGH
            | reg::QUEUE_AVAIL_LOW
            | reg::QUEUE_AVAIL_HIGH
            | reg::QUEUE_USED_LOW
            | reg::QUEUE_USED_HIGH
                if setup_allowed =>
            {
                let Some(q) = self.selected() else { return };
                if q.ready() {
                    return;
                }
                match offset {
                    reg::QUEUE_DESC_LOW => q.set_desc_table_address(Some(v), None),
                    reg::QUEUE_DESC_HIGH => q.set_desc_table_address(None, Some(v)),
                    reg::QUEUE_AVAIL_LOW => q.set_avail_ring_address(Some(v), None),
                    reg::QUEUE_AVAIL_HIGH => q.set_avail_ring_address(None, Some(v)),
                    reg::QUEUE_USED_LOW => q.set_used_ring_address(Some(v), None),
                    _ => q.set_used_ring_address(None, Some(v)),
                }
            }
            _ => log::debug!("virtio-mmio: ignored write of {v:#x} at {offset:#x}"),
        }
    }
}

impl MmioDevice for MmioTransport {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if offset >= reg::CONFIG {
            self.device.read_config(offset - reg::CONFIG, data);
            return;
        }
        data.fill(0);
        if data.len() == 4 {
            data.copy_from_slice(&self.read_reg(offset).to_le_bytes());
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset >= reg::CONFIG {
            self.device.write_config(offset - reg::CONFIG, data);
            return;
        }
        if let Ok(word) = <[u8; 4]>::try_from(data) {
            self.write_reg(offset, u32::from_le_bytes(word));
        }
    }
}

/// Event data of the rate-limiter timer.
const TIMER: u32 = u32::MAX;
/// Event data of the device's own descriptors start here.
const DEVICE_FD_BASE: u32 = 0x1000_0000;

/// The device thread's view of a transport: its queue EventFds and a rate-limiter timer, as an
/// event-manager subscriber.
#[derive(Debug)]
pub struct QueueEvents {
    transport: Arc<Mutex<MmioTransport>>,
    evts: Vec<EventFd>,
    timer: TimerFd,
}

impl QueueEvents {
    /// Watches every queue of a transport.
    pub fn new(transport: Arc<Mutex<MmioTransport>>) -> std::io::Result<Self> {
        let evts = {
            let t = transport
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            t.queue_evts()
                .iter()
                .map(EventFd::try_clone)
                .collect::<std::io::Result<Vec<_>>>()?
        };
        Ok(Self {
            transport,
            evts,
            timer: TimerFd::new()?,
        })
    }
}

impl MutEventSubscriber for QueueEvents {
    fn process(&mut self, events: Events, _ops: &mut EventOps<'_>) {
        let mut t = self
            .transport
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if events.data() == TIMER {
            let _ = self.timer.wait();
            t.process_all();
        } else if events.data() >= DEVICE_FD_BASE {
            t.process_device_event((events.data() - DEVICE_FD_BASE) as usize);
        } else {
            let index = events.data() as usize;
            if let Some(e) = self.evts.get(index) {
                let _ = e.read();
            }
            t.process(index);
        }
        // A rate limiter ran dry: come back when it has tokens again.
        if let Some(wait) = t.take_retry() {
            if let Err(e) = self
                .timer
                .reset(wait.max(std::time::Duration::from_micros(100)), None)
            {
                log::error!("virtio: cannot arm the rate-limiter timer: {e}");
            }
        }
    }

    fn init(&mut self, ops: &mut EventOps<'_>) {
        if let Err(err) = ops.add(Events::with_data(&self.timer, TIMER, EventSet::IN)) {
            log::error!("virtio: cannot watch the rate-limiter timer: {err:?}");
        }
        for (i, e) in self.evts.iter().enumerate() {
            if let Err(err) = ops.add(Events::with_data(e, i as u32, EventSet::IN)) {
                log::error!("virtio: cannot watch queue {i}: {err:?}");
            }
        }
        let fds = self
            .transport
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .device_event_fds();
        for (i, fd) in fds.iter().enumerate() {
            let ev = Events::with_data_raw(
                *fd,
                DEVICE_FD_BASE + i as u32,
                EventSet::IN | EventSet::EDGE_TRIGGERED,
            );
            if let Err(err) = ops.add(ev) {
                log::error!("virtio: cannot watch device descriptor {i}: {err:?}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::QueueSet;

    #[test]
    fn queue_set_pops_each_index_once_lowest_first() {
        let mut set = QueueSet::default();
        assert_eq!(set.pop(), None);
        for i in [5, 0, 7, 5, 31] {
            set.insert(i);
        }
        set.insert(32);
        set.insert(usize::MAX);
        let got: Vec<usize> = std::iter::from_fn(|| set.pop()).collect();
        assert_eq!(got, vec![0, 5, 7, 31]);
    }
}
