//! The destination's checks of the devices an incoming guest needs, before any page moves:
//! each drive's backing file opens as the guest uses it and has the size the guest's disk
//! has; each tap opens; the vsock socket path is free. Every problem is named, all of them
//! at once, with the override that fixes it. (The protocol version, the sections and their
//! versions, the CPU model, the GIC, the counter frequency and the memory size are checked
//! by the handshake, the section decoder and `vm::restore::prepare`.) Portable.

use std::path::Path;

use crate::config::{VmConfig, open_regular_file};
use crate::persist::decode::{DecodedSnapshot, DeviceState};

/// What is wrong with this host's devices for the guest, or nothing.
pub fn check_devices(cfg: &VmConfig, guest: &DecodedSnapshot) -> Result<(), String> {
    let mut problems = Vec::new();
    for d in &cfg.drives {
        let capacity = guest.virtio.iter().find_map(|(id, _, s)| match s {
            DeviceState::Block(b) if *id == format!("block_{}", d.drive_id) => Some(b.capacity),
            _ => None,
        });
        match open_regular_file(&d.path_on_host, !d.is_read_only).and_then(|f| f.metadata()) {
            Err(e) => problems.push(format!(
                "drive {}: cannot open {} here ({e}); give another path with a drive override",
                d.drive_id, d.path_on_host
            )),
            Ok(meta) => {
                if let Some(sectors) = capacity {
                    let here = meta.len() / 512;
                    if here != sectors {
                        problems.push(format!(
                            "drive {}: {} holds {} bytes here, the guest's disk has {} bytes",
                            d.drive_id,
                            d.path_on_host,
                            meta.len(),
                            sectors * 512
                        ));
                    }
                }
            }
        }
    }
    for n in &cfg.net {
        if let Err(e) = devices::virtio::net::Tap::open(&n.host_dev_name) {
            problems.push(format!(
                "network interface {}: cannot open tap {} here ({e}); give another with a network override",
                n.iface_id, n.host_dev_name
            ));
        }
    }
    if let Some(v) = &cfg.vsock {
        if let Err(e) = devices::unix_socket::check_free(Path::new(&v.uds_path)) {
            problems.push(format!(
                "vsock: {e}; give another socket path with a vsock override"
            ));
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems.join("; "))
    }
}
