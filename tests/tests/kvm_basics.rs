//! First KVM tests, run inside an emulated Arm64 host (or natively on Arm64 KVM): MMIO exits,
//! the dirty log, PSCI system events, and the writable ID-register masks.
#![cfg(target_arch = "aarch64")]

use kvm_bindings::{KVM_SYSTEM_EVENT_RESET, KVM_SYSTEM_EVENT_SHUTDOWN};
use kvm_ioctls::VcpuExit;

use arch::kvm::WritableMasks;
use arch::sysreg::{self, ID_AA64ISAR0_EL1, ID_AA64PFR0_EL1, xreg_id};
use vmm_tests::a64::{self, PSCI_SYSTEM_OFF, PSCI_SYSTEM_RESET};
use vmm_tests::kvm_fixture::{MMIO_BASE, PAGE, RAM_BASE, TestVm};

/// What one KVM_RUN returned, owned so the test can compare it.
#[derive(Debug, PartialEq, Eq)]
enum Exit {
    Write(u64, Vec<u8>),
    Read(u64, usize),
    System(u32),
    Other(String),
}

/// Runs until the next exit; answers MMIO reads with `read_value`.
fn run_once(t: &mut TestVm, read_value: u64) -> Exit {
    match t.vcpu.run().expect("KVM_RUN") {
        VcpuExit::MmioWrite(addr, data) => Exit::Write(addr, data.to_vec()),
        VcpuExit::MmioRead(addr, data) => {
            let len = data.len();
            data.copy_from_slice(&read_value.to_le_bytes()[..len]);
            Exit::Read(addr, len)
        }
        VcpuExit::SystemEvent(kind, _) => Exit::System(kind),
        other => Exit::Other(format!("{other:?}")),
    }
}

#[test]
fn mmio_write_and_read_exits_carry_address_and_data() {
    let mut t = TestVm::new(0x10_0000, false);
    let mut prog = vec![
        a64::str_x(2, 1, 0),  // write x2 to MMIO_BASE
        a64::ldr_x(3, 1, 8),  // read MMIO_BASE + 8 into x3
        a64::str_x(3, 1, 16), // write x3 back to MMIO_BASE + 16
    ];
    prog.extend(a64::psci_call(PSCI_SYSTEM_OFF));
    t.load(&prog);
    t.set_reg(xreg_id(1), MMIO_BASE);
    t.set_reg(xreg_id(2), 0x1122_3344_5566_7788);

    assert_eq!(
        run_once(&mut t, 0),
        Exit::Write(MMIO_BASE, 0x1122_3344_5566_7788u64.to_le_bytes().to_vec())
    );
    assert_eq!(
        run_once(&mut t, 0xdead_beef_cafe_f00d),
        Exit::Read(MMIO_BASE + 8, 8)
    );
    // The value the VMM supplied reached the guest register.
    assert_eq!(
        run_once(&mut t, 0),
        Exit::Write(
            MMIO_BASE + 16,
            0xdead_beef_cafe_f00du64.to_le_bytes().to_vec()
        )
    );
    assert_eq!(t.get_reg(xreg_id(3)), 0xdead_beef_cafe_f00d);
    assert_eq!(run_once(&mut t, 0), Exit::System(KVM_SYSTEM_EVENT_SHUTDOWN));
}

#[test]
fn dirty_log_reports_exactly_the_pages_the_guest_wrote() {
    let mut t = TestVm::new(0x10_0000, true); // 256 pages
    let mut prog = vec![
        a64::str_x(9, 1, 0),
        a64::str_x(9, 2, 0),
        a64::str_x(9, 3, 0x18),
        a64::str_x(9, 10, 0), // phase marker: an MMIO write
        a64::str_x(9, 4, 0),
        a64::str_x(9, 1, 8),
    ];
    prog.extend(a64::psci_call(PSCI_SYSTEM_OFF));
    t.load(&prog);
    for (reg, page) in [(1, 5u64), (2, 17), (3, 200), (4, 42)] {
        t.set_reg(xreg_id(reg), RAM_BASE + page * PAGE);
    }
    t.set_reg(xreg_id(9), 0xabcd);
    t.set_reg(xreg_id(10), MMIO_BASE);
    // Loading the program was a VMM write, which KVM's log does not see.
    assert_eq!(t.dirty_pages(), Vec::<u64>::new());

    assert!(matches!(run_once(&mut t, 0), Exit::Write(a, _) if a == MMIO_BASE));
    assert_eq!(t.dirty_pages(), vec![5, 17, 200]);
    assert_eq!(
        t.dirty_pages(),
        Vec::<u64>::new(),
        "reading the log clears it"
    );

    assert_eq!(run_once(&mut t, 0), Exit::System(KVM_SYSTEM_EVENT_SHUTDOWN));
    assert_eq!(t.dirty_pages(), vec![5, 42]);
}

#[test]
fn psci_system_off_and_reset_arrive_as_system_events() {
    for (function, event) in [
        (PSCI_SYSTEM_OFF, KVM_SYSTEM_EVENT_SHUTDOWN),
        (PSCI_SYSTEM_RESET, KVM_SYSTEM_EVENT_RESET),
    ] {
        let mut t = TestVm::new(0x1_0000, false);
        t.load(&a64::psci_call(function));
        assert_eq!(
            run_once(&mut t, 0),
            Exit::System(event),
            "PSCI function {function:#x}"
        );
    }
}

#[test]
fn a_guest_loop_runs_to_completion() {
    // 100k iterations of a counted loop, then report the counter over MMIO.
    let mut t = TestVm::new(0x1_0000, false);
    let mut prog = a64::mov_imm64(0, 100_000);
    prog.extend([
        a64::add_imm(5, 5, 1),
        a64::subs_imm(0, 0, 1),
        a64::b_ne(-2),
        a64::str_x(5, 1, 0),
    ]);
    t.load(&prog);
    t.set_reg(xreg_id(1), MMIO_BASE);
    t.set_reg(xreg_id(5), 0);
    assert_eq!(
        run_once(&mut t, 0),
        Exit::Write(MMIO_BASE, 100_000u64.to_le_bytes().to_vec())
    );
}

#[test]
fn writable_masks_cover_the_id_registers() {
    let t = TestVm::new(0x1_0000, false);
    let masks = WritableMasks::read(&t.vm).expect("KVM_ARM_GET_REG_WRITABLE_MASKS");
    let isar0 = masks
        .get(ID_AA64ISAR0_EL1)
        .expect("ISAR0 is in the feature-ID range");
    let pfr0 = masks
        .get(ID_AA64PFR0_EL1)
        .expect("PFR0 is in the feature-ID range");
    println!("writable masks: ID_AA64ISAR0_EL1 {isar0:#018x}, ID_AA64PFR0_EL1 {pfr0:#018x}");
    assert_ne!(isar0, 0);
    assert_ne!(pfr0, 0);
    assert_eq!(masks.get(sysreg::CNTFRQ_EL0), None);
}

#[test]
fn a_writable_id_field_can_be_lowered_before_the_first_run() {
    let t = TestVm::new(0x1_0000, false);
    let masks = WritableMasks::read(&t.vm).expect("writable masks");
    let id = ID_AA64ISAR0_EL1.kvm_reg_id();
    let value = t.get_reg(id);
    let mask = masks.get(ID_AA64ISAR0_EL1).expect("mask");
    // ISAR0 fields are unsigned 4-bit features: zero means "not implemented", always allowed.
    let field = (0..16)
        .map(|i| 0xfu64 << (4 * i))
        .find(|f| mask & f == *f && value & f != 0)
        .expect("a writable, implemented ISAR0 field");
    let lowered = value & !field;
    t.set_reg(id, lowered);
    assert_eq!(
        t.get_reg(id),
        lowered,
        "the guest now sees the feature as absent"
    );
    // A bit outside the writable mask cannot be changed.
    let fixed_bit = (0..64)
        .map(|b| 1u64 << b)
        .find(|b| mask & b == 0 && value & b != 0);
    if let Some(bit) = fixed_bit {
        assert!(
            t.vcpu
                .set_one_reg(id, &(lowered & !bit).to_le_bytes())
                .is_err()
        );
    }
}
