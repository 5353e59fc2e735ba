//! Saving and restoring the vGICv3 through its device attributes, in the order
//! Documentation/virt/kvm/devices/arm-vgic-v3.rst asks for.
//!
//! Every distributor and redistributor register is a 32-bit attribute (64-bit registers are
//! two halves); the CPU interface's ICC_* registers are 64-bit attributes keyed by the
//! vCPU's MPIDR and the register's encoding. All vCPUs must be out of KVM_RUN (KVM answers
//! EBUSY otherwise).
//!
//! LPIs: this VMM creates no ITS, so the guest has no LPIs: there are no pending tables to
//! flush (KVM_DEV_ARM_VGIC_SAVE_PENDING_TABLES), no ITS tables, and GICR_PROPBASER and
//! GICR_PENDBASER are not saved (with an ITS they would be restored before GICR_CTLR).

use kvm_bindings::{
    KVM_DEV_ARM_VGIC_GRP_CPU_SYSREGS, KVM_DEV_ARM_VGIC_GRP_DIST_REGS,
    KVM_DEV_ARM_VGIC_GRP_LEVEL_INFO, KVM_DEV_ARM_VGIC_GRP_REDIST_REGS,
    KVM_DEV_ARM_VGIC_LINE_LEVEL_INFO_SHIFT, VGIC_LEVEL_INFO_LINE_LEVEL, kvm_device_attr,
};
use kvm_ioctls::DeviceFd;

use super::gic::{GicError, GicV3};
use crate::state::{GICR_IPRIORITYR_COUNT, GicCpuState, GicDistState, GicRedistState, GicState};
use crate::sysreg::SysReg;

/// Errors saving or restoring the vGIC. Each names the register.
#[derive(Debug, thiserror::Error)]
pub enum GicStateError {
    /// A register access failed.
    #[error("cannot {op} GIC register {what}: {source}")]
    Attr {
        /// "read" or "write".
        op: &'static str,
        /// The register, and the vCPU for per-CPU ones.
        what: String,
        /// What KVM said.
        #[source]
        source: kvm_ioctls::Error,
    },
    /// The number of interrupts could not be read.
    #[error(transparent)]
    Gic(#[from] GicError),
    /// The state does not fit this VM's GIC.
    #[error("the saved GIC state does not fit this VM: {0}")]
    Invalid(String),
}

// Distributor registers (offsets from GICD_base).
const GICD_CTLR: u32 = 0x0000;
const GICD_IIDR: u32 = 0x0008;
const GICD_STATUSR: u32 = 0x0010;
const GICD_IGROUPR: u32 = 0x0080;
const GICD_ISENABLER: u32 = 0x0100;
const GICD_ICENABLER: u32 = 0x0180;
const GICD_ISPENDR: u32 = 0x0200;
const GICD_ICPENDR: u32 = 0x0280;
const GICD_ISACTIVER: u32 = 0x0300;
const GICD_ICACTIVER: u32 = 0x0380;
const GICD_IPRIORITYR: u32 = 0x0400;
const GICD_ICFGR: u32 = 0x0c00;
const GICD_IROUTER: u32 = 0x6000;

// Redistributor registers: RD_base frame, then the SGI_base frame 64 KiB above it.
const GICR_CTLR: u32 = 0x0000;
const GICR_STATUSR: u32 = 0x0010;
const GICR_WAKER: u32 = 0x0014;
const SGI: u32 = 0x1_0000;
const GICR_IGROUPR0: u32 = SGI + 0x0080;
const GICR_ISENABLER0: u32 = SGI + 0x0100;
const GICR_ICENABLER0: u32 = SGI + 0x0180;
const GICR_ISPENDR0: u32 = SGI + 0x0200;
const GICR_ICPENDR0: u32 = SGI + 0x0280;
const GICR_ISACTIVER0: u32 = SGI + 0x0300;
const GICR_ICACTIVER0: u32 = SGI + 0x0380;
const GICR_IPRIORITYR0: u32 = SGI + 0x0400;
const GICR_ICFGR1: u32 = SGI + 0x0c04;

// CPU interface registers.
const ICC_PMR_EL1: SysReg = SysReg::new(3, 0, 4, 6, 0);
const ICC_BPR0_EL1: SysReg = SysReg::new(3, 0, 12, 8, 3);
const ICC_BPR1_EL1: SysReg = SysReg::new(3, 0, 12, 12, 3);
const ICC_CTLR_EL1: SysReg = SysReg::new(3, 0, 12, 12, 4);
const ICC_SRE_EL1: SysReg = SysReg::new(3, 0, 12, 12, 5);
const ICC_IGRPEN0_EL1: SysReg = SysReg::new(3, 0, 12, 12, 6);
const ICC_IGRPEN1_EL1: SysReg = SysReg::new(3, 0, 12, 12, 7);
const fn icc_ap0r(n: u8) -> SysReg {
    SysReg::new(3, 0, 12, 8, 4 + n)
}
const fn icc_ap1r(n: u8) -> SysReg {
    SysReg::new(3, 0, 12, 9, n)
}

/// The attribute's vCPU part: MPIDR's Aff3..Aff0 packed into bits 63:32.
fn mpidr_attr(mpidr: u64) -> u64 {
    let aff = (((mpidr >> 32) & 0xff) << 24) | (mpidr & 0xff_ffff);
    aff << 32
}

/// The attribute of an ICC register: `op0:op1:CRn:CRm:op2` in bits 15:0.
fn sysreg_attr(mpidr: u64, r: SysReg) -> u64 {
    let instr = (u64::from(r.op0 & 3) << 14)
        | (u64::from(r.op1 & 7) << 11)
        | (u64::from(r.crn & 15) << 7)
        | (u64::from(r.crm & 15) << 3)
        | u64::from(r.op2 & 7);
    mpidr_attr(mpidr) | instr
}

/// How many ICC_AP0R/AP1R registers exist, from ICC_CTLR_EL1.PRIbits (bits 10:8, bits - 1).
fn apr_count(icc_ctlr: u64) -> usize {
    match ((icc_ctlr >> 8) & 7) + 1 {
        0..=5 => 1,
        6 => 2,
        _ => 4,
    }
}

/// One device fd with typed, named accesses.
struct Regs<'a> {
    fd: &'a DeviceFd,
}

impl Regs<'_> {
    fn get32(
        &self,
        group: u32,
        attr: u64,
        what: &dyn Fn() -> String,
    ) -> Result<u32, GicStateError> {
        let mut v = 0u32;
        let mut a = kvm_device_attr {
            group,
            attr,
            addr: &mut v as *mut u32 as u64,
            flags: 0,
        };
        // SAFETY: `addr` points at a u32 that outlives the call; every attribute read here
        // is 32 bits wide.
        unsafe { self.fd.get_device_attr(&mut a) }.map_err(|source| GicStateError::Attr {
            op: "read",
            what: what(),
            source,
        })?;
        Ok(v)
    }

    fn set32(
        &self,
        group: u32,
        attr: u64,
        v: u32,
        what: &dyn Fn() -> String,
    ) -> Result<(), GicStateError> {
        let a = kvm_device_attr {
            group,
            attr,
            addr: &v as *const u32 as u64,
            flags: 0,
        };
        self.fd
            .set_device_attr(&a)
            .map_err(|source| GicStateError::Attr {
                op: "write",
                what: what(),
                source,
            })
    }

    fn get64(&self, attr: u64, what: &dyn Fn() -> String) -> Result<u64, GicStateError> {
        let mut v = 0u64;
        let mut a = kvm_device_attr {
            group: KVM_DEV_ARM_VGIC_GRP_CPU_SYSREGS,
            attr,
            addr: &mut v as *mut u64 as u64,
            flags: 0,
        };
        // SAFETY: `addr` points at a u64 that outlives the call; CPU sysregs are 64 bits.
        unsafe { self.fd.get_device_attr(&mut a) }.map_err(|source| GicStateError::Attr {
            op: "read",
            what: what(),
            source,
        })?;
        Ok(v)
    }

    fn set64(&self, attr: u64, v: u64, what: &dyn Fn() -> String) -> Result<(), GicStateError> {
        let a = kvm_device_attr {
            group: KVM_DEV_ARM_VGIC_GRP_CPU_SYSREGS,
            attr,
            addr: &v as *const u64 as u64,
            flags: 0,
        };
        self.fd
            .set_device_attr(&a)
            .map_err(|source| GicStateError::Attr {
                op: "write",
                what: what(),
                source,
            })
    }

    // Distributor.
    fn dist(&self, offset: u32, name: &str) -> Result<u32, GicStateError> {
        self.get32(KVM_DEV_ARM_VGIC_GRP_DIST_REGS, offset.into(), &|| {
            format!("{name} ({offset:#x})")
        })
    }
    fn set_dist(&self, offset: u32, v: u32, name: &str) -> Result<(), GicStateError> {
        self.set32(KVM_DEV_ARM_VGIC_GRP_DIST_REGS, offset.into(), v, &|| {
            format!("{name} ({offset:#x})")
        })
    }
    /// Registers `base + 4 * n` for `n` in `first..first + count`.
    fn dist_array(
        &self,
        base: u32,
        first: u32,
        count: usize,
        name: &str,
    ) -> Result<Vec<u32>, GicStateError> {
        (first..first + count as u32)
            .map(|n| self.dist(base + 4 * n, &format!("{name}{n}")))
            .collect()
    }
    fn set_dist_array(
        &self,
        base: u32,
        first: u32,
        vals: &[u32],
        name: &str,
    ) -> Result<(), GicStateError> {
        for (n, v) in (first..).zip(vals) {
            self.set_dist(base + 4 * n, *v, &format!("{name}{n}"))?;
        }
        Ok(())
    }

    // Redistributor.
    fn redist(&self, mpidr: u64, offset: u32, name: &str) -> Result<u32, GicStateError> {
        self.get32(
            KVM_DEV_ARM_VGIC_GRP_REDIST_REGS,
            mpidr_attr(mpidr) | u64::from(offset),
            &|| format!("{name} of MPIDR {mpidr:#x}"),
        )
    }
    fn set_redist(&self, mpidr: u64, offset: u32, v: u32, name: &str) -> Result<(), GicStateError> {
        self.set32(
            KVM_DEV_ARM_VGIC_GRP_REDIST_REGS,
            mpidr_attr(mpidr) | u64::from(offset),
            v,
            &|| format!("{name} of MPIDR {mpidr:#x}"),
        )
    }
    // Line levels of 32 interrupts from `intid` (the vCPU matters for SGIs and PPIs).
    fn level(&self, mpidr: u64, intid: u32) -> Result<u32, GicStateError> {
        self.get32(
            KVM_DEV_ARM_VGIC_GRP_LEVEL_INFO,
            level_attr(mpidr, intid),
            &|| {
                format!(
                    "line levels of INTID {intid}..{} (MPIDR {mpidr:#x})",
                    intid + 31
                )
            },
        )
    }
    fn set_level(&self, mpidr: u64, intid: u32, v: u32) -> Result<(), GicStateError> {
        self.set32(
            KVM_DEV_ARM_VGIC_GRP_LEVEL_INFO,
            level_attr(mpidr, intid),
            v,
            &|| {
                format!(
                    "line levels of INTID {intid}..{} (MPIDR {mpidr:#x})",
                    intid + 31
                )
            },
        )
    }

    // CPU interface.
    fn icc(&self, mpidr: u64, r: SysReg, name: &str) -> Result<u64, GicStateError> {
        self.get64(sysreg_attr(mpidr, r), &|| {
            format!("{name} of MPIDR {mpidr:#x}")
        })
    }
    fn set_icc(&self, mpidr: u64, r: SysReg, v: u64, name: &str) -> Result<(), GicStateError> {
        self.set64(sysreg_attr(mpidr, r), v, &|| {
            format!("{name} of MPIDR {mpidr:#x}")
        })
    }
}

fn level_attr(mpidr: u64, intid: u32) -> u64 {
    mpidr_attr(mpidr)
        | (u64::from(VGIC_LEVEL_INFO_LINE_LEVEL) << KVM_DEV_ARM_VGIC_LINE_LEVEL_INFO_SHIFT)
        | u64::from(intid)
}

fn save_dist(r: &Regs<'_>, nr_irqs: u32, first_mpidr: u64) -> Result<GicDistState, GicStateError> {
    let spis = nr_irqs.saturating_sub(32) as usize;
    let mut irouter = Vec::with_capacity(spis);
    for irq in 32..nr_irqs {
        let off = GICD_IROUTER + 8 * irq;
        let name = format!("GICD_IROUTER{irq}");
        let lo = r.dist(off, &name)?;
        let hi = r.dist(off + 4, &name)?;
        irouter.push(u64::from(hi) << 32 | u64::from(lo));
    }
    let line_level = (32..nr_irqs)
        .step_by(32)
        .map(|intid| r.level(first_mpidr, intid))
        .collect::<Result<_, _>>()?;
    Ok(GicDistState {
        ctlr: r.dist(GICD_CTLR, "GICD_CTLR")?,
        iidr: r.dist(GICD_IIDR, "GICD_IIDR")?,
        statusr: r.dist(GICD_STATUSR, "GICD_STATUSR")?,
        igroupr: r.dist_array(GICD_IGROUPR, 1, spis / 32, "GICD_IGROUPR")?,
        isenabler: r.dist_array(GICD_ISENABLER, 1, spis / 32, "GICD_ISENABLER")?,
        ispendr: r.dist_array(GICD_ISPENDR, 1, spis / 32, "GICD_ISPENDR")?,
        isactiver: r.dist_array(GICD_ISACTIVER, 1, spis / 32, "GICD_ISACTIVER")?,
        ipriorityr: r.dist_array(GICD_IPRIORITYR, 8, spis / 4, "GICD_IPRIORITYR")?,
        icfgr: r.dist_array(GICD_ICFGR, 2, spis / 16, "GICD_ICFGR")?,
        irouter,
        line_level,
    })
}

fn save_cpu(r: &Regs<'_>, mpidr: u64) -> Result<GicCpuState, GicStateError> {
    let ctlr = r.icc(mpidr, ICC_CTLR_EL1, "ICC_CTLR_EL1")?;
    let n = apr_count(ctlr) as u8;
    Ok(GicCpuState {
        sre: r.icc(mpidr, ICC_SRE_EL1, "ICC_SRE_EL1")?,
        ctlr,
        igrpen0: r.icc(mpidr, ICC_IGRPEN0_EL1, "ICC_IGRPEN0_EL1")?,
        igrpen1: r.icc(mpidr, ICC_IGRPEN1_EL1, "ICC_IGRPEN1_EL1")?,
        pmr: r.icc(mpidr, ICC_PMR_EL1, "ICC_PMR_EL1")?,
        bpr0: r.icc(mpidr, ICC_BPR0_EL1, "ICC_BPR0_EL1")?,
        bpr1: r.icc(mpidr, ICC_BPR1_EL1, "ICC_BPR1_EL1")?,
        ap0r: (0..n)
            .map(|i| r.icc(mpidr, icc_ap0r(i), &format!("ICC_AP0R{i}_EL1")))
            .collect::<Result<_, _>>()?,
        ap1r: (0..n)
            .map(|i| r.icc(mpidr, icc_ap1r(i), &format!("ICC_AP1R{i}_EL1")))
            .collect::<Result<_, _>>()?,
    })
}

fn save_redist(r: &Regs<'_>, mpidr: u64) -> Result<GicRedistState, GicStateError> {
    Ok(GicRedistState {
        mpidr,
        ctlr: r.redist(mpidr, GICR_CTLR, "GICR_CTLR")?,
        statusr: r.redist(mpidr, GICR_STATUSR, "GICR_STATUSR")?,
        waker: r.redist(mpidr, GICR_WAKER, "GICR_WAKER")?,
        igroupr0: r.redist(mpidr, GICR_IGROUPR0, "GICR_IGROUPR0")?,
        isenabler0: r.redist(mpidr, GICR_ISENABLER0, "GICR_ISENABLER0")?,
        ispendr0: r.redist(mpidr, GICR_ISPENDR0, "GICR_ISPENDR0")?,
        isactiver0: r.redist(mpidr, GICR_ISACTIVER0, "GICR_ISACTIVER0")?,
        ipriorityr: (0..GICR_IPRIORITYR_COUNT as u32)
            .map(|n| {
                r.redist(
                    mpidr,
                    GICR_IPRIORITYR0 + 4 * n,
                    &format!("GICR_IPRIORITYR{n}"),
                )
            })
            .collect::<Result<_, _>>()?,
        icfgr1: r.redist(mpidr, GICR_ICFGR1, "GICR_ICFGR1")?,
        line_level: r.level(mpidr, 0)?,
        cpu: save_cpu(r, mpidr)?,
    })
}

/// Saves the GIC of a VM whose vCPUs have these MPIDRs, in vCPU order. The vCPUs must be
/// out of KVM_RUN.
pub fn save_gic(gic: &GicV3, mpidrs: &[u64]) -> Result<GicState, GicStateError> {
    let first = *mpidrs
        .first()
        .ok_or_else(|| GicStateError::Invalid("a GIC without vCPUs".to_string()))?;
    let r = Regs {
        fd: gic.device_fd(),
    };
    let nr_irqs = gic.nr_irqs()?;
    let dist = save_dist(&r, nr_irqs, first)?;
    let redists = mpidrs
        .iter()
        .map(|m| save_redist(&r, *m))
        .collect::<Result<_, _>>()?;
    Ok(GicState {
        nr_irqs,
        dist,
        redists,
    })
}

fn restore_redist(r: &Regs<'_>, s: &GicRedistState) -> Result<(), GicStateError> {
    let m = s.mpidr;
    r.set_redist(m, GICR_CTLR, s.ctlr, "GICR_CTLR")?;
    r.set_redist(m, GICR_STATUSR, s.statusr, "GICR_STATUSR")?;
    r.set_redist(m, GICR_WAKER, s.waker, "GICR_WAKER")?;
    r.set_redist(m, GICR_IGROUPR0, s.igroupr0, "GICR_IGROUPR0")?;
    // Set/clear pairs: clear everything, then set what was set.
    r.set_redist(m, GICR_ICENABLER0, !0, "GICR_ICENABLER0")?;
    r.set_redist(m, GICR_ISENABLER0, s.isenabler0, "GICR_ISENABLER0")?;
    // Edge or level before anything pending, so the pending state is read the right way.
    r.set_redist(m, GICR_ICFGR1, s.icfgr1, "GICR_ICFGR1")?;
    r.set_level(m, 0, s.line_level)?;
    r.set_redist(m, GICR_ICPENDR0, !0, "GICR_ICPENDR0")?;
    r.set_redist(m, GICR_ISPENDR0, s.ispendr0, "GICR_ISPENDR0")?;
    r.set_redist(m, GICR_ICACTIVER0, !0, "GICR_ICACTIVER0")?;
    r.set_redist(m, GICR_ISACTIVER0, s.isactiver0, "GICR_ISACTIVER0")?;
    for (n, v) in (0u32..).zip(&s.ipriorityr) {
        r.set_redist(
            m,
            GICR_IPRIORITYR0 + 4 * n,
            *v,
            &format!("GICR_IPRIORITYR{n}"),
        )?;
    }
    Ok(())
}

fn restore_dist(
    r: &Regs<'_>,
    d: &GicDistState,
    nr_irqs: u32,
    first: u64,
) -> Result<(), GicStateError> {
    let words = (nr_irqs.saturating_sub(32) / 32) as usize;
    let ones = vec![!0u32; words];
    r.set_dist(GICD_STATUSR, d.statusr, "GICD_STATUSR")?;
    r.set_dist_array(GICD_IGROUPR, 1, &d.igroupr, "GICD_IGROUPR")?;
    r.set_dist_array(GICD_ICENABLER, 1, &ones, "GICD_ICENABLER")?;
    r.set_dist_array(GICD_ISENABLER, 1, &d.isenabler, "GICD_ISENABLER")?;
    // Routing and configuration before pending.
    for (irq, v) in (32u32..).zip(&d.irouter) {
        let off = GICD_IROUTER + 8 * irq;
        let name = format!("GICD_IROUTER{irq}");
        r.set_dist(off, *v as u32, &name)?;
        r.set_dist(off + 4, (*v >> 32) as u32, &name)?;
    }
    r.set_dist_array(GICD_ICFGR, 2, &d.icfgr, "GICD_ICFGR")?;
    for (intid, v) in (32u32..).step_by(32).zip(&d.line_level) {
        r.set_level(first, intid, *v)?;
    }
    r.set_dist_array(GICD_ICPENDR, 1, &ones, "GICD_ICPENDR")?;
    r.set_dist_array(GICD_ISPENDR, 1, &d.ispendr, "GICD_ISPENDR")?;
    r.set_dist_array(GICD_ICACTIVER, 1, &ones, "GICD_ICACTIVER")?;
    r.set_dist_array(GICD_ISACTIVER, 1, &d.isactiver, "GICD_ISACTIVER")?;
    r.set_dist_array(GICD_IPRIORITYR, 8, &d.ipriorityr, "GICD_IPRIORITYR")
}

fn restore_cpu(r: &Regs<'_>, m: u64, c: &GicCpuState) -> Result<(), GicStateError> {
    r.set_icc(m, ICC_SRE_EL1, c.sre, "ICC_SRE_EL1")?;
    // ICC_CTLR_EL1 before the AP registers: its PRIbits decides how many there are, and KVM
    // refuses PRIbits or IDbits beyond the host's here.
    r.set_icc(m, ICC_CTLR_EL1, c.ctlr, "ICC_CTLR_EL1")?;
    r.set_icc(m, ICC_IGRPEN0_EL1, c.igrpen0, "ICC_IGRPEN0_EL1")?;
    r.set_icc(m, ICC_IGRPEN1_EL1, c.igrpen1, "ICC_IGRPEN1_EL1")?;
    r.set_icc(m, ICC_PMR_EL1, c.pmr, "ICC_PMR_EL1")?;
    r.set_icc(m, ICC_BPR0_EL1, c.bpr0, "ICC_BPR0_EL1")?;
    r.set_icc(m, ICC_BPR1_EL1, c.bpr1, "ICC_BPR1_EL1")?;
    for (i, v) in (0u8..).zip(&c.ap0r) {
        r.set_icc(m, icc_ap0r(i), *v, &format!("ICC_AP0R{i}_EL1"))?;
    }
    for (i, v) in (0u8..).zip(&c.ap1r) {
        r.set_icc(m, icc_ap1r(i), *v, &format!("ICC_AP1R{i}_EL1"))?;
    }
    Ok(())
}

/// Restores a GIC saved by `save_gic` into a newly created and initialised one whose vCPUs
/// have the same MPIDRs in the same order, before any vCPU runs. The order follows the
/// kernel's rules: GICD_IIDR then GICD_CTLR; each redistributor; the rest of the
/// distributor; each CPU interface (ICC_SRE_EL1, then ICC_CTLR_EL1 before the AP registers).
/// Within each, enables and configuration come before line levels and pending bits.
pub fn restore_gic(gic: &GicV3, mpidrs: &[u64], s: &GicState) -> Result<(), GicStateError> {
    let nr_irqs = gic.nr_irqs()?;
    s.check(nr_irqs, mpidrs).map_err(GicStateError::Invalid)?;
    let first = *mpidrs
        .first()
        .ok_or_else(|| GicStateError::Invalid("a GIC without vCPUs".to_string()))?;
    let r = Regs {
        fd: gic.device_fd(),
    };
    r.set_dist(GICD_IIDR, s.dist.iidr, "GICD_IIDR")?;
    r.set_dist(GICD_CTLR, s.dist.ctlr, "GICD_CTLR")?;
    for rd in &s.redists {
        restore_redist(&r, rd)?;
    }
    restore_dist(&r, &s.dist, nr_irqs, first)?;
    for rd in &s.redists {
        restore_cpu(&r, rd.mpidr, &rd.cpu)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attributes_pack_the_affinity_and_the_encoding() {
        assert_eq!(mpidr_attr(0x8000_0000), 0);
        assert_eq!(mpidr_attr(0x0000_00ab_0001_0203), 0xab01_0203 << 32);
        // ICC_CTLR_EL1 is op0 3, op1 0, CRn 12, CRm 12, op2 4: 0xc664.
        assert_eq!(sysreg_attr(1, ICC_CTLR_EL1), 1 << 32 | 0xc664);
        assert_eq!(level_attr(0, 32), 32);
        assert_eq!(apr_count(4 << 8), 1);
        assert_eq!(apr_count(5 << 8), 2);
        assert_eq!(apr_count(6 << 8), 4);
    }
}
