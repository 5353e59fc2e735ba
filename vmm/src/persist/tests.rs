use super::*;
use crate::api::snapshot::NetworkOverride;
use migration::state::{decode, encode};

fn config() -> VmConfig {
    let mut c = VmConfig::new("/k".into());
    c.cmdline = "console=ttyS0".into();
    c.vcpus = 2;
    c.mem_mib = 512;
    c.drives.push(Drive {
        drive_id: "root".into(),
        path_on_host: "/r.img".into(),
        is_root_device: true,
        is_read_only: false,
        cache_type: CacheType::Writeback,
        partuuid: None,
        io_engine: None,
        rate_limiter: Some(RateLimiterConfig {
            bandwidth: Some(TokenBucketConfig {
                size: 1 << 20,
                one_time_burst: Some(5),
                refill_time: 100,
            }),
            ops: None,
        }),
    });
    c.net.push(NetworkInterface {
        iface_id: "eth0".into(),
        host_dev_name: "tap0".into(),
        guest_mac: Some("06:00:00:00:00:01".into()),
        rx_rate_limiter: None,
        tx_rate_limiter: None,
    });
    c.entropy = Some(Entropy { rate_limiter: None });
    c.vsock = Some(Vsock {
        vsock_id: None,
        guest_cid: 3,
        uds_path: "/tmp/v.sock".into(),
    });
    c
}

#[test]
fn the_configuration_survives_the_vm_section() {
    let cfg = config();
    let state = VmState {
        vmm_version: crate::VERSION.into(),
        saved_at_unix_ns: 1,
        mem_base: 0x8000_0000,
        mem_size: 512 << 20,
        counter_frequency: 62_500_000,
        guest_counter: 12345,
        gic_version: 3,
        config: SavedConfig::from_config(&cfg),
    };
    let back: VmState = decode(&encode(VM_SECTION, &state).unwrap()).unwrap();
    assert_eq!(back, state);
    let mut base = VmConfig::new("/other".into());
    base.on_reset = crate::config::ResetPolicy::Reboot;
    let restored = back.config.to_config(&base, true);
    assert_eq!(restored.drives, cfg.drives);
    assert_eq!(restored.net, cfg.net);
    assert_eq!(restored.vsock, cfg.vsock);
    assert_eq!(restored.entropy, cfg.entropy);
    assert_eq!((restored.vcpus, restored.mem_mib), (2, 512));
    assert_eq!(restored.kernel, cfg.kernel);
    assert!(restored.track_dirty_pages);
    // The process's own settings stay the process's.
    assert_eq!(restored.on_reset, crate::config::ResetPolicy::Reboot);
}

#[test]
fn overrides_replace_taps_and_the_socket_and_name_what_is_missing() {
    let mut c = config();
    let o = |id: &str, tap: &str| NetworkOverride {
        iface_id: id.into(),
        host_dev_name: tap.into(),
    };
    let d0 = c.drives[0].drive_id.clone();
    apply_overrides(
        &mut c,
        &[o("eth0", "tap7")],
        Some("/tmp/w.sock"),
        &[(d0, "/tmp/other.img".into())],
    )
    .unwrap();
    assert_eq!(c.drives[0].path_on_host, "/tmp/other.img");
    assert_eq!(c.net[0].host_dev_name, "tap7");
    assert_eq!(c.vsock.as_ref().unwrap().uds_path, "/tmp/w.sock");
    let e = apply_overrides(&mut c, &[o("eth9", "tap7")], None, &[]).unwrap_err();
    assert!(e.contains("eth9"), "{e}");
    let e = apply_overrides(&mut c, &[], None, &[("nodisk".into(), "/x".into())]).unwrap_err();
    assert!(e.contains("'nodisk'"), "{e}");
    c.vsock = None;
    let e = apply_overrides(&mut c, &[], Some("/x"), &[]).unwrap_err();
    assert!(e.contains("no vsock"), "{e}");
}

#[test]
fn realtime_advance_counts_ticks_and_never_goes_back() {
    assert_eq!(realtime_advance(0, 2_000_000_000, 62_500_000), 125_000_000);
    assert_eq!(realtime_advance(5, 1, 62_500_000), 0);
    assert_eq!(realtime_advance(0, u64::MAX, u64::MAX), u64::MAX);
}
