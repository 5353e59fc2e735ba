//! The controller's rules, tested through parsed requests against a fake backend.

use super::*;
use crate::api::router::parse;

#[derive(Debug, Default)]
struct Fake {
    starts: Vec<VmConfig>,
    fail: Option<String>,
    log: Vec<&'static str>,
    changed: Vec<String>,
    /// Device changes this backend refuses, as a device might.
    refuse: Option<fn(&DeviceChange) -> bool>,
    /// The changes the running devices took, in order.
    applied: Vec<(String, DeviceChange)>,
    /// The migration the backend reports.
    migration: Option<crate::api::migration::MigrationInfo>,
}

impl Fake {
    /// A running device's rate limiter in `slot`: the last one it took, else the one it
    /// started with.
    fn limiter(&self, device: &str, slot: LimiterSlot) -> Option<RateLimiterConfig> {
        let taken = self.applied.iter().rev().find_map(|(d, c)| match c {
            DeviceChange::RateLimiter(s, r) if d == device && *s == slot => Some(*r),
            _ => None,
        });
        if let Some(r) = taken {
            return r;
        }
        let cfg = self.starts.last().expect("started");
        if let Some(id) = device.strip_prefix("net_") {
            let n = cfg.net.iter().find(|n| n.iface_id == id).expect("iface");
            return if slot == LimiterSlot::Rx {
                n.rx_rate_limiter
            } else {
                n.tx_rate_limiter
            };
        }
        let id = device.strip_prefix("block_").expect("a drive");
        cfg.drives
            .iter()
            .find(|d| d.drive_id == id)
            .expect("drive")
            .rate_limiter
    }

    /// A running drive's backing file.
    fn backing(&self, device: &str) -> String {
        let taken = self.applied.iter().rev().find_map(|(d, c)| match c {
            DeviceChange::Backing(p) if d == device => Some(p.clone()),
            _ => None,
        });
        let id = device.strip_prefix("block_").expect("a drive");
        taken.unwrap_or_else(|| {
            let cfg = self.starts.last().expect("started");
            let d = cfg.drives.iter().find(|d| d.drive_id == id);
            d.expect("drive").path_on_host.clone()
        })
    }
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
    fn update_device(&mut self, _: &(), device: &str, change: DeviceChange) -> Result<(), String> {
        self.log.push(match change {
            DeviceChange::Backing(_) => "backing",
            DeviceChange::RateLimiter(LimiterSlot::Main, Some(_)) => "limit",
            DeviceChange::RateLimiter(_, None) => "unlimit",
            DeviceChange::RateLimiter(..) => "limit rx/tx",
        });
        self.changed.push(device.to_string());
        if self.refuse.is_some_and(|refuse| refuse(&change)) {
            return Err("the device refused the change".into());
        }
        self.applied.push((device.to_string(), change));
        Ok(())
    }
    fn device_metrics(&mut self, _: &()) -> Vec<crate::metrics::DeviceGroup> {
        vec![("block_fake".into(), vec![("read_count", 7)])]
    }
    fn snapshot(
        &mut self,
        _: &(),
        _: &VmConfig,
        p: &crate::api::snapshot::SnapshotCreateParams,
    ) -> Result<(), String> {
        if let Some(e) = &self.fail {
            return Err(e.clone());
        }
        self.log.push("snapshot");
        self.changed.push(p.snapshot_path.clone());
        Ok(())
    }
    fn load(
        &mut self,
        base: &VmConfig,
        req: &crate::api::snapshot::LoadRequest,
    ) -> Result<((), VmConfig), String> {
        if let Some(e) = &self.fail {
            return Err(e.clone());
        }
        self.log.push("load");
        let mut cfg = base.clone();
        cfg.kernel = "/saved/kernel".into();
        cfg.vcpus = 2;
        cfg.mem_mib = 512;
        cfg.track_dirty_pages = req.track_dirty_pages;
        Ok(((), cfg))
    }
    fn migrate_send(
        &mut self,
        _: &(),
        _: &VmConfig,
        req: crate::api::migration::SendRequest,
    ) -> Result<(), String> {
        if let Some(e) = &self.fail {
            return Err(e.clone());
        }
        self.log.push("send");
        self.migration = Some(crate::api::migration::MigrationInfo::new(
            crate::api::migration::Role::Source,
            req.destination,
        ));
        Ok(())
    }
    fn migrate_receive(
        &mut self,
        _: &VmConfig,
        req: crate::api::migration::ReceiveRequest,
    ) -> Result<(), String> {
        self.log.push("receive");
        self.migration = Some(crate::api::migration::MigrationInfo::new(
            crate::api::migration::Role::Destination,
            req.address,
        ));
        Ok(())
    }
    fn migration(&self) -> Option<crate::api::migration::MigrationInfo> {
        self.migration.clone()
    }
    fn migration_cancel(&mut self) -> Result<(), String> {
        match &mut self.migration {
            Some(m) if m.state.is_active() => {
                m.state = crate::api::migration::MigrationState::Cancelled;
                self.log.push("cancel");
                Ok(())
            }
            _ => Err("no migration is in progress".into()),
        }
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
    let bad =
        r#"{"drive_id": "rootfs", "rate_limiter": {"bandwidth": {"size": 0, "refill_time": 100}}}"#;
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

/// A running instance (on the fake backend) configured with `cfg`'s devices.
fn running(cfg: VmConfig) -> Controller<Fake> {
    let mut c = Controller::configured("vm0".into(), Fake::default(), cfg);
    c.boot_source = Some(BootSource {
        kernel_image_path: kernel(),
        boot_args: None,
        initrd_path: None,
    });
    c.start().expect("the fake starts");
    c
}

fn limit(size: u64) -> RateLimiterConfig {
    RateLimiterConfig {
        bandwidth: Some(crate::api::model::TokenBucketConfig {
            size,
            one_time_burst: None,
            refill_time: 100,
        }),
        ops: None,
    }
}

fn fault_message(r: &ApiResponse) -> String {
    r.body.as_ref().expect("a fault body")["fault_message"]
        .as_str()
        .expect("a message")
        .to_string()
}

#[test]
fn a_net_patch_refused_half_way_changes_nothing() {
    let mut cfg = VmConfig::new(PathBuf::new());
    cfg.net.push(NetworkInterface {
        iface_id: "eth0".into(),
        host_dev_name: "tap0".into(),
        guest_mac: None,
        rx_rate_limiter: None,
        tx_rate_limiter: Some(limit(500)),
    });
    let mut c = running(cfg);
    let both = r#"{"iface_id": "eth0", "rx_rate_limiter": {"bandwidth": {"size": 1000, "refill_time": 100}},
        "tx_rate_limiter": {"bandwidth": {"size": 2000, "refill_time": 100}}}"#;
    let before = call(&mut c, "GET", "/vm/config", "").body.unwrap();

    c.backend.refuse = Some(|ch| matches!(ch, DeviceChange::RateLimiter(LimiterSlot::Tx, _)));
    let r = call(&mut c, "PATCH", "/network-interfaces/eth0", both);
    assert_eq!(r.status, 400);
    assert_eq!(
        fault_message(&r),
        "cannot apply tx_rate_limiter: the device refused the change"
    );
    assert_eq!(
        c.backend.limiter("net_eth0", LimiterSlot::Rx),
        None,
        "rx put back"
    );
    assert_eq!(
        c.backend.limiter("net_eth0", LimiterSlot::Tx),
        Some(limit(500))
    );
    assert_eq!(call(&mut c, "GET", "/vm/config", "").body.unwrap(), before);

    // When putting rx back fails too, the stored configuration says what the device has.
    c.backend.refuse = Some(|ch| {
        matches!(
            ch,
            DeviceChange::RateLimiter(LimiterSlot::Tx, _)
                | DeviceChange::RateLimiter(LimiterSlot::Rx, None)
        )
    });
    let r = call(&mut c, "PATCH", "/network-interfaces/eth0", both);
    assert_eq!(r.status, 400);
    assert!(
        fault_message(&r).contains("putting back the earlier rx_rate_limiter failed too"),
        "{}",
        fault_message(&r)
    );
    let stored = &call(&mut c, "GET", "/vm/config", "").body.unwrap()["network-interfaces"][0];
    assert_eq!(stored["rx_rate_limiter"], json!(limit(1000)));
    assert_eq!(stored["tx_rate_limiter"], json!(limit(500)));
    assert_eq!(
        c.backend.limiter("net_eth0", LimiterSlot::Rx),
        Some(limit(1000))
    );

    c.backend.refuse = None;
    assert_eq!(
        call(&mut c, "PATCH", "/network-interfaces/eth0", both).status,
        204
    );
    let stored = &call(&mut c, "GET", "/vm/config", "").body.unwrap()["network-interfaces"][0];
    assert_eq!(stored["tx_rate_limiter"], json!(limit(2000)));
    assert_eq!(
        c.backend.limiter("net_eth0", LimiterSlot::Tx),
        Some(limit(2000))
    );
}

#[test]
fn a_drive_patch_refused_half_way_changes_nothing() {
    let (old_img, new_img) = (temp_image("old"), temp_image("new"));
    let mut cfg = VmConfig::new(PathBuf::new());
    cfg.drives.push(Drive {
        drive_id: "data".into(),
        path_on_host: old_img.clone(),
        is_root_device: false,
        is_read_only: false,
        cache_type: Default::default(),
        partuuid: None,
        io_engine: None,
        rate_limiter: Some(limit(500)),
    });
    let mut c = running(cfg);
    let both = format!(
        r#"{{"drive_id": "data", "path_on_host": "{new_img}", "rate_limiter": {{"bandwidth": {{"size": 1000, "refill_time": 100}}}}}}"#
    );
    let before = call(&mut c, "GET", "/vm/config", "").body.unwrap();
    let refusals: [fn(&DeviceChange) -> bool; 2] = [
        |ch| matches!(ch, DeviceChange::Backing(_)),
        |ch| matches!(ch, DeviceChange::RateLimiter(..)),
    ];
    for refuse in refusals {
        c.backend.refuse = Some(refuse);
        let r = call(&mut c, "PATCH", "/drives/data", &both);
        assert_eq!(r.status, 400);
        assert!(fault_message(&r).contains("the device refused the change"));
        assert_eq!(c.backend.backing("block_data"), old_img);
        assert_eq!(
            c.backend.limiter("block_data", LimiterSlot::Main),
            Some(limit(500))
        );
        assert_eq!(call(&mut c, "GET", "/vm/config", "").body.unwrap(), before);
    }
    c.backend.refuse = None;
    assert_eq!(call(&mut c, "PATCH", "/drives/data", &both).status, 204);
    assert_eq!(c.backend.backing("block_data"), new_img);
    let stored = &call(&mut c, "GET", "/vm/config", "").body.unwrap()["drives"][0];
    assert_eq!(
        (stored["path_on_host"].as_str(), &stored["rate_limiter"]),
        (Some(new_img.as_str()), &json!(limit(1000)))
    );
    std::fs::remove_file(old_img).unwrap();
    std::fs::remove_file(new_img).unwrap();
}

#[test]
fn the_stored_logger_configuration_keeps_what_a_put_leaves_out() {
    let mut c = ctl();
    // Only the line decorations: the process's log level and output stay as they are.
    assert_eq!(
        call(&mut c, "PUT", "/logger", r#"{"show_level": true}"#).status,
        204
    );
    assert_eq!(
        call(&mut c, "PUT", "/logger", r#"{"show_log_origin": false}"#).status,
        204
    );
    assert_eq!(
        call(&mut c, "GET", "/vm/config", "").body.unwrap()["logger"],
        json!({"show_level": true, "show_log_origin": false})
    );
}

#[test]
fn snapshots_need_a_paused_vm_and_diffs_need_tracking() {
    let mut c = ctl();
    let create = r#"{"snapshot_path": "/s", "mem_file_path": "/m"}"#;
    let before = call(&mut c, "PUT", "/snapshot/create", create);
    assert_eq!(before.status, 400, "before boot");
    let bs = format!(r#"{{"kernel_image_path": "{}"}}"#, kernel());
    assert_eq!(call(&mut c, "PUT", "/boot-source", &bs).status, 204);
    let start = r#"{"action_type": "InstanceStart"}"#;
    assert_eq!(call(&mut c, "PUT", "/actions", start).status, 204);
    let r = call(&mut c, "PUT", "/snapshot/create", create);
    assert_eq!(r.status, 400);
    assert_eq!(r.body.unwrap()["fault_message"], CREATE_NEEDS_PAUSE);
    assert!(!c.backend.log.contains(&"snapshot"));
    let pause = r#"{"state": "Paused"}"#;
    assert_eq!(call(&mut c, "PATCH", "/vm", pause).status, 204);
    let diff = r#"{"snapshot_type": "Diff", "snapshot_path": "/s", "mem_file_path": "/m"}"#;
    let r = call(&mut c, "PUT", "/snapshot/create", diff);
    assert_eq!(r.status, 400);
    assert!(
        r.body.unwrap()["fault_message"]
            .as_str()
            .unwrap()
            .contains("track_dirty_pages")
    );
    let same = r#"{"snapshot_path": "/s", "mem_file_path": "/s"}"#;
    assert_eq!(call(&mut c, "PUT", "/snapshot/create", same).status, 400);
    assert!(!c.backend.log.contains(&"snapshot"));
    assert_eq!(call(&mut c, "PUT", "/snapshot/create", create).status, 204);
    assert_eq!(c.backend.changed, vec!["/s".to_string()]);
    assert_eq!(c.state(), InstanceState::Paused);
}

#[test]
fn a_load_needs_a_fresh_instance_and_a_failed_one_changes_nothing() {
    let load = r#"{"snapshot_path": "/s", "mem_backend": {"backend_type": "File", "backend_path": "/m"}, "track_dirty_pages": true}"#;
    // Configured: refused, naming the rule.
    let mut c = ctl();
    let bs = format!(r#"{{"kernel_image_path": "{}"}}"#, kernel());
    assert_eq!(call(&mut c, "PUT", "/boot-source", &bs).status, 204);
    let r = call(&mut c, "PUT", "/snapshot/load", load);
    assert_eq!(r.status, 400);
    assert!(
        r.body.unwrap()["fault_message"]
            .as_str()
            .unwrap()
            .contains("fresh microVM")
    );
    assert!(!c.backend.log.contains(&"load"));

    // The backend fails: still not started, still loadable.
    let mut c = ctl();
    c.backend.fail = Some("memory file /m holds 0 bytes".into());
    let r = call(&mut c, "PUT", "/snapshot/load", load);
    assert_eq!(r.status, 400);
    assert_eq!(
        r.body.unwrap()["fault_message"],
        "memory file /m holds 0 bytes"
    );
    assert_eq!(c.state(), InstanceState::NotStarted);
    assert_eq!(c.machine, MachineConfig::default());
    c.backend.fail = None;

    // Loaded: paused (no resume_vm), configuration as saved, and no second load.
    assert_eq!(call(&mut c, "PUT", "/snapshot/load", load).status, 204);
    assert_eq!(c.state(), InstanceState::Paused);
    let cfg = call(&mut c, "GET", "/vm/config", "").body.unwrap();
    assert_eq!(cfg["boot-source"]["kernel_image_path"], "/saved/kernel");
    assert_eq!(cfg["machine-config"]["vcpu_count"], 2);
    assert_eq!(cfg["machine-config"]["track_dirty_pages"], true);
    assert_eq!(call(&mut c, "PUT", "/snapshot/load", load).status, 400);
    let resume = r#"{"state": "Resumed"}"#;
    assert_eq!(call(&mut c, "PATCH", "/vm", resume).status, 204);

    // resume_vm: running at once.
    let mut c = ctl();
    let r = r#"{"snapshot_path": "/s", "mem_file_path": "/m", "resume_vm": true}"#;
    assert_eq!(call(&mut c, "PUT", "/snapshot/load", r).status, 204);
    assert_eq!(c.state(), InstanceState::Running);
}

#[test]
fn a_migration_needs_a_running_vm_and_locks_the_instance_until_it_ends() {
    let send = r#"{"destination": "tcp:10.0.0.2:6000"}"#;
    let mut c = ctl();
    assert_eq!(
        fault_message(&call(&mut c, "GET", "/migration", "")),
        NO_MIGRATION
    );
    assert_eq!(
        fault_message(&call(&mut c, "PUT", "/migration/send", send)),
        BEFORE_START
    );
    let mut c = running(VmConfig::new(PathBuf::new()));
    call(&mut c, "PATCH", "/vm", r#"{"state": "Paused"}"#);
    assert!(fault_message(&call(&mut c, "PUT", "/migration/send", send)).contains("paused"));
    call(&mut c, "PATCH", "/vm", r#"{"state": "Resumed"}"#);
    // A bad body is refused before the backend hears of it.
    let bad = call(
        &mut c,
        "PUT",
        "/migration/send",
        r#"{"destination": "10.0.0.2:6000"}"#,
    );
    assert!(fault_message(&bad).contains("tcp:HOST:PORT"), "{bad:?}");
    assert!(!c.backend.log.contains(&"send"));

    assert_eq!(call(&mut c, "PUT", "/migration/send", send).status, 204);
    let info = call(&mut c, "GET", "/migration", "").body.unwrap();
    assert_eq!(
        (info["state"].as_str(), info["role"].as_str()),
        (Some("setup"), Some("source"))
    );
    assert!(c.migrating());
    // While it goes on, nothing may change the guest; reads and cancel are served.
    for (method, path, body) in [
        ("PATCH", "/vm", r#"{"state": "Paused"}"#),
        ("PUT", "/migration/send", send),
        (
            "PUT",
            "/snapshot/create",
            r#"{"snapshot_path": "/s", "mem_file_path": "/m"}"#,
        ),
        (
            "PATCH",
            "/drives/root",
            r#"{"drive_id": "root", "path_on_host": "/x"}"#,
        ),
    ] {
        let r = call(&mut c, method, path, body);
        assert!(
            fault_message(&r).contains("a migration is in progress (setup, tcp:10.0.0.2:6000)"),
            "{method} {path}: {r:?}"
        );
    }
    assert_eq!(call(&mut c, "GET", "/", "").status, 200);
    assert_eq!(call(&mut c, "GET", "/vm/config", "").status, 200);
    assert_eq!(call(&mut c, "PUT", "/migration/cancel", "").status, 204);
    assert_eq!(
        call(&mut c, "GET", "/migration", "").body.unwrap()["state"],
        "cancelled"
    );
    // Once it has ended, the instance is the user's again, and a new attempt may start.
    assert!(!c.migrating());
    assert_eq!(
        call(&mut c, "PATCH", "/vm", r#"{"state": "Paused"}"#).status,
        204
    );
    assert!(fault_message(&call(&mut c, "PUT", "/migration/cancel", "")).contains("no migration"));
    call(&mut c, "PATCH", "/vm", r#"{"state": "Resumed"}"#);
    assert_eq!(call(&mut c, "PUT", "/migration/send", send).status, 204);
    // Past the commit point the guest is the destination's, even once the report ends:
    // nothing here may pause, resume or snapshot it again.
    let m = c.backend.migration.as_mut().unwrap();
    m.committed = true;
    m.state = crate::api::migration::MigrationState::Failed;
    for (method, path, body) in [
        ("PATCH", "/vm", r#"{"state": "Paused"}"#),
        ("PATCH", "/vm", r#"{"state": "Resumed"}"#),
        ("PUT", "/migration/send", send),
    ] {
        let r = call(&mut c, method, path, body);
        assert!(
            fault_message(&r).contains("has migrated to tcp:10.0.0.2:6000"),
            "{r:?}"
        );
    }
    assert_eq!(call(&mut c, "GET", "/migration", "").status, 200);
}

#[test]
fn a_guest_is_received_only_by_a_fresh_instance_and_adopted_running() {
    let receive = r#"{"listen": "tcp:0.0.0.0:6000"}"#;
    let mut c = ctl();
    call(
        &mut c,
        "PUT",
        "/machine-config",
        r#"{"vcpu_count": 2, "mem_size_mib": 256}"#,
    );
    assert!(fault_message(&call(&mut c, "PUT", "/migration/receive", receive)).contains("fresh"));
    let mut c = ctl();
    assert_eq!(
        call(&mut c, "PUT", "/migration/receive", receive).status,
        204
    );
    assert_eq!(
        call(&mut c, "GET", "/migration", "").body.unwrap()["role"],
        "destination"
    );
    // Nothing can be configured meanwhile.
    let r = call(
        &mut c,
        "PUT",
        "/machine-config",
        r#"{"vcpu_count": 1, "mem_size_mib": 128}"#,
    );
    assert!(
        fault_message(&r).contains("a migration is in progress"),
        "{r:?}"
    );
    // The guest arrives.
    let mut cfg = VmConfig::new("/k".into());
    cfg.vcpus = 2;
    cfg.mem_mib = 1024;
    c.backend.migration.as_mut().unwrap().state = crate::api::migration::MigrationState::Completed;
    c.adopt((), cfg);
    assert_eq!(c.state(), InstanceState::Running);
    let m = call(&mut c, "GET", "/machine-config", "").body.unwrap();
    assert_eq!(
        (m["vcpu_count"].as_u64(), m["mem_size_mib"].as_u64()),
        (Some(2), Some(1024))
    );
    // One guest per destination process.
    let again = call(&mut c, "PUT", "/migration/receive", receive);
    assert_eq!(again.status, 400);
}
