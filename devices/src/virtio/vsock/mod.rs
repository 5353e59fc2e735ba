//! virtio-vsock with Firecracker's hybrid backend: guest stream sockets reach host processes
//! through Unix sockets.

mod conn;
mod device;
pub mod packet;

#[cfg(test)]
mod tests;

pub use conn::BUF_ALLOC;
pub use device::{MAX_CONNECTIONS, Vsock, VsockConfig, VsockError};
