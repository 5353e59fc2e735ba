//! The in-kernel GICv3 (KVM_DEV_TYPE_ARM_VGIC_V3): created after the vCPUs, placed at the
//! layout's addresses, sized, then initialised.

use kvm_bindings::{
    KVM_DEV_ARM_VGIC_CTRL_INIT, KVM_DEV_ARM_VGIC_GRP_ADDR, KVM_DEV_ARM_VGIC_GRP_CTRL,
    KVM_DEV_ARM_VGIC_GRP_NR_IRQS, KVM_VGIC_V3_ADDR_TYPE_DIST, KVM_VGIC_V3_ADDR_TYPE_REDIST,
    kvm_create_device, kvm_device_attr, kvm_device_type_KVM_DEV_TYPE_ARM_VGIC_V3,
};
use kvm_ioctls::{DeviceFd, VmFd};

use crate::layout::{GIC_DIST_BASE, GIC_NR_IRQS, GIC_REDIST_BASE};

/// Errors creating the vGIC.
#[derive(Debug, thiserror::Error)]
pub enum GicError {
    /// The host cannot emulate a GICv3.
    #[error("KVM cannot create a GICv3 (KVM_DEV_TYPE_ARM_VGIC_V3): {0}")]
    Create(#[source] kvm_ioctls::Error),
    /// An attribute was refused.
    #[error("cannot access GICv3 attribute {what}: {source}")]
    Attr {
        /// Which attribute.
        what: &'static str,
        /// What KVM said.
        #[source]
        source: kvm_ioctls::Error,
    },
}

/// The VM's GICv3.
#[derive(Debug)]
pub struct GicV3 {
    fd: DeviceFd,
}

fn set_attr(
    fd: &DeviceFd,
    what: &'static str,
    group: u32,
    attr: u64,
    addr: u64,
) -> Result<(), GicError> {
    let a = kvm_device_attr {
        group,
        attr,
        addr,
        flags: 0,
    };
    fd.set_device_attr(&a)
        .map_err(|source| GicError::Attr { what, source })
}

impl GicV3 {
    /// Creates and initialises the GIC. Call after every vCPU exists.
    pub fn create(vm: &VmFd) -> Result<Self, GicError> {
        let mut dev = kvm_create_device {
            type_: kvm_device_type_KVM_DEV_TYPE_ARM_VGIC_V3,
            fd: 0,
            flags: 0,
        };
        let fd = vm.create_device(&mut dev).map_err(GicError::Create)?;
        let dist = GIC_DIST_BASE;
        let redist = GIC_REDIST_BASE;
        let nr_irqs = GIC_NR_IRQS;
        // KVM reads each value through the pointer during the call; they outlive it.
        set_attr(
            &fd,
            "distributor address",
            KVM_DEV_ARM_VGIC_GRP_ADDR,
            KVM_VGIC_V3_ADDR_TYPE_DIST.into(),
            &dist as *const u64 as u64,
        )?;
        set_attr(
            &fd,
            "redistributor address",
            KVM_DEV_ARM_VGIC_GRP_ADDR,
            KVM_VGIC_V3_ADDR_TYPE_REDIST.into(),
            &redist as *const u64 as u64,
        )?;
        set_attr(
            &fd,
            "number of IRQs",
            KVM_DEV_ARM_VGIC_GRP_NR_IRQS,
            0,
            &nr_irqs as *const u32 as u64,
        )?;
        set_attr(
            &fd,
            "CTRL_INIT",
            KVM_DEV_ARM_VGIC_GRP_CTRL,
            KVM_DEV_ARM_VGIC_CTRL_INIT.into(),
            0,
        )?;
        Ok(Self { fd })
    }

    /// The number of interrupt IDs the GIC implements (32 private ones plus the SPIs).
    pub fn nr_irqs(&self) -> Result<u32, GicError> {
        let mut n = 0u32;
        let mut a = kvm_device_attr {
            group: KVM_DEV_ARM_VGIC_GRP_NR_IRQS,
            attr: 0,
            addr: &mut n as *mut u32 as u64,
            flags: 0,
        };
        // SAFETY: `addr` points at a u32 that outlives the call, the size of this attribute.
        unsafe { self.fd.get_device_attr(&mut a) }.map_err(|source| GicError::Attr {
            what: "number of IRQs",
            source,
        })?;
        Ok(n)
    }

    /// The device descriptor, for state save and restore.
    pub fn device_fd(&self) -> &DeviceFd {
        &self.fd
    }
}
