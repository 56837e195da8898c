//! gatecache: an HTTP cache for software-update content on IoT and factory gateways.
//!
//! ```text
//! request -> route -> key -> plan (which blocks are Ready | Filling | Missing)
//!   Ready   -> pinned slot view -> socket, no userspace copy      (cache::Cache::claim)
//!   Missing -> one upstream fetch per run -> slot writer -> watermark -> waiters
//!              -> commit: crc, flush, header -> Ready              (cache::BlockWriter)
//! store: slab files per drive -> regions -> slots (header + data)  (store::*)
//! ```
#![deny(clippy::undocumented_unsafe_blocks)]
#![deny(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs)]

pub mod access;
pub mod admin;
pub mod cache;
pub mod config;
pub mod error;
pub mod http;
pub mod metrics;
pub mod route;
pub mod serve;
pub mod server;
pub mod store;
pub mod upstream;
