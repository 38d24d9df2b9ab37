//! The gRPC adapters: the only place imaged-metadata's API types appear.
//! The service turns requests into the operations' inputs
//! ([`convert`]) and their answers into replies ([`render`], [`list`],
//! [`inspect`]); [`transfer`] is the client of imaged-transfer.

pub mod convert;
pub mod inspect;
pub mod list;
pub mod render;
pub mod service;
pub mod transfer;
