//! kafka-mesh-core: the pure-Rust heart of kafka-mesh-filter.
//!
//! No proxy-wasm here: the codec ([`reader`], [`header`], [`api`]), the per-connection
//! [`session`] state machine and the [`config`] are tested natively; the wasm crate is glue.
//! The host is reached only through [`session::HostBuffer`] and [`session::Observer`].
#![forbid(unsafe_code)]

pub mod api;
pub mod apiversions;
pub mod config;
pub mod header;
pub mod reader;
pub mod session;

#[cfg(test)]
mod session_tests;
#[cfg(test)]
pub(crate) mod testutil;
