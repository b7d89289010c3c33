//! kafka-mesh-core: the pure-Rust heart of kafka-mesh-filter.
//!
//! No proxy-wasm here: the codec ([`reader`], [`header`], [`api`]), the per-connection
//! [`session`] state machine and the [`config`] are tested natively; the wasm crate is glue.
//! The host is reached only through [`session::HostBuffer`] and [`session::Observer`].
#![forbid(unsafe_code)]

pub mod api;
pub mod apiversions;
pub mod collect;
pub mod config;
pub mod enforce;
pub mod errors;
pub mod guard;
pub mod header;
pub mod labels;
pub mod policy;
pub mod reader;
pub mod rewrite;
pub mod session;
pub mod walk;

#[cfg(test)]
mod fuzz_tests;
#[cfg(test)]
mod policy_tests;
#[cfg(test)]
mod rewrite_tests;
#[cfg(test)]
mod session_tests;
#[cfg(test)]
pub(crate) mod testutil;
#[cfg(test)]
mod walk_tests;
