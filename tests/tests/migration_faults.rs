//! Live migration's failures inside the emulated host: at each phase (the first round, the
//! dirty rounds, the switchover) the connection cut, the stream stalled or corrupted (through
//! a fault-injecting relay between the two VMMs), the destination killed; the destination
//! refusing; cancel; a timeout. After each the source guest runs on with its memory intact
//! and its counters moving, the destination has exited non-zero having run nothing, and at
//! the end a migration to a healthy destination succeeds.
#![cfg(target_arch = "aarch64")]

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use migration::protocol::{Message, MessageType, read_message, write_message};
use vmm_tests::api::{curl, get_json};
use vmm_tests::guest::Guest;
use vmm_tests::migrate::{dirty_status, free_port, receive, report, send, start_dirtier};
use vmm_tests::relay::{Fault, Relay, Trigger};
use vmm_tests::snap::{boot, hold_status, scratch};

/// The source guest runs on as before: its pattern and clock hold, its counters move, its
/// dirtier's pages are whole, and its VMM reports the attempt ended with `state`.
fn source_runs_on(g: &mut Guest, sock: &Path, last: &mut Vec<u64>, state: &str, what: &str) {
    let r = report(sock);
    assert_eq!(r["state"], state, "{what}: {r}");
    assert!(r["error"].is_string(), "{what}: a reason: {r}");
    assert_eq!(
        r["throttle_percent"], 0,
        "{what}: the throttle is lifted: {r}"
    );
    assert_eq!(get_json(sock, "/")["state"], "Running", "{what}");
    let hold = hold_status(g);
    assert!(hold.ok(), "{what}: {hold:?}");
    for (b, a) in last.iter().zip(&hold.counters) {
        assert!(
            a > b,
            "{what}: the counters stopped: {last:?} -> {:?}",
            hold.counters
        );
    }
    *last = hold.counters;
    let (_, _, bad) = dirty_status(g);
    assert_eq!(bad, 0, "{what}: the dirtier's pages");
}

/// The destination ended non-zero without running the guest.
fn destination_failed(d: Guest, what: &str) -> String {
    let (status, stderr) = d.wait_exit();
    assert_eq!(status.code(), Some(1), "{what}: the destination: {stderr}");
    assert!(stderr.contains("nothing runs here"), "{what}: {stderr}");
    stderr
}

fn dest_addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

#[test]
fn every_failure_before_the_commit_point_leaves_the_source_running() {
    let dir = scratch("mig-faults");
    let sock = vmm_tests::api::socket_path("mig-f-src");
    let mut g = boot(&sock, r#"{"vcpu_count": 2, "mem_size_mib": 256}"#, &[]);
    g.send("vmm-guest-tool hold 4 &\n");
    g.wait_for("HOLD_READY");
    start_dirtier(&mut g, 4, 2);
    let mut last = hold_status(&mut g).counters;

    // The connection cut, the stream corrupted or stalled, at each phase.
    // A 1 ms downtime target keeps the dirty rounds going until the fault.
    let rounds: &[&str] = &["--downtime-ms", "1"];
    let state = Trigger::Frame {
        kind: MessageType::State,
        nth: 1,
    };
    let memory = |nth| Trigger::Frame {
        kind: MessageType::Memory,
        nth,
    };
    let cases = [
        ("cut in the first round", memory(3), Fault::Cut, &[][..]),
        (
            "cut in the dirty rounds",
            Trigger::RoundEnd(2),
            Fault::Cut,
            rounds,
        ),
        ("cut at the switchover", state, Fault::Cut, &[]),
        (
            "a byte corrupted in the first round",
            memory(2),
            Fault::Corrupt,
            &[],
        ),
        (
            "a byte corrupted in the dirty rounds",
            Trigger::RoundEnd(2),
            Fault::Corrupt,
            rounds,
        ),
        (
            "a byte corrupted at the switchover",
            state,
            Fault::Corrupt,
            &[],
        ),
        (
            "the stream stalled in the dirty rounds",
            Trigger::RoundEnd(2),
            Fault::Stall,
            rounds,
        ),
        (
            "the stream stalled at the switchover",
            state,
            Fault::Stall,
            &[],
        ),
    ];
    for (what, trigger, fault, args) in cases {
        println!("--- {what}");
        let port = free_port();
        let (d, _dsock) = receive(&format!("mig-f-{}", port), port, &[]);
        let relay = Relay::start(dest_addr(port), Some(trigger), fault).expect("relay");
        let sent = send(&sock, relay.port(), args);
        assert_ne!(sent.code, Some(0), "{what}: vmm send must fail");
        assert!(
            relay.triggered(),
            "{what}: the fault happened (frames {:?})",
            relay.frames_seen()
        );
        if fault == Fault::Corrupt {
            assert!(
                sent.stderr.contains("corrupt")
                    || report(&sock)["error"]
                        .as_str()
                        .unwrap_or("")
                        .contains("corrupt"),
                "{what}: the checksum names it: {}",
                sent.stderr
            );
        }
        drop(relay);
        destination_failed(d, what);
        source_runs_on(&mut g, &sock, &mut last, "failed", what);
    }

    // The destination killed at the switchover (its side of the relay paused there).
    {
        let what = "the destination killed at the switchover";
        let port = free_port();
        let (d, _) = receive(&format!("mig-f-k{port}"), port, &[]);
        let relay = Relay::start(
            dest_addr(port),
            Some(Trigger::Frame {
                kind: MessageType::State,
                nth: 1,
            }),
            Fault::Pause,
        )
        .expect("relay");
        let sender = std::thread::spawn({
            let sock = sock.clone();
            let p = relay.port();
            move || send(&sock, p, &[])
        });
        assert!(
            relay.wait_triggered(Duration::from_secs(300)),
            "{what}: reached the switchover"
        );
        d.signal(libc::SIGKILL);
        let (status, _) = d.wait_exit();
        assert_eq!(status.code(), None, "killed");
        let sent = sender.join().expect("send thread");
        assert_ne!(sent.code, Some(0), "{what}");
        drop(relay);
        source_runs_on(&mut g, &sock, &mut last, "failed", what);
    }

    // The destination refusing: a drive it cannot open.
    {
        let what = "a destination without the disk";
        let port = free_port();
        let (d, _) = receive(
            &format!("mig-f-r{port}"),
            port,
            &[
                "--vsock-override",
                dir.join("none.sock").to_str().expect("utf-8"),
            ],
        );
        // This guest has no vsock device: the override names what the guest lacks.
        let sent = send(&sock, port, &[]);
        assert_ne!(sent.code, Some(0), "{what}");
        assert!(
            sent.stderr.contains("refused") && sent.stderr.contains("vsock"),
            "{what}: {}",
            sent.stderr
        );
        destination_failed(d, what);
        source_runs_on(&mut g, &sock, &mut last, "failed", what);
    }

    // Cancel through the API in the middle of the first round (capped to last a while).
    {
        let what = "cancel";
        let port = free_port();
        let (d, _) = receive(&format!("mig-f-c{port}"), port, &[]);
        let sender = std::thread::spawn({
            let sock = sock.clone();
            move || send(&sock, port, &["--max-bandwidth", "1"])
        });
        let deadline = Instant::now() + Duration::from_secs(300);
        while report_state(&sock) != "precopy" {
            assert!(Instant::now() < deadline, "{what}: never reached precopy");
            std::thread::sleep(Duration::from_millis(100));
        }
        let (code, body) = curl(&sock, "PUT", "/migration/cancel", None);
        assert_eq!(code, 204, "{body}");
        let sent = sender.join().expect("send thread");
        assert_ne!(sent.code, Some(0), "{what}");
        assert!(sent.stderr.contains("cancelled"), "{}", sent.stderr);
        let stderr = destination_failed(d, what);
        assert!(stderr.contains("cancelled"), "{stderr}");
        source_runs_on(&mut g, &sock, &mut last, "cancelled", what);
    }

    // A timeout: a dirtier faster than a capped link, without auto-converge.
    {
        let what = "a timeout";
        g.sh("kill $(cat /tmp/dirty.pid)");
        start_dirtier(&mut g, 4, 0);
        let port = free_port();
        let (d, _) = receive(&format!("mig-f-t{port}"), port, &[]);
        let sent = send(
            &sock,
            port,
            &[
                "--no-auto-converge",
                "--timeout",
                "8",
                "--max-bandwidth",
                "2",
                "--downtime-ms",
                "20",
            ],
        );
        assert_ne!(sent.code, Some(0), "{what}");
        assert!(sent.stderr.contains("did not converge"), "{}", sent.stderr);
        destination_failed(d, what);
        source_runs_on(&mut g, &sock, &mut last, "failed", what);
    }

    // A destination that speaks another protocol version is refused by name, before
    // anything else; a real destination refuses such a source the same way.
    {
        let port = free_port();
        let (d, _) = receive(&format!("mig-f-v{port}"), port, &[]);
        let mut s = std::net::TcpStream::connect(dest_addr(port)).expect("connect");
        write_message(
            &mut s,
            &Message::Hello {
                protocol_version: 99,
                min_protocol_version: 99,
                vmm_version: "vmm 99".into(),
                arch: migration::snapshot::ARCH_AARCH64,
            },
        )
        .expect("hello");
        match read_message(&mut s).expect("an answer") {
            Message::Refuse { reason } => assert!(
                reason.contains("no protocol version in common") && reason.contains("99"),
                "{reason}"
            ),
            m => panic!("expected Refuse, got {}", m.name()),
        }
        destination_failed(d, "a protocol version it does not know");
    }

    // And after all that, a healthy destination takes the guest.
    let port = free_port();
    let (mut d, _) = receive(&format!("mig-f-ok{port}"), port, &[]);
    let sent = send(&sock, port, &[]);
    assert_eq!(sent.code, Some(0), "{}{}", sent.stdout, sent.stderr);
    let (status, stderr) = g.wait_exit();
    assert_eq!(status.code(), Some(0), "{stderr}");
    let hold = hold_status(&mut d);
    assert!(hold.ok(), "{hold:?}");
    let (_, _, bad) = dirty_status(&mut d);
    assert_eq!(bad, 0);
    d.send("poweroff -f\n");
    let (status, stderr) = d.wait_exit();
    assert_eq!(status.code(), Some(0), "{stderr}");
}

fn report_state(sock: &Path) -> String {
    let (code, body) = curl(sock, "GET", "/migration", None);
    if code != 200 {
        return String::new();
    }
    serde_json::from_str::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| v["state"].as_str().map(str::to_string))
        .unwrap_or_default()
}
