//! HTTP/1.1 pieces that do no I/O: request heads, ranges, conditionals, response heads.

pub mod authority;
pub mod cache_status;
pub mod conditional;
pub mod fields;
pub mod freshness;
pub mod path;
pub mod range;
pub mod request;
pub mod response;
