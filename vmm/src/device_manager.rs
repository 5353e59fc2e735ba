//! virtio-mmio devices of a VM: each gets a slot (address and SPI), an irqfd, an ioeventfd per
//! queue, a place on the MMIO bus and a node in the device tree. Queue notifications are served
//! by one device thread running an event-manager loop.

use devices::GuestRam;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use event_manager::{EventManager, SubscriberOps};
use kvm_ioctls::{IoEventAddress, VmFd};

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

/// The thread that serves queue notifications.
#[derive(Debug)]
pub struct DeviceThread {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl DeviceThread {
    /// Starts serving the given transports (none: no thread).
    pub fn start(transports: &[NamedTransport]) -> std::io::Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        if transports.is_empty() {
            return Ok(Self { stop, thread: None });
        }
        let subscribers = transports
            .iter()
            .map(|(_, t)| QueueEvents::new(t.clone()))
            .collect::<std::io::Result<Vec<_>>>()?;
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name("virtio".into())
            .stack_size(crate::THREAD_STACK)
            .spawn(move || {
                let mut em: EventManager<QueueEvents> = match EventManager::new() {
                    Ok(em) => em,
                    Err(e) => {
                        log::error!("virtio device thread: {e:?}");
                        return;
                    }
                };
                for s in subscribers {
                    em.add_subscriber(s);
                }
                while !flag.load(Ordering::Relaxed) {
                    if let Err(e) = em.run_with_timeout(100) {
                        log::error!("virtio device thread: {e:?}");
                        break;
                    }
                }
            })?;
        Ok(Self {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for DeviceThread {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// How long the device thread may take to notice a stop request.
pub const STOP_LATENCY: Duration = Duration::from_millis(100);
