//! The migration engine's dirty-page source over a real running VM (`vmm::migration::dirty`):
//! logging turned on for a guest that already has memory, the pages the guest wrote (KVM's
//! log) and the pages the VMM wrote (the device bitmap) reported together, each once, and
//! page reads and zero checks through the same source.
#![cfg(target_arch = "aarch64")]

use std::sync::Arc;
use std::time::{Duration, Instant};

use devices::MmioBus;
use migration::engine::DirtySource;
use vm_memory::{Bytes, GuestAddress};
use vmm::migration::dirty::GuestDirtySource;
use vmm::vcpu::VcpuHandle;
use vmm::vm::builder::{DirtyLog, add_memory};
use vmm::vm::memory::Ram;
use vmm_tests::a64;

const BASE: u64 = 0x4000_0000;
const PAGES: u64 = 64;
const PAGE: u64 = 4096;

fn dirty_set(src: &mut GuestDirtySource<'_>) -> Vec<u64> {
    src.take_dirty().expect("take_dirty").iter().collect()
}

#[test]
fn migration_dirty_source_reports_guest_and_device_writes_once() {
    assert!(
        std::path::Path::new("/dev/kvm").exists(),
        "/dev/kvm is missing: this test needs Arm64 KVM"
    );
    let kvm = kvm_ioctls::Kvm::new().expect("open /dev/kvm");
    let vm = kvm.create_vm().expect("KVM_CREATE_VM");
    let ram = Ram::new(BASE, PAGES * PAGE).expect("guest RAM");
    add_memory(&vm, &ram, DirtyLog::Off).expect("memory slot");
    let vcpu = vm.create_vcpu(0).expect("KVM_CREATE_VCPU");
    arch::kvm::vcpu::init(&vm, &vcpu, true).expect("vCPU init");
    // Wait for x3 to become non-zero (the test sets it while the guest runs), then store
    // x5 in pages 8 to 11, then spin.
    let mut program = vec![
        a64::subs_imm(31, 3, 0), // cmp x3, #0
        a64::b_ne(2),
        a64::b(-2),
    ];
    program.extend(a64::mov_imm64(1, BASE + 8 * PAGE));
    program.extend([
        a64::str_x(5, 1, 0),
        a64::add_imm(1, 1, 2048),
        a64::add_imm(1, 1, 2048),
        a64::subs_imm(2, 2, 1),
        a64::b_ne(-4),
        a64::b(0),
    ]);
    ram.guest()
        .write_slice(&a64::to_bytes(&program), GuestAddress(BASE))
        .expect("program");
    let set = |id: u64, v: u64| {
        vcpu.set_one_reg(id, &v.to_le_bytes()).expect("set reg");
    };
    set(arch::sysreg::PC_ID, BASE);
    set(arch::sysreg::xreg_id(2), 4);
    set(arch::sysreg::xreg_id(3), 0);
    set(arch::sysreg::xreg_id(5), 0xdead_beef);

    let (tx, _rx) = vmm::events::channel().expect("events");
    let handle = VcpuHandle::spawn(0, vcpu, Arc::new(MmioBus::new()), tx, false).expect("spawn");
    let mut src = GuestDirtySource::new(&vm, &ram, false);
    src.start_tracking().expect("start tracking");
    // Every page starts dirty: turning logging on protects nothing up front.
    assert_eq!(dirty_set(&mut src).len() as u64, PAGES);
    assert_eq!(
        dirty_set(&mut src),
        Vec::<u64>::new(),
        "the guest only spins"
    );

    // Let the guest write, and write a page from the VMM too.
    handle.pause();
    {
        let fd = handle.fd_if_paused().expect("paused fd");
        fd.set_one_reg(arch::sysreg::xreg_id(3), &1u64.to_le_bytes())
            .expect("set x3");
    }
    handle.resume();
    let deadline = Instant::now() + Duration::from_secs(60);
    while ram
        .guest()
        .read_obj::<u64>(GuestAddress(BASE + 11 * PAGE))
        .expect("read")
        != 0xdead_beef
    {
        assert!(Instant::now() < deadline, "the guest never wrote page 11");
        std::thread::sleep(Duration::from_millis(10));
    }
    ram.guest()
        .write_slice(&[7u8; 16], GuestAddress(BASE + 40 * PAGE))
        .expect("device write");
    handle.pause();
    assert_eq!(dirty_set(&mut src), vec![8, 9, 10, 11, 40]);
    assert_eq!(
        dirty_set(&mut src),
        Vec::<u64>::new(),
        "each page is reported once"
    );

    let mut page = vec![0u8; PAGE as usize];
    src.read_page(9, &mut page).expect("read page");
    assert_eq!(&page[..8], &0xdead_beefu64.to_le_bytes());
    // The source vouches for zero pages only where memory is a hole: never for a page that
    // was written (a hole is whatever the file system reports, so an untouched page may
    // still be read, and is then found zero by its bytes).
    for written in [8, 9, 10, 11, 40] {
        assert!(!src.is_zero(written).expect("zero check"), "page {written}");
    }
    src.read_page(50, &mut page).expect("read page");
    assert!(page.iter().all(|&b| b == 0), "page 50 was never written");
    src.stop_tracking().expect("stop tracking");
    handle.stop();
}
