//! From an HTTP method, path and body to a typed request, or to the error response that
//! names what is wrong. Portable and independent of the HTTP library.

use serde::de::DeserializeOwned;
use serde_json::Value;

use super::migration::{ReceiveParams, SendParams};
use super::model::{
    Action, BootSource, Drive, DrivePatch, Entropy, LoggerConfig, MachineConfig,
    MachineConfigPatch, MetricsConfig, NetworkInterface, NetworkInterfacePatch, VmPatch, Vsock,
};
use super::snapshot::{SnapshotCreateParams, SnapshotLoadParams};

/// Largest request body accepted (Firecracker's limit).
pub const MAX_BODY: usize = 51_200;

/// Every (path, method) the server serves. The OpenAPI document must list exactly these.
pub const ROUTES: &[(&str, &str)] = &[
    ("/", "GET"),
    ("/version", "GET"),
    ("/boot-source", "PUT"),
    ("/machine-config", "GET"),
    ("/machine-config", "PUT"),
    ("/machine-config", "PATCH"),
    ("/actions", "PUT"),
    ("/vm", "PATCH"),
    ("/vm/config", "GET"),
    ("/logger", "PUT"),
    ("/metrics", "PUT"),
    ("/drives/{drive_id}", "PUT"),
    ("/drives/{drive_id}", "PATCH"),
    ("/entropy", "PUT"),
    ("/vsock", "PUT"),
    ("/network-interfaces/{iface_id}", "PUT"),
    ("/network-interfaces/{iface_id}", "PATCH"),
    ("/snapshot/create", "PUT"),
    ("/snapshot/load", "PUT"),
    ("/migration", "GET"),
    ("/migration/send", "PUT"),
    ("/migration/receive", "PUT"),
    ("/migration/cancel", "PUT"),
];

/// Firecracker's resources that later work brings, with the methods Firecracker serves on
/// each: until then those methods get a 400 that says so, and any other method a 405, as on
/// the served resources.
pub const NOT_YET: &[(&str, &[&str])] = &[
    ("/cpu-config", &["PUT"]),
    ("/balloon", &["GET", "PUT", "PATCH"]),
    ("/balloon/statistics", &["GET", "PATCH"]),
    ("/balloon/hinting/start", &["PATCH"]),
    ("/balloon/hinting/status", &["GET"]),
    ("/balloon/hinting/stop", &["PATCH"]),
    ("/mmds", &["GET", "PUT", "PATCH"]),
    ("/mmds/config", &["PUT"]),
    ("/serial", &["PUT"]),
    ("/pmem/{id}", &["PUT", "PATCH"]),
    ("/hotplug/memory", &["GET", "PUT", "PATCH"]),
];

/// A parsed request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApiRequest {
    /// `GET /`.
    GetInstanceInfo,
    /// `GET /version`.
    GetVersion,
    /// `PUT /boot-source`.
    PutBootSource(BootSource),
    /// `GET /machine-config`.
    GetMachineConfig,
    /// `PUT /machine-config`.
    PutMachineConfig(MachineConfig),
    /// `PATCH /machine-config`.
    PatchMachineConfig(MachineConfigPatch),
    /// `PUT /actions`.
    PutAction(Action),
    /// `PATCH /vm`.
    PatchVm(VmPatch),
    /// `GET /vm/config`.
    GetVmConfig,
    /// `PUT /logger`.
    PutLogger(LoggerConfig),
    /// `PUT /metrics`.
    PutMetrics(MetricsConfig),
    /// `PUT /drives/{drive_id}`.
    PutDrive(String, Drive),
    /// `PATCH /drives/{drive_id}`.
    PatchDrive(String, DrivePatch),
    /// `PUT /entropy`.
    PutEntropy(Entropy),
    /// `PUT /network-interfaces/{iface_id}`.
    PutNet(String, NetworkInterface),
    /// `PATCH /network-interfaces/{iface_id}`.
    PatchNet(String, NetworkInterfacePatch),
    /// `PUT /vsock`.
    PutVsock(Vsock),
    /// `PUT /snapshot/create`.
    PutSnapshotCreate(SnapshotCreateParams),
    /// `PUT /snapshot/load`.
    PutSnapshotLoad(SnapshotLoadParams),
    /// `GET /migration`.
    GetMigration,
    /// `PUT /migration/send`.
    PutMigrationSend(SendParams),
    /// `PUT /migration/receive`.
    PutMigrationReceive(ReceiveParams),
    /// `PUT /migration/cancel`.
    PutMigrationCancel,
}

impl ApiRequest {
    /// The metrics bucket of this request, Firecracker-style (`put_api_requests.actions_count`).
    pub fn metric(&self) -> (&'static str, &'static str) {
        match self {
            Self::GetInstanceInfo => ("get_api_requests", "instance_info_count"),
            Self::GetVersion => ("get_api_requests", "vmm_version_count"),
            Self::GetMachineConfig => ("get_api_requests", "machine_cfg_count"),
            Self::GetVmConfig => ("get_api_requests", "vm_config_count"),
            Self::PutBootSource(_) => ("put_api_requests", "boot_source_count"),
            Self::PutMachineConfig(_) => ("put_api_requests", "machine_cfg_count"),
            Self::PutAction(_) => ("put_api_requests", "actions_count"),
            Self::PutLogger(_) => ("put_api_requests", "logger_count"),
            Self::PutMetrics(_) => ("put_api_requests", "metrics_count"),
            Self::PatchMachineConfig(_) => ("patch_api_requests", "machine_cfg_count"),
            Self::PatchVm(_) => ("patch_api_requests", "vm_count"),
            Self::PutDrive(..) => ("put_api_requests", "drive_count"),
            Self::PatchDrive(..) => ("patch_api_requests", "drive_count"),
            Self::PutEntropy(_) => ("put_api_requests", "entropy_count"),
            Self::PutNet(..) => ("put_api_requests", "network_count"),
            Self::PutVsock(_) => ("put_api_requests", "vsock_count"),
            Self::PatchNet(..) => ("patch_api_requests", "network_count"),
            Self::PutSnapshotCreate(_) => ("put_api_requests", "snapshot_create_count"),
            Self::PutSnapshotLoad(_) => ("put_api_requests", "snapshot_load_count"),
            Self::GetMigration => ("get_api_requests", "migration_count"),
            Self::PutMigrationSend(_) => ("put_api_requests", "migration_send_count"),
            Self::PutMigrationReceive(_) => ("put_api_requests", "migration_receive_count"),
            Self::PutMigrationCancel => ("put_api_requests", "migration_cancel_count"),
        }
    }
}

/// A response: status and optional JSON body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiResponse {
    /// HTTP status.
    pub status: u16,
    /// JSON body.
    pub body: Option<Value>,
    /// The `Allow` header of a 405.
    pub allow: Option<String>,
}

impl ApiResponse {
    /// 200 with a body.
    pub fn ok(body: Value) -> Self {
        Self {
            status: 200,
            body: Some(body),
            allow: None,
        }
    }

    /// 204.
    pub fn no_content() -> Self {
        Self {
            status: 204,
            body: None,
            allow: None,
        }
    }

    /// An error with Firecracker's `fault_message` body.
    pub fn fault(status: u16, message: impl Into<String>) -> Self {
        Self {
            status,
            body: Some(serde_json::json!({ "fault_message": message.into() })),
            allow: None,
        }
    }

    /// 400.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::fault(400, message)
    }
}

/// A request body: a JSON object, checked by `plain_values`, then typed.
fn body<T: DeserializeOwned>(raw: &[u8]) -> Result<T, ApiResponse> {
    if raw.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiResponse::bad_request("the request needs a JSON body"));
    }
    let invalid = |e: String| ApiResponse::bad_request(format!("invalid request body: {e}"));
    let value: Value = serde_json::from_slice(raw).map_err(|e| invalid(e.to_string()))?;
    if !value.is_object() {
        return Err(invalid(format!(
            "expected a JSON object, found {}",
            json_type(&value)
        )));
    }
    plain_values(&value, "").map_err(invalid)?;
    T::deserialize(value).map_err(|e| invalid(e.to_string()))
}

/// The fields that are lists of objects in Firecracker's description.
const LIST_FIELDS: &[&str] = &["network_overrides", "drive_overrides"];

/// A JSON value's type, as messages name it.
fn json_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

/// Refuses the two shapes serde would take in place of the type a field has: `null` for a
/// field that may be left out, and a list for an object (its fields by position; also
/// `{"Name": null}` for an enum name, refused by its null). Every request body this API
/// takes is an object of strings, numbers, booleans and objects, as Firecracker's
/// description has them (except the `LIST_FIELDS`, lists of such objects), so both are a
/// client's mistake; `at` names the field. The depth is
/// bounded by serde_json's recursion limit on the parse before.
fn plain_values(v: &Value, at: &str) -> Result<(), String> {
    match v {
        Value::Array(items) if LIST_FIELDS.contains(&at) => {
            items
                .iter()
                .enumerate()
                .try_for_each(|(i, item)| match item {
                    Value::Object(_) => plain_values(item, &format!("{at}[{i}]")),
                    other => Err(format!("{at}[{i}] is {}: give an object", json_type(other))),
                })
        }
        Value::Null | Value::Array(_) => Err(format!(
            "{at} is {}: give a value of its type, or leave the field out",
            json_type(v)
        )),
        Value::Object(fields) => fields.iter().try_for_each(|(name, field)| {
            let path = if at.is_empty() {
                name.clone()
            } else {
                format!("{at}.{name}")
            };
            plain_values(field, &path)
        }),
        Value::Bool(_) | Value::Number(_) | Value::String(_) => Ok(()),
    }
}

/// Whether `path` is an instance of the route `template`, whose `{name}` segments stand for
/// one non-empty segment.
fn matches(template: &str, path: &str) -> bool {
    let (mut t, mut p) = (template.split('/'), path.split('/'));
    loop {
        match (t.next(), p.next()) {
            (None, None) => return true,
            (Some(ts), Some(ps)) if ts.starts_with('{') && !ps.is_empty() => {}
            (Some(ts), Some(ps)) if ts == ps => {}
            _ => return false,
        }
    }
}

/// The answer to a method a served or known path does not take, or to a path nobody serves.
fn unrouted(method: &str, path: &str) -> ApiResponse {
    let not_allowed = |allowed: Vec<&str>| {
        let mut r = ApiResponse::fault(405, format!("{method} is not allowed on {path}"));
        r.allow = Some(allowed.join(", "));
        r
    };
    let served: Vec<&str> = ROUTES
        .iter()
        .filter(|(t, _)| matches(t, path))
        .map(|(_, m)| *m)
        .collect();
    if !served.is_empty() {
        return not_allowed(served);
    }
    if let Some((template, methods)) = NOT_YET.iter().find(|(t, _)| matches(t, path)) {
        if methods.contains(&method) {
            return ApiResponse::bad_request(format!(
                "the {template} resource is not supported yet"
            ));
        }
        return not_allowed(methods.to_vec());
    }
    ApiResponse::fault(404, format!("no resource at {path}"))
}

/// The id in `/drives/{drive_id}`.
fn drive_id(path: &str) -> Option<&str> {
    path.strip_prefix("/drives/")
        .filter(|id| !id.is_empty() && !id.contains('/'))
}

/// The id in `/network-interfaces/{iface_id}`.
fn iface_id(path: &str) -> Option<&str> {
    path.strip_prefix("/network-interfaces/")
        .filter(|id| !id.is_empty() && !id.contains('/'))
}

/// Parses one request.
pub fn parse(method: &str, path: &str, raw: &[u8]) -> Result<ApiRequest, ApiResponse> {
    if raw.len() > MAX_BODY {
        return Err(ApiResponse::fault(
            413,
            format!("request body over {MAX_BODY} bytes"),
        ));
    }
    let path = path.split('?').next().unwrap_or(path);
    let req = match (method, path) {
        ("GET", "/") => ApiRequest::GetInstanceInfo,
        ("GET", "/version") => ApiRequest::GetVersion,
        ("PUT", "/boot-source") => ApiRequest::PutBootSource(body(raw)?),
        ("GET", "/machine-config") => ApiRequest::GetMachineConfig,
        ("PUT", "/machine-config") => ApiRequest::PutMachineConfig(body(raw)?),
        ("PATCH", "/machine-config") => ApiRequest::PatchMachineConfig(body(raw)?),
        ("PUT", "/actions") => ApiRequest::PutAction(body(raw)?),
        ("PATCH", "/vm") => ApiRequest::PatchVm(body(raw)?),
        ("GET", "/vm/config") => ApiRequest::GetVmConfig,
        ("PUT", "/logger") => ApiRequest::PutLogger(body(raw)?),
        ("PUT", "/metrics") => ApiRequest::PutMetrics(body(raw)?),
        ("PUT", "/entropy") => ApiRequest::PutEntropy(body(raw)?),
        ("PUT", "/vsock") => ApiRequest::PutVsock(body(raw)?),
        ("PUT", "/snapshot/create") => ApiRequest::PutSnapshotCreate(body(raw)?),
        ("PUT", "/snapshot/load") => ApiRequest::PutSnapshotLoad(body(raw)?),
        ("GET", "/migration") => ApiRequest::GetMigration,
        ("PUT", "/migration/send") => ApiRequest::PutMigrationSend(body(raw)?),
        ("PUT", "/migration/receive") => ApiRequest::PutMigrationReceive(body(raw)?),
        ("PUT", "/migration/cancel") => ApiRequest::PutMigrationCancel,
        ("PUT", p) if iface_id(p).is_some() => {
            ApiRequest::PutNet(iface_id(p).unwrap_or_default().to_string(), body(raw)?)
        }
        ("PATCH", p) if iface_id(p).is_some() => {
            ApiRequest::PatchNet(iface_id(p).unwrap_or_default().to_string(), body(raw)?)
        }
        ("PUT" | "PATCH", p) if drive_id(p).is_some() => {
            let id = drive_id(p).unwrap_or_default().to_string();
            if method == "PUT" {
                ApiRequest::PutDrive(id, body(raw)?)
            } else {
                ApiRequest::PatchDrive(id, body(raw)?)
            }
        }
        _ => return Err(unrouted(method, path)),
    };
    Ok(req)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::model::{ActionType, VmStateRequest};

    fn fault(r: Result<ApiRequest, ApiResponse>) -> (u16, String) {
        let e = r.unwrap_err();
        (
            e.status,
            e.body.unwrap()["fault_message"]
                .as_str()
                .unwrap()
                .to_string(),
        )
    }

    #[test]
    fn firecracker_requests_parse() {
        assert_eq!(parse("GET", "/", b"").unwrap(), ApiRequest::GetInstanceInfo);
        let b = parse(
            "PUT",
            "/boot-source",
            br#"{"kernel_image_path": "/k", "boot_args": "console=ttyS0"}"#,
        )
        .unwrap();
        assert_eq!(
            b,
            ApiRequest::PutBootSource(BootSource {
                kernel_image_path: "/k".into(),
                boot_args: Some("console=ttyS0".into()),
                initrd_path: None
            })
        );
        let m = parse(
            "PUT",
            "/machine-config",
            br#"{"vcpu_count": 2, "mem_size_mib": 1024}"#,
        )
        .unwrap();
        assert!(
            matches!(m, ApiRequest::PutMachineConfig(c) if c.vcpu_count == 2 && c.mem_size_mib == 1024)
        );
        let a = parse("PUT", "/actions", br#"{"action_type": "InstanceStart"}"#).unwrap();
        assert_eq!(
            a,
            ApiRequest::PutAction(Action {
                action_type: ActionType::InstanceStart
            })
        );
        let v = parse("PATCH", "/vm", br#"{"state": "Paused"}"#).unwrap();
        assert_eq!(
            v,
            ApiRequest::PatchVm(VmPatch {
                state: VmStateRequest::Paused
            })
        );
        let p = parse("PATCH", "/machine-config", br#"{"mem_size_mib": 256}"#).unwrap();
        assert!(
            matches!(p, ApiRequest::PatchMachineConfig(p) if p.mem_size_mib == Some(256) && p.vcpu_count.is_none())
        );
    }

    #[test]
    fn bad_bodies_are_400_with_the_reason() {
        let (s, m) = fault(parse("PUT", "/boot-source", b"{not json"));
        assert_eq!(s, 400);
        assert!(m.starts_with("invalid request body"), "{m}");
        let (s, m) = fault(parse(
            "PUT",
            "/boot-source",
            br#"{"kernel_image_path": "/k", "colour": "red"}"#,
        ));
        assert_eq!(s, 400);
        assert!(m.contains("unknown field `colour`"), "{m}");
        let (_, m) = fault(parse(
            "PUT",
            "/machine-config",
            br#"{"vcpu_count": "2", "mem_size_mib": 1}"#,
        ));
        assert!(m.contains("invalid type"), "{m}");
        let (_, m) = fault(parse("PUT", "/machine-config", br#"{"vcpu_count": 2}"#));
        assert!(m.contains("missing field `mem_size_mib`"), "{m}");
        let (_, m) = fault(parse("PUT", "/actions", br#"{"action_type": "Reboot"}"#));
        assert!(m.contains("unknown variant `Reboot`"), "{m}");
        let (_, m) = fault(parse(
            "PUT",
            "/machine-config",
            br#"{"vcpu_count": 1, "mem_size_mib": 128, "huge_pages": "2M"}"#,
        ));
        assert!(m.contains("huge_pages 2M is not supported yet"), "{m}");
        let (_, m) = fault(parse(
            "PUT",
            "/actions",
            br#"{"action_type": "SendCtrlAltDel"}"#,
        ));
        assert!(m.contains("unknown variant `SendCtrlAltDel`"), "{m}");
        let (_, m) = fault(parse("PUT", "/actions", b""));
        assert!(m.contains("needs a JSON body"), "{m}");
    }

    #[test]
    fn dirty_page_tracking_is_accepted() {
        let put = parse(
            "PUT",
            "/machine-config",
            br#"{"vcpu_count": 1, "mem_size_mib": 128, "track_dirty_pages": true}"#,
        );
        assert!(matches!(put, Ok(ApiRequest::PutMachineConfig(m)) if m.track_dirty_pages));
        let patch = parse(
            "PATCH",
            "/machine-config",
            br#"{"track_dirty_pages": true}"#,
        );
        assert!(
            matches!(patch, Ok(ApiRequest::PatchMachineConfig(p)) if p.track_dirty_pages == Some(true))
        );
    }

    #[test]
    fn paths_and_methods() {
        assert_eq!(fault(parse("GET", "/nope", b"")).0, 404);
        assert_eq!(fault(parse("DELETE", "/machine-config", b"")).0, 405);
        assert_eq!(
            parse("TRACE", "/machine-config", b"")
                .unwrap_err()
                .allow
                .as_deref(),
            Some("GET, PUT, PATCH")
        );
        assert_eq!(fault(parse("POST", "/", b"")).0, 405);
        let (s, m) = fault(parse("PUT", "/balloon", b"{}"));
        assert_eq!(
            (s, m.as_str()),
            (400, "the /balloon resource is not supported yet")
        );
        assert_eq!(fault(parse("GET", "/drives/rootfs", b"")).0, 405);
        assert_eq!(fault(parse("PUT", "/drives/", b"{}")).0, 404);
        let d = parse(
            "PUT",
            "/drives/rootfs",
            br#"{"drive_id": "rootfs", "path_on_host": "/r", "is_root_device": true}"#,
        )
        .unwrap();
        assert!(matches!(d, ApiRequest::PutDrive(id, d) if id == "rootfs" && d.is_root_device));
        assert_eq!(
            fault(parse("PUT", "/cpu-config", b"{}")).1,
            "the /cpu-config resource is not supported yet"
        );
        let (s, m) = fault(parse("PUT", "/snapshot/create", b"{}"));
        assert_eq!(s, 400);
        assert!(m.contains("missing field `snapshot_path`"), "{m}");
        let (_, m) = fault(parse(
            "PUT",
            "/snapshot/load",
            br#"{"snapshot_path": "s", "mem_file_path": "m", "network_overrides": [1]}"#,
        ));
        assert!(m.contains("network_overrides[0] is a number"), "{m}");
        let (_, m) = fault(parse(
            "PUT",
            "/snapshot/load",
            br#"{"snapshot_path": "s", "mem_file_path": "m", "vsock_override": []}"#,
        ));
        assert!(m.contains("vsock_override is a list"), "{m}");
        assert_eq!(fault(parse("PUT", "/snapshot", b"{}")).0, 404);
        assert_eq!(
            fault(parse("PUT", "/logger", &vec![b' '; MAX_BODY + 1])).0,
            413
        );
        assert_eq!(
            parse("GET", "/?x=1", b"").unwrap(),
            ApiRequest::GetInstanceInfo
        );
    }

    #[test]
    fn firecracker_resources_not_served_yet_say_so() {
        for (method, path, name) in [
            ("PUT", "/serial", "/serial"),
            ("PUT", "/pmem/pm0", "/pmem/{id}"),
            ("PATCH", "/pmem/pm0", "/pmem/{id}"),
            ("GET", "/hotplug/memory", "/hotplug/memory"),
            ("PATCH", "/hotplug/memory", "/hotplug/memory"),
            ("GET", "/balloon/statistics", "/balloon/statistics"),
            ("PUT", "/mmds/config", "/mmds/config"),
        ] {
            assert_eq!(
                fault(parse(method, path, b"{}")),
                (400, format!("the {name} resource is not supported yet")),
                "{method} {path}"
            );
        }
        assert_eq!(fault(parse("PUT", "/pmem/", b"{}")).0, 404);
        assert_eq!(fault(parse("PUT", "/hotplug", b"{}")).0, 404);
    }

    #[test]
    fn methods_a_path_does_not_serve_get_405_with_allow() {
        for (method, path, allow) in [
            ("DELETE", "/balloon", "GET, PUT, PATCH"),
            ("GET", "/serial", "PUT"),
            ("DELETE", "/pmem/pm0", "PUT, PATCH"),
            ("POST", "/hotplug/memory", "GET, PUT, PATCH"),
            ("GET", "/snapshot/create", "PUT"),
            ("GET", "/entropy", "PUT"),
            ("DELETE", "/network-interfaces/eth0", "PUT, PATCH"),
            ("PUT", "/", "GET"),
        ] {
            let e = parse(method, path, b"{}").unwrap_err();
            assert_eq!(
                (e.status, e.allow.as_deref()),
                (405, Some(allow)),
                "{method} {path}"
            );
        }
    }

    #[test]
    fn fields_of_the_wrong_type_are_400_naming_the_field() {
        for (path, body, field) in [
            (
                "/entropy",
                r#"{"rate_limiter": null}"#,
                "rate_limiter is null",
            ),
            (
                "/entropy",
                r#"{"rate_limiter": []}"#,
                "rate_limiter is a list",
            ),
            (
                "/entropy",
                r#"{"rate_limiter": [{"size": 1, "refill_time": 1}]}"#,
                "rate_limiter is a list",
            ),
            (
                "/entropy",
                r#"{"rate_limiter": {"bandwidth": null}}"#,
                "rate_limiter.bandwidth is null",
            ),
            ("/logger", r#"{"show_level": null}"#, "show_level is null"),
            ("/logger", r#"{"log_path": null}"#, "log_path is null"),
            (
                "/logger",
                r#"{"level": {"Info": null}}"#,
                "level.Info is null",
            ),
            ("/logger", r#"["/tmp/log", "Info"]"#, "found a list"),
            ("/logger", "null", "found null"),
            ("/entropy", "[]", "found a list"),
        ] {
            let (s, m) = fault(parse("PUT", path, body.as_bytes()));
            assert_eq!(s, 400, "{path} {body}");
            assert!(m.contains(field), "{path} {body}: {m}");
        }
        let (_, m) = fault(parse("PUT", "/logger", br#"{"show_level": "yes"}"#));
        assert!(m.contains("invalid type: string"), "{m}");
        // The same fields with values of their types are fine.
        assert!(parse("PUT", "/entropy", br#"{"rate_limiter": {}}"#).is_ok());
        assert!(
            parse(
                "PUT",
                "/logger",
                br#"{"level": "Info", "show_level": true}"#
            )
            .is_ok()
        );
    }

    #[test]
    fn every_route_parses_with_a_valid_body() {
        let bodies = [
            r#"{"kernel_image_path": "/k"}"#,
            r#"{"vcpu_count": 1, "mem_size_mib": 128}"#,
            r#"{"action_type": "FlushMetrics"}"#,
            r#"{"state": "Resumed"}"#,
            r#"{"level": "Info"}"#,
            r#"{"metrics_path": "/m"}"#,
            r#"{"drive_id": "d", "path_on_host": "/p", "is_root_device": false}"#,
            r#"{"drive_id": "d", "path_on_host": "/p"}"#,
            r#"{"iface_id": "eth0", "host_dev_name": "tap0"}"#,
            r#"{"guest_cid": 3, "uds_path": "/tmp/v.sock"}"#,
            r#"{"iface_id": "eth0"}"#,
            r#"{"snapshot_path": "/s", "mem_file_path": "/m"}"#,
            r#"{"destination": "tcp:h:1"}"#,
            r#"{"listen": "tcp:0.0.0.0:1"}"#,
            r#"{}"#,
        ];
        for (path, method) in ROUTES {
            let ok = bodies
                .iter()
                .any(|b| parse(method, path, b.as_bytes()).is_ok())
                || parse(method, path, b"").is_ok();
            assert!(ok, "{method} {path} accepts none of the sample bodies");
        }
    }
}
