//! A restored vsock device: the guest's CID comes back, host connections do not, and the
//! guest is told so with one transport reset event.

use virtio_bindings::virtio_ring::VRING_DESC_F_WRITE;
use virtio_queue::Queue;
use virtio_queue::desc::{RawDescriptor, split::Descriptor as SplitDescriptor};
use virtio_queue::mock::MockSplitQueue;
use vm_memory::{Bytes, GuestAddress};

use super::super::state::VsockState;
use super::{Guest, op};
use crate::state::testing::{refuses_newer, round_trip};
use crate::virtio::VirtioDevice;
use migration::state::{Stateful, decode, encode};
use std::io::Write;
use std::os::unix::net::UnixStream;

const EVT: usize = 2;
const EVQ: u64 = 0x3_0000;
const EV_BUF: u64 = 0xf_0000;

/// An event queue with `n` posted buffers of `len` bytes, filled with 0xff.
fn event_queue(
    mem: &'static crate::GuestRam,
    n: u16,
    len: u32,
) -> (MockSplitQueue<'static, crate::GuestRam>, Queue) {
    let mq = MockSplitQueue::create(mem, GuestAddress(EVQ), 8);
    let raw: Vec<RawDescriptor> = (0..n)
        .map(|i| {
            let addr = EV_BUF + u64::from(i) * 0x10;
            mem.write_slice(&[0xff; 16], GuestAddress(addr)).unwrap();
            RawDescriptor::from(SplitDescriptor::new(
                addr,
                len,
                VRING_DESC_F_WRITE as u16,
                0,
            ))
        })
        .collect();
    mq.add_desc_chains(&raw, 0).unwrap();
    let q = mq.create_queue().unwrap();
    (mq, q)
}

fn events(mq: &MockSplitQueue<'_, crate::GuestRam>) -> Vec<(u32, u32)> {
    let n = mq.used().idx().load();
    (0..n)
        .map(|i| mq.used().ring().ref_at(i as usize).unwrap().load())
        .map(|e| (e.id(), e.len()))
        .collect()
}

#[test]
fn a_restored_device_sends_one_transport_reset_and_has_no_connections() {
    let mut g = Guest::new("snap-a");
    // A host connection is open on the saved device.
    let mut host = UnixStream::connect(&g.uds).unwrap();
    host.write_all(b"CONNECT 52\n").unwrap();
    let pkts = g.pump();
    assert_eq!(pkts[0].0.op, op::REQUEST, "{pkts:?}");
    assert_eq!(g.dev.connections(), 1);

    let mut h = Guest::new("snap-b");
    h.dev.cid = 99;
    round_trip(&g.dev, &mut h.dev);
    assert_eq!(h.dev.cid, super::CID, "the CID comes from the snapshot");
    assert_eq!(h.dev.connections(), 0);

    let (mq, mut q) = event_queue(h.mem, 2, 4);
    assert!(h.dev.process_queue(EVT, &mut q, h.mem));
    assert_eq!(events(&mq), vec![(0, 4)]);
    let id: u32 = h.mem.read_obj(GuestAddress(EV_BUF)).unwrap();
    assert_eq!(id, 0, "VIRTIO_VSOCK_EVENT_TRANSPORT_RESET");
    // Once only: the second buffer stays posted.
    assert!(!h.dev.process_queue(EVT, &mut q, h.mem));
    assert_eq!(events(&mq).len(), 1);
    // A device that was never restored sends none.
    let (mq, mut q) = event_queue(g.mem, 2, 4);
    assert!(!g.dev.process_queue(EVT, &mut q, g.mem));
    assert!(events(&mq).is_empty());
}

#[test]
fn the_reset_waits_for_a_buffer_and_skips_one_too_small() {
    let g = Guest::new("snap-c");
    let mut h = Guest::new("snap-d");
    h.dev.restore(&g.dev.save().unwrap()).unwrap();
    let (mq, mut q) = event_queue(h.mem, 0, 4);
    assert!(!h.dev.process_queue(EVT, &mut q, h.mem), "no buffer yet");
    let raw = [
        RawDescriptor::from(SplitDescriptor::new(
            EV_BUF,
            2,
            VRING_DESC_F_WRITE as u16,
            0,
        )),
        RawDescriptor::from(SplitDescriptor::new(
            EV_BUF + 0x10,
            4,
            VRING_DESC_F_WRITE as u16,
            0,
        )),
    ];
    mq.add_desc_chains(&raw, 0).unwrap();
    assert!(h.dev.process_queue(EVT, &mut q, h.mem));
    assert_eq!(events(&mq), vec![(0, 0), (1, 4)]);
}

#[test]
fn a_driver_reset_drops_the_owed_event() {
    let g = Guest::new("snap-e");
    let mut h = Guest::new("snap-f");
    h.dev.restore(&g.dev.save().unwrap()).unwrap();
    h.dev.reset();
    let (mq, mut q) = event_queue(h.mem, 2, 4);
    assert!(!h.dev.process_queue(EVT, &mut q, h.mem));
    assert!(events(&mq).is_empty());
}

#[test]
fn vsock_refuses_a_newer_section_and_reads_its_own_layout() {
    let g = Guest::new("snap-g");
    let mut h = Guest::new("snap-h");
    refuses_newer(&g.dev, &mut h.dev);
    let s = encode("virtio/vsock/device", &VsockState { guest_cid: 7 }).unwrap();
    h.dev.restore(&s).unwrap();
    let back: VsockState = decode(&h.dev.save().unwrap()).unwrap();
    assert_eq!(back.guest_cid, 7);
}

/// Sets up queue `i` of a transport on the mock queue `mq`.
fn setup(
    t: &mut crate::virtio::mmio::MmioTransport,
    i: u32,
    size: u32,
    mq: &MockSplitQueue<'_, crate::GuestRam>,
) {
    use crate::bus::MmioDevice;
    let regs = [
        (0x30, i),
        (0x38, size),
        (0x80, mq.desc_table_addr().0 as u32),
        (0x90, mq.avail_addr().0 as u32),
        (0xa0, mq.used_addr().0 as u32),
        (0x44, 1),
    ];
    for (off, v) in regs {
        t.write(off, &v.to_le_bytes());
    }
}

#[test]
fn through_the_transport_the_reset_arrives_with_an_interrupt() {
    use crate::bus::MmioDevice;
    use crate::irq::IrqLine;
    use crate::virtio::mmio::{MmioTransport, status};
    let g = Guest::new("snap-t1");
    let h = Guest::new("snap-t2");
    let mem = g.mem.clone();
    let mut a = MmioTransport::new(Box::new(g.dev), mem.clone(), IrqLine::new().unwrap()).unwrap();
    let (evq, _) = event_queue(g.mem, 1, 4);
    for (i, (size, mq)) in [(256, &g.rxq), (256, &g.txq), (8, &evq)]
        .into_iter()
        .enumerate()
    {
        setup(&mut a, i as u32, size, mq);
    }
    let ok = status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK | status::DRIVER_OK;
    a.write(0x70, &(status::ACKNOWLEDGE | status::DRIVER).to_le_bytes());
    a.write(0x24, &1u32.to_le_bytes());
    a.write(0x20, &1u32.to_le_bytes());
    a.write(0x70, &(ok & !status::DRIVER_OK).to_le_bytes());
    a.write(0x70, &ok.to_le_bytes());
    assert!(a.is_activated());

    let mut b = MmioTransport::new(Box::new(h.dev), mem, IrqLine::new().unwrap()).unwrap();
    b.device_mut().restore(&a.device().save().unwrap()).unwrap();
    round_trip(&a, &mut b);
    assert!(b.is_activated());
    assert_eq!(
        b.queue_evts()[EVT].read().unwrap(),
        1,
        "the event queue is kicked"
    );
    b.process(EVT);
    assert_eq!(events(&evq), vec![(0, 4)]);
    let mut isr = [0u8; 4];
    b.read(0x60, &mut isr);
    assert_eq!(u32::from_le_bytes(isr), 1, "used-buffer interrupt");
}
