//! Who may do what: the rule model (`model`, re-exported here), whole-request enforcement
//! of small requests ([`enforce`]) and the streaming Produce and Metadata guards ([`guard`]).
//! Depends on [`crate::codec`], [`crate::observe`] and [`crate::config_error`]; the session
//! drives it.
mod model;
pub use model::*;
pub mod enforce;
pub mod guard;
