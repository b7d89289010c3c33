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

use std::cell::Cell;
use std::rc::Rc;
use std::time::UNIX_EPOCH;

use kafka_mesh_core::apiversions::Clamp;
use kafka_mesh_core::config::{Config, MalformedAction};
use kafka_mesh_core::header::RequestHeader;
use kafka_mesh_core::session::{Direction, HostBuffer, Malformed, Observer, Session, Verdict};
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

fn now_ns() -> u64 {
    hostcalls::get_current_time()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// Metric ids, defined once per VM. Names carry no Envoy prefix: Envoy puts Wasm metrics in
/// its `wasmcustom` stat namespace (envoyproxy/envoy `source/extensions/common/wasm/context.cc`,
/// `Context::defineMetric`), which its Prometheus output strips.
struct Metrics {
    connections_total: u32,
    connections_active: u32,
    requests_total: u32,
    responses_total: u32,
    request_bytes_total: u32,
    response_bytes_total: u32,
    unknown_api_total: u32,
    produce_acks0_total: u32,
    produce_acks0_answered_total: u32,
    api_versions_clamped_total: u32,
    rewrite_skipped_total: u32,
    malformed_total: u32,
    request_latency_ms: u32,
}

impl Metrics {
    fn define() -> Option<Metrics> {
        let c = |n: &str| hostcalls::define_metric(MetricType::Counter, n).ok();
        Some(Metrics {
            connections_total: c("kafka_mesh_connections_total")?,
            connections_active: hostcalls::define_metric(
                MetricType::Gauge,
                "kafka_mesh_connections_active",
            )
            .ok()?,
            requests_total: c("kafka_mesh_requests_total")?,
            responses_total: c("kafka_mesh_responses_total")?,
            request_bytes_total: c("kafka_mesh_request_bytes_total")?,
            response_bytes_total: c("kafka_mesh_response_bytes_total")?,
            unknown_api_total: c("kafka_mesh_unknown_api_total")?,
            produce_acks0_total: c("kafka_mesh_produce_acks0_total")?,
            produce_acks0_answered_total: c("kafka_mesh_produce_acks0_answered_total")?,
            api_versions_clamped_total: c("kafka_mesh_api_versions_clamped_total")?,
            rewrite_skipped_total: c("kafka_mesh_rewrite_skipped_total")?,
            malformed_total: c("kafka_mesh_malformed_total")?,
            request_latency_ms: hostcalls::define_metric(
                MetricType::Histogram,
                "kafka_mesh_request_latency_ms",
            )
            .ok()?,
        })
    }

    /// Envoy rejects counter increments <= 0 (`Context::incrementMetric`); never send one.
    fn add(id: u32, n: u64) {
        if n > 0 {
            let _ = hostcalls::increment_metric(id, i64::try_from(n).unwrap_or(i64::MAX));
        }
    }
}

#[derive(Default)]
struct Root {
    config: Option<Rc<Config>>,
    metrics: Option<Rc<Metrics>>,
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
        match Config::from_json(&bytes) {
            Ok(cfg) => {
                self.config = Some(Rc::new(cfg));
            }
            Err(e) => {
                log(LogLevel::Error, &format!("kafka-mesh-filter: {e}"));
                return false;
            }
        }
        if self.metrics.is_none() {
            match Metrics::define() {
                Some(m) => self.metrics = Some(Rc::new(m)),
                None => {
                    log(LogLevel::Error, "kafka-mesh-filter: cannot define metrics");
                    return false;
                }
            }
        }
        log(LogLevel::Info, "kafka-mesh-filter: configured");
        true
    }

    fn create_stream_context(&self, _context_id: u32) -> Option<Box<dyn StreamContext>> {
        let (Some(cfg), Some(metrics)) = (self.config.clone(), self.metrics.clone()) else {
            return None;
        };
        Some(Box::new(Conn {
            session: Session::new(cfg),
            metrics,
            counted: Cell::new(false),
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::StreamContext)
    }
}

struct Conn {
    session: Session,
    metrics: Rc<Metrics>,
    counted: Cell<bool>,
}

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
    m: &'a Metrics,
}

impl Observer for GlueObserver<'_> {
    fn request(&mut self, _h: &RequestHeader<'_>, frame_bytes: u64) {
        Metrics::add(self.m.requests_total, 1);
        Metrics::add(self.m.request_bytes_total, frame_bytes);
    }

    fn response(&mut self, _k: i16, _v: i16, frame_bytes: u64, latency_ns: u64) {
        Metrics::add(self.m.responses_total, 1);
        Metrics::add(self.m.response_bytes_total, frame_bytes);
        let _ = hostcalls::record_metric(self.m.request_latency_ms, latency_ns / 1_000_000);
    }

    fn unknown_api(&mut self, api_key: i16, api_version: i16) {
        Metrics::add(self.m.unknown_api_total, 1);
        log(
            LogLevel::Debug,
            &format!("kafka-mesh-filter: passing unknown api_key={api_key} version={api_version}"),
        );
    }

    fn produce_acks0(&mut self) {
        Metrics::add(self.m.produce_acks0_total, 1);
    }

    fn produce_acks0_answered(&mut self) {
        Metrics::add(self.m.produce_acks0_answered_total, 1);
    }

    fn api_versions_clamped(&mut self, clamps: &[Clamp]) {
        Metrics::add(self.m.api_versions_clamped_total, 1);
        log(
            LogLevel::Debug,
            &format!("kafka-mesh-filter: clamped ApiVersions {clamps:?}"),
        );
    }

    fn rewrite_skipped(&mut self, api_key: i16, frame_bytes: u64) {
        Metrics::add(self.m.rewrite_skipped_total, 1);
        log(
            LogLevel::Warn,
            &format!(
                "kafka-mesh-filter: api_key={api_key} response of {frame_bytes} bytes exceeds maxBufferedFrameBytes; relayed unmodified"
            ),
        );
    }

    fn malformed(&mut self, dir: Direction, what: &Malformed, action: MalformedAction) {
        Metrics::add(self.m.malformed_total, 1);
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
}

impl Conn {
    fn on_data(&mut self, dir: Direction, kind: BufferType, size: usize, eos: bool) -> Action {
        let mut buf = WasmBuffer { kind, len: size };
        let mut obs = GlueObserver { m: &self.metrics };
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
            let _ = hostcalls::increment_metric(self.metrics.connections_active, -1);
        }
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
        Metrics::add(self.metrics.connections_total, 1);
        let _ = hostcalls::increment_metric(self.metrics.connections_active, 1);
        self.counted.set(true);
        Action::Continue
    }

    fn on_downstream_data(&mut self, data_size: usize, end_of_stream: bool) -> Action {
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
