//! A minimal KVM VM for hand-assembled guests: one memory slot, one vCPU with PSCI 0.2,
//! no irqchip. A missing /dev/kvm is a test failure, never a skip.

use devices::GuestRam;
use kvm_bindings::{KVM_ARM_VCPU_PSCI_0_2, kvm_userspace_memory_region, kvm_vcpu_init};
use kvm_ioctls::{Kvm, VcpuFd, VmFd};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};

use arch::sysreg;

/// Guest-physical base of the test RAM.
pub const RAM_BASE: u64 = 0x4000_0000;
/// An address outside every memory slot, so accesses there exit as MMIO.
pub const MMIO_BASE: u64 = 0x1000_0000;
/// Host (and dirty-log) page size.
pub const PAGE: u64 = 4096;

/// A VM with one vCPU and `RAM_BASE..RAM_BASE + size` of memory in slot 0.
#[derive(Debug)]
pub struct TestVm {
    pub kvm: Kvm,
    pub vm: VmFd,
    pub vcpu: VcpuFd,
    pub mem: GuestRam,
    pub size: u64,
}

impl TestVm {
    /// Creates the VM; `log_dirty` enables KVM's dirty log on the slot.
    pub fn new(size: u64, log_dirty: bool) -> Self {
        assert!(
            std::path::Path::new("/dev/kvm").exists(),
            "/dev/kvm is missing: this test needs Arm64 KVM"
        );
        let kvm = Kvm::new().expect("open /dev/kvm");
        let vm = kvm.create_vm().expect("KVM_CREATE_VM");
        let mem: GuestRam = GuestRam::from_ranges(&[(GuestAddress(RAM_BASE), size as usize)])
            .expect("guest memory");
        let host = mem
            .get_host_address(GuestAddress(RAM_BASE))
            .expect("host address");
        let region = kvm_userspace_memory_region {
            slot: 0,
            flags: if log_dirty {
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
        let vcpu = vm.create_vcpu(0).expect("KVM_CREATE_VCPU");
        let mut kvi = kvm_vcpu_init::default();
        vm.get_preferred_target(&mut kvi)
            .expect("KVM_ARM_PREFERRED_TARGET");
        kvi.features[0] |= 1 << KVM_ARM_VCPU_PSCI_0_2;
        vcpu.vcpu_init(&kvi).expect("KVM_ARM_VCPU_INIT");
        Self {
            kvm,
            vm,
            vcpu,
            mem,
            size,
        }
    }

    /// Writes a program at the start of RAM and points the PC at it.
    pub fn load(&self, program: &[u32]) {
        self.mem
            .write_slice(&crate::a64::to_bytes(program), GuestAddress(RAM_BASE))
            .expect("write program");
        self.set_reg(sysreg::PC_ID, RAM_BASE);
    }

    /// Sets a 64-bit register through ONE_REG.
    pub fn set_reg(&self, id: u64, value: u64) {
        self.vcpu
            .set_one_reg(id, &value.to_le_bytes())
            .expect("KVM_SET_ONE_REG");
    }

    /// Reads a 64-bit register through ONE_REG.
    pub fn get_reg(&self, id: u64) -> u64 {
        let mut b = [0u8; 8];
        self.vcpu.get_one_reg(id, &mut b).expect("KVM_GET_ONE_REG");
        u64::from_le_bytes(b)
    }

    /// Pages of slot 0 that KVM reports dirty since the last call (the call clears them).
    pub fn dirty_pages(&self) -> Vec<u64> {
        let bitmap = self
            .vm
            .get_dirty_log(0, self.size as usize)
            .expect("KVM_GET_DIRTY_LOG");
        let mut pages = Vec::new();
        for (w, word) in bitmap.iter().enumerate() {
            for bit in 0..64 {
                if word & (1 << bit) != 0 {
                    pages.push(w as u64 * 64 + bit);
                }
            }
        }
        pages
    }
}
