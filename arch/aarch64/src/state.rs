//! The KVM-side state of an Arm64 guest as plain data: each vCPU's registers and the vGICv3.
//! Portable (no KVM) so that snapshots can be inspected, compared and unit-tested anywhere;
//! `kvm::vcpu_state` and `kvm::gic_state` fill and apply these on aarch64.
//!
//! Each type is a stored layout (`migration::state::Versioned`): change one only by adding a
//! new version and teaching `upgrade` to read the old one.

use serde::{Deserialize, Serialize};

use migration::state::Versioned;

use crate::cpu::id_regs;
use crate::sysreg::{self, SysReg};

/// One register as `KVM_GET_ONE_REG` returned it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegValue {
    /// The ONE_REG ID, which also encodes the size.
    pub id: u64,
    /// The value, little-endian, `sysreg::reg_size(id)` bytes.
    pub value: Vec<u8>,
}

impl RegValue {
    /// A 64-bit register.
    pub fn u64(id: u64, value: u64) -> Self {
        Self {
            id,
            value: value.to_le_bytes().to_vec(),
        }
    }

    /// The value as an integer, for registers of at most 8 bytes.
    pub fn as_u64(&self) -> Option<u64> {
        if self.value.len() > 8 {
            return None;
        }
        let mut b = [0u8; 8];
        b[..self.value.len()].copy_from_slice(&self.value);
        Some(u64::from_le_bytes(b))
    }
}

/// Pending exceptions of a vCPU (`struct kvm_vcpu_events` on arm64).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VcpuEvents {
    /// An SError is pending.
    pub serror_pending: bool,
    /// `serror_esr` holds the syndrome of the pending SError.
    pub serror_has_esr: bool,
    /// An external data abort is pending.
    pub ext_dabt_pending: bool,
    /// The pending SError's syndrome.
    pub serror_esr: u64,
}

/// Everything KVM holds about one vCPU.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VcpuState {
    /// MPIDR_EL1, which names the vCPU to the GIC and PSCI.
    pub mpidr: u64,
    /// `kvm_vcpu_init.features` as the vCPU was initialised, with POWER_OFF cleared (the MP
    /// state says whether it is off).
    pub features: [u32; 7],
    /// `KVM_GET_MP_STATE` (`KVM_MP_STATE_RUNNABLE` 0, `STOPPED` 5, `SUSPENDED` 10).
    pub mp_state: u32,
    /// Every register KVM_GET_REG_LIST lists, in its order.
    pub regs: Vec<RegValue>,
    /// Pending SError / external abort, if the host reports vCPU events.
    pub events: Option<VcpuEvents>,
}

/// An ID register of a saved vCPU, with its name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdRegValue {
    /// The architectural name (or the encoding, `S3_0_C0_C4_3`, if this build has none).
    pub name: String,
    /// The encoding.
    pub reg: SysReg,
    /// The value.
    pub value: u64,
}

impl VcpuState {
    /// The value of a register of at most 8 bytes, if saved.
    pub fn reg(&self, id: u64) -> Option<u64> {
        self.regs
            .iter()
            .find(|r| r.id == id)
            .and_then(RegValue::as_u64)
    }

    /// The guest's ID registers (MIDR_EL1, REVIDR_EL1, ID_AA64*_EL1, CTR_EL0, ...), in the
    /// order KVM listed them.
    pub fn id_registers(&self) -> Vec<IdRegValue> {
        self.regs
            .iter()
            .filter_map(|r| {
                let reg = sysreg::sysreg_of(r.id).filter(|reg| id_regs::is_id_reg(*reg))?;
                Some(IdRegValue {
                    name: sysreg::sysreg_name(reg),
                    reg,
                    value: r.as_u64()?,
                })
            })
            .collect()
    }

    /// Checks what `restore` relies on: each value has its register's size and no register
    /// appears twice. The error names the register.
    pub fn check(&self) -> Result<(), String> {
        let mut seen = std::collections::HashSet::new();
        for r in &self.regs {
            let name = sysreg::reg_name(r.id);
            if r.value.len() != sysreg::reg_size(r.id) {
                return Err(format!(
                    "register {name} ({:#x}) holds {} bytes, its size is {}",
                    r.id,
                    r.value.len(),
                    sysreg::reg_size(r.id)
                ));
            }
            if !seen.insert(r.id) {
                return Err(format!("register {name} ({:#x}) is saved twice", r.id));
            }
        }
        Ok(())
    }
}

/// Names every ID-register field whose value differs between a snapshot's vCPU and the
/// host's (`ID_AA64ISAR0_EL1 bits [7:4] (AES): 2 vs 1`, snapshot first), and ID registers
/// that only one side has. Empty when the CPU models agree.
pub fn id_register_differences(saved: &VcpuState, host: &VcpuState) -> Vec<String> {
    let (saved, host) = (saved.id_registers(), host.id_registers());
    let mut out = Vec::new();
    for s in &saved {
        match host.iter().find(|h| h.reg == s.reg) {
            Some(h) => out.extend(id_regs::field_differences(&s.name, s.reg, s.value, h.value)),
            None => out.push(format!(
                "{} is in the snapshot but this host's KVM does not have it",
                s.name
            )),
        }
    }
    for h in host
        .iter()
        .filter(|h| !saved.iter().any(|s| s.reg == h.reg))
    {
        out.push(format!(
            "{} is on this host but not in the snapshot",
            h.name
        ));
    }
    out
}

/// The distributor: shared interrupts (SPIs, INTID 32 and up) and global control.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GicDistState {
    /// GICD_CTLR.
    pub ctlr: u32,
    /// GICD_IIDR (its revision selects KVM's emulation behaviour, so it is restored first).
    pub iidr: u32,
    /// GICD_STATUSR.
    pub statusr: u32,
    /// GICD_IGROUPR<n>, one per 32 SPIs.
    pub igroupr: Vec<u32>,
    /// GICD_ISENABLER<n>, one per 32 SPIs.
    pub isenabler: Vec<u32>,
    /// GICD_ISPENDR<n> (the pending latch), one per 32 SPIs.
    pub ispendr: Vec<u32>,
    /// GICD_ISACTIVER<n>, one per 32 SPIs.
    pub isactiver: Vec<u32>,
    /// GICD_IPRIORITYR<n>, one per 4 SPIs.
    pub ipriorityr: Vec<u32>,
    /// GICD_ICFGR<n> (edge or level), one per 16 SPIs.
    pub icfgr: Vec<u32>,
    /// GICD_IROUTER<n>, one per SPI.
    pub irouter: Vec<u64>,
    /// The input line levels (LEVEL_INFO), one word per 32 SPIs.
    pub line_level: Vec<u32>,
}

/// A vCPU's CPU interface: its ICC_*_EL1 system registers.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GicCpuState {
    /// ICC_SRE_EL1.
    pub sre: u64,
    /// ICC_CTLR_EL1 (PRIbits decides how many AP registers exist).
    pub ctlr: u64,
    /// ICC_IGRPEN0_EL1.
    pub igrpen0: u64,
    /// ICC_IGRPEN1_EL1.
    pub igrpen1: u64,
    /// ICC_PMR_EL1.
    pub pmr: u64,
    /// ICC_BPR0_EL1.
    pub bpr0: u64,
    /// ICC_BPR1_EL1.
    pub bpr1: u64,
    /// ICC_AP0R<n>_EL1, as many as PRIbits implies (1, 2 or 4).
    pub ap0r: Vec<u64>,
    /// ICC_AP1R<n>_EL1, as many as `ap0r`.
    pub ap1r: Vec<u64>,
}

/// One vCPU's redistributor (its SGIs and PPIs, INTID 0 to 31) and CPU interface. LPIs are
/// not saved: this VMM creates no ITS, so the guest has none (GICR_PROPBASER and
/// GICR_PENDBASER matter only with LPIs, and KVM rewrites their cacheability fields on write,
/// so they would not read back as saved anyway).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GicRedistState {
    /// The MPIDR of the vCPU, which keys every attribute of it.
    pub mpidr: u64,
    /// GICR_CTLR.
    pub ctlr: u32,
    /// GICR_STATUSR.
    pub statusr: u32,
    /// GICR_WAKER.
    pub waker: u32,
    /// GICR_IGROUPR0.
    pub igroupr0: u32,
    /// GICR_ISENABLER0.
    pub isenabler0: u32,
    /// GICR_ISPENDR0 (the pending latch).
    pub ispendr0: u32,
    /// GICR_ISACTIVER0.
    pub isactiver0: u32,
    /// GICR_IPRIORITYR0..7.
    pub ipriorityr: Vec<u32>,
    /// GICR_ICFGR1 (PPI configuration; ICFGR0, the SGIs', is read-only).
    pub icfgr1: u32,
    /// The PPI input line levels (LEVEL_INFO, INTID 0 to 31).
    pub line_level: u32,
    /// The CPU interface.
    pub cpu: GicCpuState,
}

/// The vGICv3.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GicState {
    /// Interrupt IDs the GIC implements (`KVM_DEV_ARM_VGIC_GRP_NR_IRQS`), 32 private + SPIs.
    pub nr_irqs: u32,
    /// The distributor.
    pub dist: GicDistState,
    /// One per vCPU, in vCPU order.
    pub redists: Vec<GicRedistState>,
}

/// Redistributor priority registers: 32 private interrupts, 4 per register.
pub const GICR_IPRIORITYR_COUNT: usize = 8;

impl GicState {
    /// Checks that the state fits a GIC with `nr_irqs` interrupt IDs and vCPUs with these
    /// MPIDRs, in this order; the error says what does not fit.
    pub fn check(&self, nr_irqs: u32, mpidrs: &[u64]) -> Result<(), String> {
        if self.nr_irqs != nr_irqs {
            return Err(format!(
                "the GIC state has {} interrupt IDs, this VM's GIC has {nr_irqs}",
                self.nr_irqs
            ));
        }
        let spis = nr_irqs.saturating_sub(32) as usize;
        let d = &self.dist;
        for (what, len, want) in [
            ("GICD_IGROUPR", d.igroupr.len(), spis / 32),
            ("GICD_ISENABLER", d.isenabler.len(), spis / 32),
            ("GICD_ISPENDR", d.ispendr.len(), spis / 32),
            ("GICD_ISACTIVER", d.isactiver.len(), spis / 32),
            ("GICD_IPRIORITYR", d.ipriorityr.len(), spis / 4),
            ("GICD_ICFGR", d.icfgr.len(), spis / 16),
            ("GICD_IROUTER", d.irouter.len(), spis),
            ("SPI line levels", d.line_level.len(), spis / 32),
        ] {
            if len != want {
                return Err(format!(
                    "the GIC state has {len} {what} registers, {want} expected for {nr_irqs} interrupt IDs"
                ));
            }
        }
        let saved: Vec<u64> = self.redists.iter().map(|r| r.mpidr).collect();
        if saved != mpidrs {
            return Err(format!(
                "the GIC state is for vCPUs with MPIDRs {saved:x?}, this VM's are {mpidrs:x?}"
            ));
        }
        for r in &self.redists {
            if r.ipriorityr.len() != GICR_IPRIORITYR_COUNT {
                return Err(format!(
                    "the redistributor of MPIDR {:#x} has {} GICR_IPRIORITYR registers, {GICR_IPRIORITYR_COUNT} expected",
                    r.mpidr,
                    r.ipriorityr.len()
                ));
            }
            let aprs = r.cpu.ap0r.len();
            if !matches!(aprs, 1 | 2 | 4) || r.cpu.ap1r.len() != aprs {
                return Err(format!(
                    "the CPU interface of MPIDR {:#x} has {aprs} ICC_AP0R and {} ICC_AP1R registers",
                    r.mpidr,
                    r.cpu.ap1r.len()
                ));
            }
        }
        Ok(())
    }
}

impl Versioned for VcpuState {
    const VERSION: u16 = 1;
    fn upgrade(version: u16, _: &[u8]) -> Result<Self, String> {
        Err(format!("vCPU state version {version} never existed"))
    }
}

impl Versioned for GicState {
    const VERSION: u16 = 1;
    fn upgrade(version: u16, _: &[u8]) -> Result<Self, String> {
        Err(format!("GIC state version {version} never existed"))
    }
}

#[cfg(test)]
mod tests;
