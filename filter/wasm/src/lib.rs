//! proxy-wasm (ABI 0.2.1) glue for kafka-mesh-filter. Everything Kafka lives in
//! `kafka-mesh-core`; this crate only connects it to the host:
//!
//! - the root context parses and validates `pluginConfig` once in `on_configure` and defines
//!   the metrics once per VM (Envoy runs one VM per worker thread);
//! - each stream context feeds both directions of its connection to a core `Session`, reading
//!   host buffers by range through `proxy_wasm::hostcalls` directly (the SDK's trait helpers
//!   unwrap host errors, which would trap every connection on the worker).
//!
//! Kuadrant/wasm-shim follows the same split (pure core, thin glue, config validated once).

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use std::time::UNIX_EPOCH;

use kafka_mesh_core::api;
use kafka_mesh_core::apiversions::Clamp;
use kafka_mesh_core::collect::{FactSink, TopicRef};
use kafka_mesh_core::config::{Config, Family, MalformedAction};
use kafka_mesh_core::enforce::{Note, Outcome};
use kafka_mesh_core::errors;
use kafka_mesh_core::header::RequestHeader;
use kafka_mesh_core::labels::{self, LabelKind, Labels, SharedStore, TopicIds, OVERFLOW};
use kafka_mesh_core::policy::Identity;
use kafka_mesh_core::session::{
    AccessLog, Direction, HostBuffer, Malformed, Observer, Session, Verdict,
};
use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, RootContext, StreamContext};
use proxy_wasm::types::{Action, BufferType, ContextType, LogLevel, MetricType, PeerType};

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    // Replace the SDK's hook (it unwraps the log call): log at critical, never panic again.
    std::panic::set_hook(Box::new(|info| {
        let _ = hostcalls::log(LogLevel::Critical, &format!("kafka-mesh-filter panicked: {info}"));
    }));
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Root::default()) });
}}

fn log(level: LogLevel, msg: &str) {
    let _ = hostcalls::log(level, msg);
}

/// Whether the host keeps lines at `level` (Envoy answers its `wasm` logger's level,
/// `Context::getLogLevel` in envoyproxy/envoy `source/extensions/common/wasm/context.cc`).
/// A host that cannot tell keeps everything.
fn log_enabled(level: LogLevel) -> bool {
    hostcalls::get_log_level().map_or(true, |l| (l as u32) <= (level as u32))
}

fn now_ns() -> u64 {
    hostcalls::get_current_time()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// Metric ids that carry no labels, defined once per VM. Names carry no Envoy prefix: Envoy
/// puts Wasm metrics in its `wasmcustom` stat namespace (envoyproxy/envoy
/// `source/extensions/common/wasm/context.cc`, `Context::defineMetric`), which its Prometheus
/// output strips. Labelled series are defined on first use and cached in [`Registry`].
struct Fixed {
    connections_total: u32,
    connections_active: u32,
    unknown_api_total: u32,
    produce_acks0_total: u32,
    produce_acks0_answered_total: u32,
    api_versions_clamped_total: u32,
    rewrite_skipped_total: u32,
    node_endpoints_hidden_total: u32,
}

impl Fixed {
    fn define() -> Option<Fixed> {
        let c = |n: &str| hostcalls::define_metric(MetricType::Counter, n).ok();
        Some(Fixed {
            connections_total: c("kafka_mesh_connections_total")?,
            connections_active: hostcalls::define_metric(
                MetricType::Gauge,
                "kafka_mesh_connections_active",
            )
            .ok()?,
            unknown_api_total: c("kafka_mesh_unknown_api_total")?,
            produce_acks0_total: c("kafka_mesh_produce_acks0_total")?,
            produce_acks0_answered_total: c("kafka_mesh_produce_acks0_answered_total")?,
            api_versions_clamped_total: c("kafka_mesh_api_versions_clamped_total")?,
            rewrite_skipped_total: c("kafka_mesh_rewrite_skipped_total")?,
            node_endpoints_hidden_total: c("kafka_mesh_node_endpoints_hidden_total")?,
        })
    }
}

/// Envoy rejects counter increments <= 0 (`Context::incrementMetric`); never send one.
fn add(id: u32, n: u64) {
    if n > 0 {
        let _ = hostcalls::increment_metric(id, i64::try_from(n).unwrap_or(i64::MAX));
    }
}

/// Shared data through hostcalls (proxy-wasm-cpp-host `src/shared_data.cc`: one store per
/// vm_id, CAS tokens per key).
struct HostShared;

impl SharedStore for HostShared {
    fn get(&mut self, key: &str) -> Option<(Vec<u8>, u32)> {
        match hostcalls::get_shared_data(key) {
            // A key that holds the empty value comes back as no bytes with a CAS token: it
            // exists (the SDK maps a zero-length answer to `None`).
            Ok((v, Some(cas))) => Some((v.unwrap_or_default(), cas)),
            _ => None,
        }
    }

    fn set(&mut self, key: &str, value: &[u8], cas: u32) -> bool {
        let cas = if cas == 0 { None } else { Some(cas) };
        hostcalls::set_shared_data(key, Some(value), cas).is_ok()
    }
}

/// Per-VM metric state shared by the root and every stream context on the worker.
struct Registry {
    cfg: Rc<Config>,
    fixed: Fixed,
    /// Labelled series: full stat name to metric id, defined once.
    ids: HashMap<String, u32>,
    labels: Labels,
    topic_ids: TopicIds,
    /// Token bucket for policy log lines: at most `LOG_BURST` at once, refilled at
    /// `LOG_PER_SEC` per second, so a denied client in a retry loop cannot flood Envoy's log.
    log_tokens: f64,
    log_last_ns: u64,
    log_dropped: u64,
}

const LOG_BURST: f64 = 20.0;
const LOG_PER_SEC: f64 = 5.0;

impl Registry {
    fn metric(&mut self, ty: MetricType, family: &str, tags: &[(&str, &str)]) -> Option<u32> {
        let name = labels::stat_name(family, tags);
        if let Some(id) = self.ids.get(&name) {
            return Some(*id);
        }
        let id = hostcalls::define_metric(ty, &name).ok()?;
        self.ids.insert(name, id);
        Some(id)
    }

    fn count(&mut self, family: &str, tags: &[(&str, &str)], n: u64) {
        if n == 0 {
            return;
        }
        if let Some(id) = self.metric(MetricType::Counter, family, tags) {
            add(id, n);
        }
    }

    /// A bounded label value: the value itself, or [`OVERFLOW`] (counted) past the bound.
    fn bounded(&mut self, kind: LabelKind, value: &str) -> String {
        let m = &self.cfg.metrics;
        let max = match kind {
            LabelKind::Topic => m.max_topics,
            LabelKind::ClientId => m.max_client_ids,
            LabelKind::Group => m.max_groups,
            LabelKind::LagSeries => m.max_lag_partitions,
        };
        if self.labels.admit(&mut HostShared, kind, value, max) {
            value.to_string()
        } else {
            self.count(
                "kafka_mesh_label_overflow_total",
                &[("label", kind.as_str())],
                1,
            );
            OVERFLOW.to_string()
        }
    }

    fn topic(&mut self, t: &TopicRef) -> String {
        let raw = match t {
            TopicRef::Name(n) => n.clone(),
            TopicRef::Id(id) => {
                let max = self.cfg.metrics.max_topic_ids;
                self.topic_ids
                    .resolve(&mut HostShared, id, max)
                    .unwrap_or_else(|| t.label())
            }
        };
        self.bounded(LabelKind::Topic, &raw)
    }

    fn on(&self, f: Family) -> bool {
        self.cfg.metrics.on(f)
    }
}

#[derive(Default)]
struct Root {
    config: Option<Rc<Config>>,
    registry: Option<Rc<RefCell<Registry>>>,
}

impl Context for Root {}

impl RootContext for Root {
    fn on_configure(&mut self, _size: usize) -> bool {
        let bytes = match hostcalls::get_buffer(BufferType::PluginConfiguration, 0, usize::MAX) {
            Ok(b) => b.unwrap_or_default(),
            Err(e) => {
                log(
                    LogLevel::Error,
                    &format!("kafka-mesh-filter: cannot read pluginConfig: {e:?}"),
                );
                return false;
            }
        };
        let cfg = match Config::from_json(&bytes) {
            Ok(cfg) => Rc::new(cfg),
            Err(e) => {
                log(LogLevel::Error, &format!("kafka-mesh-filter: {e}"));
                return false;
            }
        };
        self.config = Some(cfg.clone());
        // The shared keys that label bounds and topic ids update by CAS exist before any
        // connection (labels.rs, "Insert-if-absent"; Envoy runs this first in its canary VM).
        labels::init_shared(&mut HostShared);
        if let Some(reg) = self.registry.as_ref() {
            let Ok(mut r) = reg.try_borrow_mut() else {
                return false;
            };
            r.cfg = cfg;
        } else {
            {
                let Some(fixed) = Fixed::define() else {
                    log(LogLevel::Error, "kafka-mesh-filter: cannot define metrics");
                    return false;
                };
                self.registry = Some(Rc::new(RefCell::new(Registry {
                    cfg,
                    fixed,
                    ids: HashMap::new(),
                    labels: Labels::default(),
                    topic_ids: TopicIds::default(),
                    log_tokens: LOG_BURST,
                    log_last_ns: 0,
                    log_dropped: 0,
                })));
            }
        }
        log(LogLevel::Info, "kafka-mesh-filter: configured");
        true
    }

    fn create_stream_context(&self, _context_id: u32) -> Option<Box<dyn StreamContext>> {
        let (Some(cfg), Some(registry)) = (self.config.clone(), self.registry.clone()) else {
            return None;
        };
        let policy_on = cfg.compiled_policy.is_some();
        Some(Box::new(Conn {
            session: Session::new(cfg),
            registry,
            counted: Cell::new(false),
            policy_on,
            principal_tries: 0,
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::StreamContext)
    }
}

struct Conn {
    session: Session,
    registry: Rc<RefCell<Registry>>,
    counted: Cell<bool>,
    /// A policy is configured (only then is the principal needed).
    policy_on: bool,
    /// Downstream data callbacks left on which to look for the principal again.
    principal_tries: u8,
}

/// How many downstream data callbacks look for a principal that was not there at
/// `on_new_connection`: the handshake is over before the first decrypted bytes, so the
/// first look finds it; the others cover a host that publishes it late.
const PRINCIPAL_TRIES: u8 = 3;

/// One direction's Envoy buffer, reached only by range.
struct WasmBuffer {
    kind: BufferType,
    len: usize,
}

impl HostBuffer for WasmBuffer {
    fn len(&self) -> usize {
        self.len
    }

    fn read(&mut self, start: usize, len: usize) -> Option<Vec<u8>> {
        match hostcalls::get_buffer(self.kind, start, len) {
            Ok(b) => Some(b.unwrap_or_default()),
            Err(_) => None,
        }
    }

    fn replace_front(&mut self, drain: usize, data: &[u8]) -> bool {
        if hostcalls::set_buffer(self.kind, 0, drain, data).is_err() {
            return false;
        }
        self.len = self.len.saturating_sub(drain).saturating_add(data.len());
        true
    }
}

struct GlueObserver<'a> {
    r: &'a mut Registry,
}

fn version_str(v: i16) -> String {
    v.to_string()
}

impl FactSink for GlueObserver<'_> {
    fn produce_topic(&mut self, t: &TopicRef, batches: u64, records: u64, bytes: u64) {
        if !self.r.on(Family::Produce) {
            return;
        }
        let topic = self.r.topic(t);
        let tags = [("topic", topic.as_str())];
        self.r.count("kafka_mesh_produce_requests_total", &tags, 1);
        self.r
            .count("kafka_mesh_produce_batches_total", &tags, batches);
        self.r
            .count("kafka_mesh_produce_records_total", &tags, records);
        self.r.count("kafka_mesh_produce_bytes_total", &tags, bytes);
    }

    fn fetch_topic(&mut self, t: &TopicRef, records: u64, bytes: u64) {
        if !self.r.on(Family::Fetch) {
            return;
        }
        let topic = self.r.topic(t);
        let tags = [("topic", topic.as_str())];
        self.r.count("kafka_mesh_fetch_responses_total", &tags, 1);
        self.r
            .count("kafka_mesh_fetch_records_total", &tags, records);
        self.r.count("kafka_mesh_fetch_bytes_total", &tags, bytes);
    }

    fn error(&mut self, api_key: i16, t: Option<&TopicRef>, code: i16) {
        if !self.r.on(Family::Errors) {
            return;
        }
        let api = api::api_name(api_key);
        let error = errors::error_name(code);
        self.r.count(
            "kafka_mesh_errors_total",
            &[("api", api), ("error", error)],
            1,
        );
        if let Some(t) = t {
            let topic = self.r.topic(t);
            self.r.count(
                "kafka_mesh_topic_errors_total",
                &[("api", api), ("topic", topic.as_str()), ("error", error)],
                1,
            );
        }
    }

    fn lag(&mut self, t: &TopicRef, partition: i32, lag: i64) {
        if !self.r.on(Family::Lag) {
            return;
        }
        let topic = self.r.topic(t);
        let series = format!("{topic}/{partition}");
        if self.r.bounded(LabelKind::LagSeries, &series) == OVERFLOW {
            return;
        }
        let p = partition.to_string();
        if let Some(id) = self.r.metric(
            MetricType::Gauge,
            "kafka_mesh_consumer_lag",
            &[("topic", topic.as_str()), ("partition", p.as_str())],
        ) {
            // Envoy: recordMetric on a gauge sets it (context.cc, Context::recordMetric).
            let _ = hostcalls::record_metric(id, u64::try_from(lag).unwrap_or(0));
        }
    }

    fn group_request(&mut self, api_key: i16, group: &str) {
        if !self.r.on(Family::Groups) {
            return;
        }
        let group = self.r.bounded(LabelKind::Group, group);
        self.r.count(
            "kafka_mesh_group_requests_total",
            &[("api", api::api_name(api_key)), ("group", group.as_str())],
            1,
        );
    }

    fn topic_id(&mut self, id: [u8; 16], name: &str) {
        let max = self.r.cfg.metrics.max_topic_ids;
        self.r.topic_ids.learn(&mut HostShared, id, name, max);
    }
}

impl Observer for GlueObserver<'_> {
    fn request(&mut self, h: &RequestHeader<'_>, frame_bytes: u64) {
        if self.r.on(Family::Api) {
            let v = version_str(h.api_version);
            let api = api::api_name(h.api_key);
            self.r.count(
                "kafka_mesh_requests_total",
                &[("api", api), ("version", v.as_str())],
                1,
            );
            self.r.count(
                "kafka_mesh_request_bytes_total",
                &[("api", api)],
                frame_bytes,
            );
        }
        if self.r.on(Family::Clients) {
            let cid = String::from_utf8_lossy(h.client_id.unwrap_or(b""));
            let cid = self.r.bounded(LabelKind::ClientId, &cid);
            self.r.count(
                "kafka_mesh_client_requests_total",
                &[("client_id", cid.as_str())],
                1,
            );
        }
    }

    fn response(&mut self, k: i16, v: i16, frame_bytes: u64, latency_ns: u64) {
        if !self.r.on(Family::Api) {
            return;
        }
        let api = api::api_name(k);
        let vs = version_str(v);
        self.r.count(
            "kafka_mesh_responses_total",
            &[("api", api), ("version", vs.as_str())],
            1,
        );
        self.r.count(
            "kafka_mesh_response_bytes_total",
            &[("api", api)],
            frame_bytes,
        );
        if let Some(id) = self.r.metric(
            MetricType::Histogram,
            "kafka_mesh_request_latency_ms",
            &[("api", api)],
        ) {
            let _ = hostcalls::record_metric(id, latency_ns / 1_000_000);
        }
    }

    fn unknown_api(&mut self, api_key: i16, api_version: i16) {
        add(self.r.fixed.unknown_api_total, 1);
        log(
            LogLevel::Debug,
            &format!("kafka-mesh-filter: passing unknown api_key={api_key} version={api_version}"),
        );
    }

    fn produce_acks0(&mut self) {
        add(self.r.fixed.produce_acks0_total, 1);
    }

    fn produce_acks0_answered(&mut self) {
        add(self.r.fixed.produce_acks0_answered_total, 1);
    }

    fn api_versions_clamped(&mut self, clamps: &[Clamp]) {
        add(self.r.fixed.api_versions_clamped_total, 1);
        log(
            LogLevel::Debug,
            &format!("kafka-mesh-filter: clamped ApiVersions {clamps:?}"),
        );
    }

    fn node_endpoints_hidden(&mut self, _api_key: i16, count: u32) {
        add(self.r.fixed.node_endpoints_hidden_total, u64::from(count));
    }

    fn rewrite_skipped(&mut self, api_key: i16, frame_bytes: u64) {
        add(self.r.fixed.rewrite_skipped_total, 1);
        log(
            LogLevel::Warn,
            &format!(
                "kafka-mesh-filter: api_key={api_key} response of {frame_bytes} bytes exceeds maxBufferedFrameBytes; relayed unmodified"
            ),
        );
    }

    fn malformed(&mut self, dir: Direction, what: &Malformed, action: MalformedAction) {
        self.r.count(
            "kafka_mesh_malformed_total",
            &[("direction", dir.as_str()), ("kind", what.kind())],
            1,
        );
        let act = match action {
            MalformedAction::Close => "closing the connection",
            MalformedAction::Passthrough => "relaying the rest of the connection unparsed",
        };
        log(
            LogLevel::Warn,
            &format!(
                "kafka-mesh-filter: malformed {} ({}): {what}; {act}",
                dir.as_str(),
                what.kind()
            ),
        );
    }

    fn policy_note(&mut self, note: &Note) {
        self.r.count(
            "kafka_mesh_policy_decisions_total",
            &[
                ("rule", note.rule.as_str()),
                ("decision", note.outcome.as_str()),
            ],
            1,
        );
        if note.outcome == Outcome::Allow {
            return;
        }
        let now = now_ns();
        let r = &mut *self.r;
        let elapsed = now.saturating_sub(r.log_last_ns) as f64 / 1e9;
        r.log_last_ns = now;
        r.log_tokens = (r.log_tokens + elapsed * LOG_PER_SEC).min(LOG_BURST);
        if r.log_tokens < 1.0 {
            r.log_dropped += 1;
            return;
        }
        r.log_tokens -= 1.0;
        let dropped = std::mem::take(&mut r.log_dropped);
        let more = if dropped > 0 {
            format!(" ({dropped} similar lines suppressed)")
        } else {
            String::new()
        };
        // At warn: an Istio sidecar logs at `warning` by default (pilot-agent
        // `--proxyLogLevel`), and a denial is what an operator needs to see without turning
        // the wasm component up. The token bucket above keeps it from flooding.
        log(
            LogLevel::Warn,
            &format!(
                "kafka-mesh-filter policy {}: {} by rule {:?}, client gets {}{more}",
                note.outcome.as_str(),
                note.what,
                note.rule,
                errors::error_name(note.code)
            ),
        );
    }

    fn topic_name(&mut self, id: &[u8; 16]) -> Option<String> {
        let max = self.r.cfg.metrics.max_topic_ids;
        self.r.topic_ids.resolve(&mut HostShared, id, max)
    }

    fn access_log(&mut self, entry: &AccessLog) {
        // Info, Envoy's level for access logs; dropped by the host below its `wasm` log level
        // (Istio: `warning` unless `sidecar.istio.io/componentLogLevel: "wasm:info"`), so
        // skip the formatting when the line would be dropped (Envoy `Context::getLogLevel`).
        if !log_enabled(LogLevel::Info) {
            return;
        }
        log(
            LogLevel::Info,
            &format!(
                "kafka-mesh-filter access {}",
                entry.to_json(&mut |id| self.topic_name(id))
            ),
        );
    }
}

impl Conn {
    fn on_data(&mut self, dir: Direction, kind: BufferType, size: usize, eos: bool) -> Action {
        let mut buf = WasmBuffer { kind, len: size };
        // Single-threaded VM: the registry is never borrowed across callbacks.
        let Ok(mut reg) = self.registry.try_borrow_mut() else {
            return Action::Continue;
        };
        let mut obs = GlueObserver { r: &mut reg };
        match self.session.on_data(dir, &mut buf, eos, now_ns(), &mut obs) {
            Verdict::Continue => Action::Continue,
            Verdict::Pause => Action::Pause,
            Verdict::Close => {
                // Envoy: closeStream(Downstream) closes the client connection with FlushWrite;
                // the TCP proxy then closes the upstream side.
                let _ = hostcalls::close_downstream();
                Action::Pause
            }
        }
    }

    fn release(&self) {
        if self.counted.replace(false) {
            if let Ok(r) = self.registry.try_borrow() {
                let _ = hostcalls::increment_metric(r.fixed.connections_active, -1);
            }
        }
    }
}

/// The connection's identity from Envoy attributes (envoyproxy/envoy
/// `source/extensions/filters/common/expr/context.cc`: `connection.uri_san_peer_certificate`
/// is the peer certificate's first URI SAN, the SPIFFE id under Istio mTLS;
/// `source.address` is "ip:port").
fn identity() -> Identity {
    let prop = |path: Vec<&str>| -> Option<String> {
        match hostcalls::get_property(path) {
            Ok(Some(v)) if !v.is_empty() => Some(String::from_utf8_lossy(&v).into_owned()),
            _ => None,
        }
    };
    let source = prop(vec!["source", "address"]).and_then(|a| {
        a.parse::<std::net::SocketAddr>()
            .map(|s| s.ip())
            .ok()
            .or_else(|| a.parse::<std::net::IpAddr>().ok())
    });
    Identity {
        principal: principal(),
        sasl_user: None,
        source,
        client_id: None,
    }
}

/// `connection.uri_san_peer_certificate`: empty until the downstream TLS handshake is done.
fn principal() -> Option<String> {
    match hostcalls::get_property(vec!["connection", "uri_san_peer_certificate"]) {
        Ok(Some(v)) if !v.is_empty() => Some(String::from_utf8_lossy(&v).into_owned()),
        _ => None,
    }
}

impl Context for Conn {
    fn on_done(&mut self) -> bool {
        self.release();
        true
    }
}

impl StreamContext for Conn {
    fn on_new_connection(&mut self) -> Action {
        let id = identity();
        // Under a policy, look again at the first data callbacks if the principal is not
        // known yet (it never is here under Istio mTLS: the handshake comes later).
        self.principal_tries = if id.principal.is_none() && self.policy_on {
            PRINCIPAL_TRIES
        } else {
            0
        };
        self.session.set_identity(id);
        if let Ok(r) = self.registry.try_borrow() {
            add(r.fixed.connections_total, 1);
            let _ = hostcalls::increment_metric(r.fixed.connections_active, 1);
            self.counted.set(true);
        }
        Action::Continue
    }

    fn on_downstream_data(&mut self, data_size: usize, end_of_stream: bool) -> Action {
        // The peer certificate exists only once the TLS handshake is done, which is after
        // onNewConnection and before the first decrypted bytes (envoy#40137): read the
        // principal here, on the first few callbacks while it is still unknown.
        if self.principal_tries > 0 {
            self.principal_tries -= 1;
            if let Some(p) = principal() {
                self.session.set_principal(Some(p));
                self.principal_tries = 0;
            }
        }
        self.on_data(
            Direction::Request,
            BufferType::DownstreamData,
            data_size,
            end_of_stream,
        )
    }

    fn on_upstream_data(&mut self, data_size: usize, end_of_stream: bool) -> Action {
        self.on_data(
            Direction::Response,
            BufferType::UpstreamData,
            data_size,
            end_of_stream,
        )
    }

    fn on_downstream_close(&mut self, _peer_type: PeerType) {}

    fn on_upstream_close(&mut self, _peer_type: PeerType) {}
}
