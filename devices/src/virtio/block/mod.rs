//! virtio-blk backed by a raw image file.

mod device;
mod request;
pub mod state;

pub use device::{Block, BlockConfig, CacheType};
pub use request::{RequestType, Status};
pub use state::BlockState;
