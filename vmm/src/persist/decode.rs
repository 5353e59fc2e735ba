//! Every section of a snapshot decoded into its layout, without KVM: what `snapshot/load`
//! reads before it builds anything, and what the golden-file test and the `snapshot_state`
//! fuzz target drive. A section this build does not know, one missing, or one of a newer
//! version is an error naming it.

use arch::state::{GicState, VcpuState};
use devices::legacy::state::{BootTimerState, RtcState, SerialState};
use devices::virtio::block::BlockState;
use devices::virtio::mmio::MmioTransportState;
use devices::virtio::net::NetState;
use devices::virtio::rng::RngState;
use devices::virtio::vsock::VsockState;
use migration::{SectionSet, StateError};

use super::{
    BOOT_TIMER_SECTION, GIC_SECTION, RTC_SECTION, SERIAL_SECTION, VM_SECTION, VmState,
    device_section, transport_section, vcpu_section,
};

/// A virtio device's own state, by its kind.
#[derive(Debug, Clone, PartialEq)]
pub enum DeviceState {
    /// `block_<id>`.
    Block(BlockState),
    /// `net_<id>`.
    Net(NetState),
    /// `vsock`.
    Vsock(VsockState),
    /// `entropy`.
    Rng(RngState),
}

/// A whole snapshot, decoded.
#[derive(Debug, Clone, PartialEq)]
pub struct DecodedSnapshot {
    /// The `vm` section.
    pub vm: VmState,
    /// Each vCPU, in order.
    pub vcpus: Vec<VcpuState>,
    /// The vGIC.
    pub gic: GicState,
    /// The serial port.
    pub serial: SerialState,
    /// The RTC.
    pub rtc: RtcState,
    /// The boot timer, when the VM has one.
    pub boot_timer: Option<BootTimerState>,
    /// Each virtio device by id: its transport and its own state.
    pub virtio: Vec<(String, MmioTransportState, DeviceState)>,
}

/// The virtio device ids of a configuration, in slot order (the builder's order).
fn virtio_ids(vm: &VmState) -> Vec<String> {
    let c = &vm.config;
    let mut drives: Vec<_> = c.drives.iter().filter(|d| d.root).collect();
    drives.extend(c.drives.iter().filter(|d| !d.root));
    let mut ids: Vec<String> = drives.iter().map(|d| format!("block_{}", d.id)).collect();
    ids.extend(c.net.iter().map(|n| format!("net_{}", n.id)));
    if c.entropy.is_some() {
        ids.push("entropy".into());
    }
    if c.vsock.is_some() {
        ids.push("vsock".into());
    }
    ids
}

/// Decodes every section; the set must hold exactly the sections its `vm` section implies.
pub fn decode_all(mut sections: SectionSet) -> Result<DecodedSnapshot, StateError> {
    let vm: VmState = sections.take_decoded(VM_SECTION)?;
    let vcpus = (0..vm.config.vcpus as usize)
        .map(|i| sections.take_decoded::<VcpuState>(&vcpu_section(i)))
        .collect::<Result<Vec<_>, _>>()?;
    let gic = sections.take_decoded(GIC_SECTION)?;
    let serial = sections.take_decoded(SERIAL_SECTION)?;
    let rtc = sections.take_decoded(RTC_SECTION)?;
    let boot_timer = if vm.config.boot_timer {
        Some(sections.take_decoded(BOOT_TIMER_SECTION)?)
    } else {
        None
    };
    let mut virtio = Vec::new();
    for id in virtio_ids(&vm) {
        let transport = sections.take_decoded(&transport_section(&id))?;
        let name = device_section(&id);
        let device = if id.starts_with("block_") {
            DeviceState::Block(sections.take_decoded(&name)?)
        } else if id.starts_with("net_") {
            DeviceState::Net(sections.take_decoded(&name)?)
        } else if id == "vsock" {
            DeviceState::Vsock(sections.take_decoded(&name)?)
        } else {
            DeviceState::Rng(sections.take_decoded(&name)?)
        };
        virtio.push((id, transport, device));
    }
    sections.finish()?;
    Ok(DecodedSnapshot {
        vm,
        vcpus,
        gic,
        serial,
        rtc,
        boot_timer,
        virtio,
    })
}
