//! The one error type of configuration: the JSON path and the reason, so a bad
//! `pluginConfig` is rejected at configure time with something a person can act on. A leaf
//! module: the policy and rewrite compilers return it without depending on [`crate::config`].
use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// JSON path of the offending value, e.g. `.maxFrameBytes` (`.` for the document).
    pub path: String,
    pub reason: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid pluginConfig at {}: {}", self.path, self.reason)
    }
}

impl std::error::Error for ConfigError {}
