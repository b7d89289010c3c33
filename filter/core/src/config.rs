//! `pluginConfig`: parsed and validated once (at `on_configure`), then shared read-only by
//! every connection on the VM. Unknown fields are errors, and every error names the JSON path
//! and the reason, so `istioctl`/Envoy logs say exactly what to fix.

use serde::Deserialize;

/// Kafka's `socket.request.max.bytes` default (100 MiB): the largest frame a broker accepts.
pub const DEFAULT_MAX_FRAME_BYTES: u32 = 104_857_600;
/// Envoy's default per-connection buffer limit is 1 MiB (`per_connection_buffer_limit_bytes`);
/// past its high watermark Envoy stops reading. A frame the filter holds for rewriting must fit
/// well below it or the connection stalls, hence half of it by default.
pub const DEFAULT_MAX_BUFFERED_FRAME_BYTES: u32 = 524_288;
pub const DEFAULT_MAX_INFLIGHT: u32 = 4096;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub enum MalformedAction {
    /// Close the connection (Envoy `FlushWrite`). Safe: nothing unparsed gets past policy.
    #[default]
    Close,
    /// Stop parsing this connection and relay its bytes untouched from then on.
    Passthrough,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct Config {
    /// Largest frame accepted in either direction; larger or negative sizes are malformed.
    pub max_frame_bytes: u32,
    /// Largest frame the filter will hold whole in Envoy's buffer to rewrite it
    /// (ApiVersions today). A larger one is relayed unmodified and counted.
    pub max_buffered_frame_bytes: u32,
    /// Requests awaiting a response per connection.
    pub max_inflight_requests: u32,
    /// What to do with a malformed frame, a correlation mismatch or in-flight overflow.
    pub on_malformed: MalformedAction,
    /// Rewrite ApiVersions responses so clients never send versions the filter can't parse.
    pub clamp_api_versions: bool,
    /// Which metric families are on and how many label values each may take.
    pub metrics: MetricsConfig,
    /// Optional per-request JSON log line.
    pub access_log: AccessLogConfig,
    /// Produce/consume policy (see [`crate::policy`]). Absent: no enforcement.
    pub policy: Option<crate::policy::PolicySpec>,
    /// The validated policy, compiled at configure time.
    #[serde(skip)]
    pub compiled_policy: Option<std::rc::Rc<crate::policy::Policy>>,
    /// Broker address rewriting (see [`crate::rewrite`]). Absent: addresses pass unchanged.
    pub rewrite: Option<crate::rewrite::RewriteSpec>,
    #[serde(skip)]
    pub compiled_rewrite: Option<crate::rewrite::Rewriter>,
}

/// Metric families. Each one is a set of Prometheus series; see the README's reference.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Family {
    /// Requests/responses/bytes per API and version, latency per API.
    Api,
    /// Produce per topic: requests, batches, records, bytes.
    Produce,
    /// Fetch per topic: records and bytes returned.
    Fetch,
    /// Error codes per API, and per topic where the response names one.
    Errors,
    /// Consumer lag per topic and partition (gauge).
    Lag,
    /// JoinGroup/SyncGroup/Heartbeat/LeaveGroup/OffsetCommit per group.
    Groups,
    /// Requests per client id.
    Clients,
}

pub const ALL_FAMILIES: &[Family] = &[
    Family::Api,
    Family::Produce,
    Family::Fetch,
    Family::Errors,
    Family::Lag,
    Family::Groups,
    Family::Clients,
];

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct MetricsConfig {
    pub families: Vec<Family>,
    /// Distinct topic label values (process-wide); more fold into `__overflow__`.
    pub max_topics: u32,
    pub max_client_ids: u32,
    pub max_groups: u32,
    /// Distinct (topic, partition) lag series.
    pub max_lag_partitions: u32,
    /// Topic ids remembered from Metadata responses (process-wide, through shared data).
    pub max_topic_ids: u32,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig {
            families: ALL_FAMILIES.to_vec(),
            max_topics: 1000,
            max_client_ids: 200,
            max_groups: 200,
            max_lag_partitions: 2000,
            max_topic_ids: 10_000,
        }
    }
}

impl MetricsConfig {
    pub fn on(&self, f: Family) -> bool {
        self.families.contains(&f)
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct AccessLogConfig {
    pub enabled: bool,
    /// Fraction of requests logged, 0 < rate <= 1. Deterministic per connection: with 0.25
    /// every 4th request is logged.
    pub sample_rate: f64,
}

impl Eq for AccessLogConfig {}

impl Default for AccessLogConfig {
    fn default() -> Self {
        AccessLogConfig {
            enabled: false,
            sample_rate: 1.0,
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            max_frame_bytes: DEFAULT_MAX_FRAME_BYTES,
            max_buffered_frame_bytes: DEFAULT_MAX_BUFFERED_FRAME_BYTES,
            max_inflight_requests: DEFAULT_MAX_INFLIGHT,
            on_malformed: MalformedAction::Close,
            clamp_api_versions: true,
            metrics: MetricsConfig::default(),
            access_log: AccessLogConfig::default(),
            policy: None,
            compiled_policy: None,
            rewrite: None,
            compiled_rewrite: None,
        }
    }
}

pub use crate::config_error::ConfigError;

fn err(path: &str, reason: impl Into<String>) -> ConfigError {
    ConfigError {
        path: path.to_string(),
        reason: reason.into(),
    }
}

impl Config {
    /// Parse and validate. Empty input (no `pluginConfig`) means all defaults.
    pub fn from_json(bytes: &[u8]) -> Result<Config, ConfigError> {
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(Config::default());
        }
        // serde would accept a JSON array as a struct's fields in order; a config is an object.
        if bytes.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
            return Err(err(".", "pluginConfig must be a JSON object"));
        }
        let mut de = serde_json::Deserializer::from_slice(bytes);
        let cfg: Config = serde_path_to_error::deserialize(&mut de).map_err(|e| {
            let path = e.path().to_string();
            let path = if path == "." || path.is_empty() {
                ".".to_string()
            } else {
                format!(".{path}")
            };
            err(&path, e.into_inner().to_string())
        })?;
        // Deserializing reads one value and stops: without end() a stray `}` or `, "key": ...`
        // after it would be ignored and the rest of a mistyped pluginConfig silently dropped
        // (found by fuzz/, the config target).
        de.end()
            .map_err(|e| err(".", format!("after the JSON object: {e}")))?;
        let mut cfg = cfg;
        cfg.validate()?;
        if let Some(spec) = &cfg.policy {
            cfg.compiled_policy = Some(std::rc::Rc::new(crate::policy::Policy::compile(
                spec, ".policy",
            )?));
        }
        if let Some(spec) = &cfg.rewrite {
            cfg.compiled_rewrite = Some(crate::rewrite::Rewriter::compile(spec, ".rewrite")?);
        }
        Ok(cfg)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        if !(1024..=i32::MAX as u32).contains(&self.max_frame_bytes) {
            return Err(err(".maxFrameBytes", "must be between 1024 and 2147483647"));
        }
        if self.max_buffered_frame_bytes < 1024
            || self.max_buffered_frame_bytes > self.max_frame_bytes
        {
            return Err(err(
                ".maxBufferedFrameBytes",
                "must be at least 1024 and at most maxFrameBytes",
            ));
        }
        if !(1..=1_000_000).contains(&self.max_inflight_requests) {
            return Err(err(".maxInflightRequests", "must be between 1 and 1000000"));
        }
        let m = &self.metrics;
        for (path, v) in [
            (".metrics.maxTopics", m.max_topics),
            (".metrics.maxClientIds", m.max_client_ids),
            (".metrics.maxGroups", m.max_groups),
            (".metrics.maxLagPartitions", m.max_lag_partitions),
            (".metrics.maxTopicIds", m.max_topic_ids),
        ] {
            if !(1..=100_000).contains(&v) {
                return Err(err(path, "must be between 1 and 100000"));
            }
        }
        for (i, f) in m.families.iter().enumerate() {
            if m.families.iter().take(i).any(|g| g == f) {
                return Err(err(&format!(".metrics.families[{i}]"), "listed twice"));
            }
        }
        let rate = self.access_log.sample_rate;
        if !(rate > 0.0 && rate <= 1.0) {
            return Err(err(
                ".accessLog.sampleRate",
                "must be greater than 0 and at most 1",
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_empty() {
        assert_eq!(Config::from_json(b"").unwrap(), Config::default());
        assert_eq!(Config::from_json(b"{}").unwrap(), Config::default());
        let c = Config::from_json(
            br#"{"maxFrameBytes": 2048, "maxBufferedFrameBytes": 2048, "onMalformed": "passthrough"}"#,
        )
        .unwrap();
        assert_eq!(c.max_frame_bytes, 2048);
        assert_eq!(c.max_buffered_frame_bytes, 2048);
        assert!(Config::from_json(br#"{"maxFrameBytes": 2048}"#).is_err());
        assert_eq!(c.on_malformed, MalformedAction::Passthrough);
    }

    #[test]
    fn errors_name_the_path() {
        let e = Config::from_json(br#"{"maxFrameBytez": 1}"#).unwrap_err();
        assert!(e.reason.contains("unknown field `maxFrameBytez`"), "{e}");
        let e = Config::from_json(br#"{"maxFrameBytes": "big"}"#).unwrap_err();
        assert_eq!(e.path, ".maxFrameBytes", "{e}");
        let e = Config::from_json(br#"{"onMalformed": "explode"}"#).unwrap_err();
        assert_eq!(e.path, ".onMalformed", "{e}");
        let e = Config::from_json(br#"{"maxFrameBytes": 10}"#).unwrap_err();
        assert_eq!(e.path, ".maxFrameBytes");
        let e = Config::from_json(br#"{"maxInflightRequests": 0}"#).unwrap_err();
        assert_eq!(e.path, ".maxInflightRequests");
        let e = Config::from_json(b"[1]").unwrap_err();
        assert_eq!(e.path, ".");
        assert!(Config::from_json(b"{").is_err());
        let e =
            Config::from_json(br#"{"metrics": {"families": ["produce", "bogus"]}}"#).unwrap_err();
        assert_eq!(e.path, ".metrics.families[1]", "{e}");
        let e = Config::from_json(br#"{"metrics": {"maxTopics": 0}}"#).unwrap_err();
        assert_eq!(e.path, ".metrics.maxTopics", "{e}");
        let e = Config::from_json(br#"{"metrics": {"families": ["lag", "lag"]}}"#).unwrap_err();
        assert_eq!(e.path, ".metrics.families[1]", "{e}");
        let e =
            Config::from_json(br#"{"accessLog": {"enabled": true, "sampleRate": 0}}"#).unwrap_err();
        assert_eq!(e.path, ".accessLog.sampleRate", "{e}");
        let c = Config::from_json(br#"{"accessLog": {"enabled": true}, "metrics": {"families": ["api"], "maxTopics": 5}}"#).unwrap();
        assert!(c.access_log.enabled && c.access_log.sample_rate == 1.0);
        assert!(c.metrics.on(Family::Api) && !c.metrics.on(Family::Produce));
        assert_eq!(c.metrics.max_topics, 5);
        let e = Config::from_json(
            br#"{"policy": {"rules": [{"name": "a", "action": "deny", "operations": ["fly"]}]}}"#,
        )
        .unwrap_err();
        assert_eq!(e.path, ".policy.rules[0].operations[0]", "{e}");
        let e = Config::from_json(
            br#"{"policy": {"rules": [{"name": "a", "action": "deny", "topics": ["a[b"]}]}}"#,
        )
        .unwrap_err();
        assert_eq!(e.path, ".policy.rules[0].topics[0]", "{e}");
        let e = Config::from_json(br#"{"policy": {"mode": "dry"}}"#).unwrap_err();
        assert_eq!(e.path, ".policy.mode", "{e}");
    }
}
