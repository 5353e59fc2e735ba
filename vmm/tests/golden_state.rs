//! The state file of the first release's format, from a small guest (1 vCPU, 64 MiB, a
//! drive, a tap, vsock, entropy and the boot timer, paused after boot in an emulated
//! host with QEMU's `max` CPU), must decode in every later build: each section, in its layout, with the
//! values that guest had. Never regenerate this file; add the next version's beside it.

use vmm::persist::decode::{DeviceState, decode_all};
use vmm::persist::inspect::inspect;

const STATE_V1: &[u8] = include_bytes!("golden/state-v1.bin");

#[test]
fn the_first_format_version_still_decodes() {
    let sections = migration::snapshot::decode_snapshot(STATE_V1).expect("the container decodes");
    let s = decode_all(sections).expect("every section decodes");
    assert_eq!(s.vm.config.vcpus, 1);
    assert_eq!(s.vm.mem_size, 64 << 20);
    assert_eq!(s.vm.gic_version, 3);
    assert_eq!(s.vm.config.drives[0].id, "data");
    assert_eq!(s.vm.config.net[0].tap, "gtap0");
    assert_eq!(s.vm.config.vsock.as_ref().map(|v| v.guest_cid), Some(3));
    assert!(s.vm.config.boot_timer && s.boot_timer.is_some());
    assert_eq!(s.vcpus.len(), 1);
    assert!(
        s.vcpus[0].regs.len() > 100,
        "{} registers",
        s.vcpus[0].regs.len()
    );
    assert_eq!(s.gic.redists.len(), 1);
    let kinds: Vec<(&str, &str)> = s
        .virtio
        .iter()
        .map(|(id, _, d)| {
            let kind = match d {
                DeviceState::Block(_) => "block",
                DeviceState::Net(_) => "net",
                DeviceState::Vsock(_) => "vsock",
                DeviceState::Rng(_) => "rng",
            };
            (id.as_str(), kind)
        })
        .collect();
    assert_eq!(
        kinds,
        vec![
            ("block_data", "block"),
            ("net_eth0", "net"),
            ("entropy", "rng"),
            ("vsock", "vsock")
        ]
    );
    // The guest had booted: every driver set DRIVER_OK (status bit 4).
    for (id, t, _) in &s.virtio {
        assert_ne!(t.status & 4, 0, "{id} was not activated");
    }
}

#[test]
fn inspect_reports_the_golden_file() {
    let i = inspect(STATE_V1).expect("inspect");
    assert_eq!(i.file.format_version, 1);
    assert_eq!((i.vcpus, i.mem_size), (1, 64 << 20));
    assert!(i.id_registers.iter().any(|r| r.name == "MIDR_EL1"));
    let text = i.to_text();
    assert!(text.contains("virtio/net_eth0/device"), "{text}");
}
