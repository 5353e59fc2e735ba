//! The device tree the guest boots with, built with vm-fdt. Portable: unit-tested on any host
//! by decoding the blob again.

use vm_fdt::FdtWriter;

use crate::layout::{
    GIC_DIST_BASE, GIC_DIST_SIZE, GIC_REDIST_BASE, LEGACY_DEV_SIZE, VIRTIO_MMIO_SIZE,
    gic_redist_size,
};

const PHANDLE_GIC: u32 = 1;
const PHANDLE_CLOCK: u32 = 2;
const GIC_SPI: u32 = 0;
const GIC_PPI: u32 = 1;
const IRQ_EDGE_RISING: u32 = 1;
const IRQ_LEVEL_HIGH: u32 = 4;
/// Affinity bits of MPIDR_EL1 that name a CPU in the device tree.
const MPIDR_AFFINITY_MASK: u64 = 0xff_00ff_ffff;

/// Errors building the device tree.
#[derive(Debug, thiserror::Error)]
pub enum FdtError {
    /// vm-fdt refused the tree.
    #[error("cannot build the device tree: {0}")]
    Writer(#[from] vm_fdt::Error),
    /// The tree exceeds what the kernel accepts.
    #[error("the device tree is {0} bytes, over the 2 MiB the kernel accepts")]
    TooLarge(usize),
}

/// An MMIO device with one SPI.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MmioDeviceInfo {
    /// Base address.
    pub addr: u64,
    /// Size of its window.
    pub size: u64,
    /// Its SPI number (interrupt ID minus 32).
    pub spi: u32,
}

/// Everything the device tree describes.
#[derive(Debug, Clone)]
pub struct FdtConfig {
    /// MPIDR_EL1 of each vCPU, as KVM reports it.
    pub mpidrs: Vec<u64>,
    /// RAM start.
    pub mem_base: u64,
    /// RAM size in bytes.
    pub mem_size: u64,
    /// Kernel command line.
    pub cmdline: String,
    /// Initrd start and length.
    pub initrd: Option<(u64, u64)>,
    /// The 16550 serial port.
    pub serial: Option<MmioDeviceInfo>,
    /// The PL031 RTC.
    pub rtc: Option<MmioDeviceInfo>,
    /// virtio-mmio devices.
    pub virtio: Vec<MmioDeviceInfo>,
    /// Bytes for `/chosen/rng-seed`, so the guest's RNG starts seeded.
    pub rng_seed: Vec<u8>,
}

/// Builds the device tree blob.
pub fn create_fdt(cfg: &FdtConfig) -> Result<Vec<u8>, FdtError> {
    let mut w = FdtWriter::new()?;
    let root = w.begin_node("")?;
    w.property_string("compatible", "linux,dummy-virt")?;
    w.property_u32("#address-cells", 2)?;
    w.property_u32("#size-cells", 2)?;
    w.property_u32("interrupt-parent", PHANDLE_GIC)?;

    cpus(&mut w, &cfg.mpidrs)?;

    let mem = w.begin_node(&format!("memory@{:x}", cfg.mem_base))?;
    w.property_string("device_type", "memory")?;
    w.property_array_u64("reg", &[cfg.mem_base, cfg.mem_size])?;
    w.end_node(mem)?;

    chosen(&mut w, cfg)?;

    let gic = w.begin_node(&format!("intc@{GIC_DIST_BASE:x}"))?;
    w.property_string("compatible", "arm,gic-v3")?;
    w.property_null("interrupt-controller")?;
    w.property_u32("#interrupt-cells", 3)?;
    w.property_array_u64(
        "reg",
        &[
            GIC_DIST_BASE,
            GIC_DIST_SIZE,
            GIC_REDIST_BASE,
            gic_redist_size(cfg.mpidrs.len() as u32),
        ],
    )?;
    w.property_u32("#redistributor-regions", 1)?;
    w.property_array_u32("interrupts", &[GIC_PPI, 9, IRQ_LEVEL_HIGH])?;
    w.property_phandle(PHANDLE_GIC)?;
    w.end_node(gic)?;

    let timer = w.begin_node("timer")?;
    w.property_string("compatible", "arm,armv8-timer")?;
    w.property_null("always-on")?;
    // Secure physical, non-secure physical, virtual and hypervisor timer PPIs.
    let mut irqs = Vec::new();
    for ppi in [13, 14, 11, 10] {
        irqs.extend([GIC_PPI, ppi, IRQ_LEVEL_HIGH]);
    }
    w.property_array_u32("interrupts", &irqs)?;
    w.end_node(timer)?;

    let psci = w.begin_node("psci")?;
    w.property_string_list(
        "compatible",
        vec![
            "arm,psci-1.0".into(),
            "arm,psci-0.2".into(),
            "arm,psci".into(),
        ],
    )?;
    w.property_string("method", "hvc")?;
    w.end_node(psci)?;

    let clk = w.begin_node("apb-pclk")?;
    w.property_string("compatible", "fixed-clock")?;
    w.property_u32("#clock-cells", 0)?;
    w.property_u32("clock-frequency", 24_000_000)?;
    w.property_string("clock-output-names", "clk24mhz")?;
    w.property_phandle(PHANDLE_CLOCK)?;
    w.end_node(clk)?;

    if let Some(s) = cfg.serial {
        let n = w.begin_node(&format!("uart@{:x}", s.addr))?;
        w.property_string("compatible", "ns16550a")?;
        w.property_array_u64("reg", &[s.addr, s.size])?;
        w.property_u32("clock-frequency", 1_843_200)?;
        w.property_array_u32("interrupts", &[GIC_SPI, s.spi, IRQ_EDGE_RISING])?;
        w.end_node(n)?;
    }
    if let Some(r) = cfg.rtc {
        let n = w.begin_node(&format!("rtc@{:x}", r.addr))?;
        w.property_string_list(
            "compatible",
            vec!["arm,pl031".into(), "arm,primecell".into()],
        )?;
        w.property_array_u64("reg", &[r.addr, r.size])?;
        w.property_array_u32("interrupts", &[GIC_SPI, r.spi, IRQ_LEVEL_HIGH])?;
        w.property_u32("clocks", PHANDLE_CLOCK)?;
        w.property_string("clock-names", "apb_pclk")?;
        w.end_node(n)?;
    }
    for d in &cfg.virtio {
        let n = w.begin_node(&format!("virtio_mmio@{:x}", d.addr))?;
        w.property_string("compatible", "virtio,mmio")?;
        w.property_array_u64("reg", &[d.addr, d.size.max(VIRTIO_MMIO_SIZE)])?;
        w.property_array_u32("interrupts", &[GIC_SPI, d.spi, IRQ_EDGE_RISING])?;
        w.property_null("dma-coherent")?;
        w.end_node(n)?;
    }

    w.end_node(root)?;
    let blob = w.finish()?;
    if blob.len() as u64 > crate::layout::FDT_MAX_SIZE {
        return Err(FdtError::TooLarge(blob.len()));
    }
    Ok(blob)
}

fn cpus(w: &mut FdtWriter, mpidrs: &[u64]) -> Result<(), FdtError> {
    let node = w.begin_node("cpus")?;
    w.property_u32("#address-cells", 2)?;
    w.property_u32("#size-cells", 0)?;
    for (i, mpidr) in mpidrs.iter().enumerate() {
        let aff = mpidr & MPIDR_AFFINITY_MASK;
        let cpu = w.begin_node(&format!("cpu@{aff:x}"))?;
        w.property_string("device_type", "cpu")?;
        w.property_string("compatible", "arm,arm-v8")?;
        w.property_string("enable-method", "psci")?;
        w.property_u64("reg", aff)?;
        w.property_u32("phandle", 0x100 + i as u32)?;
        w.end_node(cpu)?;
    }
    w.end_node(node)?;
    Ok(())
}

fn chosen(w: &mut FdtWriter, cfg: &FdtConfig) -> Result<(), FdtError> {
    let node = w.begin_node("chosen")?;
    w.property_string("bootargs", &cfg.cmdline)?;
    if let Some(s) = cfg.serial {
        w.property_string("stdout-path", &format!("/uart@{:x}", s.addr))?;
    }
    if let Some((start, len)) = cfg.initrd {
        w.property_u64("linux,initrd-start", start)?;
        w.property_u64("linux,initrd-end", start + len)?;
    }
    if !cfg.rng_seed.is_empty() {
        w.property("rng-seed", &cfg.rng_seed)?;
    }
    w.end_node(node)?;
    Ok(())
}

/// The serial port's device info at the standard place.
pub fn standard_serial() -> MmioDeviceInfo {
    MmioDeviceInfo {
        addr: crate::layout::SERIAL_BASE,
        size: LEGACY_DEV_SIZE,
        spi: crate::layout::SERIAL_SPI,
    }
}

/// The RTC's device info at the standard place.
pub fn standard_rtc() -> MmioDeviceInfo {
    MmioDeviceInfo {
        addr: crate::layout::RTC_BASE,
        size: LEGACY_DEV_SIZE,
        spi: crate::layout::RTC_SPI,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout::{DRAM_BASE, virtio_mmio_addr};

    fn config() -> FdtConfig {
        FdtConfig {
            mpidrs: vec![0x8000_0000, 0x8000_0001, 0x8000_0002, 0x8000_0003],
            mem_base: DRAM_BASE,
            mem_size: 512 << 20,
            cmdline: "console=ttyS0 earlycon=uart,mmio,0x9000000".into(),
            initrd: Some((DRAM_BASE + (40 << 20), 0x1234)),
            serial: Some(standard_serial()),
            rtc: Some(standard_rtc()),
            virtio: vec![
                MmioDeviceInfo {
                    addr: virtio_mmio_addr(0),
                    size: VIRTIO_MMIO_SIZE,
                    spi: 16,
                },
                MmioDeviceInfo {
                    addr: virtio_mmio_addr(1),
                    size: VIRTIO_MMIO_SIZE,
                    spi: 17,
                },
            ],
            rng_seed: vec![7; 32],
        }
    }

    fn u32_cells(v: &[u8]) -> Vec<u32> {
        v.chunks(4)
            .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]))
            .collect()
    }

    fn u64_cells(v: &[u8]) -> Vec<u64> {
        v.chunks(8)
            .map(|c| u64::from_be_bytes(c.try_into().unwrap()))
            .collect()
    }

    #[test]
    fn cpus_carry_mpidr_affinities_and_psci() {
        let blob = create_fdt(&config()).unwrap();
        let fdt = fdt::Fdt::new(&blob).unwrap();
        let regs: Vec<u64> = fdt
            .find_all_nodes("/cpus/cpu")
            .map(|n| u64_cells(n.property("reg").unwrap().value)[0])
            .collect();
        assert_eq!(
            regs,
            vec![0, 1, 2, 3],
            "MPIDR bit 31 (RES1) is not part of the affinity"
        );
        for n in fdt.find_all_nodes("/cpus/cpu") {
            assert_eq!(n.property("enable-method").unwrap().as_str(), Some("psci"));
        }
        let psci = fdt.find_node("/psci").unwrap();
        assert_eq!(psci.property("method").unwrap().as_str(), Some("hvc"));
        assert!(
            psci.compatible()
                .unwrap()
                .all()
                .any(|c| c == "arm,psci-0.2")
        );
        assert!(
            psci.compatible()
                .unwrap()
                .all()
                .any(|c| c == "arm,psci-1.0")
        );
    }

    #[test]
    fn memory_and_chosen() {
        let blob = create_fdt(&config()).unwrap();
        let fdt = fdt::Fdt::new(&blob).unwrap();
        let mem = fdt.find_node("/memory@80000000").unwrap();
        assert_eq!(
            u64_cells(mem.property("reg").unwrap().value),
            vec![DRAM_BASE, 512 << 20]
        );
        let chosen = fdt.find_node("/chosen").unwrap();
        assert_eq!(
            chosen.property("bootargs").unwrap().as_str(),
            Some("console=ttyS0 earlycon=uart,mmio,0x9000000")
        );
        assert_eq!(
            chosen.property("stdout-path").unwrap().as_str(),
            Some("/uart@9000000")
        );
        let start = u64_cells(chosen.property("linux,initrd-start").unwrap().value)[0];
        let end = u64_cells(chosen.property("linux,initrd-end").unwrap().value)[0];
        assert_eq!((start, end - start), (DRAM_BASE + (40 << 20), 0x1234));
        assert_eq!(chosen.property("rng-seed").unwrap().value, &[7u8; 32]);
    }

    #[test]
    fn gic_is_sized_for_the_vcpus_with_its_maintenance_irq() {
        let blob = create_fdt(&config()).unwrap();
        let fdt = fdt::Fdt::new(&blob).unwrap();
        let gic = fdt.find_node("/intc@8000000").unwrap();
        assert_eq!(gic.compatible().unwrap().first(), "arm,gic-v3");
        assert_eq!(
            u64_cells(gic.property("reg").unwrap().value),
            vec![GIC_DIST_BASE, GIC_DIST_SIZE, GIC_REDIST_BASE, 4 * 0x2_0000]
        );
        assert_eq!(
            u32_cells(gic.property("interrupts").unwrap().value),
            vec![1, 9, 4]
        );
        assert!(gic.property("interrupt-controller").is_some());
        let root = fdt.find_node("/").unwrap();
        assert_eq!(
            u32_cells(root.property("interrupt-parent").unwrap().value),
            vec![PHANDLE_GIC]
        );
        assert_eq!(
            u32_cells(gic.property("phandle").unwrap().value),
            vec![PHANDLE_GIC]
        );
    }

    #[test]
    fn timer_ppis() {
        let blob = create_fdt(&config()).unwrap();
        let fdt = fdt::Fdt::new(&blob).unwrap();
        let t = fdt.find_node("/timer").unwrap();
        assert_eq!(t.compatible().unwrap().first(), "arm,armv8-timer");
        assert_eq!(
            u32_cells(t.property("interrupts").unwrap().value),
            vec![1, 13, 4, 1, 14, 4, 1, 11, 4, 1, 10, 4]
        );
    }

    #[test]
    fn serial_rtc_and_virtio_slots() {
        let blob = create_fdt(&config()).unwrap();
        let fdt = fdt::Fdt::new(&blob).unwrap();
        let uart = fdt.find_node("/uart@9000000").unwrap();
        assert_eq!(uart.compatible().unwrap().first(), "ns16550a");
        assert_eq!(
            u64_cells(uart.property("reg").unwrap().value),
            vec![0x900_0000, 0x1000]
        );
        assert_eq!(
            u32_cells(uart.property("interrupts").unwrap().value),
            vec![0, 1, 1]
        );
        let rtc = fdt.find_node("/rtc@9010000").unwrap();
        assert!(rtc.compatible().unwrap().all().any(|c| c == "arm,pl031"));
        assert_eq!(
            u32_cells(rtc.property("clocks").unwrap().value),
            vec![PHANDLE_CLOCK]
        );
        let virtio: Vec<_> = fdt.find_all_nodes("/virtio_mmio").collect();
        assert_eq!(virtio.len(), 2);
        assert_eq!(
            u32_cells(virtio[1].property("interrupts").unwrap().value),
            vec![0, 17, 1]
        );
        assert_eq!(
            u64_cells(virtio[1].property("reg").unwrap().value),
            vec![0xa00_0200, 0x200]
        );
    }

    #[test]
    fn optional_nodes_can_be_left_out() {
        let mut c = config();
        c.serial = None;
        c.rtc = None;
        c.initrd = None;
        c.virtio.clear();
        c.rng_seed.clear();
        let blob = create_fdt(&c).unwrap();
        let fdt = fdt::Fdt::new(&blob).unwrap();
        assert!(fdt.find_node("/uart@9000000").is_none());
        assert!(
            fdt.find_node("/chosen")
                .unwrap()
                .property("linux,initrd-start")
                .is_none()
        );
        assert!(
            fdt.find_node("/chosen")
                .unwrap()
                .property("stdout-path")
                .is_none()
        );
    }
}
