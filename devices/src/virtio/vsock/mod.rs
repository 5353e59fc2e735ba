//! virtio-vsock with Firecracker's hybrid backend: guest stream sockets reach host processes
//! through Unix sockets.

mod conn;
mod deadline;
mod device;
pub mod packet;
pub mod state;

#[cfg(test)]
mod tests;

pub use conn::BUF_ALLOC;
pub use device::{HANDSHAKE_TIMEOUT, MAX_CONNECTIONS, Vsock, VsockConfig, VsockError};
pub use state::VsockState;
