//! Emulated Arm64 KVM hosts: qemu-system-aarch64 with `virtualization=on` booting the host
//! artifact, running one command as root, and reporting its exit status.

use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::artifacts::Artifacts;
use crate::cpio::Archive;

/// CPU models that run as KVM hosts under emulation, each a CPU generation
/// (../shared/ENVIRONMENT.md), with the `CPU part` Linux shows for them.
pub const CPU_MODELS: &[(&str, &str)] = &[
    ("cortex-a57", "0xd07"),
    ("cortex-a72", "0xd08"),
    ("neoverse-n1", "0xd0c"),
    ("neoverse-v1", "0xd40"),
    ("neoverse-n2", "0xd49"),
    ("a64fx", "0x001"),
    ("max", "0x051"),
];

/// Checks a CPU model name, listing the valid ones otherwise.
pub fn parse_cpu(s: &str) -> Result<String, String> {
    if CPU_MODELS.iter().any(|(m, _)| *m == s) {
        Ok(s.to_string())
    } else {
        let names: Vec<&str> = CPU_MODELS.iter().map(|(m, _)| *m).collect();
        Err(format!(
            "unknown CPU model '{s}'; valid models: {}",
            names.join(", ")
        ))
    }
}

/// One side of a virtual link between two emulated hosts: UDP datagrams on loopback only.
#[derive(Debug, Clone)]
pub struct Link {
    pub local_port: u16,
    pub remote_port: u16,
    pub mac: String,
    pub self_addr: String,
    pub peer_addr: String,
}

/// How to boot one emulated host.
#[derive(Debug, Clone)]
pub struct HostSpec {
    pub name: String,
    pub cpu: String,
    pub cntfrq: Option<u64>,
    pub smp: u32,
    pub mem_mib: u32,
    pub icount: bool,
    pub timeout: Duration,
    pub link: Option<Link>,
    /// TCP ports forwarded from 127.0.0.1 on this machine into the host, as (here, there).
    /// The host then has the address 10.0.2.15 on eth0.
    pub forwards: Vec<(u16, u16)>,
}

/// Files placed into the host for one run, besides the artifacts.
#[derive(Debug, Default, Clone)]
pub struct Payload {
    /// (path inside the host, file on this machine, mode)
    pub files: Vec<(String, PathBuf, u32)>,
    /// Extra `KEY=value` environment for the command.
    pub env: Vec<(String, String)>,
    /// Extra prebuilt initramfs parts (cpio, gzip or not) to add.
    pub parts: Vec<PathBuf>,
}

/// How a run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// The command's exit status inside the host.
    pub status: i32,
}

fn nonce() -> String {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    format!("{:x}{:x}", std::process::id(), t & 0xffff_ffff_ffff)
}

/// Where per-run files go (initramfs images, files carried between runs).
pub fn run_dir() -> Result<PathBuf> {
    let root = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| crate::workspace_root().join("target"));
    let d = root.join("xtask-hosts");
    fs::create_dir_all(&d)?;
    Ok(d)
}

/// Builds the per-run initramfs: base image, guest bundle, then this run's files.
fn build_initrd(
    spec: &HostSpec,
    art: &Artifacts,
    payload: &Payload,
    script: &str,
    marker: &str,
) -> Result<PathBuf> {
    let path = run_dir()?.join(format!(
        "{}-{}-{}.cpio",
        spec.name,
        std::process::id(),
        marker
    ));
    let mut out =
        fs::File::create(&path).with_context(|| format!("cannot create {}", path.display()))?;
    for part in [&art.host_initrd, &art.guest_bundle]
        .into_iter()
        .chain(&payload.parts)
    {
        let mut f =
            fs::File::open(part).with_context(|| format!("cannot open {}", part.display()))?;
        let n = std::io::copy(&mut f, &mut out)?;
        // The kernel reads an uncompressed archive only at a 4-byte boundary, and skips zeros.
        out.write_all(&[0u8; 3][..((4 - n % 4) % 4) as usize])?;
    }
    let mut a = Archive::new();
    for (inside, from, mode) in &payload.files {
        let data = fs::read(from).with_context(|| format!("cannot read {}", from.display()))?;
        a.file(inside, *mode, data);
    }
    let mut env = format!("XT_NONCE={marker}\nXT_HOSTNAME={}\n", spec.name);
    if let Some(l) = &spec.link {
        env.push_str(&format!(
            "SELF_ADDR={}\nPEER_ADDR={}\n",
            l.self_addr, l.peer_addr
        ));
    } else if !spec.forwards.is_empty() {
        // QEMU's user network forwards to this address.
        env.push_str("SELF_ADDR=10.0.2.15\n");
    }
    for (k, v) in &payload.env {
        env.push_str(&format!("{k}={}\n", crate::sh::shell_quote(v)));
    }
    env = env.lines().map(|l| format!("export {l}\n")).collect();
    a.file("xt/env", 0o644, env.into_bytes());
    a.file("xt/cmd", 0o755, script.as_bytes().to_vec());
    a.write_to(&mut out)?;
    out.flush()?;
    Ok(path)
}

fn qemu_command(spec: &HostSpec, art: &Artifacts, initrd: &Path) -> Command {
    let mut c = Command::new("qemu-system-aarch64");
    let mut cpu = spec.cpu.clone();
    if let Some(f) = spec.cntfrq {
        cpu.push_str(&format!(",cntfrq={f}"));
    }
    c.args(["-M", "virt,virtualization=on,gic-version=3", "-cpu", &cpu])
        .args([
            "-smp",
            &spec.smp.to_string(),
            "-m",
            &spec.mem_mib.to_string(),
        ])
        .args([
            "-nodefaults",
            "-no-reboot",
            "-display",
            "none",
            "-monitor",
            "none",
        ])
        .args(["-serial", "stdio"])
        .arg("-kernel")
        .arg(&art.host_kernel)
        .arg("-initrd")
        .arg(initrd)
        .args([
            "-append",
            "console=ttyAMA0 quiet loglevel=1 rdinit=/init panic=-1",
        ]);
    if spec.icount {
        c.args(["-icount", "shift=0,sleep=off"]);
    }
    match &spec.link {
        Some(l) => {
            c.args([
                "-netdev",
                &format!(
                    "dgram,id=link,local.type=inet,local.host=127.0.0.1,local.port={},\
                     remote.type=inet,remote.host=127.0.0.1,remote.port={}",
                    l.local_port, l.remote_port
                ),
                "-device",
                &format!("virtio-net-pci,netdev=link,mac={},romfile=", l.mac),
            ]);
        }
        None if !spec.forwards.is_empty() => {
            let fwd: Vec<String> = spec
                .forwards
                .iter()
                .map(|(h, g)| format!("hostfwd=tcp:127.0.0.1:{h}-:{g}"))
                .collect();
            c.args([
                "-netdev",
                &format!("user,id=fwd,net=10.0.2.0/24,{}", fwd.join(",")),
                "-device",
                "virtio-net-pci,netdev=fwd,romfile=",
            ]);
        }
        None => {
            c.args(["-nic", "none"]);
        }
    }
    c
}

fn spawn(mut c: Command) -> Result<Child> {
    c.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // SAFETY: the closure only calls prctl, which is async-signal-safe; it makes QEMU die with
    // xtask so that no emulated host outlives the task that started it.
    unsafe {
        c.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    c.spawn().context("cannot start qemu-system-aarch64")
}

enum Event {
    Line(String),
    Err(String),
    Eof,
}

fn pump<R: Read + Send + 'static>(r: R, tx: mpsc::Sender<Event>, wrap: fn(String) -> Event) {
    std::thread::spawn(move || {
        let mut reader = BufReader::new(r);
        let mut buf = Vec::new();
        loop {
            buf.clear();
            match reader.read_until(b'\n', &mut buf) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    let line = String::from_utf8_lossy(&buf)
                        .trim_end_matches(['\n', '\r'])
                        .replace('\r', "");
                    if tx.send(wrap(line)).is_err() {
                        return;
                    }
                }
            }
        }
        let _ = tx.send(Event::Eof);
    });
}

/// Boots one emulated host, runs `script` in it as root, and hands each console line to
/// `sink`. Returns the script's exit status.
pub fn run(
    spec: &HostSpec,
    art: &Artifacts,
    payload: &Payload,
    script: &str,
    sink: &mut dyn FnMut(&str),
) -> Result<Outcome> {
    let marker = nonce();
    let initrd = build_initrd(spec, art, payload, script, &marker)?;
    let result = run_booted(spec, art, &initrd, &marker, sink);
    let _ = fs::remove_file(&initrd);
    result
}

fn run_booted(
    spec: &HostSpec,
    art: &Artifacts,
    initrd: &Path,
    marker: &str,
    sink: &mut dyn FnMut(&str),
) -> Result<Outcome> {
    let mut child = spawn(qemu_command(spec, art, initrd))?;
    let (tx, rx) = mpsc::channel();
    pump(
        child.stdout.take().context("no QEMU stdout")?,
        tx.clone(),
        Event::Line,
    );
    pump(
        child.stderr.take().context("no QEMU stderr")?,
        tx,
        Event::Err,
    );
    let exit_tag = format!("XT_EXIT_{marker} ");
    let deadline = Instant::now() + spec.timeout;
    let mut status = None;
    let mut panicked = false;
    let mut eofs = 0;
    let mut stderr_tail = Vec::new();
    while eofs < 2 {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(Event::Line(l)) => {
                if let Some((before, rc)) = l.split_once(&exit_tag) {
                    if !before.is_empty() {
                        sink(before);
                    }
                    status = rc.trim().parse().ok();
                } else if status.is_some() && l.ends_with("reboot: Power down") {
                    // The host's own shutdown message, after the command finished.
                } else {
                    panicked |= l.contains("Kernel panic");
                    sink(&l);
                }
            }
            Ok(Event::Err(l)) => {
                sink(&format!("qemu: {l}"));
                stderr_tail.push(l);
            }
            Ok(Event::Eof) => eofs += 1,
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                bail!(
                    "emulated host {} timed out after {} s; QEMU was stopped",
                    spec.name,
                    spec.timeout.as_secs()
                );
            }
        }
    }
    let qemu_status = child.wait()?;
    match status {
        Some(s) => Ok(Outcome { status: s }),
        None if panicked => bail!("the kernel of emulated host {} panicked", spec.name),
        None => bail!(
            "emulated host {} stopped before reporting the command's exit status (QEMU {qemu_status}){}",
            spec.name,
            stderr_tail
                .last()
                .map(|l| format!(": {l}"))
                .unwrap_or_default()
        ),
    }
}

/// Two free UDP ports on loopback for a link.
pub fn free_udp_ports() -> Result<(u16, u16)> {
    let a = std::net::UdpSocket::bind("127.0.0.1:0")?;
    let b = std::net::UdpSocket::bind("127.0.0.1:0")?;
    Ok((a.local_addr()?.port(), b.local_addr()?.port()))
}

/// `n` free UDP ports on loopback, for links or a hub.
pub fn free_udp_port_list(n: usize) -> Result<Vec<u16>> {
    // All bound at once, so that no two are the same.
    let socks = (0..n)
        .map(|_| std::net::UdpSocket::bind("127.0.0.1:0"))
        .collect::<std::io::Result<Vec<_>>>()?;
    socks.iter().map(|s| Ok(s.local_addr()?.port())).collect()
}

/// An Ethernet hub for the links of several hosts: a UDP socket on loopback to which each
/// host's link sends its frames (as its `remote_port`), and which passes every frame from one
/// host's port on to every other host's port, so that the hosts share one segment. Frames
/// from other ports are dropped. It stops when dropped.
pub struct Hub {
    port: u16,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Hub {
    /// Starts a hub for the hosts whose links send from `hosts` (their `local_port`s).
    pub fn start(hosts: Vec<u16>) -> Result<Hub> {
        let sock = std::net::UdpSocket::bind("127.0.0.1:0").context("cannot bind the hub")?;
        // Wakes up now and then to see whether it should stop.
        sock.set_read_timeout(Some(Duration::from_millis(100)))?;
        let port = sock.local_addr()?.port();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut buf = vec![0u8; 65536];
            while !flag.load(std::sync::atomic::Ordering::Relaxed) {
                let Ok((n, from)) = sock.recv_from(&mut buf) else {
                    continue;
                };
                if !from.ip().is_loopback() || !hosts.contains(&from.port()) {
                    continue;
                }
                for p in hosts.iter().filter(|p| **p != from.port()) {
                    // A host that is not up yet loses the frame, as on a real hub.
                    let _ = sock.send_to(&buf[..n], (std::net::Ipv4Addr::LOCALHOST, *p));
                }
            }
        });
        Ok(Hub {
            port,
            stop,
            thread: Some(thread),
        })
    }

    /// The port the hosts' links send to.
    pub fn port(&self) -> u16 {
        self.port
    }
}

impl Drop for Hub {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Runs two linked hosts at once; each line is prefixed with its host's name.
pub fn run_pair(
    specs: &[HostSpec; 2],
    art: &Artifacts,
    payload: &Payload,
    scripts: [&str; 2],
) -> Result<[Result<Outcome>; 2]> {
    run_pair_watched(specs, art, payload, scripts, &|_, _| true)
}

/// [`run_pair`], handing each line with its host's name to `watch` first, which returns
/// whether to print it (a check can read data from a console without flooding the log).
pub fn run_pair_watched(
    specs: &[HostSpec; 2],
    art: &Artifacts,
    payload: &Payload,
    scripts: [&str; 2],
    watch: &(dyn Fn(&str, &str) -> bool + Sync),
) -> Result<[Result<Outcome>; 2]> {
    let mut it = run_hosts_watched(specs, art, payload, &scripts, watch)?.into_iter();
    match (it.next(), it.next()) {
        (Some(a), Some(b)) => Ok([a, b]),
        _ => bail!("two hosts were started but not two results returned"),
    }
}

/// Runs hosts at once, `scripts[i]` in `specs[i]`, each line prefixed with its host's name and
/// handed with that name to `watch` first, which returns whether to print it.
pub fn run_hosts_watched(
    specs: &[HostSpec],
    art: &Artifacts,
    payload: &Payload,
    scripts: &[&str],
    watch: &(dyn Fn(&str, &str) -> bool + Sync),
) -> Result<Vec<Result<Outcome>>> {
    if specs.len() != scripts.len() {
        bail!("{} hosts but {} scripts", specs.len(), scripts.len());
    }
    let out = std::sync::Arc::new(std::sync::Mutex::new(std::io::stdout()));
    Ok(std::thread::scope(|s| {
        let handles: Vec<_> = specs
            .iter()
            .zip(scripts)
            .map(|(spec, script)| {
                let out = out.clone();
                s.spawn(move || {
                    let name = spec.name.clone();
                    let mut sink = |l: &str| {
                        if !watch(&name, l) {
                            return;
                        }
                        if let Ok(mut o) = out.lock() {
                            let _ = writeln!(o, "{name}| {l}");
                        }
                    };
                    run(spec, art, payload, script, &mut sink)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(anyhow::anyhow!("host thread panicked")))
            })
            .collect()
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hub_passes_each_frame_to_every_other_host() {
        let socks: Vec<std::net::UdpSocket> = (0..3)
            .map(|_| std::net::UdpSocket::bind("127.0.0.1:0").unwrap())
            .collect();
        for s in &socks {
            s.set_read_timeout(Some(Duration::from_millis(500)))
                .unwrap();
        }
        let ports: Vec<u16> = socks
            .iter()
            .map(|s| s.local_addr().unwrap().port())
            .collect();
        let hub = Hub::start(ports).unwrap();
        let to_hub = ("127.0.0.1", hub.port());
        socks[0].send_to(b"frame from 0", to_hub).unwrap();
        let mut buf = [0u8; 64];
        for s in &socks[1..] {
            let (n, from) = s.recv_from(&mut buf).unwrap();
            assert_eq!(&buf[..n], b"frame from 0");
            assert_eq!(from.port(), hub.port());
        }
        // Not back to its sender.
        assert!(socks[0].recv_from(&mut buf).is_err());
        // A stranger's frame goes nowhere.
        let stranger = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        stranger.send_to(b"stranger", to_hub).unwrap();
        socks[2].send_to(b"frame from 2", to_hub).unwrap();
        for s in &socks[..2] {
            let (n, _) = s.recv_from(&mut buf).unwrap();
            assert_eq!(&buf[..n], b"frame from 2");
        }
        drop(hub);
    }

    #[test]
    fn unknown_cpu_lists_the_valid_models() {
        let e = parse_cpu("cortex-a99").unwrap_err();
        assert!(e.contains("cortex-a99"));
        for (m, _) in CPU_MODELS {
            assert!(e.contains(m), "{e}");
        }
        assert_eq!(parse_cpu("neoverse-n1").unwrap(), "neoverse-n1");
    }

    #[test]
    fn command_line_carries_model_frequency_and_link() {
        let spec = HostSpec {
            name: "a".into(),
            cpu: "neoverse-v1".into(),
            cntfrq: Some(1_000_000_000),
            smp: 2,
            mem_mib: 2048,
            icount: true,
            timeout: Duration::from_secs(1),
            forwards: Vec::new(),
            link: Some(Link {
                local_port: 4000,
                remote_port: 4001,
                mac: "52:54:00:00:00:0a".into(),
                self_addr: "10.0.0.1".into(),
                peer_addr: "10.0.0.2".into(),
            }),
        };
        let art = Artifacts {
            host_kernel: "/k".into(),
            host_initrd: "/i".into(),
            guest_kernel: "/gk".into(),
            guest_initrd: "/gi".into(),
            guest_rootfs: "/gr".into(),
            guest_bundle: "/gb".into(),
        };
        let c = qemu_command(&spec, &art, Path::new("/run.cpio"));
        let args: Vec<String> = c
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        let joined = args.join(" ");
        assert!(
            joined.contains("-cpu neoverse-v1,cntfrq=1000000000"),
            "{joined}"
        );
        assert!(joined.contains("virtualization=on"));
        assert!(joined.contains("-icount shift=0,sleep=off"));
        assert!(joined.contains("local.host=127.0.0.1,local.port=4000"));
        assert!(joined.contains("remote.host=127.0.0.1,remote.port=4001"));
        assert!(!joined.contains("-nic none"));
    }
}
