//! virtio-rng: the guest reads entropy drawn from the host's getrandom.

mod device;
pub mod state;

pub use device::Rng;
pub use state::RngState;
