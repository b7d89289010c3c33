//! wasm-sidecar --listen ADDR --upstream ADDR --wasm PATH --config PATH [--admin ADDR]
//!              [--workers N] [--chunk BYTES] [--buffer-limit BYTES] [--failure-policy P]
//!              [--reload-base-ms MS] [--fail-open]
//!              [--property KEY=VALUE]... [--log-level LEVEL] [--component-log-level wasm:L]
//!              [--stats-config PATH|none|istio] [--measure] [--tls]
//!
//! `--stats-config` is the `stats_config` fragment of an Envoy bootstrap (its `stats_tags`);
//! the default is the one this project ships in `wasm-plugin-manifests/envoy/`, so
//! `/stats/prometheus` shows what Envoy shows when deployed as the README says. `none` shows
//! what an Envoy without those tags shows. `istio` is an Istio sidecar: Istio's whole bootstrap
//! `stats_tags` list around our `extraStatTags`, and its default stats inclusion
//! (`tests/src/istio/bootstrap_stats.json`).
//!
//! `--log-level` is the level of Envoy's `wasm` logger, `warning` by default as in an Istio
//! sidecar (pilot-agent `--proxyLogLevel`); lines below it are dropped, the rest go to
//! stderr. `--component-log-level wasm:LEVEL` is the same knob spelled as Istio's
//! `sidecar.istio.io/componentLogLevel` annotation (other components are ignored: the host
//! has only the `wasm` logger).
//!
//! `--failure-policy` is Istio's `failStrategy` as Envoy applies it (tests/src/worker.rs):
//! what a new connection gets once its worker's VM has failed; `--reload-base-ms` is
//! FAIL_RELOAD's backoff base (1000). `--fail-open` is Envoy's deprecated `fail_open` bool,
//! which Istio never sets. The admin port's `/fault/trap` makes the next call into a VM fail
//! as a trap does.
//!
//! `--tls` models a downstream TLS connection: the `connection.*` properties given with
//! `--property` (the peer certificate's URI SAN) appear only at the first downstream data
//! callback, after the handshake, as in Envoy.
//!
//! `--measure` (for `make bench`) turns wasmtime fuel on, so `/stats/vm` on the admin port
//! reports wasm instructions per callback. It slows the VM; throughput runs leave it off.

use std::sync::Arc;

use anyhow::{bail, Context, Result};
use kafka_mesh_testhost::host::{FailurePolicy, Process};
use kafka_mesh_testhost::sidecar::{run, Options};

const USAGE: &str = "usage: wasm-sidecar --listen ADDR --upstream ADDR --wasm PATH --config PATH \
[--admin ADDR] [--workers N] [--chunk BYTES] [--buffer-limit BYTES] \
[--failure-policy FAIL_CLOSE|FAIL_OPEN|FAIL_RELOAD] [--reload-base-ms MS] [--fail-open] \
[--property KEY=VALUE]... [--log-level trace|debug|info|warning|error|critical] \
[--component-log-level wasm:LEVEL] \
[--stats-config PATH|none|istio] [--measure] [--tls]";

/// `--stats-config istio`: Istio's bootstrap stats_tags and stats inclusion.
const ISTIO: &str = "istio";

fn main() {
    if let Err(e) = real_main() {
        eprintln!("wasm-sidecar: {e:#}");
        std::process::exit(1);
    }
}

/// Envoy's level names (`warn` is accepted for `warning`, `err` for `error`, as Envoy does).
fn parse_level(s: &str) -> Result<i32> {
    Ok(match s {
        "trace" => 0,
        "debug" => 1,
        "info" => 2,
        "warn" | "warning" => 3,
        "error" | "err" => 4,
        "critical" => 5,
        "off" => 6,
        other => bail!("unknown log level {other}"),
    })
}

fn real_main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let (mut listen, mut upstream, mut wasm, mut config) = (None, None, None, None);
    let (mut admin, mut workers, mut chunk, mut limit, mut fail_open) =
        (None, 1usize, 0usize, None, false);
    let mut props = Vec::new();
    let mut log_level = kafka_mesh_testhost::host::ISTIO_PROXY_LOG_LEVEL;
    let mut component_level = None;
    let mut measure = false;
    let (mut failure_policy, mut reload_base_ms) = (None, None);
    let mut tls = false;
    let mut stats_config = Some(kafka_mesh_testhost::stats::OUR_STATS_CONFIG.to_string());
    while let Some(a) = args.next() {
        let mut val = || {
            args.next()
                .with_context(|| format!("{a} needs a value\n{USAGE}"))
        };
        match a.as_str() {
            "--listen" => listen = Some(val()?),
            "--upstream" => upstream = Some(val()?),
            "--wasm" => wasm = Some(val()?),
            "--config" => config = Some(val()?),
            "--admin" => admin = Some(val()?),
            "--workers" => workers = val()?.parse().context("--workers")?,
            "--chunk" => chunk = val()?.parse().context("--chunk")?,
            "--buffer-limit" => limit = Some(val()?.parse().context("--buffer-limit")?),
            "--fail-open" => fail_open = true,
            "--failure-policy" => {
                let v = val()?;
                failure_policy = Some(
                    FailurePolicy::parse(&v)
                        .with_context(|| format!("unknown failure policy {v}\n{USAGE}"))?,
                );
            }
            "--reload-base-ms" => {
                reload_base_ms = Some(val()?.parse().context("--reload-base-ms")?)
            }
            "--tls" => tls = true,
            "--measure" => measure = true,
            "--property" => props.push(val()?),
            "--stats-config" => {
                let v = val()?;
                stats_config = match v.as_str() {
                    "none" => None,
                    "istio" => Some(ISTIO.to_string()),
                    _ => Some(std::fs::read_to_string(&v).with_context(|| format!("reading {v}"))?),
                };
            }
            "--log-level" => log_level = parse_level(&val()?)?,
            "--component-log-level" => {
                // Istio's form: "misc:error,wasm:info"; only `wasm` exists here.
                for part in val()?.split(',') {
                    let (comp, lvl) = part
                        .split_once(':')
                        .context("--component-log-level wants COMPONENT:LEVEL[,...]")?;
                    if comp.trim() == "wasm" {
                        component_level = Some(parse_level(lvl.trim())?);
                    }
                }
            }
            "-h" | "--help" => {
                println!("{USAGE}");
                return Ok(());
            }
            other => bail!("unknown argument {other}\n{USAGE}"),
        }
    }
    let (Some(listen), Some(upstream), Some(wasm)) = (listen, upstream, wasm) else {
        bail!("{USAGE}")
    };
    let wasm = std::fs::read(&wasm).with_context(|| format!("reading {wasm}"))?;
    let mut opts = Options::new(listen.parse().context("--listen")?, upstream, wasm);
    if let Some(c) = config {
        opts.spec.plugin_config = std::fs::read(&c).with_context(|| format!("reading {c}"))?;
    }
    opts.admin = admin.map(|a| a.parse()).transpose().context("--admin")?;
    opts.workers = workers;
    opts.chunk = chunk;
    if let Some(l) = limit {
        opts.buffer_limit = l;
    }
    opts.spec.fail_open = fail_open;
    if let Some(p) = failure_policy {
        opts.spec.failure_policy = p;
    }
    if let Some(ms) = reload_base_ms {
        opts.spec.reload_base_ms = ms;
    }
    opts.tls = tls;
    opts.measure = measure;
    for p in props {
        let (k, v) = p.split_once('=').context("--property wants KEY=VALUE")?;
        opts.conn_props.insert(k.to_string(), v.as_bytes().to_vec());
    }
    let process = Process::new();
    if let Some(sc) = stats_config {
        if let Ok(mut st) = process.stats.lock() {
            if sc == ISTIO {
                st.as_istio_sidecar()?;
            } else {
                st.tag_specs = kafka_mesh_testhost::stats::parse_stats_config(&sc)
                    .context("--stats-config")?;
            }
        }
    }
    let level = component_level.unwrap_or(log_level);
    process.set_log_level(level);
    if let Ok(mut l) = process.echo_level.lock() {
        *l = Some(level);
    }
    run(opts, Arc::clone(&process))
}
