//! A proxy-wasm ABI 0.2.1 host on wasmtime that behaves as Envoy does for a network filter.
//!
//! Each behaviour names the source it follows:
//! - [cpp-host] proxy-wasm/proxy-wasm-cpp-host `src/exports.cc`, `src/context.cc`, `src/wasm.cc`
//! - [envoy] envoyproxy/envoy `source/extensions/common/wasm/context.cc` (Buffer::copyFrom,
//!   Context::onData/onWrite/closeStream/continueStream, defineMetric/incrementMetric)
//! - [spec] proxy-wasm/spec `abi-versions/v0.2.1/README.md`
//!
//! One [`Vm`] is one Wasm instance, as Envoy runs one per worker thread; stats, shared data and
//! logs live in a process-wide [`Process`] shared by all VMs, as in Envoy.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, Context as _, Result};
use wasmtime::{Caller, Engine, Extern, Instance, Linker, Memory, Module, Store, TypedFunc, Val};

use crate::stats::{Kind, Stats, CUSTOM_NAMESPACE};

/// proxy-wasm `WasmResult` codes [spec].
pub mod status {
    pub const OK: i32 = 0;
    pub const NOT_FOUND: i32 = 1;
    pub const BAD_ARGUMENT: i32 = 2;
    pub const INVALID_MEMORY_ACCESS: i32 = 6;
    pub const EMPTY: i32 = 7;
    pub const CAS_MISMATCH: i32 = 8;
    pub const UNIMPLEMENTED: i32 = 12;
}

/// proxy-wasm buffer types [spec].
pub mod buffer {
    pub const DOWNSTREAM_DATA: i32 = 2;
    pub const UPSTREAM_DATA: i32 = 3;
    pub const VM_CONFIGURATION: i32 = 6;
    pub const PLUGIN_CONFIGURATION: i32 = 7;
    pub const MAX: i32 = 8;
}

/// An Istio sidecar's log level: pilot-agent starts Envoy with `--proxyLogLevel` `warning`
/// for every logger, `wasm` included, so Wasm `info` lines are dropped unless the pod sets
/// `sidecar.istio.io/componentLogLevel: "wasm:info"` (Envoy levels: 0 trace .. 5 critical).
pub const ISTIO_PROXY_LOG_LEVEL: i32 = 3;

/// Envoy's default `per_connection_buffer_limit_bytes`: past it Envoy stops reading.
pub const DEFAULT_BUFFER_LIMIT: usize = 1024 * 1024;

/// What one VM cost, for `make bench` (measurement only: counting never changes what a call
/// does or returns). Host calls and copied bytes are always counted; wasm fuel only when the
/// engine was built with `Config::consume_fuel` (then the store gets a budget it never
/// exhausts), because fuel instrumentation slows the VM down.
#[derive(Debug, Clone, Default)]
pub struct VmCounters {
    /// Calls the module made to each host function (import), by name.
    pub host_calls: BTreeMap<&'static str, u64>,
    /// Bytes the host copied into VM memory, by the host function that returned them
    /// (`proxy_get_buffer_bytes`, `proxy_get_property`, shared data, ...). The small
    /// out-parameters (sizes, pointers, 8-byte timestamps, metric values) are not counted.
    pub copied_in: BTreeMap<&'static str, u64>,
    /// Bytes the host read out of VM memory, by host function (`proxy_set_buffer_bytes`,
    /// `proxy_log`, property paths, metric names, ...).
    pub copied_out: BTreeMap<&'static str, u64>,
    /// Calls the host made into the module (callbacks), by export name.
    pub callbacks: BTreeMap<&'static str, u64>,
    /// Wasm fuel consumed per callback (wasmtime: about one unit per executed wasm
    /// instruction; `nop`, `drop`, `block`, `loop` cost 0). Empty unless `fuel_enabled`.
    pub fuel: BTreeMap<&'static str, u64>,
    /// All fuel consumed since the VM started, including `_initialize`.
    pub fuel_total: u64,
    pub fuel_enabled: bool,
    /// New bytes handed to `proxy_on_downstream_data` / `proxy_on_upstream_data`: the traffic
    /// the filter saw, [downstream, upstream].
    pub data_bytes: [u64; 2],
    /// The host function running now, to attribute copied bytes.
    current_import: &'static str,
}

impl VmCounters {
    pub fn host_calls_total(&self) -> u64 {
        self.host_calls.values().sum()
    }

    /// Add another VM's counters (a process total over workers).
    pub fn add(&mut self, o: &VmCounters) {
        for (mine, theirs) in [
            (&mut self.host_calls, &o.host_calls),
            (&mut self.copied_in, &o.copied_in),
            (&mut self.copied_out, &o.copied_out),
            (&mut self.callbacks, &o.callbacks),
            (&mut self.fuel, &o.fuel),
        ] {
            for (k, v) in theirs {
                *mine.entry(k).or_default() += v;
            }
        }
        self.fuel_total += o.fuel_total;
        self.fuel_enabled |= o.fuel_enabled;
        self.data_bytes[0] += o.data_bytes[0];
        self.data_bytes[1] += o.data_bytes[1];
    }

    pub fn to_json(&self) -> serde_json::Value {
        let map = |m: &BTreeMap<&'static str, u64>| {
            serde_json::Value::Object(
                m.iter()
                    .map(|(k, v)| ((*k).to_string(), serde_json::Value::from(*v)))
                    .collect(),
            )
        };
        serde_json::json!({
            "host_calls_total": self.host_calls_total(),
            "host_calls": map(&self.host_calls),
            "copied_in_total": self.copied_in.values().sum::<u64>(),
            "copied_in": map(&self.copied_in),
            "copied_out_total": self.copied_out.values().sum::<u64>(),
            "copied_out": map(&self.copied_out),
            "callbacks_total": self.callbacks.values().sum::<u64>(),
            "callbacks": map(&self.callbacks),
            "fuel_enabled": self.fuel_enabled,
            "fuel_total": self.fuel_total,
            "fuel": map(&self.fuel),
            "data_bytes_downstream": self.data_bytes[0],
            "data_bytes_upstream": self.data_bytes[1],
        })
    }
}

/// Measurement: count a host call and remember which one is running.
fn hit(c: &mut Caller<'_, HostState>, name: &'static str) {
    let k = &mut c.data_mut().counters;
    *k.host_calls.entry(name).or_default() += 1;
    k.current_import = name;
}

fn count_copy(c: &mut Caller<'_, HostState>, into_vm: bool, n: usize) {
    let k = &mut c.data_mut().counters;
    let m = if into_vm {
        &mut k.copied_in
    } else {
        &mut k.copied_out
    };
    *m.entry(k.current_import).or_default() += n as u64;
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogLine {
    pub level: i32,
    pub message: String,
}

/// A shared queue: its name and the pending items.
type SharedQueue = (String, VecDeque<Vec<u8>>);

/// Process-wide state shared by every VM: Envoy's stats store, `SharedData` and log sink.
#[derive(Default)]
pub struct Process {
    pub stats: Mutex<Stats>,
    shared_data: Mutex<HashMap<String, (Vec<u8>, u32)>>,
    next_cas: Mutex<u32>,
    queues: Mutex<HashMap<u32, SharedQueue>>,
    pub logs: Mutex<Vec<LogLine>>,
    /// The level of Envoy's `wasm` logger (0 trace .. 5 critical); `None` is an Istio
    /// sidecar's default, [`ISTIO_PROXY_LOG_LEVEL`]. Lines below it are dropped, as Envoy's
    /// `Context::log` logs through that logger, and `proxy_get_log_level` answers it.
    pub log_level: Mutex<Option<i32>>,
    /// Echo kept logs at or above this level to stderr (Envoy log levels: 0 trace .. 5 critical).
    pub echo_level: Mutex<Option<i32>>,
    /// Measurement only: the latest [`VmCounters`] snapshot each worker published, by worker.
    pub vm_counters: Mutex<BTreeMap<usize, VmCounters>>,
    /// Fault injection (`wasm-sidecar` admin `/fault/trap`): this many of the next calls into
    /// any VM fail as traps do ([`Vm::fail_next_call`]).
    pub inject_traps: std::sync::atomic::AtomicU32,
}

impl Process {
    pub fn new() -> Arc<Process> {
        Arc::new(Process::default())
    }

    pub fn logs_containing(&self, needle: &str) -> Vec<LogLine> {
        self.logs
            .lock()
            .map(|l| {
                l.iter()
                    .filter(|x| x.message.contains(needle))
                    .cloned()
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The `wasm` logger's level now.
    pub fn log_level(&self) -> i32 {
        self.log_level
            .lock()
            .ok()
            .and_then(|l| *l)
            .unwrap_or(ISTIO_PROXY_LOG_LEVEL)
    }

    /// Set the `wasm` logger's level, as `--proxyLogLevel` or the
    /// `sidecar.istio.io/componentLogLevel: "wasm:LEVEL"` annotation do in Istio.
    pub fn set_log_level(&self, level: i32) {
        if let Ok(mut l) = self.log_level.lock() {
            *l = Some(level);
        }
    }

    fn log(&self, level: i32, message: String) {
        // [envoy] Context::log writes through the `wasm` logger (ENVOY_LOG_TO_LOGGER): a line
        // below its level never appears anywhere.
        if level < self.log_level() {
            return;
        }
        if let Ok(Some(echo)) = self.echo_level.lock().map(|g| *g) {
            if level >= echo {
                eprintln!("[wasm log level={level}] {message}");
            }
        }
        if let Ok(mut l) = self.logs.lock() {
            if l.len() < 100_000 {
                l.push(LogLine { level, message });
            }
        }
    }
}

/// Envoy's `envoy.extensions.wasm.v3.FailurePolicy`, what Istio sends for
/// `WasmPlugin.spec.failStrategy` (istio/istio `pilot/pkg/model/extensions.go`,
/// `buildWasmConfig`: FAIL_CLOSE -> FAIL_CLOSED, FAIL_OPEN -> FAIL_OPEN, FAIL_RELOAD ->
/// FAIL_RELOAD; an unset strategy is FAIL_CLOSE, so Istio always sends one). What each means
/// for a new connection is modelled by [`crate::worker::Worker`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum FailurePolicy {
    /// Also what `UNSPECIFIED` resolves to (envoyproxy/envoy
    /// `source/extensions/common/wasm/wasm.cc`, `PluginConfig::PluginConfig`).
    #[default]
    FailClosed,
    FailOpen,
    FailReload,
}

impl FailurePolicy {
    /// Istio's `failStrategy` spelling, or Envoy's.
    pub fn parse(s: &str) -> Option<FailurePolicy> {
        match s {
            "FAIL_CLOSE" | "FAIL_CLOSED" => Some(FailurePolicy::FailClosed),
            "FAIL_OPEN" => Some(FailurePolicy::FailOpen),
            "FAIL_RELOAD" => Some(FailurePolicy::FailReload),
            _ => None,
        }
    }
}

/// What Envoy knows about the plugin: its code, configuration and failure policy.
#[derive(Clone)]
pub struct PluginSpec {
    pub plugin_config: Vec<u8>,
    pub vm_config: Vec<u8>,
    /// The deprecated `PluginConfig.fail_open` bool, the only source of cpp-host's
    /// `PluginBase::fail_open_` (envoyproxy/envoy `source/extensions/common/wasm/plugin.h`,
    /// `Plugin::Plugin` passes `config.fail_open()`). It decides what connections that are
    /// already on a VM get when it fails (cpp-host `CHECK_FAIL`): relayed when set, closed
    /// otherwise. Istio never sets it; it sends `failure_policy`. Setting it also makes the
    /// policy FAIL_OPEN, as Envoy's `PluginConfig` does.
    pub fail_open: bool,
    /// `PluginConfig.failure_policy`: what a *new* connection gets when the worker's VM has
    /// failed (see [`crate::worker::Worker`]).
    pub failure_policy: FailurePolicy,
    /// FAIL_RELOAD's `reload_config.backoff.base_interval` (Envoy's default 1 s).
    pub reload_base_ms: u64,
    pub name: String,
}

impl PluginSpec {
    /// The policy Envoy's `PluginConfig` resolves: the legacy bool means FAIL_OPEN.
    pub fn effective_policy(&self) -> FailurePolicy {
        if self.fail_open {
            FailurePolicy::FailOpen
        } else {
            self.failure_policy
        }
    }
}

impl Default for PluginSpec {
    fn default() -> Self {
        PluginSpec {
            plugin_config: Vec::new(),
            vm_config: Vec::new(),
            fail_open: false,
            failure_policy: FailurePolicy::FailClosed,
            reload_base_ms: 1000,
            name: "kafka-mesh-filter".into(),
        }
    }
}

#[derive(Default)]
struct ConnState {
    down: Vec<u8>,
    up: Vec<u8>,
    /// Properties Envoy would answer for this connection (`source.address`,
    /// `connection.uri_san_peer_certificate`, ...), keyed by dot-joined path.
    props: HashMap<String, Vec<u8>>,
    /// Properties that exist only once the downstream TLS handshake has completed (the peer
    /// certificate's SANs): Envoy calls the network filters' `onNewConnection` while the
    /// connection is created (`ServerConnectionImpl::initializeReadFilters`, envoyproxy/envoy
    /// `source/common/network/connection_impl.cc`), before the handshake, so
    /// `connection.uri_san_peer_certificate` is empty then (`source/extensions/filters/common/
    /// expr/context.cc`; envoy#40137). Decrypted bytes reach the filter only after the
    /// handshake, so these join `props` just before the first downstream data callback.
    after_handshake: HashMap<String, Vec<u8>>,
    close_requested: bool,
    resume_downstream: bool,
    /// `proxy_on_upstream_connection_close` has run (at the upstream's end of stream), so the
    /// final close does not run it again.
    upstream_closed: bool,
}

struct HostState {
    process: Arc<Process>,
    spec: PluginSpec,
    plugin_props: HashMap<String, Vec<u8>>,
    /// The context the current VM call is for, and the buffer it may touch.
    current: u32,
    effective: Option<u32>,
    active_buffer: Option<i32>,
    in_configure: bool,
    in_vm_start: bool,
    conns: HashMap<u32, ConnState>,
    metrics: HashMap<u32, (Kind, String)>,
    next_metric: [u32; 3],
    tick_period_ms: u32,
    memory: Option<Memory>,
    alloc: Option<TypedFunc<i32, i32>>,
    status: (u32, Vec<u8>),
    counters: VmCounters,
}

/// What a data callback did with the connection's buffer.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct DataResult {
    /// Bytes handed on (the whole buffer on Continue).
    pub forwarded: Vec<u8>,
    /// The filter returned Pause (StopIteration): the bytes stay buffered.
    pub paused: bool,
    /// The filter (or a VM failure, fail-closed) asked to close the connection.
    pub close: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dir {
    Downstream,
    Upstream,
}

/// proxy-wasm `CloseType` (the Rust SDK's `PeerType`), the argument of the connection close
/// callbacks: who ended the connection. Envoy passes `Local` or `Remote` for the downstream
/// connection's close event and `Unknown` for the upstream's end of stream ([envoy]
/// `Context::onEvent`, `Context::onWrite`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Peer {
    Unknown = 0,
    Local = 1,
    Remote = 2,
}

pub struct Vm {
    store: Store<HostState>,
    instance: Instance,
    root_id: u32,
    next_id: u32,
    failed: bool,
    pub fail_reason: Option<String>,
    /// Fault injection: the next call into the module fails as a trap does.
    fail_next: bool,
}

/// Compile once, instantiate per worker.
pub fn compile(engine: &Engine, wasm: &[u8]) -> Result<Module> {
    Module::new(engine, wasm).context("compiling the filter module")
}

fn mem(caller: &mut Caller<'_, HostState>) -> Option<Memory> {
    match caller.get_export("memory") {
        Some(Extern::Memory(m)) => Some(m),
        _ => None,
    }
}

fn read_bytes(caller: &mut Caller<'_, HostState>, ptr: i32, len: i32) -> Option<Vec<u8>> {
    let m = mem(caller)?;
    let (ptr, len) = (ptr as u32 as usize, len as u32 as usize);
    let b = m
        .data(&caller)
        .get(ptr..ptr.checked_add(len)?)
        .map(<[u8]>::to_vec)?;
    count_copy(caller, false, b.len());
    Some(b)
}

fn write_u32(caller: &mut Caller<'_, HostState>, ptr: i32, v: u32) -> bool {
    write_bytes(caller, ptr, &v.to_le_bytes())
}

fn write_bytes(caller: &mut Caller<'_, HostState>, ptr: i32, b: &[u8]) -> bool {
    let Some(m) = mem(caller) else { return false };
    let ptr = ptr as u32 as usize;
    match m.data_mut(&mut *caller).get_mut(ptr..ptr + b.len()) {
        Some(slot) => {
            slot.copy_from_slice(b);
            true
        }
        None => false,
    }
}

/// Copy `data` into memory the module allocates (`proxy_on_memory_allocate`, the way
/// cpp-host's `WasmBase::copyToPointerSize` does) and store pointer and size.
fn return_bytes(
    caller: &mut Caller<'_, HostState>,
    data: &[u8],
    ptr_ptr: i32,
    size_ptr: i32,
) -> Result<i32> {
    if data.is_empty() {
        if !write_u32(caller, ptr_ptr, 0) || !write_u32(caller, size_ptr, 0) {
            return Ok(status::INVALID_MEMORY_ACCESS);
        }
        return Ok(status::OK);
    }
    let alloc = caller
        .data()
        .alloc
        .clone()
        .ok_or_else(|| anyhow!("no proxy_on_memory_allocate"))?;
    let p = alloc.call(&mut *caller, data.len() as i32)?;
    if p == 0 || !write_bytes(caller, p, data) {
        return Ok(status::INVALID_MEMORY_ACCESS);
    }
    count_copy(caller, true, data.len());
    if !write_u32(caller, ptr_ptr, p as u32) || !write_u32(caller, size_ptr, data.len() as u32) {
        return Ok(status::INVALID_MEMORY_ACCESS);
    }
    Ok(status::OK)
}

/// A property path is NUL-separated tokens ([spec] proxy_get_property); join them with '.'.
fn property_key(path: &[u8]) -> String {
    path.split(|b| *b == 0)
        .filter(|t| !t.is_empty())
        .map(|t| String::from_utf8_lossy(t).into_owned())
        .collect::<Vec<_>>()
        .join(".")
}

fn context_id(s: &HostState) -> u32 {
    s.effective.unwrap_or(s.current)
}

fn linker(engine: &Engine) -> Result<Linker<HostState>> {
    let mut l: Linker<HostState> = Linker::new(engine);

    // ---- logging, time, status ------------------------------------------------------------
    l.func_wrap(
        "env",
        "proxy_log",
        |mut c: Caller<'_, HostState>, level: i32, p: i32, n: i32| -> i32 {
            hit(&mut c, "proxy_log");
            let Some(b) = read_bytes(&mut c, p, n) else {
                return status::INVALID_MEMORY_ACCESS;
            };
            // [envoy] Context::log: "wasm log <plugin>: <message>"
            let msg = format!(
                "wasm log {}: {}",
                c.data().spec.name,
                String::from_utf8_lossy(&b)
            );
            c.data().process.log(level, msg);
            status::OK
        },
    )?;
    l.func_wrap(
        "env",
        "proxy_get_log_level",
        |mut c: Caller<'_, HostState>, p: i32| -> i32 {
            hit(&mut c, "proxy_get_log_level");
            // [envoy] Context::getLogLevel answers the `wasm` logger's level: in an Istio
            // sidecar `warning` unless raised (see `ISTIO_PROXY_LOG_LEVEL`).
            let level = c.data().process.log_level();
            if write_u32(&mut c, p, level as u32) {
                status::OK
            } else {
                status::INVALID_MEMORY_ACCESS
            }
        },
    )?;
    l.func_wrap(
        "env",
        "proxy_get_current_time_nanoseconds",
        |mut c: Caller<'_, HostState>, p: i32| -> i32 {
            hit(&mut c, "proxy_get_current_time_nanoseconds");
            let ns = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64);
            if write_bytes(&mut c, p, &ns.to_le_bytes()) {
                status::OK
            } else {
                status::INVALID_MEMORY_ACCESS
            }
        },
    )?;
    l.func_wrap(
        "env",
        "proxy_set_tick_period_milliseconds",
        |mut c: Caller<'_, HostState>, ms: i32| -> i32 {
            hit(&mut c, "proxy_set_tick_period_milliseconds");
            c.data_mut().tick_period_ms = ms as u32;
            status::OK
        },
    )?;
    l.func_wrap(
        "env",
        "proxy_get_status",
        |mut c: Caller<'_, HostState>, code_p: i32, pp: i32, sp: i32| -> Result<i32> {
            hit(&mut c, "proxy_get_status");
            let (code, msg) = c.data().status.clone();
            if !write_u32(&mut c, code_p, code) {
                return Ok(status::INVALID_MEMORY_ACCESS);
            }
            return_bytes(&mut c, &msg, pp, sp)
        },
    )?;
    l.func_wrap(
        "env",
        "proxy_set_effective_context",
        |mut c: Caller<'_, HostState>, id: i32| -> i32 {
            hit(&mut c, "proxy_set_effective_context");
            // [cpp-host] exports.cc set_effective_context: unknown ids are BadArgument.
            let id = id as u32;
            let s = c.data_mut();
            if id != s.current && !s.conns.contains_key(&id) && id != 1 {
                return status::BAD_ARGUMENT;
            }
            s.effective = Some(id);
            status::OK
        },
    )?;
    l.func_wrap("env", "proxy_done", |mut c: Caller<'_, HostState>| -> i32 {
        hit(&mut c, "proxy_done");
        status::OK
    })?;

    // ---- buffers ----------------------------------------------------------------------------
    l.func_wrap(
        "env",
        "proxy_get_buffer_bytes",
        |mut c: Caller<'_, HostState>,
         ty: i32,
         start: i32,
         len: i32,
         pp: i32,
         sp: i32|
         -> Result<i32> {
            hit(&mut c, "proxy_get_buffer_bytes");
            // [cpp-host] exports.cc get_buffer_bytes
            if !(0..=buffer::MAX).contains(&ty) {
                return Ok(status::BAD_ARGUMENT);
            }
            let (start, mut len) = (start as u32 as usize, len as u32 as usize);
            let data: Vec<u8> = {
                let s = c.data();
                let buf: Option<&[u8]> = match ty {
                    buffer::DOWNSTREAM_DATA | buffer::UPSTREAM_DATA
                        if s.active_buffer == Some(ty) =>
                    {
                        s.conns.get(&context_id(s)).map(|cs| {
                            if ty == buffer::DOWNSTREAM_DATA {
                                &cs.down[..]
                            } else {
                                &cs.up[..]
                            }
                        })
                    }
                    buffer::PLUGIN_CONFIGURATION if s.in_configure => {
                        Some(&s.spec.plugin_config[..])
                    }
                    buffer::VM_CONFIGURATION if s.in_vm_start => Some(&s.spec.vm_config[..]),
                    _ => None,
                };
                let Some(buf) = buf else {
                    return Ok(status::NOT_FOUND);
                };
                // "Check for overflow." (start + length is computed on 32-bit words)
                if (start as u32).checked_add(len as u32).is_none() {
                    return Ok(status::BAD_ARGUMENT);
                }
                // "Don't overread."
                if start > buf.len() {
                    len = 0;
                } else if start + len > buf.len() {
                    len = buf.len() - start;
                }
                buf.get(start..start + len)
                    .map(<[u8]>::to_vec)
                    .unwrap_or_default()
            };
            return_bytes(&mut c, &data, pp, sp)
        },
    )?;
    l.func_wrap(
        "env",
        "proxy_set_buffer_bytes",
        |mut c: Caller<'_, HostState>, ty: i32, start: i32, size: i32, p: i32, n: i32| -> i32 {
            hit(&mut c, "proxy_set_buffer_bytes");
            if !(0..=buffer::MAX).contains(&ty) {
                return status::BAD_ARGUMENT;
            }
            let Some(data) = read_bytes(&mut c, p, n) else {
                return status::INVALID_MEMORY_ACCESS;
            };
            let s = c.data_mut();
            if !matches!(ty, buffer::DOWNSTREAM_DATA | buffer::UPSTREAM_DATA)
                || s.active_buffer != Some(ty)
            {
                // configuration buffers are immutable ([envoy] const_buffer_instance_)
                return if matches!(ty, buffer::VM_CONFIGURATION | buffer::PLUGIN_CONFIGURATION) {
                    status::BAD_ARGUMENT
                } else {
                    status::NOT_FOUND
                };
            }
            let id = context_id(s);
            let Some(cs) = s.conns.get_mut(&id) else {
                return status::NOT_FOUND;
            };
            let buf = if ty == buffer::DOWNSTREAM_DATA {
                &mut cs.down
            } else {
                &mut cs.up
            };
            // [envoy] Buffer::copyFrom: start 0 drains `size` then prepends; start at or past
            // the end appends; anything else is BadArgument (no mid-buffer splice).
            let (start, size) = (start as u32 as usize, size as u32 as usize);
            if start == 0 {
                let drain = size.min(buf.len());
                buf.drain(..drain);
                buf.splice(0..0, data);
                status::OK
            } else if start >= buf.len() {
                buf.extend_from_slice(&data);
                status::OK
            } else {
                status::BAD_ARGUMENT
            }
        },
    )?;
    l.func_wrap(
        "env",
        "proxy_get_buffer_status",
        |mut c: Caller<'_, HostState>, ty: i32, lp: i32, fp: i32| -> i32 {
            hit(&mut c, "proxy_get_buffer_status");
            let s = c.data();
            let len = match ty {
                buffer::DOWNSTREAM_DATA | buffer::UPSTREAM_DATA if s.active_buffer == Some(ty) => {
                    s.conns.get(&context_id(s)).map(|cs| {
                        if ty == buffer::DOWNSTREAM_DATA {
                            cs.down.len()
                        } else {
                            cs.up.len()
                        }
                    })
                }
                buffer::PLUGIN_CONFIGURATION if s.in_configure => Some(s.spec.plugin_config.len()),
                _ => None,
            };
            let Some(len) = len else {
                return status::NOT_FOUND;
            };
            if write_u32(&mut c, lp, len as u32) && write_u32(&mut c, fp, 0) {
                status::OK
            } else {
                status::INVALID_MEMORY_ACCESS
            }
        },
    )?;

    // ---- properties -------------------------------------------------------------------------
    l.func_wrap(
        "env",
        "proxy_get_property",
        |mut c: Caller<'_, HostState>, p: i32, n: i32, pp: i32, sp: i32| -> Result<i32> {
            hit(&mut c, "proxy_get_property");
            let Some(path) = read_bytes(&mut c, p, n) else {
                return Ok(status::INVALID_MEMORY_ACCESS);
            };
            let key = property_key(&path);
            let value = {
                let s = c.data();
                s.conns
                    .get(&context_id(s))
                    .and_then(|cs| cs.props.get(&key))
                    .or_else(|| s.plugin_props.get(&key))
                    .cloned()
            };
            match value {
                Some(v) => return_bytes(&mut c, &v, pp, sp),
                None => Ok(status::NOT_FOUND),
            }
        },
    )?;
    l.func_wrap(
        "env",
        "proxy_set_property",
        |mut c: Caller<'_, HostState>, p: i32, n: i32, vp: i32, vn: i32| -> i32 {
            hit(&mut c, "proxy_set_property");
            let (Some(path), Some(v)) = (read_bytes(&mut c, p, n), read_bytes(&mut c, vp, vn))
            else {
                return status::INVALID_MEMORY_ACCESS;
            };
            let key = property_key(&path);
            let s = c.data_mut();
            let id = context_id(s);
            match s.conns.get_mut(&id) {
                Some(cs) => {
                    cs.props.insert(key, v);
                    status::OK
                }
                None => status::NOT_FOUND,
            }
        },
    )?;

    // ---- streams ----------------------------------------------------------------------------
    l.func_wrap(
        "env",
        "proxy_close_stream",
        |mut c: Caller<'_, HostState>, ty: i32| -> i32 {
            hit(&mut c, "proxy_close_stream");
            // [envoy] Context::closeStream: Downstream and Upstream both close the downstream
            // connection with FlushWrite, deferred until the VM call returns.
            let s = c.data_mut();
            let id = context_id(s);
            match (ty, s.conns.get_mut(&id)) {
                (2 | 3, Some(cs)) => {
                    cs.close_requested = true;
                    status::OK
                }
                (0..=3, _) => status::OK,
                _ => status::BAD_ARGUMENT,
            }
        },
    )?;
    l.func_wrap(
        "env",
        "proxy_continue_stream",
        |mut c: Caller<'_, HostState>, ty: i32| -> i32 {
            hit(&mut c, "proxy_continue_stream");
            // [envoy] Context::continueStream: Downstream -> continueReading(); Upstream is
            // Unimplemented.
            let s = c.data_mut();
            let id = context_id(s);
            match ty {
                2 => {
                    if let Some(cs) = s.conns.get_mut(&id) {
                        cs.resume_downstream = true;
                    }
                    status::OK
                }
                3 => status::UNIMPLEMENTED,
                0 | 1 => status::OK,
                _ => status::BAD_ARGUMENT,
            }
        },
    )?;

    // ---- metrics ----------------------------------------------------------------------------
    l.func_wrap(
        "env",
        "proxy_define_metric",
        |mut c: Caller<'_, HostState>, ty: i32, p: i32, n: i32, idp: i32| -> i32 {
            hit(&mut c, "proxy_define_metric");
            let kind = match ty {
                0 => Kind::Counter,
                1 => Kind::Gauge,
                2 => Kind::Histogram,
                _ => return status::BAD_ARGUMENT,
            };
            let Some(name) = read_bytes(&mut c, p, n) else {
                return status::INVALID_MEMORY_ACCESS;
            };
            let full = format!("{CUSTOM_NAMESPACE}.{}", String::from_utf8_lossy(&name));
            let s = c.data_mut();
            // [envoy] Wasm::nextCounterMetricId etc.: the type lives in the low 2 bits
            // (kMetricTypeMask = 0x3) and ids step by kMetricIdIncrement = 0x4.
            let slot = ty as usize;
            let id = s.next_metric[slot];
            s.next_metric[slot] += 4;
            s.metrics.insert(id, (kind, full.clone()));
            if let Ok(mut st) = s.process.stats.lock() {
                st.define(kind, &full);
            }
            if write_u32(&mut c, idp, id) {
                status::OK
            } else {
                status::INVALID_MEMORY_ACCESS
            }
        },
    )?;
    l.func_wrap(
        "env",
        "proxy_increment_metric",
        |mut c: Caller<'_, HostState>, id: i32, offset: i64| -> i32 {
            hit(&mut c, "proxy_increment_metric");
            let s = c.data();
            let Some((kind, name)) = s.metrics.get(&(id as u32)) else {
                return status::NOT_FOUND;
            };
            let Ok(mut st) = s.process.stats.lock() else {
                return status::NOT_FOUND;
            };
            match kind {
                // [envoy] Context::incrementMetric: counters only go up; offset <= 0 is BadArgument
                Kind::Counter if offset > 0 => {
                    *st.counters.entry(name.clone()).or_default() += offset as u64;
                    status::OK
                }
                Kind::Counter => status::BAD_ARGUMENT,
                Kind::Gauge => {
                    *st.gauges.entry(name.clone()).or_default() += offset;
                    status::OK
                }
                Kind::Histogram => status::BAD_ARGUMENT,
            }
        },
    )?;
    l.func_wrap(
        "env",
        "proxy_record_metric",
        |mut c: Caller<'_, HostState>, id: i32, value: i64| -> i32 {
            hit(&mut c, "proxy_record_metric");
            let s = c.data();
            let Some((kind, name)) = s.metrics.get(&(id as u32)) else {
                return status::NOT_FOUND;
            };
            let Ok(mut st) = s.process.stats.lock() else {
                return status::NOT_FOUND;
            };
            match kind {
                Kind::Counter => *st.counters.entry(name.clone()).or_default() += value as u64,
                Kind::Gauge => {
                    st.gauges.insert(name.clone(), value);
                }
                Kind::Histogram => st
                    .histograms
                    .entry(name.clone())
                    .or_default()
                    .values
                    .push(value as u64),
            }
            status::OK
        },
    )?;
    l.func_wrap(
        "env",
        "proxy_get_metric",
        |mut c: Caller<'_, HostState>, id: i32, rp: i32| -> i32 {
            hit(&mut c, "proxy_get_metric");
            let v = {
                let s = c.data();
                let Some((kind, name)) = s.metrics.get(&(id as u32)) else {
                    return status::NOT_FOUND;
                };
                let Ok(st) = s.process.stats.lock() else {
                    return status::NOT_FOUND;
                };
                match kind {
                    Kind::Counter => st.counters.get(name).copied().unwrap_or(0),
                    Kind::Gauge => st.gauges.get(name).copied().unwrap_or(0) as u64,
                    Kind::Histogram => return status::BAD_ARGUMENT,
                }
            };
            if write_bytes(&mut c, rp, &v.to_le_bytes()) {
                status::OK
            } else {
                status::INVALID_MEMORY_ACCESS
            }
        },
    )?;

    // ---- shared data and queues ([cpp-host] src/shared_data.cc, src/shared_queue.cc) ------
    l.func_wrap(
        "env",
        "proxy_get_shared_data",
        |mut c: Caller<'_, HostState>,
         kp: i32,
         kn: i32,
         pp: i32,
         sp: i32,
         casp: i32|
         -> Result<i32> {
            hit(&mut c, "proxy_get_shared_data");
            let Some(key) = read_bytes(&mut c, kp, kn) else {
                return Ok(status::INVALID_MEMORY_ACCESS);
            };
            let found = c
                .data()
                .process
                .shared_data
                .lock()
                .ok()
                .and_then(|m| m.get(&String::from_utf8_lossy(&key).into_owned()).cloned());
            let Some((value, cas)) = found else {
                return Ok(status::NOT_FOUND);
            };
            if !write_u32(&mut c, casp, cas) {
                return Ok(status::INVALID_MEMORY_ACCESS);
            }
            return_bytes(&mut c, &value, pp, sp)
        },
    )?;
    l.func_wrap(
        "env",
        "proxy_set_shared_data",
        |mut c: Caller<'_, HostState>, kp: i32, kn: i32, vp: i32, vn: i32, cas: i32| -> i32 {
            hit(&mut c, "proxy_set_shared_data");
            let (Some(key), Some(value)) = (read_bytes(&mut c, kp, kn), read_bytes(&mut c, vp, vn))
            else {
                return status::INVALID_MEMORY_ACCESS;
            };
            let p = c.data().process.clone();
            let Ok(mut m) = p.shared_data.lock() else {
                return status::NOT_FOUND;
            };
            let key = String::from_utf8_lossy(&key).into_owned();
            if let Some((_, cur)) = m.get(&key) {
                if cas != 0 && cas as u32 != *cur {
                    return status::CAS_MISMATCH;
                }
            }
            let next = {
                let Ok(mut n) = p.next_cas.lock() else {
                    return status::NOT_FOUND;
                };
                *n = n.wrapping_add(1).max(1);
                *n
            };
            m.insert(key, (value, next));
            status::OK
        },
    )?;
    l.func_wrap(
        "env",
        "proxy_register_shared_queue",
        |mut c: Caller<'_, HostState>, np: i32, nn: i32, idp: i32| -> i32 {
            hit(&mut c, "proxy_register_shared_queue");
            let Some(name) = read_bytes(&mut c, np, nn) else {
                return status::INVALID_MEMORY_ACCESS;
            };
            let name = String::from_utf8_lossy(&name).into_owned();
            let id = {
                let Ok(mut q) = c.data().process.queues.lock() else {
                    return status::NOT_FOUND;
                };
                if let Some((id, _)) = q.iter().find(|(_, (n, _))| *n == name) {
                    *id
                } else {
                    let id = q.len() as u32 + 1;
                    q.insert(id, (name, VecDeque::new()));
                    id
                }
            };
            if write_u32(&mut c, idp, id) {
                status::OK
            } else {
                status::INVALID_MEMORY_ACCESS
            }
        },
    )?;
    l.func_wrap(
        "env",
        "proxy_resolve_shared_queue",
        |mut c: Caller<'_, HostState>, _vp: i32, _vn: i32, np: i32, nn: i32, idp: i32| -> i32 {
            hit(&mut c, "proxy_resolve_shared_queue");
            let Some(name) = read_bytes(&mut c, np, nn) else {
                return status::INVALID_MEMORY_ACCESS;
            };
            let name = String::from_utf8_lossy(&name).into_owned();
            let id = c
                .data()
                .process
                .queues
                .lock()
                .ok()
                .and_then(|q| q.iter().find(|(_, (n, _))| *n == name).map(|(id, _)| *id));
            match id {
                Some(id) if write_u32(&mut c, idp, id) => status::OK,
                Some(_) => status::INVALID_MEMORY_ACCESS,
                None => status::NOT_FOUND,
            }
        },
    )?;
    l.func_wrap(
        "env",
        "proxy_enqueue_shared_queue",
        |mut c: Caller<'_, HostState>, id: i32, vp: i32, vn: i32| -> i32 {
            hit(&mut c, "proxy_enqueue_shared_queue");
            let Some(v) = read_bytes(&mut c, vp, vn) else {
                return status::INVALID_MEMORY_ACCESS;
            };
            match c
                .data()
                .process
                .queues
                .lock()
                .ok()
                .as_mut()
                .and_then(|q| q.get_mut(&(id as u32)).map(|e| e.1.push_back(v)))
            {
                Some(()) => status::OK,
                None => status::NOT_FOUND,
            }
        },
    )?;
    l.func_wrap(
        "env",
        "proxy_dequeue_shared_queue",
        |mut c: Caller<'_, HostState>, id: i32, pp: i32, sp: i32| -> Result<i32> {
            hit(&mut c, "proxy_dequeue_shared_queue");
            let item = {
                let Ok(mut q) = c.data().process.queues.lock() else {
                    return Ok(status::NOT_FOUND);
                };
                let Some(e) = q.get_mut(&(id as u32)) else {
                    return Ok(status::NOT_FOUND);
                };
                e.1.pop_front()
            };
            match item {
                Some(v) => return_bytes(&mut c, &v, pp, sp),
                None => Ok(status::EMPTY),
            }
        },
    )?;

    // ---- HTTP-only and callout imports ------------------------------------------------------
    // The Rust SDK's dispatcher imports these even for network filters. Header maps do not
    // exist on a TCP connection: Envoy answers NotFound there ([envoy] Context::getMap returns
    // nullptr for network contexts). HTTP and gRPC callouts are not emulated: calling one traps
    // with its name, so a test can never pass by silently ignoring it.
    l.func_wrap(
        "env",
        "proxy_get_header_map_value",
        |mut c: Caller<'_, HostState>, _t: i32, _kp: i32, _kn: i32, _pp: i32, _sp: i32| -> i32 {
            hit(&mut c, "proxy_get_header_map_value");
            status::NOT_FOUND
        },
    )?;
    l.func_wrap(
        "env",
        "proxy_get_header_map_pairs",
        |mut c: Caller<'_, HostState>, _t: i32, _pp: i32, _sp: i32| -> i32 {
            hit(&mut c, "proxy_get_header_map_pairs");
            status::NOT_FOUND
        },
    )?;
    for name in [
        "proxy_http_call",
        "proxy_grpc_call",
        "proxy_grpc_stream",
        "proxy_grpc_send",
        "proxy_grpc_cancel",
        "proxy_grpc_close",
        "proxy_call_foreign_function",
    ] {
        l.func_new(
            "env",
            name,
            callout_type(engine, name),
            move |_c, _args, _rets| {
                bail!("test host: {name} is not emulated (no HTTP/gRPC callouts in this host)")
            },
        )?;
    }

    // ---- WASI subset ([cpp-host] src/exports.cc wasi_unstable_*) ------------------------------
    l.func_wrap(
        "wasi_snapshot_preview1",
        "fd_write",
        |mut c: Caller<'_, HostState>, fd: i32, iovs: i32, n: i32, written: i32| -> i32 {
            hit(&mut c, "fd_write");
            // stdout -> info, stderr -> error log; other fds are EBADF (8).
            if fd != 1 && fd != 2 {
                return 8;
            }
            let mut out = Vec::new();
            for i in 0..n {
                let Some(iov) = read_bytes(&mut c, iovs + i * 8, 8) else {
                    return 21;
                };
                let p = i32::from_le_bytes([iov[0], iov[1], iov[2], iov[3]]);
                let l = i32::from_le_bytes([iov[4], iov[5], iov[6], iov[7]]);
                let Some(b) = read_bytes(&mut c, p, l) else {
                    return 21;
                };
                out.extend(b);
            }
            let level = if fd == 1 { 2 } else { 4 };
            c.data()
                .process
                .log(level, String::from_utf8_lossy(&out).into_owned());
            if write_u32(&mut c, written, out.len() as u32) {
                0
            } else {
                21
            }
        },
    )?;
    l.func_wrap(
        "wasi_snapshot_preview1",
        "environ_sizes_get",
        |mut c: Caller<'_, HostState>, cp: i32, sp: i32| -> i32 {
            hit(&mut c, "environ_sizes_get");
            if write_u32(&mut c, cp, 0) && write_u32(&mut c, sp, 0) {
                0
            } else {
                21
            }
        },
    )?;
    l.func_wrap(
        "wasi_snapshot_preview1",
        "environ_get",
        |mut c: Caller<'_, HostState>, _a: i32, _b: i32| -> i32 {
            hit(&mut c, "environ_get");
            0
        },
    )?;
    l.func_wrap(
        "wasi_snapshot_preview1",
        "args_sizes_get",
        |mut c: Caller<'_, HostState>, cp: i32, sp: i32| -> i32 {
            hit(&mut c, "args_sizes_get");
            if write_u32(&mut c, cp, 0) && write_u32(&mut c, sp, 0) {
                0
            } else {
                21
            }
        },
    )?;
    l.func_wrap(
        "wasi_snapshot_preview1",
        "args_get",
        |mut c: Caller<'_, HostState>, _a: i32, _b: i32| -> i32 {
            hit(&mut c, "args_get");
            0
        },
    )?;
    l.func_wrap(
        "wasi_snapshot_preview1",
        "clock_time_get",
        |mut c: Caller<'_, HostState>, _id: i32, _prec: i64, rp: i32| -> i32 {
            hit(&mut c, "clock_time_get");
            let ns = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64);
            if write_bytes(&mut c, rp, &ns.to_le_bytes()) {
                0
            } else {
                21
            }
        },
    )?;
    l.func_wrap(
        "wasi_snapshot_preview1",
        "random_get",
        |mut c: Caller<'_, HostState>, p: i32, n: i32| -> i32 {
            hit(&mut c, "random_get");
            let mut seed = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64)
                | 1;
            let bytes: Vec<u8> = (0..n)
                .map(|_| {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    seed as u8
                })
                .collect();
            if write_bytes(&mut c, p, &bytes) {
                count_copy(&mut c, true, bytes.len());
                0
            } else {
                21
            }
        },
    )?;
    l.func_wrap(
        "wasi_snapshot_preview1",
        "proc_exit",
        |mut c: Caller<'_, HostState>, code: i32| -> Result<()> {
            hit(&mut c, "proc_exit");
            bail!("proc_exit({code})")
        },
    )?;
    Ok(l)
}

fn callout_type(engine: &Engine, name: &str) -> wasmtime::FuncType {
    use wasmtime::ValType::I32;
    let n = match name {
        "proxy_http_call" => 10,
        "proxy_grpc_call" => 12,
        "proxy_grpc_stream" => 9,
        "proxy_grpc_send" => 4,
        "proxy_call_foreign_function" => 6,
        _ => 1,
    };
    wasmtime::FuncType::new(engine, std::iter::repeat_n(I32, n), [I32])
}

impl Vm {
    /// Instantiate, start and configure, as Envoy does when a listener gets the plugin
    /// ([cpp-host] wasm.cc `WasmBase::initialize`, `startVm`, `configure`). Returns an error
    /// naming the reason if the module imports something this host lacks, if `on_vm_start`
    /// fails, or if `on_configure` returns false (Envoy rejects the config).
    pub fn start(
        engine: &Engine,
        module: &Module,
        process: Arc<Process>,
        spec: PluginSpec,
    ) -> Result<Vm> {
        let linker = linker(engine)?;
        let mut plugin_props = HashMap::new();
        plugin_props.insert("plugin_name".to_string(), spec.name.clone().into_bytes());
        plugin_props.insert("plugin_root_id".to_string(), Vec::new());
        let state = HostState {
            process,
            spec,
            plugin_props,
            current: 0,
            effective: None,
            active_buffer: None,
            in_configure: false,
            in_vm_start: false,
            conns: HashMap::new(),
            metrics: HashMap::new(),
            next_metric: [0, 1, 2],
            tick_period_ms: 0,
            memory: None,
            alloc: None,
            status: (0, Vec::new()),
            counters: VmCounters::default(),
        };
        let mut store = Store::new(engine, state);
        // Measurement: with fuel on in the engine, a budget that never runs out; with it off
        // (every test and throughput run) this fails and nothing changes.
        store.data_mut().counters.fuel_enabled = store.set_fuel(u64::MAX).is_ok();
        // [cpp-host] a module importing a function the host lacks fails to load, naming it.
        for imp in module.imports() {
            if linker.get_by_import(&mut store, &imp).is_none() {
                bail!(
                    "Failed to load Wasm module due to a missing import: {}.{}",
                    imp.module(),
                    imp.name()
                );
            }
        }
        let instance = linker
            .instantiate(&mut store, module)
            .map_err(|e| anyhow!("instantiating: {e:#}"))?;
        if instance
            .get_export(&mut store, "proxy_abi_version_0_2_1")
            .is_none()
        {
            bail!("module does not export proxy_abi_version_0_2_1");
        }
        let memory = instance.get_memory(&mut store, "memory");
        let alloc = instance
            .get_typed_func::<i32, i32>(&mut store, "malloc")
            .or_else(|_| {
                instance.get_typed_func::<i32, i32>(&mut store, "proxy_on_memory_allocate")
            })
            .ok();
        store.data_mut().memory = memory;
        store.data_mut().alloc = alloc;
        let mut vm = Vm {
            store,
            instance,
            root_id: 1,
            next_id: 2,
            failed: false,
            fail_reason: None,
            fail_next: false,
        };
        // WASI reactor start
        if let Ok(f) = vm
            .instance
            .get_typed_func::<(), ()>(&mut vm.store, "_initialize")
        {
            f.call(&mut vm.store, ())
                .map_err(|e| anyhow!("_initialize trapped: {e:#}"))?;
        } else if let Ok(f) = vm
            .instance
            .get_typed_func::<(), ()>(&mut vm.store, "_start")
        {
            f.call(&mut vm.store, ())
                .map_err(|e| anyhow!("_start trapped: {e:#}"))?;
        }
        let root = vm.root_id;
        vm.call_void("proxy_on_context_create", &[root as i32, 0])?;
        let vm_cfg_len = vm.store.data().spec.vm_config.len() as i32;
        vm.store.data_mut().in_vm_start = true;
        vm.store.data_mut().current = root;
        let ok = vm.call_i32("proxy_on_vm_start", &[root as i32, vm_cfg_len]);
        vm.store.data_mut().in_vm_start = false;
        if ok? == 0 {
            bail!("proxy_on_vm_start returned false");
        }
        let cfg_len = vm.store.data().spec.plugin_config.len() as i32;
        vm.store.data_mut().in_configure = true;
        let ok = vm.call_i32("proxy_on_configure", &[root as i32, cfg_len]);
        vm.store.data_mut().in_configure = false;
        if ok? == 0 {
            bail!("proxy_on_configure returned false (plugin rejected its configuration)");
        }
        Ok(vm)
    }

    pub fn failed(&self) -> bool {
        self.failed
    }

    pub fn tick_period_ms(&self) -> u32 {
        self.store.data().tick_period_ms
    }

    /// Measurement: what this VM has cost so far.
    pub fn counters(&self) -> VmCounters {
        let mut k = self.store.data().counters.clone();
        if k.fuel_enabled {
            k.fuel_total = u64::MAX - self.store.get_fuel().unwrap_or(u64::MAX);
        }
        k
    }

    /// The module's linear memory now, in bytes. Wasm memory only grows (nothing gives pages
    /// back), so this is the most the VM has needed since it started.
    pub fn memory_bytes(&self) -> usize {
        self.store
            .data()
            .memory
            .map_or(0, |m| m.data_size(&self.store))
    }

    /// Fault injection: the next callback into the module fails the way a trap does (an out of
    /// memory, a bug), without running it. The VM is then failed with
    /// `FailState::RuntimeError`, the one failure FAIL_RELOAD recovers from.
    pub fn fail_next_call(&mut self) {
        self.fail_next = true;
    }

    fn call(&mut self, name: &'static str, args: &[i32], ret: bool) -> Result<i32> {
        let injected = self
            .store
            .data()
            .process
            .inject_traps
            .fetch_update(
                std::sync::atomic::Ordering::SeqCst,
                std::sync::atomic::Ordering::SeqCst,
                |n| n.checked_sub(1),
            )
            .is_ok();
        if std::mem::take(&mut self.fail_next) || injected {
            self.failed = true;
            self.fail_reason = Some(format!("injected trap in {name}"));
            bail!("{name} trapped: injected");
        }
        let f = self
            .instance
            .get_func(&mut self.store, name)
            .ok_or_else(|| anyhow!("module does not export {name}"))?;
        let params: Vec<Val> = args.iter().map(|a| Val::I32(*a)).collect();
        let mut results = vec![Val::I32(0); if ret { 1 } else { 0 }];
        *self
            .store
            .data_mut()
            .counters
            .callbacks
            .entry(name)
            .or_default() += 1;
        let fuel_before = if self.store.data().counters.fuel_enabled {
            self.store.get_fuel().ok()
        } else {
            None
        };
        let r = f.call(&mut self.store, &params, &mut results);
        if let Some(before) = fuel_before {
            let used = before.saturating_sub(self.store.get_fuel().unwrap_or(before));
            *self.store.data_mut().counters.fuel.entry(name).or_default() += used;
        }
        self.store.data_mut().effective = None;
        match r {
            Ok(()) => Ok(results.first().and_then(Val::i32).unwrap_or(0)),
            Err(e) => {
                // [cpp-host] a trap fails the whole VM (FailState::RuntimeError): every
                // connection on this worker is affected from now on.
                self.failed = true;
                self.fail_reason = Some(format!("{e:#}"));
                Err(anyhow!("{name} trapped: {e:#}"))
            }
        }
    }

    fn call_i32(&mut self, name: &'static str, args: &[i32]) -> Result<i32> {
        self.call(name, args, true)
    }

    fn call_void(&mut self, name: &'static str, args: &[i32]) -> Result<()> {
        self.call(name, args, false).map(|_| ())
    }

    /// A new downstream connection: context create + `proxy_on_new_connection`.
    /// `props` are what Envoy would answer to `proxy_get_property` on this connection.
    pub fn new_connection(&mut self, props: HashMap<String, Vec<u8>>) -> Result<u32> {
        self.new_connection_tls(props, HashMap::new())
    }

    /// A downstream TLS connection: `after_handshake` (e.g. the peer's URI SAN) is answered
    /// only from the first downstream data callback on, as in Envoy (see `ConnState`).
    pub fn new_connection_tls(
        &mut self,
        props: HashMap<String, Vec<u8>>,
        after_handshake: HashMap<String, Vec<u8>>,
    ) -> Result<u32> {
        let id = self.next_id;
        self.next_id += 1;
        self.store.data_mut().conns.insert(
            id,
            ConnState {
                props,
                after_handshake,
                ..ConnState::default()
            },
        );
        if self.failed {
            return Ok(id);
        }
        self.store.data_mut().current = id;
        let _ = self.call_void("proxy_on_context_create", &[id as i32, self.root_id as i32]);
        if !self.failed {
            let _ = self.call_i32("proxy_on_new_connection", &[id as i32]);
        }
        Ok(id)
    }

    /// New bytes arrive for `dir` (downstream = from the client, upstream = from the broker
    /// on their way to the client). Mirrors [envoy] Context::onData / onWrite with the
    /// accumulate-on-StopIteration buffer semantics, and [cpp-host] CHECK_FAIL_NET for a
    /// failed VM: fail-open continues without calling the VM, fail-closed closes the
    /// connection and stops.
    pub fn data(&mut self, id: u32, dir: Dir, bytes: &[u8], end_of_stream: bool) -> DataResult {
        let fail_open = self.store.data().spec.fail_open;
        let (ty, export) = match dir {
            Dir::Downstream => (buffer::DOWNSTREAM_DATA, "proxy_on_downstream_data"),
            Dir::Upstream => (buffer::UPSTREAM_DATA, "proxy_on_upstream_data"),
        };
        let len = {
            let Some(cs) = self.store.data_mut().conns.get_mut(&id) else {
                return DataResult {
                    close: true,
                    ..Default::default()
                };
            };
            if dir == Dir::Downstream && !cs.after_handshake.is_empty() {
                let done = std::mem::take(&mut cs.after_handshake);
                cs.props.extend(done);
            }
            let buf = if dir == Dir::Downstream {
                &mut cs.down
            } else {
                &mut cs.up
            };
            buf.extend_from_slice(bytes);
            buf.len()
        };
        self.store.data_mut().counters.data_bytes[usize::from(dir == Dir::Upstream)] +=
            bytes.len() as u64;
        let mut res = DataResult::default();
        let action = if self.failed {
            if fail_open {
                0
            } else {
                res.close = true;
                1
            }
        } else {
            self.store.data_mut().current = id;
            self.store.data_mut().active_buffer = Some(ty);
            let r = self.call_i32(export, &[id as i32, len as i32, i32::from(end_of_stream)]);
            self.store.data_mut().active_buffer = None;
            match r {
                Ok(a) => a,
                Err(_) if fail_open => 0,
                Err(_) => {
                    res.close = true;
                    1
                }
            }
        };
        let Some(cs) = self.store.data_mut().conns.get_mut(&id) else {
            return res;
        };
        if cs.close_requested {
            res.close = true;
        }
        let buf = if dir == Dir::Downstream {
            &mut cs.down
        } else {
            &mut cs.up
        };
        if action == 0 && !res.close {
            res.forwarded = std::mem::take(buf);
        } else {
            res.paused = true;
        }
        res
    }

    /// What `proxy_get_property` would answer on connection `id` now (for tests).
    pub fn property(&self, id: u32, key: &str) -> Option<Vec<u8>> {
        self.store
            .data()
            .conns
            .get(&id)
            .and_then(|cs| cs.props.get(key).cloned())
    }

    /// Bytes the filter is holding in Envoy's buffer for this direction.
    pub fn buffered(&self, id: u32, dir: Dir) -> usize {
        self.store.data().conns.get(&id).map_or(0, |cs| {
            if dir == Dir::Downstream {
                cs.down.len()
            } else {
                cs.up.len()
            }
        })
    }

    /// The upstream's end of stream has been handed to the filter (a `data` call for
    /// [`Dir::Upstream`] with `end_of_stream`): Envoy calls `proxy_on_upstream_connection_close`
    /// (`Unknown`) right there, in [envoy] `Context::onWrite`, not on an upstream connection
    /// event (registering for those "requires replicating the whole TCP proxy extension", as
    /// the comment there says). The connection itself stays open under tcp_proxy's half-close
    /// until [`Vm::close_as`]; an upstream that fails without a FIN never gets this callback.
    pub fn upstream_end_of_stream(&mut self, id: u32) {
        let Some(cs) = self.store.data_mut().conns.get_mut(&id) else {
            return;
        };
        if std::mem::replace(&mut cs.upstream_closed, true) || self.failed {
            return;
        }
        self.store.data_mut().current = id;
        let _ = self.call_void(
            "proxy_on_upstream_connection_close",
            &[id as i32, Peer::Unknown as i32],
        );
    }

    /// The downstream connection has closed: both directions ended (tcp_proxy half-closes, so a
    /// FIN alone does not close it), the filter or an upstream failure closed it (`Local`),
    /// or the client's FIN or reset came last (`Remote`). As Envoy: [envoy] `Context::onEvent`
    /// (`LocalClose`/`RemoteClose`) calls `proxy_on_downstream_connection_close`, and
    /// `Context::onDownstreamConnectionClose` then `onCloseTCP`, which runs `proxy_on_done`,
    /// `proxy_on_log` and `proxy_on_delete` once. A connection already closed is left alone
    /// (`onCloseTCP`'s `tcp_connection_closed_`).
    pub fn close_as(&mut self, id: u32, peer: Peer) {
        if self.store.data_mut().conns.remove(&id).is_none() || self.failed {
            return;
        }
        self.store.data_mut().current = id;
        let _ = self.call_void(
            "proxy_on_downstream_connection_close",
            &[id as i32, peer as i32],
        );
        if !self.failed {
            let _ = self.call_i32("proxy_on_done", &[id as i32]);
        }
        if !self.failed {
            let _ = self.call_void("proxy_on_log", &[id as i32]);
        }
        if !self.failed {
            let _ = self.call_void("proxy_on_delete", &[id as i32]);
        }
    }

    /// The connection is gone, the client's side last (`Remote`); `upstream_first`: the
    /// upstream's end of stream came before and has not been reported yet.
    pub fn close(&mut self, id: u32, upstream_first: bool) {
        if upstream_first {
            self.upstream_end_of_stream(id);
        }
        self.close_as(id, Peer::Remote);
    }

    pub fn tick(&mut self) -> Result<()> {
        if self.failed {
            return Ok(());
        }
        let root = self.root_id;
        self.store.data_mut().current = root;
        self.call_void("proxy_on_tick", &[root as i32])
    }
}

#[cfg(test)]
mod measure_tests {
    use super::*;

    /// A minimal proxy-wasm module: on downstream data it reads 4 bytes of the buffer and
    /// replaces the first 2 with "xy".
    const WAT: &str = r#"(module
      (import "env" "proxy_get_buffer_bytes" (func $get (param i32 i32 i32 i32 i32) (result i32)))
      (import "env" "proxy_set_buffer_bytes" (func $set (param i32 i32 i32 i32 i32) (result i32)))
      (memory (export "memory") 1)
      (global $heap (mut i32) (i32.const 1024))
      (data (i32.const 16) "xy")
      (func (export "proxy_abi_version_0_2_1"))
      (func (export "proxy_on_memory_allocate") (param $n i32) (result i32)
        (local $p i32)
        (local.set $p (global.get $heap))
        (global.set $heap (i32.add (global.get $heap) (local.get $n)))
        (local.get $p))
      (func (export "proxy_on_context_create") (param i32 i32))
      (func (export "proxy_on_vm_start") (param i32 i32) (result i32) (i32.const 1))
      (func (export "proxy_on_configure") (param i32 i32) (result i32) (i32.const 1))
      (func (export "proxy_on_new_connection") (param i32) (result i32) (i32.const 0))
      (func (export "proxy_on_downstream_data") (param i32 i32 i32) (result i32)
        (drop (call $get (i32.const 2) (i32.const 0) (i32.const 4) (i32.const 0) (i32.const 8)))
        (drop (call $set (i32.const 2) (i32.const 0) (i32.const 2) (i32.const 16) (i32.const 2)))
        (i32.const 0)))"#;

    fn run(fuel: bool) -> (DataResult, VmCounters) {
        let mut config = wasmtime::Config::new();
        config.consume_fuel(fuel);
        let engine = Engine::new(&config).unwrap();
        let module = compile(&engine, WAT.as_bytes()).unwrap();
        let mut vm = Vm::start(&engine, &module, Process::new(), PluginSpec::default()).unwrap();
        let id = vm.new_connection(HashMap::new()).unwrap();
        let r = vm.data(id, Dir::Downstream, b"abcdefgh", false);
        (r, vm.counters())
    }

    #[test]
    fn counters_measure_without_changing_behaviour() {
        let (plain, k) = run(false);
        let (fueled, kf) = run(true);
        assert_eq!(plain.forwarded, b"xycdefgh".to_vec());
        assert_eq!(plain, fueled, "fuel must not change what the VM does");
        assert_eq!(k.host_calls.get("proxy_get_buffer_bytes"), Some(&1));
        assert_eq!(k.host_calls.get("proxy_set_buffer_bytes"), Some(&1));
        assert_eq!(k.host_calls_total(), 2);
        assert_eq!(k.copied_in.get("proxy_get_buffer_bytes"), Some(&4));
        assert_eq!(k.copied_out.get("proxy_set_buffer_bytes"), Some(&2));
        assert_eq!(k.callbacks.get("proxy_on_downstream_data"), Some(&1));
        assert_eq!(k.data_bytes, [8, 0]);
        assert!(!k.fuel_enabled && k.fuel_total == 0 && k.fuel.is_empty());
        assert_eq!(k.host_calls, kf.host_calls);
        assert_eq!(k.copied_in, kf.copied_in);
        let on_data = kf
            .fuel
            .get("proxy_on_downstream_data")
            .copied()
            .unwrap_or(0);
        assert!(
            kf.fuel_enabled && on_data > 0 && kf.fuel_total >= on_data,
            "{kf:?}"
        );
        let j = kf.to_json();
        assert_eq!(j["host_calls_total"], 2);
        assert_eq!(j["copied_in_total"], 4);
    }
}
