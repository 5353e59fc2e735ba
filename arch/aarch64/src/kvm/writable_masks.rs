//! `KVM_ARM_GET_REG_WRITABLE_MASKS`: which bits of each feature-ID register userspace may
//! change before the first KVM_RUN. kvm-ioctls does not wrap this VM ioctl.

use kvm_bindings::{KVM_ARM_FEATURE_ID_RANGE, KVMIO, reg_mask_range};
use kvm_ioctls::VmFd;
use vmm_sys_util::ioctl::ioctl_with_mut_ref;
use vmm_sys_util::ioctl_ior_nr;

use crate::sysreg::{FEATURE_ID_RANGE_SIZE, SysReg};

ioctl_ior_nr!(KVM_ARM_GET_REG_WRITABLE_MASKS, KVMIO, 0xb6, reg_mask_range);

/// `KVM_CAP_ARM_SUPPORTED_REG_MASK_RANGES`.
const CAP_SUPPORTED_REG_MASK_RANGES: u32 = 230;

/// Errors reading the writable masks.
#[derive(Debug, thiserror::Error)]
pub enum WritableMasksError {
    /// The kernel predates writable ID registers (Linux 6.7).
    #[error(
        "KVM cannot report writable ID-register masks (no KVM_CAP_ARM_SUPPORTED_REG_MASK_RANGES)"
    )]
    Unsupported,
    /// The ioctl failed.
    #[error("KVM_ARM_GET_REG_WRITABLE_MASKS failed: {0}")]
    Ioctl(#[source] std::io::Error),
}

/// The writable masks of the feature-ID register range.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WritableMasks {
    masks: Vec<u64>,
}

impl WritableMasks {
    /// Reads the masks of a VM.
    pub fn read(vm: &VmFd) -> Result<Self, WritableMasksError> {
        let ranges = vm.check_extension_raw(u64::from(CAP_SUPPORTED_REG_MASK_RANGES));
        if ranges & (1 << KVM_ARM_FEATURE_ID_RANGE) == 0 {
            return Err(WritableMasksError::Unsupported);
        }
        let mut masks = vec![0u64; FEATURE_ID_RANGE_SIZE];
        let mut range = reg_mask_range {
            addr: masks.as_mut_ptr() as u64,
            range: KVM_ARM_FEATURE_ID_RANGE,
            ..Default::default()
        };
        // SAFETY: `range.addr` points to `FEATURE_ID_RANGE_SIZE` u64s that outlive the call,
        // which is the size KVM writes for KVM_ARM_FEATURE_ID_RANGE; `vm` is a valid VM fd.
        let ret = unsafe { ioctl_with_mut_ref(vm, KVM_ARM_GET_REG_WRITABLE_MASKS(), &mut range) };
        if ret < 0 {
            return Err(WritableMasksError::Ioctl(std::io::Error::last_os_error()));
        }
        Ok(Self { masks })
    }

    /// The writable bits of a register, or `None` outside the feature-ID range.
    pub fn get(&self, reg: SysReg) -> Option<u64> {
        reg.feature_id_index()
            .and_then(|i| self.masks.get(i).copied())
    }
}
