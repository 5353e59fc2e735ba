//! The pause/kick mechanism: a vCPU running a guest loop is stopped outside KVM_RUN and
//! resumed, 100 times, and the loop keeps making progress only while running.
#![cfg(target_arch = "aarch64")]

use std::sync::Arc;
use std::time::{Duration, Instant};

use devices::MmioBus;
use vm_memory::{Bytes, GuestAddress};
use vmm::events;
use vmm::vcpu::VcpuHandle;
use vmm_tests::a64;
use vmm_tests::kvm_fixture::{PAGE, RAM_BASE, TestVm};

#[test]
fn a_guest_loop_survives_100_pause_resume_cycles() {
    let t = TestVm::new(0x1_0000, false);
    let counter = GuestAddress(RAM_BASE + PAGE);
    // loop: x5 += 1; [x1] = x5; b loop
    t.load(&[a64::add_imm(5, 5, 1), a64::str_x(5, 1, 0), a64::b(-2)]);
    t.set_reg(arch::sysreg::xreg_id(1), counter.0);
    let TestVm {
        vm: _vm, vcpu, mem, ..
    } = t;
    let (tx, rx) = events::channel().expect("event channel");
    let handle =
        VcpuHandle::spawn(0, vcpu, Arc::new(MmioBus::new()), tx, false).expect("spawn vcpu");
    let read = || mem.read_obj::<u64>(counter).expect("read counter");
    let wait_progress = |from: u64| {
        let deadline = Instant::now() + Duration::from_secs(60);
        while read() <= from {
            assert!(
                Instant::now() < deadline,
                "the guest loop made no progress after resume"
            );
            std::thread::sleep(Duration::from_micros(200));
        }
    };
    wait_progress(0);
    for cycle in 0..100 {
        handle.pause();
        assert!(handle.is_paused(), "cycle {cycle}: not parked");
        let a = read();
        // While paused, the VMM reaches the vCPU's registers: x5 is what the loop stored.
        {
            let fd = handle
                .fd_if_paused()
                .expect("a paused vCPU's fd is reachable");
            let x5 = arch::kvm::vcpu::get(&fd, arch::sysreg::xreg_id(5)).expect("read x5");
            assert_eq!(x5, a, "cycle {cycle}: x5 and the stored counter differ");
        }
        std::thread::sleep(Duration::from_millis(2));
        assert_eq!(read(), a, "cycle {cycle}: the loop ran while paused");
        handle.resume();
        wait_progress(a);
        assert!(
            handle.fd_if_paused().is_none(),
            "cycle {cycle}: a running vCPU's fd was handed out"
        );
    }
    assert!(rx.drain().is_empty(), "no vCPU error or system event");
    handle.stop();
}

#[test]
fn the_migration_throttle_holds_vcpus_without_undoing_a_pause() {
    use migration::engine::Throttle;
    use vmm::migration::throttle::VcpuThrottle;

    let t = TestVm::new(0x1_0000, false);
    let counter = GuestAddress(RAM_BASE + PAGE);
    t.load(&[a64::add_imm(5, 5, 1), a64::str_x(5, 1, 0), a64::b(-2)]);
    t.set_reg(arch::sysreg::xreg_id(1), counter.0);
    let TestVm {
        vm: _vm, vcpu, mem, ..
    } = t;
    let (tx, rx) = events::channel().expect("event channel");
    let handle =
        VcpuHandle::spawn(0, vcpu, Arc::new(MmioBus::new()), tx, false).expect("spawn vcpu");
    let read = || mem.read_obj::<u64>(counter).expect("read counter");
    let wait_until = |what: &str, done: &dyn Fn() -> bool| {
        let deadline = Instant::now() + Duration::from_secs(60);
        while !done() {
            assert!(Instant::now() < deadline, "{what}");
            std::thread::sleep(Duration::from_millis(1));
        }
    };
    let mut throttle =
        VcpuThrottle::start(vec![handle.hold_handle().expect("a running vCPU")]).expect("start");
    throttle.set_throttle(50);
    assert_eq!(throttle.percent(), 50);
    let a = read();
    wait_until("the throttle never held the vCPU", &|| {
        throttle.held_periods() >= 5
    });
    wait_until("the guest stopped under a 50% throttle", &|| read() > a);
    throttle.set_throttle(0);
    let held = throttle.held_periods();
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        throttle.held_periods() <= held + 1,
        "holds went on at 0%: {held} then {}",
        throttle.held_periods()
    );
    let b = read();
    wait_until("the guest did not run at 0%", &|| read() > b);

    // A pause taken while the throttle holds the vCPU outlasts the throttle.
    throttle.set_throttle(90);
    handle.pause();
    throttle.set_throttle(0);
    std::thread::sleep(Duration::from_millis(300));
    let c = read();
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(read(), c, "lifting the throttle resumed a paused vCPU");
    handle.resume();
    wait_until("the guest did not run after resume", &|| read() > c);
    throttle.set_throttle(99);
    assert_eq!(throttle.percent(), 99);
    drop(throttle);
    let d = read();
    wait_until("dropping the throttle left the vCPU held", &|| read() > d);
    assert!(rx.drain().is_empty(), "no vCPU error or system event");
    handle.stop();
}
