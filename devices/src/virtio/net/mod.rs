//! virtio-net on a host tap device.

mod device;
mod rx;
pub mod state;
mod tap;

pub use device::{Net, NetConfig, feature};
pub use state::NetState;
pub use tap::Tap;
