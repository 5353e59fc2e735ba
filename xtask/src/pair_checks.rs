//! The emulated layer's checks with two linked emulated hosts (docs/testing.md, "Two linked
//! hosts"), each reported on its own `NAME: ok|FAILED` line:
//!
//! 1. A snapshot moves between hosts of the same CPU model: host a (neoverse-n1) boots a guest
//!    that counts on its console, pauses it, snapshots it, and sends the state and memory files
//!    over the link; host b (neoverse-n1 too) checks their sha256, loads them and sees the
//!    guest carry on from its count and answer on its console.
//! 2. The two-host link check, whose hosts also refuse that snapshot: a neoverse-v1 host with
//!    the source's counter frequency (only the CPU model differs, so the refusal must name
//!    ID-register fields) and a neoverse-n1 host with a 1 GHz counter (only the frequency
//!    differs, so it must name both frequencies). The state file comes from run 1 through
//!    host b's console and this process (it is a few KiB); the memory file is a sparse file of
//!    the guest's size, since the host is checked before guest memory is used.
//!
//! The in-host side of the snapshot checks is `resources/snapshot-pair.sh`.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use sha2::{Digest, Sha256};

use crate::artifacts::Artifacts;
use crate::layers::{Tally, pair_specs};
use crate::qemu::{self, Payload};

/// Where the snapshot script is placed inside each host.
const SCRIPT: &str = "/xt/snapshot-pair.sh";
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

/// Runs both checks; `vmm` is the cross-built binary placed in each host.
pub fn run(art: &Artifacts, vmm: &Path, timeout: Duration) -> Tally {
    let mut t = Tally::default();
    let started = Instant::now();
    let (restored, carried) = match same_model(art, vmm, timeout) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("xtask: same-model snapshot pair failed: {e:#}");
            (false, None)
        }
    };
    eprintln!(
        "xtask: the same-model snapshot run took {} s",
        started.elapsed().as_secs()
    );
    line(
        "snapshot restored in a second host of the same CPU model",
        restored,
    );
    t.check(restored);
    if carried.is_none() {
        println!(
            "no state file came out of the same-model run: the refusals below cannot be checked"
        );
    }
    let started = Instant::now();
    let [link, model, freq] = match two_hosts(art, vmm, timeout, carried.as_ref()) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("xtask: two-host check failed: {e:#}");
            [false; 3]
        }
    };
    eprintln!(
        "xtask: the two-host run took {} s",
        started.elapsed().as_secs()
    );
    line("two-host link check", link);
    line("snapshot refused in a host of another CPU model", model);
    line(
        "snapshot refused in a host with another counter frequency",
        freq,
    );
    for ok in [link, model, freq] {
        t.check(ok);
    }
    t
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

/// The first run. Returns whether the snapshot restored, and the state file host b received.
fn same_model(art: &Artifacts, vmm: &Path, timeout: Duration) -> Result<(bool, Option<Carried>)> {
    let (pa, pb) = qemu::free_udp_ports()?;
    let n1 = ("neoverse-n1", None);
    let (a, b) = pair_specs(n1, n1, 1, HOST_MIB, false, timeout, pa, pb);
    let hex = Mutex::new(Vec::<String>::new());
    let sha = Mutex::new(None::<String>);
    let watch = |host: &str, l: &str| {
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
    let scripts = [
        format!("ROLE=source bash {SCRIPT}\n"),
        format!("ROLE=restore bash {SCRIPT}\n"),
    ];
    let [ra, rb] = qemu::run_pair_watched(
        &[a, b],
        art,
        &payload(vmm),
        [&scripts[0], &scripts[1]],
        &watch,
    )?;
    let restored = ra?.status == 0 && rb?.status == 0;
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
    Ok((restored, carried))
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

/// The second run: hosts of different generations and counter frequencies see their own CPU
/// and reach each other over the link, and (with a carried state file) each refuses it.
/// Returns [link, refused for the model, refused for the frequency].
fn two_hosts(
    art: &Artifacts,
    vmm: &Path,
    timeout: Duration,
    carried: Option<&Carried>,
) -> Result<[bool; 3]> {
    let (pa, pb) = qemu::free_udp_ports()?;
    let (a, b) = pair_specs(
        ("neoverse-v1", None),
        ("neoverse-n1", Some(OTHER_HZ)),
        1,
        HOST_MIB,
        false,
        timeout,
        pa,
        pb,
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
    // Each host first refuses the snapshot (its verdict is its own `ok` line), then checks its
    // own CPU and counter, waits for the link, and they exchange a message over TCP; the
    // listener waits for the sender, so neither powers off early.
    let check = |refusal: &str, part: &str, mhz: &str, exchange: &str| {
        let refusal = if carried.is_some() {
            format!("{refusal} bash {SCRIPT}\n")
        } else {
            String::new()
        };
        format!(
            "{refusal}set -e\ngrep -q 'CPU part.*: {part}' /proc/cpuinfo\n\
             dmesg | grep -q 'arch_timer.*running at {mhz}MHz'\n\
             for i in $(seq 120); do ping -c 1 -W 1 \"$PEER_ADDR\" >/dev/null && break; done\n\
             ping -c 1 -W 5 \"$PEER_ADDR\" >/dev/null\n{exchange}\n\
             echo \"$(hostname): cpu {part}, {mhz} MHz, link to $PEER_ADDR ok\"\n"
        )
    };
    let listen =
        "got=$(timeout 300 socat -u TCP-LISTEN:7000,reuseaddr -)\n[ \"$got\" = \"hello from b\" ]";
    let send = "for i in $(seq 300); do echo 'hello from b' | socat -u - TCP:$PEER_ADDR:7000 2>/dev/null && break; sleep 1; done\n[ $i -lt 300 ]";
    let (sa, sb) = (
        check("ROLE=refuse-model", "0xd40", "62.50", listen),
        check(
            &format!(
                "ROLE=refuse-frequency SNAP_FREQ_HERE={OTHER_HZ} SNAP_FREQ_SAVED={DEFAULT_HZ}"
            ),
            "0xd0c",
            "1000.00",
            send,
        ),
    );
    let seen = Mutex::new([false; 2]);
    let watch = |_: &str, l: &str| {
        let role = if l.starts_with("snap-refuse-model: ok:") {
            Some(0)
        } else if l.starts_with("snap-refuse-frequency: ok:") {
            Some(1)
        } else {
            None
        };
        if let (Some(i), Ok(mut s)) = (role, seen.lock()) {
            s[i] = true;
        }
        true
    };
    let [ra, rb] = qemu::run_pair_watched(&[a, b], art, &payload, [&sa, &sb], &watch)?;
    let link = ra?.status == 0 && rb?.status == 0;
    let [model, freq] = seen.into_inner().unwrap_or_default();
    if let Some(c) = carried {
        let _ = std::fs::remove_file(&c.file);
    }
    Ok([link, model, freq])
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
}
