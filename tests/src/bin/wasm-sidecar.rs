//! wasm-sidecar --listen ADDR --upstream ADDR --wasm PATH --config PATH [--admin ADDR]
//!              [--workers N] [--chunk BYTES] [--buffer-limit BYTES] [--fail-open]
//!              [--property KEY=VALUE]... [--log-level LEVEL] [--stats-config PATH|none]
//!              [--measure] [--tls]
//!
//! `--stats-config` is the `stats_config` fragment of an Envoy bootstrap (its `stats_tags`);
//! the default is the one this project ships in `wasm-plugin-manifests/envoy/`, so
//! `/stats/prometheus` shows what Envoy shows when deployed as the README says. `none` shows
//! what an Envoy without those tags shows.
//!
//! `--tls` models a downstream TLS connection: the `connection.*` properties given with
//! `--property` (the peer certificate's URI SAN) appear only at the first downstream data
//! callback, after the handshake, as in Envoy.
//!
//! `--measure` (for `make bench`) turns wasmtime fuel on, so `/stats/vm` on the admin port
//! reports wasm instructions per callback. It slows the VM; throughput runs leave it off.

use std::sync::Arc;

use anyhow::{bail, Context, Result};
use kafka_mesh_testhost::host::Process;
use kafka_mesh_testhost::sidecar::{run, Options};

const USAGE: &str = "usage: wasm-sidecar --listen ADDR --upstream ADDR --wasm PATH --config PATH \
[--admin ADDR] [--workers N] [--chunk BYTES] [--buffer-limit BYTES] [--fail-open] \
[--property KEY=VALUE]... [--log-level trace|debug|info|warn|error|critical] \
[--stats-config PATH|none] [--measure] [--tls]";

fn main() {
    if let Err(e) = real_main() {
        eprintln!("wasm-sidecar: {e:#}");
        std::process::exit(1);
    }
}

fn real_main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let (mut listen, mut upstream, mut wasm, mut config) = (None, None, None, None);
    let (mut admin, mut workers, mut chunk, mut limit, mut fail_open) =
        (None, 1usize, 0usize, None, false);
    let mut props = Vec::new();
    let mut log_level = 3; // warn
    let mut measure = false;
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
            "--tls" => tls = true,
            "--measure" => measure = true,
            "--property" => props.push(val()?),
            "--stats-config" => {
                let v = val()?;
                stats_config = if v == "none" {
                    None
                } else {
                    Some(std::fs::read_to_string(&v).with_context(|| format!("reading {v}"))?)
                };
            }
            "--log-level" => {
                log_level = match val()?.as_str() {
                    "trace" => 0,
                    "debug" => 1,
                    "info" => 2,
                    "warn" => 3,
                    "error" => 4,
                    "critical" => 5,
                    other => bail!("unknown log level {other}"),
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
    opts.tls = tls;
    opts.measure = measure;
    for p in props {
        let (k, v) = p.split_once('=').context("--property wants KEY=VALUE")?;
        opts.conn_props.insert(k.to_string(), v.as_bytes().to_vec());
    }
    let process = Process::new();
    if let Some(sc) = stats_config {
        let specs =
            kafka_mesh_testhost::stats::parse_stats_config(&sc).context("--stats-config")?;
        if let Ok(mut st) = process.stats.lock() {
            st.tag_specs = specs;
        }
    }
    if let Ok(mut l) = process.echo_level.lock() {
        *l = Some(log_level);
    }
    run(opts, Arc::clone(&process))
}
