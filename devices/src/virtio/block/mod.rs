//! virtio-blk backed by a raw image file.

mod device;
mod request;

pub use device::{Block, BlockConfig, CacheType};
pub use request::{RequestType, Status};
