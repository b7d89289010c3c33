//! The Envoy-faithful proxy-wasm test host for kafka-mesh-filter, and the `wasm-sidecar`
//! TCP relay built on it. See `host.rs` for each host behaviour and the source it follows.

pub mod host;
pub mod sidecar;
pub mod stats;
pub mod worker;
