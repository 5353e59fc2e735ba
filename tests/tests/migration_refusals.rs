//! Live migration's other failures inside the emulated host: the destination killed at the
//! switchover, a destination refusing the guest, cancel through the API, a timeout, a
//! destination speaking another protocol version. After each the source guest runs on with
//! its memory intact and its counters moving, the destination has exited non-zero having run
//! nothing, and at the end a migration to a healthy destination succeeds.
#![cfg(target_arch = "aarch64")]

use std::path::Path;
use std::time::{Duration, Instant};

use migration::protocol::{Message, MessageType, read_message, write_message};
use vmm_tests::api::curl;
use vmm_tests::migrate::{
    dest_addr, destination_failed, dirty_status, free_port, moves_to_a_healthy_destination,
    receive, send, source_runs_on, start_dirtier,
};
use vmm_tests::relay::{Fault, Relay, Trigger};
use vmm_tests::snap::{boot, hold_status, scratch};

#[test]
fn a_killed_refusing_cancelled_or_timed_out_destination_leaves_the_source_running() {
    let dir = scratch("mig-refusals");
    let sock = vmm_tests::api::socket_path("mig-r-src");
    let mut g = boot(&sock, r#"{"vcpu_count": 2, "mem_size_mib": 256}"#, &[]);
    g.send("vmm-guest-tool hold 4 &\n");
    g.wait_for("HOLD_READY");
    // The timeout case starts the dirtier it needs; the others need none.
    let mut last = hold_status(&mut g).counters;

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

    let (_, _, bad) = dirty_status(&mut g);
    assert_eq!(bad, 0, "the dirtier's pages on the source");

    // And after all that, a healthy destination takes the guest.
    moves_to_a_healthy_destination(g, &sock);
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
