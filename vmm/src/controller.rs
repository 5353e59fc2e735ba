//! The instance: its configuration before boot, its state, and the rules of which request is
//! allowed when, in Firecracker's terms. It drives the VM through a `Backend`, so the rules
//! are tested on any host with a fake one; the KVM backend lives in `runner.rs`.

use std::path::PathBuf;

use serde_json::json;

use crate::api::model::{
    ActionType, BootSource, Drive, DrivePatch, Entropy, InstanceInfo, InstanceState, LoggerConfig,
    MachineConfig, MachineConfigPatch, MetricsConfig, NetworkInterface, NetworkInterfacePatch,
    RateLimiterConfig, VersionInfo, VmStateRequest, Vsock,
};
use crate::api::router::{ApiRequest, ApiResponse};
use crate::config::{ConfigError, VmConfig, check_drive_file, open_regular_file, validate_devices};
use crate::metrics::{METRICS, MetricsSink};
use devices::virtio::LimiterSlot;

/// Starts, pauses and resumes VMs.
pub trait Backend {
    /// A running VM.
    type Vm;
    /// Builds and starts a VM; the error says why it could not.
    fn start(&mut self, cfg: &VmConfig) -> Result<Self::Vm, String>;
    /// Stops every vCPU outside KVM_RUN.
    fn pause(&mut self, vm: &Self::Vm);
    /// Lets them run again.
    fn resume(&mut self, vm: &Self::Vm);
    /// Changes a running guest's device (`block_<id>`, `net_<id>`).
    fn update_device(
        &mut self,
        vm: &Self::Vm,
        device: &str,
        change: DeviceChange,
    ) -> Result<(), String>;
    /// The per-device metrics groups of a running VM.
    fn device_metrics(&mut self, vm: &Self::Vm) -> Vec<crate::metrics::DeviceGroup>;
    /// Writes a snapshot of a paused VM built from `cfg`: its state to `snapshot_path`, its
    /// memory to `mem_file_path`; on failure neither path is left half-written.
    fn snapshot(
        &mut self,
        vm: &Self::Vm,
        cfg: &VmConfig,
        params: &crate::api::snapshot::SnapshotCreateParams,
    ) -> Result<(), String>;
    /// Builds a VM from a snapshot, paused unless the request resumes it; `base` gives the
    /// process's console and reset policy. Returns the VM and the configuration it was saved
    /// with (overrides applied).
    fn load(
        &mut self,
        base: &VmConfig,
        req: &crate::api::snapshot::LoadRequest,
    ) -> Result<(Self::Vm, VmConfig), String>;
    /// Starts sending the running VM built from `cfg` to a destination, on a thread of its
    /// own; returns once it has started.
    fn migrate_send(
        &mut self,
        vm: &Self::Vm,
        cfg: &VmConfig,
        req: crate::api::migration::SendRequest,
    ) -> Result<(), String>;
    /// Starts waiting for an incoming guest: binds the address, then returns; the guest is
    /// handed over with `VmEvent::MigrationIn` (`base` gives console and reset policy).
    fn migrate_receive(
        &mut self,
        base: &VmConfig,
        req: crate::api::migration::ReceiveRequest,
    ) -> Result<(), String>;
    /// The migration going on, or the last one.
    fn migration(&self) -> Option<crate::api::migration::MigrationInfo>;
    /// Cancels the outgoing migration, unless it has passed the commit point.
    fn migration_cancel(&mut self) -> Result<(), String>;
}

/// A change to a running guest's device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeviceChange {
    /// Another backing file.
    Backing(String),
    /// A new rate limiter; None lifts the limit.
    RateLimiter(LimiterSlot, Option<RateLimiterConfig>),
}

impl DeviceChange {
    /// The API field this change sets.
    fn field(&self) -> &'static str {
        match self {
            Self::Backing(_) => "path_on_host",
            Self::RateLimiter(LimiterSlot::Main, _) => "rate_limiter",
            Self::RateLimiter(LimiterSlot::Rx, _) => "rx_rate_limiter",
            Self::RateLimiter(LimiterSlot::Tx, _) => "tx_rate_limiter",
        }
    }

    /// Writes an applied change into a drive's stored configuration.
    fn record_drive(&self, d: &mut Drive) {
        match self {
            Self::Backing(path) => d.path_on_host.clone_from(path),
            Self::RateLimiter(_, r) => d.rate_limiter = *r,
        }
    }

    /// Writes an applied change into an interface's stored configuration.
    fn record_net(&self, n: &mut NetworkInterface) {
        match self {
            Self::RateLimiter(LimiterSlot::Rx, r) => n.rx_rate_limiter = *r,
            Self::RateLimiter(LimiterSlot::Tx, r) => n.tx_rate_limiter = *r,
            Self::RateLimiter(LimiterSlot::Main, _) | Self::Backing(_) => {}
        }
    }
}

/// One change of a PATCH to a running device, and the change that puts back what it replaces.
#[derive(Debug)]
struct Step {
    apply: DeviceChange,
    undo: DeviceChange,
}

/// Applies `steps` to a running device in order. When one fails, the ones already applied are
/// undone, last first, so a refused PATCH changes neither the device nor its stored
/// configuration. Returns how many steps stay applied (all on success; on failure, none, or
/// those up to an undo that failed too, which the caller records so the stored configuration
/// stays true) and the outcome.
fn apply_steps<B: Backend>(
    backend: &mut B,
    vm: &B::Vm,
    device: &str,
    steps: &[Step],
) -> (usize, Result<(), String>) {
    for (i, step) in steps.iter().enumerate() {
        let Err(e) = backend.update_device(vm, device, step.apply.clone()) else {
            continue;
        };
        let e = format!("cannot apply {}: {e}", step.apply.field());
        for (j, done) in steps[..i].iter().enumerate().rev() {
            if let Err(u) = backend.update_device(vm, device, done.undo.clone()) {
                let kept: Vec<&str> = steps[..=j].iter().map(|s| s.apply.field()).collect();
                return (
                    j + 1,
                    Err(format!(
                        "{e}; putting back the earlier {} failed too ({u}), so the new {} stays applied",
                        done.undo.field(),
                        kept.join(" and ")
                    )),
                );
            }
        }
        return (0, Err(e));
    }
    (steps.len(), Ok(()))
}

/// A limiter with no bucket limits nothing: `{}` in a PATCH lifts the limit.
fn effective(r: RateLimiterConfig) -> Option<RateLimiterConfig> {
    (r.bandwidth.is_some() || r.ops.is_some()).then_some(r)
}

/// A device id in a request body must match the one in its path.
fn same_id(field: &str, body: &str, path: &str) -> Result<(), String> {
    if body == path {
        Ok(())
    } else {
        Err(format!(
            "{field} '{body}' in the body differs from '{path}' in the path"
        ))
    }
}

const AFTER_START: &str = "The requested operation is not supported after starting the microVM.";
const BEFORE_START: &str = "The requested operation is not supported before starting the microVM.";

/// One microVM instance.
#[derive(Debug)]
pub struct Controller<B: Backend> {
    id: String,
    backend: B,
    base: VmConfig,
    boot_source: Option<BootSource>,
    machine: MachineConfig,
    logger: Option<LoggerConfig>,
    metrics: Option<MetricsSink>,
    vm: Option<B::Vm>,
    paused: bool,
}

fn check_readable(what: &str, path: &str) -> Result<(), String> {
    open_regular_file(path, false)
        .map(|_| ())
        .map_err(|e| format!("cannot open {what} {path}: {e}"))
}

fn validate_machine(m: &MachineConfig) -> Result<(), String> {
    if m.smt {
        return Err("smt is not available on Arm64".into());
    }
    let mut c = VmConfig::new(PathBuf::new());
    c.vcpus = m.vcpu_count;
    c.mem_mib = m.mem_size_mib;
    c.validate().map_err(|e: ConfigError| e.to_string())
}

impl<B: Backend> Controller<B> {
    /// An instance with nothing configured; `base` gives console, reset policy and boot timer.
    pub fn new(id: String, backend: B, base: VmConfig) -> Self {
        let machine = MachineConfig {
            vcpu_count: base.vcpus,
            mem_size_mib: base.mem_mib,
            ..MachineConfig::default()
        };
        Self {
            id,
            backend,
            base,
            boot_source: None,
            machine,
            logger: None,
            metrics: None,
            vm: None,
            paused: false,
        }
    }

    /// An instance configured from a full `VmConfig` (command line or config file).
    pub fn configured(id: String, backend: B, cfg: VmConfig) -> Self {
        let boot_source = BootSource {
            kernel_image_path: cfg.kernel.display().to_string(),
            boot_args: Some(cfg.cmdline.clone()),
            initrd_path: cfg.initrd.as_ref().map(|p| p.display().to_string()),
        };
        let mut c = Self::new(id, backend, cfg);
        c.boot_source = Some(boot_source);
        c
    }

    /// The instance's state.
    pub fn state(&self) -> InstanceState {
        match (&self.vm, self.paused) {
            (None, _) => InstanceState::NotStarted,
            (Some(_), false) => InstanceState::Running,
            (Some(_), true) => InstanceState::Paused,
        }
    }

    /// The running VM.
    pub fn vm(&self) -> Option<&B::Vm> {
        self.vm.as_ref()
    }

    /// Takes the running VM out, to stop it.
    pub fn take_vm(&mut self) -> Option<B::Vm> {
        self.paused = false;
        self.vm.take()
    }

    /// The metrics sink, if configured.
    pub fn metrics_sink(&mut self) -> Option<&mut MetricsSink> {
        self.metrics.as_mut()
    }

    /// Configures metrics output (also used by `--metrics-path`).
    pub fn set_metrics(&mut self, path: &str) -> Result<(), String> {
        let sink =
            MetricsSink::open(path).map_err(|e| format!("cannot open metrics file {path}: {e}"))?;
        self.metrics = Some(sink);
        Ok(())
    }

    /// The configuration the VM boots with.
    pub fn vm_config(&self) -> Result<VmConfig, String> {
        let bs = self
            .boot_source
            .as_ref()
            .ok_or("Cannot start microvm without kernel configuration.")?;
        let mut c = self.base.clone();
        c.kernel = PathBuf::from(&bs.kernel_image_path);
        c.initrd = bs.initrd_path.as_ref().map(PathBuf::from);
        c.cmdline = bs
            .boot_args
            .clone()
            .unwrap_or_else(|| crate::config::DEFAULT_CMDLINE.to_string());
        c.vcpus = self.machine.vcpu_count;
        c.mem_mib = self.machine.mem_size_mib;
        c.track_dirty_pages = self.machine.track_dirty_pages;
        c.validate().map_err(|e| e.to_string())?;
        Ok(c)
    }

    /// Boots the configured VM.
    pub fn start(&mut self) -> Result<(), String> {
        if self.vm.is_some() {
            return Err("The microVM is already running.".into());
        }
        let cfg = self.vm_config()?;
        let vm = self.backend.start(&cfg)?;
        self.vm = Some(vm);
        self.paused = false;
        Ok(())
    }

    fn full_config(&self) -> serde_json::Value {
        json!({
            "boot-source": self.boot_source,
            "machine-config": self.machine,
            "logger": self.logger,
            "metrics": self.metrics.as_ref().map(|m| json!({"metrics_path": m.path()})),
            "drives": self.base.drives,
            "network-interfaces": self.base.net,
            "vsock": self.base.vsock,
            "balloon": null,
            "entropy": self.base.entropy,
            "mmds-config": null,
            "cpu-config": null,
        })
    }

    /// Answers one request.
    pub fn handle(&mut self, req: ApiRequest) -> ApiResponse {
        let (group, name) = req.metric();
        let resp = self.dispatch(req);
        METRICS.count_request(group, name, resp.status >= 400);
        resp
    }

    fn dispatch(&mut self, req: ApiRequest) -> ApiResponse {
        if let Some(refusal) = self.refused_while_migrating(&req) {
            return ApiResponse::bad_request(refusal);
        }
        let started = self.vm.is_some();
        let done = |r: Result<(), String>| match r {
            Ok(()) => ApiResponse::no_content(),
            Err(e) => ApiResponse::bad_request(e),
        };
        match req {
            ApiRequest::GetInstanceInfo => ApiResponse::ok(json!(InstanceInfo {
                app_name: "vmm".into(),
                id: self.id.clone(),
                state: self.state(),
                vmm_version: crate::VERSION.into(),
            })),
            ApiRequest::GetVersion => ApiResponse::ok(json!(VersionInfo {
                firecracker_version: crate::VERSION.into()
            })),
            ApiRequest::GetMachineConfig => ApiResponse::ok(json!(self.machine)),
            ApiRequest::GetVmConfig => ApiResponse::ok(self.full_config()),
            _ if started
                && matches!(
                    req,
                    ApiRequest::PutBootSource(_)
                        | ApiRequest::PutMachineConfig(_)
                        | ApiRequest::PatchMachineConfig(_)
                        | ApiRequest::PutLogger(_)
                        | ApiRequest::PutMetrics(_)
                        | ApiRequest::PutDrive(..)
                        | ApiRequest::PutEntropy(_)
                        | ApiRequest::PutNet(..)
                        | ApiRequest::PutVsock(_)
                ) =>
            {
                ApiResponse::bad_request(AFTER_START)
            }
            ApiRequest::PutBootSource(bs) => done(self.put_boot_source(bs)),
            ApiRequest::PutMachineConfig(m) => {
                done(validate_machine(&m).map(|()| self.machine = m))
            }
            ApiRequest::PatchMachineConfig(p) => done(self.patch_machine(p)),
            ApiRequest::PutLogger(l) => done(self.put_logger(l)),
            ApiRequest::PutMetrics(MetricsConfig { metrics_path }) => {
                done(self.set_metrics(&metrics_path))
            }
            ApiRequest::PutAction(a) => match a.action_type {
                ActionType::InstanceStart => done(self.start()),
                ActionType::FlushMetrics => done(self.flush_metrics()),
            },
            ApiRequest::PatchVm(p) => done(self.patch_vm(p.state)),
            ApiRequest::PutDrive(id, d) => done(self.put_drive(&id, d)),
            ApiRequest::PatchDrive(id, p) => done(self.patch_drive(&id, p)),
            ApiRequest::PutEntropy(e) => done(self.put_entropy(e)),
            ApiRequest::PutNet(id, n) => done(self.put_net(&id, n)),
            ApiRequest::PutVsock(v) => done(self.put_vsock(v)),
            ApiRequest::PatchNet(id, p) => done(self.patch_net(&id, p)),
            ApiRequest::PutSnapshotCreate(p) => done(self.snapshot_create(&p)),
            ApiRequest::PutSnapshotLoad(p) => done(self.snapshot_load(p)),
            ApiRequest::GetMigration => match self.backend.migration() {
                Some(info) => ApiResponse::ok(json!(info)),
                None => ApiResponse::bad_request(NO_MIGRATION),
            },
            ApiRequest::PutMigrationSend(p) => done(self.migrate_send(&p)),
            ApiRequest::PutMigrationReceive(p) => done(self.migrate_receive(&p)),
            ApiRequest::PutMigrationCancel => done(self.backend.migration_cancel()),
        }
    }

    fn put_drive(&mut self, id: &str, d: Drive) -> Result<(), String> {
        same_id("drive_id", &d.drive_id, id)?;
        d.validate()?;
        check_drive_file(&d)?;
        let mut next = self.base.clone();
        match next.drives.iter_mut().find(|o| o.drive_id == id) {
            Some(o) => *o = d,
            None => next.drives.push(d),
        }
        validate_devices(&next)?;
        self.base = next;
        Ok(())
    }

    fn patch_drive(&mut self, id: &str, p: DrivePatch) -> Result<(), String> {
        let Some(vm) = self.vm.as_ref() else {
            return Err(BEFORE_START.into());
        };
        same_id("drive_id", &p.drive_id, id)?;
        if p.path_on_host.is_none() && p.rate_limiter.is_none() {
            return Err("the patch changes nothing: give path_on_host or rate_limiter".into());
        }
        let index = self
            .base
            .drives
            .iter()
            .position(|d| d.drive_id == id)
            .ok_or(format!("no drive '{id}'"))?;
        let old = &self.base.drives[index];
        // Everything that can be checked is checked before the device is touched.
        if let Some(r) = &p.rate_limiter {
            r.validate()?;
        }
        if let Some(path) = &p.path_on_host {
            check_drive_file(&Drive {
                path_on_host: path.clone(),
                ..old.clone()
            })?;
        }
        // The limiter goes first: undoing it is exact, while undoing a backing swap would
        // show the guest a second change.
        let mut steps = Vec::new();
        if let Some(r) = p.rate_limiter {
            steps.push(Step {
                apply: DeviceChange::RateLimiter(LimiterSlot::Main, effective(r)),
                undo: DeviceChange::RateLimiter(LimiterSlot::Main, old.rate_limiter),
            });
        }
        if let Some(path) = p.path_on_host {
            steps.push(Step {
                apply: DeviceChange::Backing(path),
                undo: DeviceChange::Backing(old.path_on_host.clone()),
            });
        }
        let device = format!("block_{id}");
        let (kept, result) = apply_steps(&mut self.backend, vm, &device, &steps);
        for s in &steps[..kept] {
            s.apply.record_drive(&mut self.base.drives[index]);
        }
        result
    }

    fn patch_net(&mut self, id: &str, p: NetworkInterfacePatch) -> Result<(), String> {
        let Some(vm) = self.vm.as_ref() else {
            return Err(BEFORE_START.into());
        };
        same_id("iface_id", &p.iface_id, id)?;
        if p.rx_rate_limiter.is_none() && p.tx_rate_limiter.is_none() {
            return Err(
                "the patch changes nothing: give rx_rate_limiter or tx_rate_limiter".into(),
            );
        }
        let index = self
            .base
            .net
            .iter()
            .position(|n| n.iface_id == id)
            .ok_or(format!("no network interface '{id}'"))?;
        for r in [&p.rx_rate_limiter, &p.tx_rate_limiter]
            .into_iter()
            .flatten()
        {
            r.validate()?;
        }
        let old = &self.base.net[index];
        let steps: Vec<Step> = [
            (LimiterSlot::Rx, p.rx_rate_limiter, old.rx_rate_limiter),
            (LimiterSlot::Tx, p.tx_rate_limiter, old.tx_rate_limiter),
        ]
        .into_iter()
        .filter_map(|(slot, new, old)| {
            new.map(|r| Step {
                apply: DeviceChange::RateLimiter(slot, effective(r)),
                undo: DeviceChange::RateLimiter(slot, old),
            })
        })
        .collect();
        let device = format!("net_{id}");
        let (kept, result) = apply_steps(&mut self.backend, vm, &device, &steps);
        for s in &steps[..kept] {
            s.apply.record_net(&mut self.base.net[index]);
        }
        result
    }

    fn put_net(&mut self, id: &str, n: NetworkInterface) -> Result<(), String> {
        same_id("iface_id", &n.iface_id, id)?;
        n.validate()?;
        let mut next = self.base.clone();
        match next.net.iter_mut().find(|o| o.iface_id == id) {
            Some(o) => *o = n.clone(),
            None => next.net.push(n.clone()),
        }
        validate_devices(&next)?;
        devices::virtio::net::Tap::open(&n.host_dev_name)
            .map_err(|e| format!("cannot open tap {}: {e}", n.host_dev_name))?;
        self.base = next;
        Ok(())
    }

    fn put_entropy(&mut self, e: Entropy) -> Result<(), String> {
        e.validate()?;
        let mut next = self.base.clone();
        next.entropy = Some(e);
        validate_devices(&next)?;
        self.base = next;
        Ok(())
    }

    fn put_vsock(&mut self, v: Vsock) -> Result<(), String> {
        let mut next = self.base.clone();
        next.vsock = Some(v);
        validate_devices(&next)?;
        self.base = next;
        Ok(())
    }

    fn put_boot_source(&mut self, bs: BootSource) -> Result<(), String> {
        check_readable("kernel image", &bs.kernel_image_path)?;
        if let Some(i) = &bs.initrd_path {
            check_readable("initrd", i)?;
        }
        self.boot_source = Some(bs);
        Ok(())
    }

    fn patch_machine(&mut self, p: MachineConfigPatch) -> Result<(), String> {
        if p == MachineConfigPatch::default() {
            return Err("the patch changes nothing: give at least one field".into());
        }
        let mut m = self.machine.clone();
        if let Some(v) = p.vcpu_count {
            m.vcpu_count = v;
        }
        if let Some(v) = p.mem_size_mib {
            m.mem_size_mib = v;
        }
        if let Some(v) = p.smt {
            m.smt = v;
        }
        if let Some(v) = p.track_dirty_pages {
            m.track_dirty_pages = v;
        }
        if let Some(v) = p.huge_pages {
            m.huge_pages = v;
        }
        validate_machine(&m)?;
        self.machine = m;
        Ok(())
    }

    fn put_logger(&mut self, l: LoggerConfig) -> Result<(), String> {
        crate::logger::configure(
            l.log_path.as_deref(),
            l.level.map(crate::api::model::LogLevel::filter),
            l.show_level,
            l.show_log_origin,
            l.module.as_deref(),
        )
        .map_err(|e| {
            format!(
                "cannot open log file {}: {e}",
                l.log_path.as_deref().unwrap_or("")
            )
        })?;
        // The logger keeps what a request leaves out, so the stored configuration does too.
        self.logger = Some(match self.logger.take() {
            None => l,
            Some(p) => LoggerConfig {
                log_path: l.log_path.or(p.log_path),
                level: l.level.or(p.level),
                show_level: l.show_level.or(p.show_level),
                show_log_origin: l.show_log_origin.or(p.show_log_origin),
                module: l.module.or(p.module),
            },
        });
        Ok(())
    }

    /// Writes a metrics line now.
    pub fn flush_metrics(&mut self) -> Result<(), String> {
        let devices = match self.vm.as_ref() {
            Some(vm) => self.backend.device_metrics(vm),
            None => Vec::new(),
        };
        let sink = self
            .metrics
            .as_mut()
            .ok_or("metrics are not configured: PUT /metrics first")?;
        sink.flush(&METRICS, &devices)
            .map_err(|e| format!("cannot write metrics: {e}"))
    }

    fn patch_vm(&mut self, want: VmStateRequest) -> Result<(), String> {
        let Some(vm) = self.vm.as_ref() else {
            return Err(BEFORE_START.into());
        };
        match (want, self.paused) {
            (VmStateRequest::Paused, true) => Err("the microVM is already paused".into()),
            (VmStateRequest::Resumed, false) => Err("the microVM is not paused".into()),
            (VmStateRequest::Paused, false) => {
                self.backend.pause(vm);
                self.paused = true;
                METRICS.vmm.pause_count.inc();
                Ok(())
            }
            (VmStateRequest::Resumed, true) => {
                self.backend.resume(vm);
                self.paused = false;
                METRICS.vmm.resume_count.inc();
                Ok(())
            }
        }
    }
}

mod migration;
mod snapshot;
pub use migration::NO_MIGRATION;
pub use snapshot::CREATE_NEEDS_PAUSE;

#[cfg(test)]
mod tests;
