//! `vmm snapshot inspect`: what a state file holds, read without KVM: the container's format
//! version and sections, and from the `vm` and `vcpu0` sections the vCPU count, memory size,
//! counter frequency, the vmm version that wrote it and the guest's ID registers.

use std::path::Path;

use serde::Serialize;

use super::{VM_SECTION, VmState, vcpu_section};
use arch::state::VcpuState;
use migration::snapshot::{SnapshotSummary, decode_snapshot, read_snapshot_bytes, summarize};
use migration::state::decode;

/// One ID register of the guest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct IdRegister {
    /// Its name.
    pub name: String,
    /// Its value.
    pub value: String,
}

/// What `inspect` reports.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Inspection {
    /// The container.
    #[serde(flatten)]
    pub file: SnapshotSummary,
    /// The vmm version that wrote it.
    pub vmm_version: String,
    /// vCPUs.
    pub vcpus: u32,
    /// Guest memory in bytes.
    pub mem_size: u64,
    /// The guest's counter frequency in Hz.
    pub counter_frequency: u64,
    /// The GIC version.
    pub gic_version: u32,
    /// vCPU 0's ID registers.
    pub id_registers: Vec<IdRegister>,
}

/// Why a file could not be inspected.
#[derive(Debug, thiserror::Error)]
pub enum InspectError {
    /// Not a readable snapshot file.
    #[error(transparent)]
    File(#[from] migration::snapshot::SnapshotError),
    /// A section could not be decoded.
    #[error(transparent)]
    State(#[from] migration::StateError),
}

/// Inspects a state file's bytes.
pub fn inspect(bytes: &[u8]) -> Result<Inspection, InspectError> {
    let file = summarize(bytes)?;
    let mut sections = decode_snapshot(bytes)?;
    let vm: VmState = sections.take_decoded(VM_SECTION)?;
    let id_registers = match sections.get(&vcpu_section(0)) {
        Some(s) => decode::<VcpuState>(s)?
            .id_registers()
            .into_iter()
            .map(|r| IdRegister {
                name: r.name,
                value: format!("{:#018x}", r.value),
            })
            .collect(),
        None => Vec::new(),
    };
    Ok(Inspection {
        file,
        vmm_version: vm.vmm_version,
        vcpus: vm.config.vcpus,
        mem_size: vm.mem_size,
        counter_frequency: vm.counter_frequency,
        gic_version: vm.gic_version,
        id_registers,
    })
}

/// Inspects a state file.
pub fn inspect_file(path: &Path) -> Result<Inspection, InspectError> {
    inspect(&read_snapshot_bytes(path)?)
}

impl Inspection {
    /// The report as text, one fact per line.
    pub fn to_text(&self) -> String {
        let mut t = format!(
            "format version: {}\nsize: {} bytes\nwritten by: vmm {}\nvcpus: {}\nmemory: {} MiB\ncounter frequency: {} Hz\ngic: v{}\nsections:\n",
            self.file.format_version,
            self.file.size,
            self.vmm_version,
            self.vcpus,
            self.mem_size >> 20,
            self.counter_frequency,
            self.gic_version
        );
        for s in &self.file.sections {
            t.push_str(&format!(
                "  {:<28} version {:<3} {} bytes\n",
                s.name, s.version, s.size
            ));
        }
        t.push_str("id registers (vcpu0):\n");
        for r in &self.id_registers {
            t.push_str(&format!("  {:<20} {}\n", r.name, r.value));
        }
        t
    }
}
