//! Live migration's failures of the connection inside the emulated host: at each phase (the
//! first round, the dirty rounds, the switchover) the connection cut, the stream stalled or
//! one byte corrupted, through a fault-injecting relay between the two VMMs. After each the
//! source guest runs on with its memory intact and its counters moving, the destination has
//! exited non-zero having run nothing, and at the end a migration to a healthy destination
//! succeeds. The other failures are in migration_refusals.rs.
#![cfg(target_arch = "aarch64")]

use migration::protocol::MessageType;
use vmm_tests::migrate::{
    dest_addr, destination_failed, dirty_status, free_port, moves_to_a_healthy_destination,
    receive, report, send, source_runs_on, start_dirtier,
};
use vmm_tests::relay::{Fault, Relay, Trigger};
use vmm_tests::snap::{boot, hold_status};

#[test]
fn every_failure_before_the_commit_point_leaves_the_source_running() {
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

    // The source's memory is whole after all of them.
    let (_, _, bad) = dirty_status(&mut g);
    assert_eq!(bad, 0, "the dirtier's pages on the source");

    // And after all that, a healthy destination takes the guest.
    moves_to_a_healthy_destination(g, &sock);
}
