//! The guest-physical memory map: devices in the low 2 GiB, RAM from 2 GiB up.

/// GICv3 distributor.
pub const GIC_DIST_BASE: u64 = 0x0800_0000;
/// Size of the distributor region.
pub const GIC_DIST_SIZE: u64 = 0x1_0000;
/// First GICv3 redistributor (one 128 KiB frame pair per vCPU follows).
pub const GIC_REDIST_BASE: u64 = 0x080a_0000;
/// Size of one vCPU's redistributor (RD + SGI frames).
pub const GIC_REDIST_SIZE_PER_CPU: u64 = 0x2_0000;
/// End of the space the redistributors may use.
const GIC_REDIST_LIMIT: u64 = 0x0900_0000;
/// Most vCPUs whose redistributors fit below the serial port.
pub const MAX_VCPUS: u32 = ((GIC_REDIST_LIMIT - GIC_REDIST_BASE) / GIC_REDIST_SIZE_PER_CPU) as u32;

/// The 16550 serial port.
pub const SERIAL_BASE: u64 = 0x0900_0000;
/// The PL031 real-time clock.
pub const RTC_BASE: u64 = 0x0901_0000;
/// The boot-timer device (Firecracker-compatible magic write).
pub const BOOT_TIMER_BASE: u64 = 0x0902_0000;
/// Size of each legacy device's MMIO window.
pub const LEGACY_DEV_SIZE: u64 = 0x1000;

/// First virtio-mmio slot.
pub const VIRTIO_MMIO_BASE: u64 = 0x0a00_0000;
/// Size of one virtio-mmio slot.
pub const VIRTIO_MMIO_SIZE: u64 = 0x200;
/// Number of virtio-mmio slots.
pub const VIRTIO_MMIO_SLOTS: u32 = 32;

/// SPI of the serial port (interrupt ID 32 + this; also its irqfd GSI).
pub const SERIAL_SPI: u32 = 1;
/// SPI of the RTC.
pub const RTC_SPI: u32 = 2;
/// SPI of the first virtio-mmio slot; slot `n` uses `VIRTIO_SPI_BASE + n`.
pub const VIRTIO_SPI_BASE: u32 = 16;
/// Interrupt IDs the vGIC implements: 32 private ones plus the SPIs.
pub const GIC_NR_IRQS: u32 = 128;

/// Start of guest RAM.
pub const DRAM_BASE: u64 = 0x8000_0000;
/// Alignment of the kernel's load base.
pub const KERNEL_ALIGN: u64 = 0x20_0000;
/// Largest device tree the kernel accepts, and the space reserved for it.
pub const FDT_MAX_SIZE: u64 = 0x20_0000;

/// Address of virtio-mmio slot `n`.
pub const fn virtio_mmio_addr(n: u32) -> u64 {
    VIRTIO_MMIO_BASE + n as u64 * VIRTIO_MMIO_SIZE
}

/// Total size of the redistributor region for `vcpus` vCPUs.
pub const fn gic_redist_size(vcpus: u32) -> u64 {
    vcpus as u64 * GIC_REDIST_SIZE_PER_CPU
}

// The map is checked when the crate compiles: regions do not overlap and everything fits.
const _: () = {
    assert!(GIC_DIST_BASE + GIC_DIST_SIZE <= GIC_REDIST_BASE);
    assert!(GIC_REDIST_BASE + gic_redist_size(MAX_VCPUS) <= SERIAL_BASE);
    assert!(SERIAL_BASE + LEGACY_DEV_SIZE <= RTC_BASE);
    assert!(RTC_BASE + LEGACY_DEV_SIZE <= BOOT_TIMER_BASE);
    assert!(BOOT_TIMER_BASE + LEGACY_DEV_SIZE <= VIRTIO_MMIO_BASE);
    assert!(virtio_mmio_addr(VIRTIO_MMIO_SLOTS) <= DRAM_BASE);
    assert!(VIRTIO_SPI_BASE + VIRTIO_MMIO_SLOTS + 32 <= GIC_NR_IRQS);
    assert!(DRAM_BASE % KERNEL_ALIGN == 0);
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vcpu_limit_follows_the_redistributor_space() {
        assert_eq!(MAX_VCPUS, 123);
        assert_eq!(virtio_mmio_addr(1), 0x0a00_0200);
    }
}
