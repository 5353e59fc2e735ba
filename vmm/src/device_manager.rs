//! virtio-mmio devices of a VM: each gets a slot (address and SPI), an irqfd, an ioeventfd per
//! queue, a place on the MMIO bus and a node in the device tree. Queue notifications are served
//! by one device thread running an event-manager loop.

use devices::GuestRam;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;

use event_manager::{EventManager, EventOps, Events, MutEventSubscriber, SubscriberOps};
use kvm_ioctls::{IoEventAddress, VmFd};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

use arch::fdt::MmioDeviceInfo;
use arch::layout::{VIRTIO_MMIO_SIZE, VIRTIO_SPI_BASE, virtio_mmio_addr};
use devices::virtio::VirtioDevice;
use devices::virtio::mmio::{MmioTransport, QUEUE_NOTIFY_OFFSET, QueueEvents};
use devices::{IrqLine, MmioBus};

/// A device on the bus, by the id the user gave it.
pub type NamedTransport = (String, Arc<Mutex<MmioTransport>>);

/// Collects virtio devices while a VM is built.
#[derive(Debug, Default)]
pub struct VirtioDevices {
    /// The transports, in slot order.
    pub transports: Vec<NamedTransport>,
    /// Their device-tree entries.
    pub fdt: Vec<MmioDeviceInfo>,
}

impl VirtioDevices {
    /// Attaches a device in the next slot.
    pub fn attach(
        &mut self,
        id: &str,
        device: Box<dyn VirtioDevice>,
        vm: &VmFd,
        mem: &GuestRam,
        bus: &mut MmioBus,
    ) -> Result<(), String> {
        let slot = self.transports.len() as u32;
        if slot >= arch::layout::VIRTIO_MMIO_SLOTS {
            return Err("no free virtio-mmio slot".into());
        }
        let addr = virtio_mmio_addr(slot);
        let spi = VIRTIO_SPI_BASE + slot;
        let irq = IrqLine::new().map_err(|e| format!("{id}: interrupt: {e}"))?;
        vm.register_irqfd(irq.eventfd(), spi)
            .map_err(|e| format!("{id}: KVM_IRQFD: {e}"))?;
        let transport =
            MmioTransport::new(device, mem.clone(), irq).map_err(|e| format!("{id}: {e}"))?;
        for (q, evt) in transport.queue_evts().iter().enumerate() {
            vm.register_ioevent(
                evt,
                &IoEventAddress::Mmio(addr + QUEUE_NOTIFY_OFFSET),
                q as u32,
            )
            .map_err(|e| format!("{id}: KVM_IOEVENTFD: {e}"))?;
        }
        let transport = Arc::new(Mutex::new(transport));
        bus.insert(addr, VIRTIO_MMIO_SIZE, transport.clone())
            .map_err(|e| format!("{id}: {e}"))?;
        self.transports.push((id.to_string(), transport));
        self.fdt.push(MmioDeviceInfo {
            addr,
            size: VIRTIO_MMIO_SIZE,
            spi,
        });
        Ok(())
    }
}

/// What the device thread is asked to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Want {
    Serve,
    Park,
    Stop,
}

#[derive(Debug)]
struct ParkState {
    want: Want,
    parked: bool,
}

/// The request the VMM thread leaves for the device thread, and the wake-up that makes the
/// device thread look at it at once instead of at its next poll timeout.
#[derive(Debug)]
struct Control {
    state: Mutex<ParkState>,
    cv: Condvar,
    wake: EventFd,
}

impl Control {
    fn lock(&self) -> MutexGuard<'_, ParkState> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn request(&self, want: Want) {
        self.lock().want = want;
        self.cv.notify_all();
        // A full counter still wakes the thread; nothing to do on error.
        let _ = self.wake.write(1);
    }

    /// Parks while asked to; false when the thread must end.
    fn checkpoint(&self) -> bool {
        let mut s = self.lock();
        while s.want == Want::Park {
            if !s.parked {
                s.parked = true;
                self.cv.notify_all();
            }
            s = self
                .cv
                .wait(s)
                .unwrap_or_else(std::sync::PoisonError::into_inner);
        }
        s.parked = false;
        s.want == Want::Serve
    }
}

/// The device thread's subscribers: each transport's queue events, and the wake-up.
#[derive(Debug)]
enum Subscriber {
    Queues(QueueEvents),
    Wake(Arc<Control>),
}

impl MutEventSubscriber for Subscriber {
    fn process(&mut self, events: Events, ops: &mut EventOps<'_>) {
        match self {
            Self::Queues(q) => q.process(events, ops),
            Self::Wake(c) => {
                let _ = c.wake.read();
            }
        }
    }

    fn init(&mut self, ops: &mut EventOps<'_>) {
        match self {
            Self::Queues(q) => q.init(ops),
            Self::Wake(c) => {
                if let Err(e) = ops.add(Events::new(&c.wake, EventSet::IN)) {
                    log::error!("virtio device thread: cannot watch its wake-up: {e:?}");
                }
            }
        }
    }
}

/// The thread that serves queue notifications, tap and vsock sockets and rate-limiter timers.
/// Parked, it serves nothing and so writes nothing to guest memory: events that arrive
/// meanwhile wait in the kernel (the epoll set, the sockets, the timers) until it goes on.
///
/// ```text
/// VMM thread                          device thread
///   want = Park, write wake -------->  (in epoll_wait, or serving one event)
///                                      epoll returns; checkpoint: parked = true, waits
///   wait until parked <-------------
///   ... save state, guest memory is still ...
///   want = Serve, notify ----------->  parked = false, back to epoll_wait
/// ```
#[derive(Debug)]
pub struct DeviceThread {
    control: Arc<Control>,
    thread: Option<JoinHandle<()>>,
}

impl DeviceThread {
    /// Starts serving the given transports (none: no thread), or parked until `unpark` when
    /// `parked`.
    pub fn start(transports: &[NamedTransport], parked: bool) -> std::io::Result<Self> {
        let control = Arc::new(Control {
            state: Mutex::new(ParkState {
                want: if parked { Want::Park } else { Want::Serve },
                parked: false,
            }),
            cv: Condvar::new(),
            wake: EventFd::new(EFD_NONBLOCK)?,
        });
        if transports.is_empty() {
            return Ok(Self {
                control,
                thread: None,
            });
        }
        let mut subscribers = transports
            .iter()
            .map(|(_, t)| QueueEvents::new(t.clone()).map(Subscriber::Queues))
            .collect::<std::io::Result<Vec<_>>>()?;
        subscribers.push(Subscriber::Wake(control.clone()));
        let c = control.clone();
        let thread = std::thread::Builder::new()
            .name("virtio".into())
            .stack_size(crate::THREAD_STACK)
            .spawn(move || {
                let mut em: EventManager<Subscriber> = match EventManager::new() {
                    Ok(em) => em,
                    Err(e) => {
                        log::error!("virtio device thread: {e:?}");
                        return;
                    }
                };
                for s in subscribers {
                    em.add_subscriber(s);
                }
                while c.checkpoint() {
                    if let Err(e) = em.run_with_timeout(100) {
                        log::error!("virtio device thread: {e:?}");
                        break;
                    }
                }
                // Anyone waiting for a park hears that the thread is gone.
                let mut s = c.lock();
                s.want = Want::Stop;
                s.parked = true;
                c.cv.notify_all();
            })?;
        Ok(Self {
            control,
            thread: Some(thread),
        })
    }

    /// Parks the thread; returns once it serves nothing (at once when there is no thread).
    pub fn park(&self) {
        if self.thread.is_none() {
            return;
        }
        self.control.request(Want::Park);
        let mut s = self.control.lock();
        while !s.parked {
            s = self
                .control
                .cv
                .wait(s)
                .unwrap_or_else(std::sync::PoisonError::into_inner);
        }
    }

    /// Lets a parked thread serve again.
    pub fn unpark(&self) {
        let mut s = self.control.lock();
        if s.want == Want::Park {
            s.want = Want::Serve;
            self.control.cv.notify_all();
        }
    }

    /// Whether the thread is parked (or there is none to run).
    pub fn is_parked(&self) -> bool {
        self.thread.is_none() || self.control.lock().parked
    }
}

impl Drop for DeviceThread {
    fn drop(&mut self) {
        self.control.request(Want::Stop);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
