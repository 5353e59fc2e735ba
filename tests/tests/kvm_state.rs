//! KVM-side snapshot state, with real KVM (inside an emulated Arm64 host, or natively): vCPU
//! registers, MP state and events, the vGICv3, the guest counter and the manual-protect dirty
//! log, each saved from one VM and restored into a brand-new one.
#![cfg(target_arch = "aarch64")]

use kvm_bindings::{
    KVM_ARM_IRQ_TYPE_SHIFT, KVM_ARM_IRQ_TYPE_SPI, KVM_DEV_ARM_VGIC_GRP_CPU_SYSREGS,
    KVM_DEV_ARM_VGIC_GRP_DIST_REGS, KVM_DEV_ARM_VGIC_GRP_REDIST_REGS, KVM_DIRTY_LOG_INITIALLY_SET,
    KVM_DIRTY_LOG_MANUAL_PROTECT_ENABLE, KVM_MP_STATE_RUNNABLE, KVM_MP_STATE_STOPPED,
    kvm_device_attr, kvm_userspace_memory_region, kvm_vcpu_events,
};
use kvm_ioctls::{Kvm, VcpuExit, VcpuFd, VmFd};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};

use arch::kvm::counter::{self, CounterMethod};
use arch::kvm::dirty_log::{self, DirtyLogError};
use arch::kvm::vcpu_state::{self, is_counter_reg};
use arch::kvm::{
    GicV3, RestoreOptions, VcpuStateError, restore_gic, restore_vcpu, save_gic, save_vcpu, vcpu,
};
use arch::state::{GicState, RegValue, VcpuState};
use arch::sysreg::{PTIMER_CNT, TIMER_CNT, xreg_id};
use devices::GuestRam;
use vmm_tests::a64;
use vmm_tests::kvm_fixture::{MMIO_BASE, PAGE, RAM_BASE};

/// A VM with `n` vCPUs (created, not initialised), one RAM slot, and a GIC once `add_gic`
/// has run.
struct Vm {
    vm: VmFd,
    vcpus: Vec<VcpuFd>,
    gic: Option<GicV3>,
    mem: GuestRam,
    size: u64,
}

impl Vm {
    fn new(n: u64, size: u64, dirty_log: bool) -> Self {
        assert!(
            std::path::Path::new("/dev/kvm").exists(),
            "/dev/kvm is missing: this test needs Arm64 KVM"
        );
        let kvm = Kvm::new().expect("open /dev/kvm");
        let vm = kvm.create_vm().expect("KVM_CREATE_VM");
        if dirty_log {
            let flags = dirty_log::enable_manual_protect(&vm, true).expect("manual protect");
            assert_eq!(
                flags,
                KVM_DIRTY_LOG_MANUAL_PROTECT_ENABLE | KVM_DIRTY_LOG_INITIALLY_SET,
                "Linux 6.12 offers both flags on arm64"
            );
        }
        let mem = GuestRam::from_ranges(&[(GuestAddress(RAM_BASE), size as usize)])
            .expect("guest memory");
        let host = mem
            .get_host_address(GuestAddress(RAM_BASE))
            .expect("host address");
        let region = kvm_userspace_memory_region {
            slot: 0,
            flags: if dirty_log {
                kvm_bindings::KVM_MEM_LOG_DIRTY_PAGES
            } else {
                0
            },
            guest_phys_addr: RAM_BASE,
            memory_size: size,
            userspace_addr: host as u64,
        };
        // SAFETY: the region maps `mem`, which lives as long as the VM in this struct.
        unsafe { vm.set_user_memory_region(region) }.expect("KVM_SET_USER_MEMORY_REGION");
        let vcpus = (0..n)
            .map(|i| vm.create_vcpu(i).expect("KVM_CREATE_VCPU"))
            .collect();
        Self {
            vm,
            vcpus,
            gic: None,
            mem,
            size,
        }
    }

    /// Boots like the VMM: every vCPU initialised (secondaries off), then the GIC.
    fn boot(n: u64, size: u64) -> Self {
        let mut t = Self::new(n, size, false);
        for (i, v) in t.vcpus.iter().enumerate() {
            vcpu::init(&t.vm, v, i == 0).expect("vCPU init");
        }
        t.add_gic();
        t
    }

    fn add_gic(&mut self) {
        self.gic = Some(GicV3::create(&self.vm).expect("GICv3"));
    }

    fn gic(&self) -> &GicV3 {
        self.gic.as_ref().expect("the VM has a GIC")
    }

    fn mpidrs(&self) -> Vec<u64> {
        self.vcpus
            .iter()
            .map(|v| vcpu::mpidr(v).expect("MPIDR"))
            .collect()
    }

    fn set(&self, i: usize, id: u64, value: u64) {
        self.vcpus[i]
            .set_one_reg(id, &value.to_le_bytes())
            .expect("KVM_SET_ONE_REG");
    }

    fn load(&self, program: &[u32]) {
        self.mem
            .write_slice(&a64::to_bytes(program), GuestAddress(RAM_BASE))
            .expect("write program");
        self.set(0, arch::sysreg::PC_ID, RAM_BASE);
    }

    /// Runs vCPU 0 to its next MMIO write and returns the value written.
    fn run_to_mmio_write(&mut self) -> u64 {
        let exit = match self.vcpus[0].run().expect("KVM_RUN") {
            VcpuExit::MmioWrite(addr, data) => Ok((addr, data.to_vec())),
            other => Err(format!("{other:?}")),
        };
        let (addr, data) = exit.expect("an MMIO write");
        assert_eq!(addr, MMIO_BASE);
        let mut b = [0u8; 8];
        b[..data.len()].copy_from_slice(&data);
        u64::from_le_bytes(b)
    }

    fn save_vcpus(&self) -> Vec<VcpuState> {
        self.vcpus
            .iter()
            .enumerate()
            .map(|(i, v)| save_vcpu(v, vcpu::init_features(i == 0)).expect("save vCPU"))
            .collect()
    }

    /// A new VM with the same memory contents, the vCPUs and GIC restored, the counter set
    /// to `counter` (with the counter offset when the host has it).
    fn restore(&self, vcpus: &[VcpuState], gic: &GicState, counter: u64) -> (Self, CounterMethod) {
        let mut t = Self::new(vcpus.len() as u64, self.size, false);
        let mut buf = vec![0u8; self.size as usize];
        self.mem
            .read_slice(&mut buf, GuestAddress(RAM_BASE))
            .expect("read memory");
        t.mem
            .write_slice(&buf, GuestAddress(RAM_BASE))
            .expect("copy memory");
        let opts = RestoreOptions::for_vm(&t.vm);
        for (v, s) in t.vcpus.iter().zip(vcpus) {
            restore_vcpu(&t.vm, v, s, opts).expect("restore vCPU");
        }
        t.add_gic();
        let mpidrs: Vec<u64> = vcpus.iter().map(|s| s.mpidr).collect();
        restore_gic(t.gic(), &mpidrs, gic).expect("restore GIC");
        let refs: Vec<&VcpuFd> = t.vcpus.iter().collect();
        let method = counter::restore_guest_counter(&t.vm, &refs, counter).expect("counter");
        (t, method)
    }
}

/// The counting guest: x5 counts, is stored at x2 each step, and is written to MMIO every
/// 1000 steps.
fn counting_program() -> Vec<u32> {
    vec![
        a64::add_imm(5, 5, 1),
        a64::str_x(5, 2, 0),
        a64::subs_imm(0, 0, 1),
        a64::b_ne(-3),
        a64::str_x(5, 1, 0),
        a64::movz(0, 1000, 0),
        a64::b(-6),
    ]
}

const COUNTER_ADDR: u64 = RAM_BASE + 0x8000;

fn without_counters(s: &VcpuState) -> Vec<RegValue> {
    s.regs
        .iter()
        .filter(|r| !is_counter_reg(r.id))
        .cloned()
        .collect()
}

#[test]
fn kvm_state_a_restored_guest_continues_where_it_stopped() {
    let mut a = Vm::boot(2, 0x10_0000);
    a.load(&counting_program());
    a.set(0, xreg_id(0), 1000);
    a.set(0, xreg_id(1), MMIO_BASE);
    a.set(0, xreg_id(2), COUNTER_ADDR);
    a.set(0, xreg_id(5), 0);
    a.set(0, xreg_id(7), 0xfeed_f00d_dead_beef);
    assert_eq!(a.run_to_mmio_write(), 1000);
    // Finish the MMIO exit so the saved PC is past the store.
    vcpu_state::settle(&mut a.vcpus[0]).expect("settle");
    let saved = a.save_vcpus();
    let gic = save_gic(a.gic(), &a.mpidrs()).expect("save GIC");
    assert_eq!(saved[0].mp_state, KVM_MP_STATE_RUNNABLE);
    assert_eq!(saved[1].mp_state, KVM_MP_STATE_STOPPED, "never started");
    assert_eq!(saved[0].features, vcpu::init_features(true));
    assert_eq!(
        saved[1].features,
        vcpu::init_features(true),
        "POWER_OFF is cleared: the MP state carries it"
    );
    assert_eq!(saved[0].reg(xreg_id(5)), Some(1000));
    assert!(
        saved[0].regs.len() > 100,
        "{} registers",
        saved[0].regs.len()
    );
    assert_ne!(saved[0].mpidr, saved[1].mpidr);
    assert!(saved[0].events.is_some());
    assert!(!saved[0].id_registers().is_empty());
    let cnt = saved[0]
        .reg(TIMER_CNT.kvm_reg_id())
        .expect("TIMER_CNT saved");
    drop(a.vcpus.pop());

    let (mut b, _) = a.restore(&saved, &gic, cnt);
    // Everything reads back as saved, except the counters, which moved on.
    let again = b.save_vcpus();
    for (s, r) in saved.iter().zip(&again) {
        assert_eq!(without_counters(r), without_counters(s));
        assert_eq!(r.mp_state, s.mp_state);
        assert_eq!(r.mpidr, s.mpidr);
        assert_eq!(r.events, s.events);
    }
    assert!(
        arch::state::id_register_differences(&saved[0], &again[0]).is_empty(),
        "same host, same ID registers"
    );
    assert_eq!(save_gic(b.gic(), &b.mpidrs()).expect("save GIC again"), gic);
    // The guest carries on from 1000, not from 0.
    assert_eq!(b.run_to_mmio_write(), 2000);
    let mut mem = [0u8; 8];
    b.mem
        .read_slice(&mut mem, GuestAddress(COUNTER_ADDR))
        .expect("read counter");
    assert_eq!(u64::from_le_bytes(mem), 2000);
    let mut x7 = [0u8; 8];
    b.vcpus[0].get_one_reg(xreg_id(7), &mut x7).expect("x7");
    assert_eq!(u64::from_le_bytes(x7), 0xfeed_f00d_dead_beef);
    // The secondary was never started and is still off.
    assert_eq!(
        b.vcpus[1].get_mp_state().expect("MP state").mp_state,
        KVM_MP_STATE_STOPPED
    );
}

#[test]
fn kvm_state_pending_vcpu_events_survive_a_restore() {
    let a = Vm::boot(1, 0x1_0000);
    let mut ev = kvm_vcpu_events::default();
    ev.exception.serror_pending = 1;
    a.vcpus[0]
        .set_vcpu_events(&ev)
        .expect("KVM_SET_VCPU_EVENTS");
    let saved = a.save_vcpus();
    let events = saved[0].events.expect("events saved");
    assert!(events.serror_pending);
    let gic = save_gic(a.gic(), &a.mpidrs()).expect("save GIC");
    let (b, _) = a.restore(&saved, &gic, 0);
    let got = b.vcpus[0].get_vcpu_events().expect("KVM_GET_VCPU_EVENTS");
    assert_eq!(got.exception.serror_pending, 1);
}

#[test]
fn kvm_state_restore_names_registers_missing_on_either_side() {
    let a = Vm::boot(1, 0x1_0000);
    let mut s = a.save_vcpus().remove(0);
    s.regs.retain(|r| r.id != xreg_id(3));
    s.regs.push(RegValue::u64(0x6030_0000_0014_00ff, 0));
    let b = Vm::new(1, 0x1_0000, false);
    let err = restore_vcpu(&b.vm, &b.vcpus[0], &s, RestoreOptions::default())
        .expect_err("register sets differ");
    assert!(matches!(err, VcpuStateError::RegisterSets { .. }), "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains("firmware register 255 (0x60300000001400ff)"),
        "{msg}"
    );
    assert!(
        msg.contains("only on this host: [x3 (0x6030000000100006)]"),
        "{msg}"
    );
    // A value of the wrong size is refused before anything is written.
    let mut s = a.save_vcpus().remove(0);
    s.regs[0].value.push(0);
    let c = Vm::new(1, 0x1_0000, false);
    let err =
        restore_vcpu(&c.vm, &c.vcpus[0], &s, RestoreOptions::default()).expect_err("9-byte x0");
    assert!(err.to_string().contains("x0"), "{err}");
}

fn set_attr32(gic: &GicV3, group: u32, attr: u64, v: u32) {
    let a = kvm_device_attr {
        group,
        attr,
        addr: &v as *const u32 as u64,
        flags: 0,
    };
    gic.device_fd()
        .set_device_attr(&a)
        .expect("set GIC attribute");
}

#[test]
fn kvm_state_gic_state_round_trips_into_a_new_vm() {
    let a = Vm::boot(2, 0x1_0000);
    let gic = a.gic();
    let mpidrs = a.mpidrs();
    let fresh = save_gic(gic, &mpidrs).expect("save a fresh GIC");
    // Distributor: group 1 on, SPI 40 enabled, routed to vCPU 1, priority 0x80.
    set_attr32(gic, KVM_DEV_ARM_VGIC_GRP_DIST_REGS, 0x0000, 0x2);
    set_attr32(gic, KVM_DEV_ARM_VGIC_GRP_DIST_REGS, 0x0104, 1 << 8);
    set_attr32(gic, KVM_DEV_ARM_VGIC_GRP_DIST_REGS, 0x6000 + 8 * 40, 1);
    set_attr32(gic, KVM_DEV_ARM_VGIC_GRP_DIST_REGS, 0x0400 + 40, 0x80);
    // Redistributor of vCPU 1: the virtual timer's PPI 27 enabled, priority 0x40.
    let rd1 = (mpidrs[1] & 0xff_ffff) << 32;
    set_attr32(
        gic,
        KVM_DEV_ARM_VGIC_GRP_REDIST_REGS,
        rd1 | 0x1_0100,
        1 << 27,
    );
    set_attr32(
        gic,
        KVM_DEV_ARM_VGIC_GRP_REDIST_REGS,
        rd1 | 0x1_0418,
        0x40 << 24,
    );
    // CPU interface of vCPU 0: priority mask 0xf0, group 1 enabled.
    let pmr = 0xf0u64;
    let a_pmr = kvm_device_attr {
        group: KVM_DEV_ARM_VGIC_GRP_CPU_SYSREGS,
        attr: ((mpidrs[0] & 0xff_ffff) << 32) | 0xc230,
        addr: &pmr as *const u64 as u64,
        flags: 0,
    };
    gic.device_fd()
        .set_device_attr(&a_pmr)
        .expect("ICC_PMR_EL1");
    // SPIs start edge-triggered: SPI 37 becomes level-triggered (ICFGR2 bits 11:10 = 0) and
    // its line goes high; SPI 38, still edge-triggered, gets an edge (the pending latch).
    set_attr32(
        gic,
        KVM_DEV_ARM_VGIC_GRP_DIST_REGS,
        0x0c08,
        0xaaaa_aaaa & !(3 << 10),
    );
    let spi = |intid: u32| (KVM_ARM_IRQ_TYPE_SPI << KVM_ARM_IRQ_TYPE_SHIFT) | intid;
    a.vm.set_irq_line(spi(37), true).expect("KVM_IRQ_LINE 37");
    a.vm.set_irq_line(spi(38), true)
        .expect("KVM_IRQ_LINE 38 high");
    a.vm.set_irq_line(spi(38), false)
        .expect("KVM_IRQ_LINE 38 low");

    let saved = save_gic(gic, &mpidrs).expect("save GIC");
    // What was set is where the state says.
    assert_eq!(saved.nr_irqs, arch::layout::GIC_NR_IRQS);
    assert_eq!(saved.dist.ctlr & 0x2, 0x2);
    assert_eq!(saved.dist.isenabler[0], 1 << 8);
    assert_eq!(saved.dist.irouter[8], 1);
    assert_eq!(saved.dist.ipriorityr[2] & 0xff, 0x80);
    assert_eq!(saved.dist.icfgr[0], 0xaaaa_aaaa & !(3 << 10));
    assert_eq!(saved.dist.line_level[0], 1 << 5, "SPI 37's line");
    assert_eq!(saved.dist.ispendr[0] & (1 << 6), 1 << 6, "SPI 38's edge");
    assert_eq!(saved.redists[1].isenabler0 & (1 << 27), 1 << 27);
    assert_eq!(saved.redists[1].ipriorityr[6] >> 24, 0x40);
    assert_eq!(saved.redists[0].cpu.pmr, 0xf0);
    assert_ne!(saved, fresh);

    let vcpus = a.save_vcpus();
    let (b, _) = a.restore(&vcpus, &saved, 0);
    assert_eq!(
        save_gic(b.gic(), &mpidrs).expect("save restored GIC"),
        saved
    );

    // A state for other vCPUs is refused, naming the MPIDRs, and changes nothing.
    let other = Vm::boot(1, 0x1_0000);
    let before = save_gic(other.gic(), &other.mpidrs()).expect("save");
    let err = restore_gic(other.gic(), &other.mpidrs(), &saved).expect_err("2 vs 1 vCPUs");
    assert!(err.to_string().contains("MPIDRs"), "{err}");
    assert_eq!(
        save_gic(other.gic(), &other.mpidrs()).expect("save"),
        before
    );
}

#[test]
fn kvm_state_the_counter_continues_from_the_saved_value() {
    assert!(counter::counter_frequency() > 0);
    let mut a = Vm::boot(1, 0x1_0000);
    a.load(&[
        a64::ISB,
        a64::mrs_cntvct(6),
        a64::str_x(6, 1, 0),
        a64::b(-3),
    ]);
    a.set(0, xreg_id(1), MMIO_BASE);
    // Set the boot counter as a snapshotting VMM does, so both counters start together.
    let refs: Vec<&VcpuFd> = a.vcpus.iter().collect();
    assert!(matches!(
        counter::restore_guest_counter(&a.vm, &refs, 0).expect("boot counter"),
        CounterMethod::Offset(_)
    ));
    let first = a.run_to_mmio_write();
    vcpu_state::settle(&mut a.vcpus[0]).expect("settle");
    let saved = a.save_vcpus();
    let gic = save_gic(a.gic(), &a.mpidrs()).expect("save GIC");
    let cnt = saved[0].reg(TIMER_CNT.kvm_reg_id()).expect("TIMER_CNT");
    let pcnt = saved[0].reg(PTIMER_CNT.kvm_reg_id()).expect("PTIMER_CNT");
    assert!(cnt >= first, "the guest read {first}, KVM says {cnt}");
    assert!(
        pcnt.abs_diff(cnt) < 1 << 40,
        "both counters started together"
    );

    // Restore, advanced by 1000 s worth of ticks (far from the host's own count, which has
    // run for less than the test's time limit): the counters read saved + advance plus the
    // host ticks that passed since the offset was set, never less.
    let advance = 1000 * counter::counter_frequency();
    let target = cnt + advance;
    let h0 = counter::host_counter();
    let (mut b, method) = a.restore(&saved, &gic, target);
    let CounterMethod::Offset(offset) = method else {
        panic!("Linux 6.12 has KVM_CAP_COUNTER_OFFSET, got {method:?}");
    };
    let g = counter::guest_counter(&b.vcpus[0]).expect("guest counter");
    let mut p = [0u8; 8];
    b.vcpus[0]
        .get_one_reg(PTIMER_CNT.kvm_reg_id(), &mut p)
        .expect("PTIMER_CNT");
    let p = u64::from_le_bytes(p);
    let guest_read = b.run_to_mmio_write();
    let h1 = counter::host_counter();
    let elapsed = h1 - h0;
    for (what, v) in [
        ("TIMER_CNT", g),
        ("PTIMER_CNT", p),
        ("the guest's CNTVCT", guest_read),
    ] {
        assert!(v >= target, "{what} {v} < {target}");
        assert!(
            v - target <= elapsed,
            "{what} {v} is {} past {target}, only {elapsed} host ticks passed",
            v - target
        );
    }
    // The offset wraps when the host has counted less than the target.
    assert!(
        offset.wrapping_sub(h0.wrapping_sub(target)) <= elapsed,
        "offset {offset:#x}"
    );
    // The guest sees its own time, not the host's.
    assert!(h1.abs_diff(g) > elapsed, "guest {g}, host {h0}..{h1}");
}

#[test]
fn kvm_state_without_the_offset_timer_cnt_is_written_on_every_vcpu() {
    let a = Vm::boot(2, 0x1_0000);
    let target = counter::host_counter() / 3;
    let h0 = counter::host_counter();
    let refs: Vec<&VcpuFd> = a.vcpus.iter().collect();
    counter::set_guest_counter_by_registers(&refs, target).expect("TIMER_CNT");
    for v in &a.vcpus {
        let g = counter::guest_counter(v).expect("guest counter");
        let elapsed = counter::host_counter() - h0;
        assert!(
            g >= target && g - target <= elapsed,
            "{g} vs {target} (+{elapsed})"
        );
    }
}

#[test]
fn kvm_state_the_dirty_log_reports_and_clears_exactly_the_written_pages() {
    const PAGES: u64 = 256;
    let mut t = Vm::new(1, PAGES * PAGE, true);
    vcpu::init(&t.vm, &t.vcpus[0], true).expect("vCPU init");
    let mut prog = vec![
        a64::str_x(9, 1, 0),
        a64::str_x(9, 2, 0),
        a64::str_x(9, 3, 0x18),
        a64::str_x(9, 10, 0), // MMIO exit: phase marker
        a64::str_x(9, 4, 0),
        a64::str_x(9, 10, 0),
    ];
    prog.push(a64::B_SELF);
    t.load(&prog);
    for (reg, page) in [(1, 5u64), (2, 17), (3, 200), (4, 17)] {
        t.set(0, xreg_id(reg), RAM_BASE + page * PAGE);
    }
    t.set(0, xreg_id(9), 0xabcd);
    t.set(0, xreg_id(10), MMIO_BASE);
    let size = t.size as usize;
    let log = |t: &Vm| {
        dirty_log::dirty_pages(&dirty_log::get_dirty_log(&t.vm, 0, size).expect("get log"))
    };
    // INITIALLY_SET: every page starts dirty.
    assert_eq!(log(&t), (0..PAGES).collect::<Vec<_>>());
    let all = vec![!0u64; (PAGES / 64) as usize];
    dirty_log::clear_dirty_log(&t.vm, 0, 0, PAGES as u32, &all).expect("clear all");
    assert_eq!(log(&t), Vec::<u64>::new());

    t.run_to_mmio_write();
    assert_eq!(log(&t), vec![5, 17, 200]);
    assert_eq!(log(&t), vec![5, 17, 200], "reading does not clear");
    // Clear page 17 only (a 64-page window starting at page 0).
    dirty_log::clear_dirty_log(&t.vm, 0, 0, 64, &[1 << 17]).expect("clear page 17");
    assert_eq!(log(&t), vec![5, 200]);
    // The guest writes page 17 again: it is write-protected again, so the write is seen.
    t.run_to_mmio_write();
    assert_eq!(log(&t), vec![5, 17, 200]);

    let err = dirty_log::clear_dirty_log(&t.vm, 0, 3, 64, &[1]).expect_err("unaligned");
    assert!(matches!(err, DirtyLogError::BadRange { .. }), "{err}");
    let err = dirty_log::clear_dirty_log(&t.vm, 0, 0, 128, &[1]).expect_err("short bitmap");
    assert!(err.to_string().contains("cannot cover 128 pages"), "{err}");
    assert_eq!(log(&t), vec![5, 17, 200], "refused clears change nothing");
}
