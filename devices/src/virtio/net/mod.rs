//! virtio-net on a host tap device.

mod device;
mod rx;
mod tap;

pub use device::{Net, NetConfig, feature};
pub use tap::Tap;
