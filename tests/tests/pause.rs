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
