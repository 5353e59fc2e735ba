//! The request bodies of `PUT /snapshot/create` and `PUT /snapshot/load`, as Firecracker
//! describes them, with the checks that need nothing but the body.

use serde::{Deserialize, Serialize};

/// `snapshot_type`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum SnapshotType {
    /// All of guest memory (zero pages as holes).
    #[default]
    Full,
    /// The pages dirtied since the previous snapshot; needs `track_dirty_pages`.
    Diff,
}

/// `PUT /snapshot/create`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnapshotCreateParams {
    /// Full (the default) or Diff.
    #[serde(default)]
    pub snapshot_type: SnapshotType,
    /// Where the VM state goes.
    pub snapshot_path: String,
    /// Where guest memory goes.
    pub mem_file_path: String,
}

/// `mem_backend.backend_type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum MemBackendType {
    /// A memory file, mapped privately.
    File,
    /// A userfaultfd page-fault handler (not supported).
    Uffd,
}

/// `mem_backend`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemBackend {
    /// File or Uffd.
    pub backend_type: MemBackendType,
    /// The memory file (or, for Uffd, the handler's socket).
    pub backend_path: String,
}

/// One of `network_overrides`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkOverride {
    /// The interface, as it was configured.
    pub iface_id: String,
    /// The tap that backs it after the load.
    pub host_dev_name: String,
}

/// `vsock_override`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VsockOverride {
    /// The host socket path after the load.
    pub uds_path: String,
}

/// `PUT /snapshot/load`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnapshotLoadParams {
    /// The VM state file.
    pub snapshot_path: String,
    /// The memory backend.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mem_backend: Option<MemBackend>,
    /// The old spelling of a File backend.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mem_file_path: Option<String>,
    /// Log dirty pages after the load, for Diff snapshots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub track_dirty_pages: Option<bool>,
    /// The old name of `track_dirty_pages`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enable_diff_snapshots: Option<bool>,
    /// Resume the guest once loaded (otherwise it stays paused).
    #[serde(default)]
    pub resume_vm: bool,
    /// Taps that replace the saved ones.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network_overrides: Option<Vec<NetworkOverride>>,
    /// A vsock socket path that replaces the saved one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vsock_override: Option<VsockOverride>,
    /// Advance the guest's counters by the wall-clock time since the snapshot.
    #[serde(default)]
    pub clock_realtime: bool,
    /// Huge pages of the restored memory: only None, the snapshot's own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub huge_pages: Option<crate::api::model::HugePages>,
}

/// A load request with its alternatives settled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadRequest {
    /// The VM state file.
    pub snapshot_path: String,
    /// The memory file.
    pub mem_file_path: String,
    /// Whether to log dirty pages.
    pub track_dirty_pages: bool,
    /// Whether to resume at once.
    pub resume_vm: bool,
    /// Tap overrides, by interface.
    pub network_overrides: Vec<NetworkOverride>,
    /// The vsock socket override.
    pub vsock_uds_path: Option<String>,
    /// Whether to advance the counters by the elapsed wall-clock time.
    pub clock_realtime: bool,
}

impl SnapshotLoadParams {
    /// Settles the alternatives: one memory file (`mem_backend` File or `mem_file_path`),
    /// the dirty-tracking flag under either name, the huge-pages choice.
    pub fn settle(self) -> Result<LoadRequest, String> {
        if self.snapshot_path.is_empty() {
            return Err("snapshot_path is empty".into());
        }
        let mem_file_path = match (self.mem_backend, self.mem_file_path) {
            (Some(_), Some(_)) => {
                return Err(
                    "give either mem_backend or mem_file_path (the old spelling), not both".into(),
                );
            }
            (None, None) => return Err("the load needs mem_backend (or mem_file_path)".into()),
            (None, Some(p)) => p,
            (Some(b), None) => match b.backend_type {
                MemBackendType::File => b.backend_path,
                MemBackendType::Uffd => {
                    return Err(
                        "mem_backend Uffd is not supported yet: use backend_type File".into(),
                    );
                }
            },
        };
        if mem_file_path.is_empty() {
            return Err("the memory file path is empty".into());
        }
        let track_dirty_pages = match (self.track_dirty_pages, self.enable_diff_snapshots) {
            (Some(a), Some(b)) if a != b => {
                return Err(
                    "track_dirty_pages and enable_diff_snapshots (its old name) disagree".into(),
                );
            }
            (a, b) => a.or(b).unwrap_or(false),
        };
        let network_overrides = self.network_overrides.unwrap_or_default();
        for (i, o) in network_overrides.iter().enumerate() {
            if network_overrides[..i]
                .iter()
                .any(|p| p.iface_id == o.iface_id)
            {
                return Err(format!(
                    "network_overrides names iface_id '{}' twice",
                    o.iface_id
                ));
            }
        }
        Ok(LoadRequest {
            snapshot_path: self.snapshot_path,
            mem_file_path,
            track_dirty_pages,
            resume_vm: self.resume_vm,
            network_overrides,
            vsock_uds_path: self.vsock_override.map(|v| v.uds_path),
            clock_realtime: self.clock_realtime,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(json: &str) -> Result<LoadRequest, String> {
        serde_json::from_str::<SnapshotLoadParams>(json)
            .map_err(|e| e.to_string())?
            .settle()
    }

    #[test]
    fn firecracker_load_bodies_settle() {
        let r = load(
            r#"{"snapshot_path": "s", "mem_backend": {"backend_type": "File", "backend_path": "m"},
                "enable_diff_snapshots": true, "resume_vm": true,
                "network_overrides": [{"iface_id": "eth0", "host_dev_name": "tap9"}],
                "vsock_override": {"uds_path": "/v.sock"}}"#,
        )
        .unwrap();
        assert_eq!(r.mem_file_path, "m");
        assert!(r.track_dirty_pages && r.resume_vm && !r.clock_realtime);
        assert_eq!(r.network_overrides[0].host_dev_name, "tap9");
        assert_eq!(r.vsock_uds_path.as_deref(), Some("/v.sock"));
        let old = load(r#"{"snapshot_path": "s", "mem_file_path": "m"}"#).unwrap();
        assert_eq!(old.mem_file_path, "m");
        assert!(!old.resume_vm && !old.track_dirty_pages);
    }

    #[test]
    fn bad_load_bodies_name_the_problem() {
        for (body, want) in [
            (r#"{"snapshot_path": "s"}"#, "needs mem_backend"),
            (
                r#"{"snapshot_path": "s", "mem_file_path": "m", "mem_backend": {"backend_type": "File", "backend_path": "m"}}"#,
                "not both",
            ),
            (
                r#"{"snapshot_path": "s", "mem_backend": {"backend_type": "Uffd", "backend_path": "/u.sock"}}"#,
                "Uffd is not supported yet",
            ),
            (
                r#"{"snapshot_path": "s", "mem_file_path": "m", "track_dirty_pages": true, "enable_diff_snapshots": false}"#,
                "disagree",
            ),
            (
                r#"{"snapshot_path": "s", "mem_file_path": "m", "huge_pages": "2M"}"#,
                "huge_pages 2M",
            ),
            (
                r#"{"snapshot_path": "s", "mem_file_path": "m", "network_overrides": [{"iface_id": "a", "host_dev_name": "t1"}, {"iface_id": "a", "host_dev_name": "t2"}]}"#,
                "twice",
            ),
            (
                r#"{"snapshot_path": "s", "mem_file_path": "m", "x": 1}"#,
                "unknown field",
            ),
        ] {
            let e = load(body).unwrap_err();
            assert!(e.contains(want), "{body}: {e}");
        }
    }

    #[test]
    fn create_bodies_default_to_full() {
        let p: SnapshotCreateParams =
            serde_json::from_str(r#"{"snapshot_path": "s", "mem_file_path": "m"}"#).unwrap();
        assert_eq!(p.snapshot_type, SnapshotType::Full);
        let p: SnapshotCreateParams = serde_json::from_str(
            r#"{"snapshot_type": "Diff", "snapshot_path": "s", "mem_file_path": "m"}"#,
        )
        .unwrap();
        assert_eq!(p.snapshot_type, SnapshotType::Diff);
        assert!(
            serde_json::from_str::<SnapshotCreateParams>(
                r#"{"snapshot_type": "Partial", "snapshot_path": "s", "mem_file_path": "m"}"#
            )
            .is_err()
        );
    }
}
