//! The request bodies of `PUT /migration/send` and `PUT /migration/receive`, the answer of
//! `GET /migration`, and the checks that need nothing but the body. Portable.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::snapshot::{NetworkOverride, VsockOverride};

/// The default longest pause of the guest at the switchover.
pub const DEFAULT_DOWNTIME_MS: u64 = 300;
/// The default time an attempt may take to converge.
pub const DEFAULT_TIMEOUT_S: u64 = 3600;

fn default_downtime() -> u64 {
    DEFAULT_DOWNTIME_MS
}

fn default_timeout() -> u64 {
    DEFAULT_TIMEOUT_S
}

fn yes() -> bool {
    true
}

/// `PUT /migration/send`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SendParams {
    /// Where the destination listens: `tcp:HOST:PORT`.
    pub destination: String,
    /// The longest pause the guest may see at the switchover, in milliseconds.
    #[serde(default = "default_downtime")]
    pub downtime_ms: u64,
    /// Page bytes per second at most, in MiB; 0 for no cap.
    #[serde(default)]
    pub max_bandwidth_mib: u64,
    /// Throttle the vCPUs when the guest dirties memory faster than the link carries it.
    #[serde(default = "yes")]
    pub auto_converge: bool,
    /// Give up (the guest keeps running here) after this many seconds without converging.
    #[serde(default = "default_timeout")]
    pub timeout_s: u64,
}

/// A checked `PUT /migration/send`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SendRequest {
    /// `HOST:PORT`, for `ToSocketAddrs`.
    pub address: String,
    /// What the user wrote.
    pub destination: String,
    /// The engine's parameters.
    pub params: migration::engine::Params,
}

impl SendParams {
    /// Checks the body: the address, and that the numbers can be met.
    pub fn settle(&self) -> Result<SendRequest, String> {
        let address = tcp_address("destination", &self.destination)?;
        if self.downtime_ms == 0 {
            return Err("downtime_ms must be more than 0".into());
        }
        if self.timeout_s == 0 {
            return Err("timeout_s must be more than 0".into());
        }
        let max_bandwidth = match self.max_bandwidth_mib {
            0 => None,
            mib => Some(
                mib.checked_mul(1 << 20)
                    .ok_or("max_bandwidth_mib is too large")?,
            ),
        };
        let params = migration::engine::Params {
            downtime: Duration::from_millis(self.downtime_ms),
            max_bandwidth,
            auto_converge: self.auto_converge,
            timeout: Duration::from_secs(self.timeout_s),
            ..migration::engine::Params::default()
        };
        params
            .check(migration::engine::PAGE_SIZE)
            .map_err(|e| e.to_string())?;
        Ok(SendRequest {
            address,
            destination: self.destination.clone(),
            params,
        })
    }
}

/// One of `drive_overrides`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DriveOverride {
    /// The drive, as it was configured.
    pub drive_id: String,
    /// The backing file on this host.
    pub path_on_host: String,
}

/// `PUT /migration/receive`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReceiveParams {
    /// Where to listen for the source: `tcp:ADDR:PORT`.
    pub listen: String,
    /// Taps that replace the source's.
    #[serde(default)]
    pub network_overrides: Vec<NetworkOverride>,
    /// A vsock socket path that replaces the source's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vsock_override: Option<VsockOverride>,
    /// Backing files that replace the source's.
    #[serde(default)]
    pub drive_overrides: Vec<DriveOverride>,
}

/// A checked `PUT /migration/receive`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceiveRequest {
    /// `ADDR:PORT` to bind.
    pub address: String,
    /// Taps by interface id.
    pub net: Vec<NetworkOverride>,
    /// The vsock socket.
    pub vsock_uds_path: Option<String>,
    /// Backing files by drive id.
    pub drives: Vec<(String, String)>,
}

impl ReceiveParams {
    /// Checks the body.
    pub fn settle(&self) -> Result<ReceiveRequest, String> {
        let address = tcp_address("listen", &self.listen)?;
        for o in &self.network_overrides {
            if o.iface_id.is_empty() || o.host_dev_name.is_empty() {
                return Err("a network override needs iface_id and host_dev_name".into());
            }
        }
        for d in &self.drive_overrides {
            if d.drive_id.is_empty() || d.path_on_host.is_empty() {
                return Err("a drive override needs drive_id and path_on_host".into());
            }
        }
        if self
            .vsock_override
            .as_ref()
            .is_some_and(|v| v.uds_path.is_empty())
        {
            return Err("vsock_override.uds_path is empty".into());
        }
        Ok(ReceiveRequest {
            address,
            net: self.network_overrides.clone(),
            vsock_uds_path: self.vsock_override.as_ref().map(|v| v.uds_path.clone()),
            drives: self
                .drive_overrides
                .iter()
                .map(|d| (d.drive_id.clone(), d.path_on_host.clone()))
                .collect(),
        })
    }
}

/// `tcp:HOST:PORT` to `HOST:PORT`, naming the field when it is not one.
pub fn tcp_address(field: &str, s: &str) -> Result<String, String> {
    let bad = |why: &str| format!("{field} '{s}' is not tcp:HOST:PORT: {why}");
    let rest = s
        .strip_prefix("tcp:")
        .ok_or_else(|| bad("it must start with tcp:"))?;
    let (host, port) = rest
        .rsplit_once(':')
        .ok_or_else(|| bad("the port is missing"))?;
    if host.is_empty() {
        return Err(bad("the host is missing"));
    }
    let port: u16 = port
        .parse()
        .map_err(|_| bad("the port is not a number from 1 to 65535"))?;
    if port == 0 && field != "listen" {
        return Err(bad("port 0"));
    }
    Ok(format!("{host}:{port}"))
}

/// Which end of a migration this process is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// It sends its guest.
    Source,
    /// It receives one.
    Destination,
}

/// Where a migration is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MigrationState {
    /// Connecting, the handshake and the pre-flight checks (on a destination: waiting for
    /// the source too).
    Setup,
    /// Rounds of pages while the guest runs.
    Precopy,
    /// The guest is paused: the last pages and the device state move.
    Switchover,
    /// The destination runs the guest.
    Completed,
    /// It ended with an error; a source runs its guest as before.
    Failed,
    /// It was cancelled; a source runs its guest as before.
    Cancelled,
}

impl MigrationState {
    /// Whether the migration is still going.
    pub fn is_active(self) -> bool {
        matches!(self, Self::Setup | Self::Precopy | Self::Switchover)
    }

    /// Its name, as in JSON.
    pub fn name(self) -> &'static str {
        match self {
            Self::Setup => "setup",
            Self::Precopy => "precopy",
            Self::Switchover => "switchover",
            Self::Completed => "completed",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
        }
    }
}

impl From<migration::engine::MigrationState> for MigrationState {
    fn from(s: migration::engine::MigrationState) -> Self {
        use migration::engine::MigrationState as E;
        match s {
            E::Setup => Self::Setup,
            E::Precopy => Self::Precopy,
            E::Switchover => Self::Switchover,
            E::Completed => Self::Completed,
            E::Failed => Self::Failed,
            E::Cancelled => Self::Cancelled,
        }
    }
}

/// `GET /migration`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MigrationInfo {
    /// Source or destination.
    pub role: Role,
    /// Where it is.
    pub state: MigrationState,
    /// The other end: the destination as given, or the source's address.
    pub peer: String,
    /// The round being sent or just ended (1 is the full pass).
    pub round: u32,
    /// Guest page bytes sent (received, on a destination), zero pages not counted.
    pub bytes_sent: u64,
    /// Dirty bytes not yet sent.
    pub bytes_remaining: u64,
    /// Pages sent (received), zero pages included.
    pub pages: u64,
    /// Of them, zero pages (a marker on the wire).
    pub zero_pages: u64,
    /// The bandwidth of the last round, bytes per second.
    pub bandwidth_bytes_per_s: Option<u64>,
    /// How fast the guest dirties memory, bytes per second.
    pub dirty_rate_bytes_per_s: Option<u64>,
    /// The vCPU throttle of auto-converge, percent.
    pub throttle_percent: u8,
    /// What the pause would last if it started now, in milliseconds.
    pub expected_downtime_ms: Option<f64>,
    /// The pause the guest saw, in milliseconds: on a source, from the pause to the
    /// destination's confirmation that it runs the guest; on a destination, from the final
    /// state's arrival to the resume.
    pub downtime_ms: Option<f64>,
    /// Milliseconds since the migration began (its total time once it has ended).
    pub total_time_ms: f64,
    /// Why it failed.
    pub error: Option<String>,
    /// Whether it passed the commit point: from then on the destination owns the guest.
    pub committed: bool,
}

impl MigrationInfo {
    /// A migration that has just begun.
    pub fn new(role: Role, peer: String) -> Self {
        Self {
            role,
            state: MigrationState::Setup,
            peer,
            round: 0,
            bytes_sent: 0,
            bytes_remaining: 0,
            pages: 0,
            zero_pages: 0,
            bandwidth_bytes_per_s: None,
            dirty_rate_bytes_per_s: None,
            throttle_percent: 0,
            expected_downtime_ms: None,
            downtime_ms: None,
            total_time_ms: 0.0,
            error: None,
            committed: false,
        }
    }

    /// Takes in the engine's report.
    pub fn update(&mut self, p: &migration::engine::Progress) {
        self.state = p.state.into();
        self.round = p.round;
        self.bytes_sent = p.bytes_sent;
        self.bytes_remaining = p.bytes_remaining;
        self.pages = p.pages_sent;
        self.zero_pages = p.zero_pages_sent;
        self.bandwidth_bytes_per_s = p.round_bandwidth.or(p.overall_bandwidth);
        self.dirty_rate_bytes_per_s = p.dirty_rate;
        self.throttle_percent = p.throttle_percent;
        self.expected_downtime_ms = p.expected_downtime.map(|d| d.as_secs_f64() * 1e3);
        self.total_time_ms = p.elapsed.as_secs_f64() * 1e3;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_tcp_host_port() {
        assert_eq!(
            tcp_address("destination", "tcp:10.0.0.2:6000").unwrap(),
            "10.0.0.2:6000"
        );
        assert_eq!(
            tcp_address("destination", "tcp:[::1]:6000").unwrap(),
            "[::1]:6000"
        );
        assert_eq!(tcp_address("listen", "tcp:0.0.0.0:0").unwrap(), "0.0.0.0:0");
        for (bad, why) in [
            ("10.0.0.2:6000", "start with tcp:"),
            ("tcp:10.0.0.2", "port is missing"),
            ("tcp::6000", "host is missing"),
            ("tcp:h:70000", "not a number"),
            ("tcp:h:0", "port 0"),
        ] {
            let e = tcp_address("destination", bad).unwrap_err();
            assert!(e.contains(why) && e.contains(bad), "{bad}: {e}");
        }
    }

    #[test]
    fn send_bodies_take_defaults_and_refuse_what_cannot_be_met() {
        let p: SendParams = serde_json::from_str(r#"{"destination": "tcp:h:1"}"#).unwrap();
        let r = p.settle().unwrap();
        assert_eq!(r.address, "h:1");
        assert_eq!(r.params.downtime, Duration::from_millis(300));
        assert_eq!(r.params.max_bandwidth, None);
        assert!(r.params.auto_converge);
        assert_eq!(r.params.timeout, Duration::from_secs(3600));
        let p: SendParams = serde_json::from_str(
            r#"{"destination": "tcp:h:1", "downtime_ms": 50, "max_bandwidth_mib": 100, "auto_converge": false, "timeout_s": 9}"#,
        )
        .unwrap();
        let r = p.settle().unwrap();
        assert_eq!(r.params.max_bandwidth, Some(100 << 20));
        assert!(!r.params.auto_converge);
        for (body, why) in [
            (
                r#"{"destination": "tcp:h:1", "downtime_ms": 0}"#,
                "downtime_ms",
            ),
            (r#"{"destination": "tcp:h:1", "timeout_s": 0}"#, "timeout_s"),
            (
                r#"{"destination": "tcp:h:1", "max_bandwidth_mib": 18446744073709551615}"#,
                "too large",
            ),
            (r#"{"destination": "h:1"}"#, "tcp:"),
        ] {
            let p: SendParams = serde_json::from_str(body).unwrap();
            let e = p.settle().unwrap_err();
            assert!(e.contains(why), "{body}: {e}");
        }
        assert!(
            serde_json::from_str::<SendParams>(r#"{"destination": "tcp:h:1", "x": 1}"#).is_err()
        );
    }

    #[test]
    fn receive_bodies_carry_the_overrides() {
        let p: ReceiveParams = serde_json::from_str(
            r#"{"listen": "tcp:0.0.0.0:6000", "network_overrides": [{"iface_id": "eth0", "host_dev_name": "tap9"}],
                "vsock_override": {"uds_path": "/tmp/v.sock"}, "drive_overrides": [{"drive_id": "root", "path_on_host": "/img"}]}"#,
        )
        .unwrap();
        let r = p.settle().unwrap();
        assert_eq!(r.address, "0.0.0.0:6000");
        assert_eq!(r.net[0].host_dev_name, "tap9");
        assert_eq!(r.vsock_uds_path.as_deref(), Some("/tmp/v.sock"));
        assert_eq!(r.drives, vec![("root".to_string(), "/img".to_string())]);
        let p: ReceiveParams =
            serde_json::from_str(r#"{"listen": "tcp:0.0.0.0:6000", "drive_overrides": [{"drive_id": "", "path_on_host": "/img"}]}"#)
                .unwrap();
        assert!(p.settle().unwrap_err().contains("drive_id"));
    }

    #[test]
    fn the_engine_report_fills_the_status() {
        let mut i = MigrationInfo::new(Role::Source, "tcp:h:1".into());
        let p = migration::engine::Progress {
            state: migration::engine::MigrationState::Precopy,
            round: 2,
            bytes_sent: 10,
            pages_sent: 5,
            zero_pages_sent: 3,
            bytes_remaining: 4096,
            round_bandwidth: None,
            overall_bandwidth: Some(1000),
            dirty_rate: Some(7),
            throttle_percent: 30,
            expected_downtime: Some(Duration::from_millis(12)),
            elapsed: Duration::from_millis(1500),
        };
        i.update(&p);
        assert_eq!(i.state, MigrationState::Precopy);
        assert_eq!((i.round, i.pages, i.zero_pages), (2, 5, 3));
        assert_eq!(i.bandwidth_bytes_per_s, Some(1000));
        assert_eq!(i.throttle_percent, 30);
        assert_eq!(i.expected_downtime_ms, Some(12.0));
        assert_eq!(i.total_time_ms, 1500.0);
        let json = serde_json::to_value(&i).unwrap();
        assert_eq!(json["state"], "precopy");
        assert_eq!(json["role"], "source");
    }
}
