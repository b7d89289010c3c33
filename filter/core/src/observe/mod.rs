//! What the filter reports: per-topic facts from walked bodies and the bounded label sets.
//! Depends on [`crate::codec`] only.
pub mod collect;
pub mod labels;
