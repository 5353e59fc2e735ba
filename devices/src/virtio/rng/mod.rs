//! virtio-rng: the guest reads entropy drawn from the host's getrandom.

mod device;

pub use device::Rng;
