//! virtio-net on a host tap device.

mod device;
mod tap;

pub use device::{Net, NetConfig};
pub use tap::Tap;
