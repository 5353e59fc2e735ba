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
}

/// A change to a running guest's device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeviceChange {
    /// Another backing file.
    Backing(String),
    /// A new rate limiter; None lifts the limit.
    RateLimiter(LimiterSlot, Option<RateLimiterConfig>),
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
        let mut updated = self.base.drives[index].clone();
        if let Some(r) = &p.rate_limiter {
            r.validate()?;
        }
        let device = format!("block_{id}");
        if let Some(path) = p.path_on_host {
            updated.path_on_host = path;
            check_drive_file(&updated)?;
            self.backend.update_device(
                vm,
                &device,
                DeviceChange::Backing(updated.path_on_host.clone()),
            )?;
        }
        if let Some(r) = p.rate_limiter {
            updated.rate_limiter = effective(r);
            self.backend.update_device(
                vm,
                &device,
                DeviceChange::RateLimiter(LimiterSlot::Main, updated.rate_limiter),
            )?;
        }
        self.base.drives[index] = updated;
        Ok(())
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
        let device = format!("net_{id}");
        let mut updated = self.base.net[index].clone();
        for (slot, new, field) in [
            (
                LimiterSlot::Rx,
                p.rx_rate_limiter,
                &mut updated.rx_rate_limiter,
            ),
            (
                LimiterSlot::Tx,
                p.tx_rate_limiter,
                &mut updated.tx_rate_limiter,
            ),
        ] {
            if let Some(r) = new {
                *field = effective(r);
                self.backend
                    .update_device(vm, &device, DeviceChange::RateLimiter(slot, *field))?;
            }
        }
        self.base.net[index] = updated;
        Ok(())
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
        self.logger = Some(l);
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::router::parse;

    #[derive(Debug, Default)]
    struct Fake {
        starts: Vec<VmConfig>,
        fail: Option<String>,
        log: Vec<&'static str>,
        changed: Vec<String>,
    }

    impl Backend for Fake {
        type Vm = ();
        fn start(&mut self, cfg: &VmConfig) -> Result<(), String> {
            if let Some(e) = &self.fail {
                return Err(e.clone());
            }
            self.starts.push(cfg.clone());
            Ok(())
        }
        fn pause(&mut self, _: &()) {
            self.log.push("pause");
        }
        fn resume(&mut self, _: &()) {
            self.log.push("resume");
        }
        fn update_device(
            &mut self,
            _: &(),
            device: &str,
            change: DeviceChange,
        ) -> Result<(), String> {
            self.log.push(match change {
                DeviceChange::Backing(_) => "backing",
                DeviceChange::RateLimiter(LimiterSlot::Main, Some(_)) => "limit",
                DeviceChange::RateLimiter(_, None) => "unlimit",
                DeviceChange::RateLimiter(..) => "limit rx/tx",
            });
            self.changed.push(device.to_string());
            Ok(())
        }
        fn device_metrics(&mut self, _: &()) -> Vec<crate::metrics::DeviceGroup> {
            vec![("block_fake".into(), vec![("read_count", 7)])]
        }
    }

    fn kernel() -> String {
        // Any readable regular file passes PUT /boot-source's check.
        std::env::current_exe().unwrap().display().to_string()
    }

    fn call(c: &mut Controller<Fake>, method: &str, path: &str, body: &str) -> ApiResponse {
        match parse(method, path, body.as_bytes()) {
            Ok(r) => c.handle(r),
            Err(e) => e,
        }
    }

    fn ctl() -> Controller<Fake> {
        Controller::new("vm0".into(), Fake::default(), VmConfig::new(PathBuf::new()))
    }

    #[test]
    fn the_getting_started_sequence_boots() {
        let mut c = ctl();
        assert_eq!(
            call(&mut c, "GET", "/", "").body.unwrap()["state"],
            "Not started"
        );
        let bs = format!(
            r#"{{"kernel_image_path": "{}", "boot_args": "console=ttyS0"}}"#,
            kernel()
        );
        assert_eq!(call(&mut c, "PUT", "/boot-source", &bs).status, 204);
        assert_eq!(
            call(
                &mut c,
                "PUT",
                "/machine-config",
                r#"{"vcpu_count": 2, "mem_size_mib": 256}"#
            )
            .status,
            204
        );
        assert_eq!(
            call(
                &mut c,
                "PUT",
                "/actions",
                r#"{"action_type": "InstanceStart"}"#
            )
            .status,
            204
        );
        let started = &c.backend.starts[0];
        assert_eq!(
            (started.vcpus, started.mem_mib, started.cmdline.as_str()),
            (2, 256, "console=ttyS0")
        );
        let info = call(&mut c, "GET", "/", "").body.unwrap();
        assert_eq!(
            (info["state"].as_str(), info["id"].as_str()),
            (Some("Running"), Some("vm0"))
        );
    }

    #[test]
    fn state_rules_after_start() {
        let mut c = ctl();
        call(
            &mut c,
            "PUT",
            "/boot-source",
            &format!(r#"{{"kernel_image_path": "{}"}}"#, kernel()),
        );
        assert_eq!(
            call(&mut c, "PATCH", "/vm", r#"{"state": "Paused"}"#)
                .body
                .unwrap()["fault_message"],
            BEFORE_START
        );
        assert_eq!(
            call(
                &mut c,
                "PUT",
                "/actions",
                r#"{"action_type": "InstanceStart"}"#
            )
            .status,
            204
        );
        let again = call(
            &mut c,
            "PUT",
            "/actions",
            r#"{"action_type": "InstanceStart"}"#,
        );
        assert_eq!(again.status, 400);
        assert_eq!(
            c.backend.starts.len(),
            1,
            "a second InstanceStart starts nothing"
        );
        let m = call(
            &mut c,
            "PUT",
            "/machine-config",
            r#"{"vcpu_count": 4, "mem_size_mib": 512}"#,
        );
        assert_eq!(m.body.unwrap()["fault_message"], AFTER_START);
        assert_eq!(
            call(&mut c, "PATCH", "/machine-config", r#"{"vcpu_count": 4}"#).status,
            400
        );
        assert_eq!(
            call(&mut c, "GET", "/machine-config", "").body.unwrap()["vcpu_count"],
            1,
            "unchanged"
        );
        assert_eq!(
            call(&mut c, "PATCH", "/vm", r#"{"state": "Resumed"}"#).status,
            400
        );
        assert_eq!(
            call(&mut c, "PATCH", "/vm", r#"{"state": "Paused"}"#).status,
            204
        );
        assert_eq!(
            call(&mut c, "GET", "/", "").body.unwrap()["state"],
            "Paused"
        );
        assert_eq!(
            call(&mut c, "PATCH", "/vm", r#"{"state": "Paused"}"#).status,
            400
        );
        assert_eq!(
            call(&mut c, "PATCH", "/vm", r#"{"state": "Resumed"}"#).status,
            204
        );
        assert_eq!(c.backend.log, vec!["pause", "resume"]);
    }

    #[test]
    fn bad_configuration_changes_nothing() {
        let mut c = ctl();
        let r = call(
            &mut c,
            "PUT",
            "/boot-source",
            r#"{"kernel_image_path": "/nonexistent/Image"}"#,
        );
        assert_eq!(r.status, 400);
        assert!(
            r.body.unwrap()["fault_message"]
                .as_str()
                .unwrap()
                .contains("cannot open kernel image /nonexistent/Image")
        );
        assert_eq!(
            call(&mut c, "GET", "/vm/config", "").body.unwrap()["boot-source"],
            serde_json::Value::Null
        );
        for bad in [
            r#"{"vcpu_count": 0, "mem_size_mib": 128}"#,
            r#"{"vcpu_count": 1, "mem_size_mib": 0}"#,
            r#"{"vcpu_count": 1, "mem_size_mib": 128, "smt": true}"#,
        ] {
            assert_eq!(
                call(&mut c, "PUT", "/machine-config", bad).status,
                400,
                "{bad}"
            );
        }
        assert_eq!(call(&mut c, "PATCH", "/machine-config", "{}").status, 400);
        assert_eq!(
            call(&mut c, "GET", "/machine-config", "").body.unwrap(),
            json!(MachineConfig::default())
        );
        let r = call(
            &mut c,
            "PUT",
            "/actions",
            r#"{"action_type": "InstanceStart"}"#,
        );
        assert_eq!(
            r.body.unwrap()["fault_message"],
            "Cannot start microvm without kernel configuration."
        );
        assert_eq!(c.state(), InstanceState::NotStarted);
    }

    #[test]
    fn a_failed_start_leaves_the_instance_configurable() {
        let mut c = ctl();
        c.backend.fail = Some("kernel /k: not an arm64 Linux Image".into());
        call(
            &mut c,
            "PUT",
            "/boot-source",
            &format!(r#"{{"kernel_image_path": "{}"}}"#, kernel()),
        );
        let r = call(
            &mut c,
            "PUT",
            "/actions",
            r#"{"action_type": "InstanceStart"}"#,
        );
        assert_eq!(r.status, 400);
        assert!(
            r.body.unwrap()["fault_message"]
                .as_str()
                .unwrap()
                .contains("not an arm64")
        );
        assert_eq!(c.state(), InstanceState::NotStarted);
        assert_eq!(
            call(
                &mut c,
                "PATCH",
                "/machine-config",
                r#"{"mem_size_mib": 512}"#
            )
            .status,
            204
        );
    }

    #[test]
    fn metrics_flush_needs_a_sink() {
        let mut c = ctl();
        assert_eq!(
            call(
                &mut c,
                "PUT",
                "/actions",
                r#"{"action_type": "FlushMetrics"}"#
            )
            .status,
            400
        );
        let p = std::env::temp_dir().join(format!("vmm-ctl-metrics-{}", std::process::id()));
        let body = format!(r#"{{"metrics_path": "{}"}}"#, p.display());
        assert_eq!(call(&mut c, "PUT", "/metrics", &body).status, 204);
        assert_eq!(
            call(
                &mut c,
                "PUT",
                "/actions",
                r#"{"action_type": "FlushMetrics"}"#
            )
            .status,
            204
        );
        let line = std::fs::read_to_string(&p).unwrap();
        let v: serde_json::Value = serde_json::from_str(line.lines().last().unwrap()).unwrap();
        assert!(
            v.get("block_fake").is_none(),
            "no device groups before start"
        );
        assert!(v["put_api_requests"]["actions_count"].as_u64().unwrap() >= 1);
        std::fs::remove_file(p).unwrap();
        assert_eq!(
            call(
                &mut c,
                "PUT",
                "/actions",
                r#"{"action_type": "SendCtrlAltDel"}"#
            )
            .status,
            400
        );
    }

    fn temp_image(tag: &str) -> String {
        let p = std::env::temp_dir().join(format!("vmm-ctl-{tag}-{}", std::process::id()));
        std::fs::write(&p, vec![0u8; 4096]).unwrap();
        p.display().to_string()
    }

    #[test]
    fn drives_follow_the_rules() {
        let mut c = ctl();
        let img = temp_image("drive");
        let put = |c: &mut Controller<Fake>, id: &str, body: String| {
            call(c, "PUT", &format!("/drives/{id}"), &body)
        };
        let d = |id: &str, root: bool, path: &str| {
            format!(
                r#"{{"drive_id": "{id}", "path_on_host": "{path}", "is_root_device": {root}, "is_read_only": false}}"#
            )
        };
        assert_eq!(put(&mut c, "rootfs", d("rootfs", true, &img)).status, 204);
        let r = put(&mut c, "other", d("rootfs", false, &img));
        assert!(
            r.body.unwrap()["fault_message"]
                .as_str()
                .unwrap()
                .contains("differs")
        );
        let r = put(&mut c, "second", d("second", true, &img));
        assert!(
            r.body.unwrap()["fault_message"]
                .as_str()
                .unwrap()
                .contains("only one drive can be the root")
        );
        let r = put(&mut c, "missing", d("missing", false, "/nonexistent.img"));
        assert!(
            r.body.unwrap()["fault_message"]
                .as_str()
                .unwrap()
                .contains("cannot open /nonexistent.img")
        );
        assert_eq!(
            put(&mut c, "rootfs", d("rootfs", true, &img)).status,
            204,
            "replacing the same id is fine"
        );
        let cfg = call(&mut c, "GET", "/vm/config", "").body.unwrap();
        assert_eq!(
            cfg["drives"].as_array().unwrap().len(),
            1,
            "failed PUTs changed nothing"
        );
        let patch = format!(r#"{{"drive_id": "rootfs", "path_on_host": "{img}"}}"#);
        assert_eq!(
            call(&mut c, "PATCH", "/drives/rootfs", &patch).status,
            400,
            "PATCH needs a running guest"
        );
        assert_eq!(call(&mut c, "PUT", "/entropy", "{}").status, 204);
        call(
            &mut c,
            "PUT",
            "/boot-source",
            &format!(r#"{{"kernel_image_path": "{}"}}"#, kernel()),
        );
        assert_eq!(
            call(
                &mut c,
                "PUT",
                "/actions",
                r#"{"action_type": "InstanceStart"}"#
            )
            .status,
            204
        );
        let started = &c.backend.starts[0];
        assert_eq!((started.drives.len(), started.entropy.is_some()), (1, true));
        assert_eq!(
            put(&mut c, "late", d("late", false, &img)).status,
            400,
            "no hotplug"
        );
        assert_eq!(call(&mut c, "PATCH", "/drives/rootfs", &patch).status, 204);
        assert_eq!(c.backend.log, vec!["backing"]);
        let limit = r#"{"drive_id": "rootfs", "rate_limiter": {"bandwidth": {"size": 1000, "refill_time": 100}}}"#;
        assert_eq!(call(&mut c, "PATCH", "/drives/rootfs", limit).status, 204);
        let unlimit = r#"{"drive_id": "rootfs", "rate_limiter": {}}"#;
        assert_eq!(call(&mut c, "PATCH", "/drives/rootfs", unlimit).status, 204);
        assert_eq!(c.backend.log, vec!["backing", "limit", "unlimit"]);
        assert_eq!(c.backend.changed, vec!["block_rootfs"; 3]);
        let bad = r#"{"drive_id": "rootfs", "rate_limiter": {"bandwidth": {"size": 0, "refill_time": 100}}}"#;
        assert_eq!(call(&mut c, "PATCH", "/drives/rootfs", bad).status, 400);
        let nothing = r#"{"drive_id": "rootfs"}"#;
        assert_eq!(call(&mut c, "PATCH", "/drives/rootfs", nothing).status, 400);
        assert_eq!(c.backend.log.len(), 3, "refused patches change nothing");
        let r = call(
            &mut c,
            "PATCH",
            "/drives/nope",
            r#"{"drive_id": "nope", "path_on_host": "/x"}"#,
        );
        assert!(
            r.body.unwrap()["fault_message"]
                .as_str()
                .unwrap()
                .contains("no drive 'nope'")
        );
        std::fs::remove_file(img).unwrap();
    }

    #[test]
    fn vm_config_lists_every_section() {
        let mut c = ctl();
        let v = call(&mut c, "GET", "/vm/config", "").body.unwrap();
        for key in [
            "boot-source",
            "machine-config",
            "drives",
            "network-interfaces",
            "logger",
            "metrics",
        ] {
            assert!(v.get(key).is_some(), "{key}");
        }
    }
}
