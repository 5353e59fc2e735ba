//! vCPU initialisation: the preferred target with PSCI 0.2 (PMU off), secondaries powered off
//! until the guest starts them with PSCI CPU_ON, and the boot registers.

use kvm_bindings::{KVM_ARM_VCPU_POWER_OFF, KVM_ARM_VCPU_PSCI_0_2, kvm_vcpu_init};
use kvm_ioctls::{VcpuFd, VmFd};

use crate::sysreg::{MPIDR_EL1, PC_ID, PSTATE_ID, xreg_id};

/// PSTATE at boot: EL1h with D, A, I and F masked, as booting.rst requires.
const PSTATE_EL1H_DAIF: u64 = 0x3c5;

/// Errors setting up a vCPU.
#[derive(Debug, thiserror::Error)]
pub enum VcpuInitError {
    /// KVM_ARM_PREFERRED_TARGET failed.
    #[error("KVM has no preferred vCPU target: {0}")]
    PreferredTarget(#[source] kvm_ioctls::Error),
    /// KVM_ARM_VCPU_INIT failed.
    #[error("KVM_ARM_VCPU_INIT failed: {0}")]
    Init(#[source] kvm_ioctls::Error),
    /// A ONE_REG access failed.
    #[error("cannot access vCPU register {id:#x}: {source}")]
    Reg {
        /// The register.
        id: u64,
        /// What KVM said.
        #[source]
        source: kvm_ioctls::Error,
    },
}

/// The `kvm_vcpu_init.features` `init` uses: PSCI 0.2, and POWER_OFF for secondaries.
/// Snapshots record them (`vcpu_state::save_vcpu`), since KVM cannot report them.
pub fn init_features(boot: bool) -> [u32; 7] {
    let mut features = [0u32; 7];
    features[0] |= 1 << KVM_ARM_VCPU_PSCI_0_2;
    if !boot {
        features[0] |= 1 << KVM_ARM_VCPU_POWER_OFF;
    }
    features
}

/// Initialises a vCPU; only the boot vCPU starts powered on.
pub fn init(vm: &VmFd, vcpu: &VcpuFd, boot: bool) -> Result<(), VcpuInitError> {
    let mut kvi = kvm_vcpu_init::default();
    vm.get_preferred_target(&mut kvi)
        .map_err(VcpuInitError::PreferredTarget)?;
    kvi.features = init_features(boot);
    vcpu.vcpu_init(&kvi).map_err(VcpuInitError::Init)
}

fn set(vcpu: &VcpuFd, id: u64, value: u64) -> Result<(), VcpuInitError> {
    vcpu.set_one_reg(id, &value.to_le_bytes())
        .map(|_| ())
        .map_err(|source| VcpuInitError::Reg { id, source })
}

/// Reads a 64-bit register.
pub fn get(vcpu: &VcpuFd, id: u64) -> Result<u64, VcpuInitError> {
    let mut b = [0u8; 8];
    vcpu.get_one_reg(id, &mut b)
        .map_err(|source| VcpuInitError::Reg { id, source })?;
    Ok(u64::from_le_bytes(b))
}

/// Points the boot vCPU at the kernel with the device tree address in X0.
pub fn set_boot_regs(vcpu: &VcpuFd, entry: u64, fdt: u64) -> Result<(), VcpuInitError> {
    set(vcpu, PSTATE_ID, PSTATE_EL1H_DAIF)?;
    set(vcpu, PC_ID, entry)?;
    set(vcpu, xreg_id(0), fdt)?;
    for n in 1..4 {
        set(vcpu, xreg_id(n), 0)?;
    }
    Ok(())
}

/// The vCPU's MPIDR_EL1, which names it in the device tree and to PSCI.
pub fn mpidr(vcpu: &VcpuFd) -> Result<u64, VcpuInitError> {
    get(vcpu, MPIDR_EL1.kvm_reg_id())
}
