//! The wire: bounded reading, the API table, headers, the streaming schema walk, error names,
//! the ApiVersions clamp, and kafka-protocol decoding guarded by the walk. Depends on nothing
//! else in the crate.
pub mod api;
pub mod apiversions;
pub mod errors;
pub mod header;
pub mod kp;
pub mod reader;
pub mod walk;
