//! The serving wing: what to do with a request (`plan`, pure), apart from doing it.

pub mod plan;
