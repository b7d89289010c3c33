//! kafka-mesh-core: the pure-Rust heart of kafka-mesh-filter.
//!
//! No proxy-wasm here: the codec ([`reader`], [`header`], [`api`]), the per-connection
//! [`session`] state machine and the [`config`] are tested natively; the wasm crate is glue.
//! The host is reached only through [`session::HostBuffer`] and [`session::Observer`].
#![forbid(unsafe_code)]

pub mod codec;
pub mod config;
pub mod config_error;
pub mod observe;
pub mod policy;
pub mod rewrite;
pub mod session;

#[cfg(any(test, feature = "fuzzing"))]
pub mod fuzzing;
#[cfg(any(test, feature = "testkit"))]
pub mod testkit;
#[cfg(test)]
mod tests;

// The modules' former flat paths, for the glue, the test host and the benches.
pub use codec::{api, apiversions, errors, header, reader, walk};
pub use observe::{collect, labels};
pub use policy::{enforce, guard};
