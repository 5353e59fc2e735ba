//! The snapshot rules, in Firecracker's terms: `snapshot/create` needs a paused microVM (a
//! Diff one also needs dirty-page tracking); `snapshot/load` needs a fresh process, one
//! configured with nothing but the logger and metrics. A refused or failed request changes
//! nothing: the instance keeps answering as it was.

use std::time::Instant;

use super::{BEFORE_START, Backend, Controller};
use crate::api::model::{BootSource, MachineConfig};
use crate::api::snapshot::{SnapshotCreateParams, SnapshotLoadParams, SnapshotType};
use crate::config::VmConfig;
use crate::metrics::METRICS;

/// Why a snapshot cannot be created while the VM runs.
pub const CREATE_NEEDS_PAUSE: &str =
    "the microVM must be paused to create a snapshot: PATCH /vm {\"state\": \"Paused\"} first";

impl<B: Backend> Controller<B> {
    /// Takes in a VM that did not boot here (loaded from a snapshot, or arrived by
    /// migration), built from `cfg`: the instance reports `cfg` as its configuration.
    pub(super) fn install(&mut self, vm: B::Vm, cfg: VmConfig, paused: bool) {
        self.boot_source = Some(BootSource {
            kernel_image_path: cfg.kernel.display().to_string(),
            boot_args: Some(cfg.cmdline.clone()),
            initrd_path: cfg.initrd.as_ref().map(|p| p.display().to_string()),
        });
        self.machine = MachineConfig {
            vcpu_count: cfg.vcpus,
            mem_size_mib: cfg.mem_mib,
            track_dirty_pages: cfg.track_dirty_pages,
            ..MachineConfig::default()
        };
        self.base = cfg;
        self.vm = Some(vm);
        self.paused = paused;
    }

    /// Whether anything besides the logger and metrics was configured (or the VM started).
    pub(super) fn configured_anything(&self) -> bool {
        self.vm.is_some()
            || self.boot_source.is_some()
            || self.machine != MachineConfig::default()
            || !self.base.drives.is_empty()
            || !self.base.net.is_empty()
            || self.base.vsock.is_some()
            || self.base.entropy.is_some()
    }

    pub(super) fn snapshot_create(&mut self, p: &SnapshotCreateParams) -> Result<(), String> {
        let Some(vm) = self.vm.as_ref() else {
            return Err(BEFORE_START.into());
        };
        if !self.paused {
            return Err(CREATE_NEEDS_PAUSE.into());
        }
        if p.snapshot_type == SnapshotType::Diff && !self.machine.track_dirty_pages {
            return Err(
                "a Diff snapshot needs track_dirty_pages: set it in machine-config before boot, or in snapshot/load"
                    .into(),
            );
        }
        if p.snapshot_path.is_empty() || p.mem_file_path.is_empty() {
            return Err("snapshot_path and mem_file_path must not be empty".into());
        }
        if p.snapshot_path == p.mem_file_path {
            return Err("snapshot_path and mem_file_path must be different files".into());
        }
        let cfg = self.vm_config()?;
        let started = Instant::now();
        self.backend.snapshot(vm, &cfg, p)?;
        let took = started.elapsed().as_micros() as u64;
        match p.snapshot_type {
            SnapshotType::Full => METRICS.latencies_us.full_create_snapshot.set(took),
            SnapshotType::Diff => METRICS.latencies_us.diff_create_snapshot.set(took),
        }
        Ok(())
    }

    pub(super) fn snapshot_load(&mut self, p: SnapshotLoadParams) -> Result<(), String> {
        if self.configured_anything() {
            return Err(
                "a snapshot loads only into a fresh microVM: nothing but the logger and metrics may be configured before snapshot/load"
                    .into(),
            );
        }
        let req = p.settle()?;
        let started = Instant::now();
        let (vm, cfg) = self.backend.load(&self.base, &req)?;
        METRICS
            .latencies_us
            .load_snapshot
            .set(started.elapsed().as_micros() as u64);
        self.install(vm, cfg, !req.resume_vm);
        Ok(())
    }
}
