//! The emulated layer's checks with linked emulated hosts (docs/testing.md, "Two linked
//! hosts"), each reported on its own `NAME: ok|FAILED` line:
//!
//! 1. Between two hosts of the same CPU model and counter (neoverse-n1): a snapshot moves,
//!    then a guest live-migrates there and back. For the snapshot, host a boots a guest that
//!    counts on its console, pauses it, snapshots it, and sends the state and memory files
//!    over the link; host b checks their sha256, loads them and sees the guest carry on from
//!    its count and answer on its console. For live migration, host a boots the counting
//!    guest (with the guest rootfs image attached read-only: the same path on both hosts),
//!    `vmm send`s it to `vmm receive` on b, where it counts on, and b sends it back to a,
//!    where it counts on and answers on its console.
//! 2. The link check, on three hosts sharing one segment through a [`Hub`]: a neoverse-v1 host
//!    with the source's counter frequency (only the CPU model differs, so refusals must name
//!    ID-register fields), a neoverse-n1 host with a 1 GHz counter (only the frequency
//!    differs, so they must name both frequencies), and a neoverse-n1 host like those of
//!    run 1. The first two refuse the snapshot of run 1: its state file comes from run 1
//!    through host b's console and this process (it is a few KiB); the memory file is a
//!    sparse file of the guest's size, since the host is checked before guest memory is used.
//!    Then the third host's running guest is `vmm send`t to a `vmm receive` on each: both
//!    refuse it in the pre-flight, naming the difference, and it runs on where it was.
//!
//! The in-host sides are `resources/snapshot-pair.sh` and `resources/migration-pair.sh`.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use sha2::{Digest, Sha256};

use crate::artifacts::Artifacts;
use crate::layers::{PAIR_ADDRS, Tally, pair_specs};
use crate::qemu::{self, HostSpec, Hub, Link, Payload};

/// Where the snapshot script is placed inside each host.
const SCRIPT: &str = "/xt/snapshot-pair.sh";
/// Where the live migration script is placed inside each host.
const MIG_SCRIPT: &str = "/xt/migration-pair.sh";
/// The address of the third host of run 2 (the first two have [`PAIR_ADDRS`]).
const SOURCE_ADDR: &str = "10.99.0.3";
/// Prefix of the line in which a host's command reports one part's exit status:
/// `pair-check: NAME STATUS`.
const PART_TAG: &str = "pair-check: ";
/// Where the carried state file is placed inside each host of the second run.
const CARRIED_STATE: &str = "/xt/snap/vm.state";
/// The counter frequency of QEMU's neoverse-n1 and neoverse-v1 when none is given.
const DEFAULT_HZ: u64 = 62_500_000;
/// The other counter frequency of the second run.
const OTHER_HZ: u64 = 1_000_000_000;
/// Memory of each emulated host, in MiB: the guest has 128 MiB, and its memory file lives in
/// the host's tmpfs (twice on the receiving host while it loads: the file and its page cache
/// are one, but the guest's own writes are private copies).
const HOST_MIB: u32 = 1024;

/// Prefix of the lines in which host b of the first run prints the state file it received.
const HEX_TAG: &str = "snap-restore: state-hex: ";
const SHA_TAG: &str = "snap-restore: state-sha256: ";

/// Runs both runs' checks; `vmm` is the cross-built binary placed in each host.
pub fn run(art: &Artifacts, vmm: &Path, timeout: Duration) -> Tally {
    let mut t = Tally::default();
    let started = Instant::now();
    let (restored, migrated, carried) = match same_model(art, vmm, timeout) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("xtask: same-model pair failed: {e:#}");
            (false, false, None)
        }
    };
    eprintln!(
        "xtask: the same-model run took {} s",
        started.elapsed().as_secs()
    );
    line(
        "snapshot restored in a second host of the same CPU model",
        restored,
    );
    line(
        "a guest live-migrates from host a to host b and back",
        migrated,
    );
    t.check(restored);
    t.check(migrated);
    if carried.is_none() {
        println!(
            "no state file came out of the same-model run: the snapshot refusals below cannot be checked"
        );
    }
    let started = Instant::now();
    let checks = match other_hosts(art, vmm, timeout, carried.as_ref()) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("xtask: the run of hosts that differ failed: {e:#}");
            [false; 5]
        }
    };
    eprintln!(
        "xtask: the run of hosts that differ took {} s",
        started.elapsed().as_secs()
    );
    let names = [
        "two-host link check",
        "snapshot refused in a host of another CPU model",
        "snapshot refused in a host with another counter frequency",
        "live migration refused by a host of another CPU model",
        "live migration refused by a host with another counter frequency",
    ];
    for (name, ok) in names.into_iter().zip(checks) {
        line(name, ok);
        t.check(ok);
    }
    t
}

/// The exit status of each part each host reported, from `pair-check: NAME STATUS` lines.
#[derive(Default)]
struct Parts(Mutex<Vec<(String, String, i32)>>);

impl Parts {
    /// Takes the line if it is a part's report.
    fn see(&self, host: &str, l: &str) {
        let Some((name, rc)) = l.strip_prefix(PART_TAG).and_then(|r| r.split_once(' ')) else {
            return;
        };
        if let (Ok(rc), Ok(mut v)) = (rc.trim().parse(), self.0.lock()) {
            v.push((host.to_string(), name.to_string(), rc));
        }
    }

    /// Whether each of `hosts` reported `part` and with status 0.
    fn passed(&self, part: &str, hosts: &[&str]) -> bool {
        let Ok(v) = self.0.lock() else { return false };
        hosts.iter().all(|h| {
            v.iter().any(|(host, name, _)| host == h && name == part)
                && v.iter()
                    .filter(|(host, name, _)| host == h && name == part)
                    .all(|(_, _, rc)| *rc == 0)
        })
    }
}

/// A command that runs `script` with `vars` and reports its status as part `part`.
fn as_part(vars: &str, script: &str, part: &str) -> String {
    format!("{vars} bash {script}\necho \"{PART_TAG}{part} $?\"\n")
}

fn line(what: &str, ok: bool) {
    println!("{what}: {}", if ok { "ok" } else { "FAILED" });
}

fn payload(vmm: &Path) -> Payload {
    Payload {
        files: vec![
            ("usr/local/bin/vmm".into(), vmm.to_path_buf(), 0o755),
            (
                SCRIPT.trim_start_matches('/').into(),
                crate::workspace_root().join("resources/snapshot-pair.sh"),
                0o755,
            ),
            (
                MIG_SCRIPT.trim_start_matches('/').into(),
                crate::workspace_root().join("resources/migration-pair.sh"),
                0o755,
            ),
        ],
        ..Default::default()
    }
}

/// A state file carried out of the first run, with the sha256 host b computed.
#[derive(Debug)]
struct Carried {
    file: PathBuf,
    sha256: String,
}

/// The first run. Returns whether the snapshot restored, whether the guest live-migrated
/// there and back, and the state file host b received.
fn same_model(
    art: &Artifacts,
    vmm: &Path,
    timeout: Duration,
) -> Result<(bool, bool, Option<Carried>)> {
    let (pa, pb) = qemu::free_udp_ports()?;
    let n1 = ("neoverse-n1", None);
    let (a, b) = pair_specs(n1, n1, 1, HOST_MIB, false, timeout, pa, pb);
    let hex = Mutex::new(Vec::<String>::new());
    let sha = Mutex::new(None::<String>);
    let parts = Parts::default();
    let watch = |host: &str, l: &str| {
        parts.see(host, l);
        if host != "b" {
            return true;
        }
        if let Some(h) = l.strip_prefix(HEX_TAG) {
            if let Ok(mut v) = hex.lock() {
                v.push(h.to_string());
            }
            return false;
        }
        if let (Some(s), Ok(mut slot)) = (l.strip_prefix(SHA_TAG), sha.lock()) {
            *slot = Some(s.trim().to_string());
        }
        true
    };
    // The snapshot first, then (its files gone from the hosts' memory) the live migration.
    let scripts = [
        format!(
            "{}rm -rf /tmp/snap\n{}",
            as_part("ROLE=source", SCRIPT, "snapshot"),
            as_part("ROLE=trip-a", MIG_SCRIPT, "migration")
        ),
        format!(
            "{}rm -rf /tmp/snap\n{}",
            as_part("ROLE=restore", SCRIPT, "snapshot"),
            as_part("ROLE=trip-b", MIG_SCRIPT, "migration")
        ),
    ];
    let [ra, rb] = qemu::run_pair_watched(
        &[a, b],
        art,
        &payload(vmm),
        [&scripts[0], &scripts[1]],
        &watch,
    )?;
    for r in [ra, rb] {
        if let Err(e) = r {
            println!("{e:#}");
        }
    }
    let restored = parts.passed("snapshot", &["a", "b"]);
    let migrated = parts.passed("migration", &["a", "b"]);
    let hex = hex.into_inner().unwrap_or_default();
    let carried = match sha.into_inner().ok().flatten() {
        Some(sha256) => match decode_state(&hex, &sha256) {
            Ok(bytes) => {
                let file = qemu::run_dir()?.join(format!("snap-{}.state", std::process::id()));
                std::fs::write(&file, bytes)
                    .with_context(|| format!("cannot write {}", file.display()))?;
                Some(Carried { file, sha256 })
            }
            Err(e) => {
                println!("the state file printed by host b is unusable: {e:#}");
                None
            }
        },
        None => None,
    };
    Ok((restored, migrated, carried))
}

/// The bytes of `od -An -v -tx1` lines with the spaces removed, checked against their sha256.
fn decode_state(lines: &[String], sha256: &str) -> Result<Vec<u8>> {
    let hex: String = lines.concat();
    if hex.is_empty() || hex.len() % 2 != 0 {
        bail!("{} hex digits is not a whole number of bytes", hex.len());
    }
    let bytes = (0..hex.len())
        .step_by(2)
        .map(|i| {
            hex.get(i..i + 2)
                .and_then(|d| u8::from_str_radix(d, 16).ok())
                .with_context(|| format!("not a hex byte at digit {i}"))
        })
        .collect::<Result<Vec<u8>>>()?;
    let got: String = Sha256::digest(&bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    if got != sha256 {
        bail!("its sha256 is {got}, host b computed {sha256}");
    }
    Ok(bytes)
}

/// Specs of hosts sharing one segment through `hub`, each as (name, CPU model, counter
/// frequency, its address, the address it sees as `PEER_ADDR`), sending from `ports`.
fn lan_specs(
    hosts: &[(&str, &str, Option<u64>, &str, &str)],
    ports: &[u16],
    hub: &Hub,
    timeout: Duration,
) -> Vec<HostSpec> {
    hosts
        .iter()
        .zip(ports)
        .enumerate()
        .map(|(i, (&(name, cpu, cntfrq, me, peer), &port))| HostSpec {
            name: name.into(),
            cpu: cpu.into(),
            cntfrq,
            smp: 1,
            mem_mib: HOST_MIB,
            icount: false,
            timeout,
            forwards: Vec::new(),
            link: Some(Link {
                local_port: port,
                remote_port: hub.port(),
                mac: format!("52:54:00:76:6d:{:02x}", 0x0a + i),
                self_addr: me.into(),
                peer_addr: peer.into(),
            }),
        })
        .collect()
}

/// The second run: hosts a (neoverse-v1) and b (neoverse-n1 with a 1 GHz counter) see their
/// own CPU and reach each other over the link, and (with a carried state file) each refuses
/// it; then each refuses the live guest of host c (neoverse-n1, like the hosts of run 1).
/// Returns [link, snapshot refused for the model, for the frequency, live migration refused
/// for the model, for the frequency].
fn other_hosts(
    art: &Artifacts,
    vmm: &Path,
    timeout: Duration,
    carried: Option<&Carried>,
) -> Result<[bool; 5]> {
    let ports = qemu::free_udp_port_list(3)?;
    let hub = Hub::start(ports.clone())?;
    let (addr_a, addr_b) = (PAIR_ADDRS[0], PAIR_ADDRS[1]);
    let specs = lan_specs(
        &[
            ("a", "neoverse-v1", None, addr_a, addr_b),
            ("b", "neoverse-n1", Some(OTHER_HZ), addr_b, addr_a),
            ("c", "neoverse-n1", None, SOURCE_ADDR, addr_a),
        ],
        &ports,
        &hub,
        timeout,
    );
    let mut payload = payload(vmm);
    if let Some(c) = carried {
        payload.files.push((
            CARRIED_STATE.trim_start_matches('/').into(),
            c.file.clone(),
            0o644,
        ));
        payload.env.extend([
            ("SNAP_STATE".to_string(), CARRIED_STATE.to_string()),
            ("SNAP_STATE_SHA256".to_string(), c.sha256.clone()),
        ]);
    }
    payload.env.extend([
        ("MIG_FREQ_DEST".to_string(), OTHER_HZ.to_string()),
        ("MIG_FREQ_SOURCE".to_string(), DEFAULT_HZ.to_string()),
    ]);
    // Hosts a and b first refuse the snapshot (its verdict is its own `ok` line), then the
    // live guest of c (their `vmm receive` waits for it), then check their own CPU and
    // counter, wait for the link, and exchange a message over TCP; the listener waits for
    // the sender, so neither powers off early.
    let check = |refusal: &str, expect: &str, part: &str, mhz: &str, exchange: &str| {
        let refusal = if carried.is_some() {
            format!("{refusal} bash {SCRIPT}\n")
        } else {
            String::new()
        };
        let migration = format!(
            "ROLE=refuse-dest MIG_EXPECT={expect} PEER_ADDR={SOURCE_ADDR} bash {MIG_SCRIPT}\n"
        );
        format!(
            "{refusal}{migration}set -e\ngrep -q 'CPU part.*: {part}' /proc/cpuinfo\n\
             dmesg | grep -q 'arch_timer.*running at {mhz}MHz'\n\
             for i in $(seq 120); do ping -c 1 -W 1 \"$PEER_ADDR\" >/dev/null && break; done\n\
             ping -c 1 -W 5 \"$PEER_ADDR\" >/dev/null\n{exchange}\n\
             echo \"$(hostname): cpu {part}, {mhz} MHz, link to $PEER_ADDR ok\"\n"
        )
    };
    let listen =
        "got=$(timeout 300 socat -u TCP-LISTEN:7000,reuseaddr -)\n[ \"$got\" = \"hello from b\" ]";
    let send = "for i in $(seq 300); do echo 'hello from b' | socat -u - TCP:$PEER_ADDR:7000 2>/dev/null && break; sleep 1; done\n[ $i -lt 300 ]";
    let scripts = [
        check("ROLE=refuse-model", "model", "0xd40", "62.50", listen),
        check(
            &format!(
                "ROLE=refuse-frequency SNAP_FREQ_HERE={OTHER_HZ} SNAP_FREQ_SAVED={DEFAULT_HZ}"
            ),
            "frequency",
            "0xd0c",
            "1000.00",
            send,
        ),
        format!("ROLE=refuse-source MODEL_ADDR={addr_a} FREQ_ADDR={addr_b} bash {MIG_SCRIPT}\n"),
    ];
    // Each check is done when every host it needs printed its `ok` line.
    const OK_LINES: [&str; 6] = [
        "snap-refuse-model: ok:",
        "snap-refuse-frequency: ok:",
        "mig-refuse-dest: ok: refused the guest of another model",
        "mig-refuse-source: ok: refused by the host of another model",
        "mig-refuse-dest: ok: refused the guest of another frequency",
        "mig-refuse-source: ok: refused by the host of another frequency",
    ];
    let seen = Mutex::new([false; 6]);
    let watch = |_: &str, l: &str| {
        if let (Some(i), Ok(mut s)) = (OK_LINES.iter().position(|p| l.starts_with(p)), seen.lock())
        {
            s[i] = true;
        }
        true
    };
    let scripts: Vec<&str> = scripts.iter().map(String::as_str).collect();
    let results = qemu::run_hosts_watched(&specs, art, &payload, &scripts, &watch)?;
    drop(hub);
    let mut link = true;
    for (i, r) in results.into_iter().enumerate() {
        match r {
            // Host c's own status is its live migration part's, counted through its lines.
            Ok(o) => link &= i == 2 || o.status == 0,
            Err(e) => {
                println!("{e:#}");
                link = false;
            }
        }
    }
    let s = seen.into_inner().unwrap_or_default();
    if let Some(c) = carried {
        let _ = std::fs::remove_file(&c.file);
    }
    Ok([link, s[0], s[1], s[2] && s[3], s[4] && s[5]])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sha(bytes: &[u8]) -> String {
        Sha256::digest(bytes)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    #[test]
    fn the_carried_state_is_decoded_and_checked() {
        let data: Vec<u8> = (0..=255u8).cycle().take(40).collect();
        let lines: Vec<String> = data
            .chunks(16)
            .map(|c| c.iter().map(|b| format!("{b:02x}")).collect())
            .collect();
        assert_eq!(decode_state(&lines, &sha(&data)).unwrap(), data);
        // A line lost on the console, a damaged digit, or nothing at all is refused.
        let e = decode_state(&lines[1..], &sha(&data)).unwrap_err();
        assert!(format!("{e:#}").contains("sha256"), "{e:#}");
        let mut bad = lines.clone();
        bad[0].replace_range(0..1, "g");
        assert!(decode_state(&bad, &sha(&data)).is_err());
        assert!(decode_state(&[], &sha(&[])).is_err());
        assert!(decode_state(&["abc".into()], &sha(&data)).is_err());
    }

    #[test]
    fn the_snapshot_script_parses_and_has_every_role() {
        let path = crate::workspace_root().join("resources/snapshot-pair.sh");
        let ok = std::process::Command::new("bash")
            .arg("-n")
            .arg(&path)
            .status()
            .expect("run bash -n");
        assert!(ok.success());
        let text = std::fs::read_to_string(&path).expect("read the script");
        for role in ["source)", "restore)", "refuse-model | refuse-frequency)"] {
            assert!(text.contains(role), "{role}");
        }
        assert!(text.contains(HEX_TAG.trim_start_matches("snap-restore: ").trim_end()));
    }

    #[test]
    fn the_migration_script_parses_and_has_every_role() {
        let path = crate::workspace_root().join("resources/migration-pair.sh");
        let ok = std::process::Command::new("bash")
            .arg("-n")
            .arg(&path)
            .status()
            .expect("run bash -n");
        assert!(ok.success());
        let text = std::fs::read_to_string(&path).expect("read the script");
        for role in ["trip-a)", "trip-b)", "refuse-source)", "refuse-dest)"] {
            assert!(text.contains(role), "{role}");
        }
        // The lines xtask waits for are the ones the script prints.
        for said in [
            "say \"ok: refused the guest of another $MIG_EXPECT",
            "say \"ok: refused by the host of another $what",
        ] {
            assert!(text.contains(said), "{said}");
        }
    }

    #[test]
    fn parts_pass_only_when_every_host_reports_zero() {
        let p = Parts::default();
        p.see("a", "pair-check: migration 0");
        p.see("a", "not a report");
        assert!(p.passed("migration", &["a"]));
        // b never reported: not passed.
        assert!(!p.passed("migration", &["a", "b"]));
        p.see("b", "pair-check: migration 1");
        assert!(!p.passed("migration", &["a", "b"]));
        p.see("a", "pair-check: snapshot 0");
        p.see("b", "pair-check: snapshot 0");
        assert!(p.passed("snapshot", &["a", "b"]));
        assert!(!p.passed("other", &["a"]));
    }
}
