//! `wasm-sidecar`: a TCP relay that runs the filter the way an Envoy listener with a
//! `envoy.filters.network.wasm` filter in front of `tcp_proxy` does.
//!
//! - `--workers N` threads, each with its own VM (Envoy: one VM per worker thread); accepted
//!   connections are spread round-robin across workers.
//! - Reads are handed to the filter as they arrive; `--chunk K` cuts each into pieces of at
//!   most K bytes, each its own callback, to exercise reassembly.
//! - A paused buffer keeps accumulating; past `--buffer-limit` (Envoy's 1 MiB
//!   `per_connection_buffer_limit_bytes` default) the relay stops reading that side, as Envoy's
//!   read-disable on the high watermark does.
//! - `--admin ADDR` serves `/stats/prometheus`, `/ready` and, for `make bench`, `/stats/vm`:
//!   each worker VM's [`VmCounters`] (host calls, bytes copied in and out of the VM, callbacks,
//!   and with `--measure` wasm fuel) as JSON, republished by every worker every 50 ms and
//!   whenever a connection closes.

use std::cell::RefCell;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;

use anyhow::{Context as _, Result};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use wasmtime::{Engine, Module};

use crate::host::{Dir, PluginSpec, Process, Vm, VmCounters, DEFAULT_BUFFER_LIMIT};

#[derive(Clone)]
pub struct Options {
    pub listen: SocketAddr,
    pub upstream: String,
    pub wasm: Vec<u8>,
    pub spec: PluginSpec,
    pub admin: Option<SocketAddr>,
    pub workers: usize,
    pub chunk: usize,
    pub buffer_limit: usize,
    /// Properties every connection reports (e.g. a SPIFFE principal, as Istio's mTLS gives).
    pub conn_props: HashMap<String, Vec<u8>>,
    /// Model a downstream TLS connection: `connection.*` properties (the peer certificate)
    /// appear only once the handshake is done, at the first downstream data (host.rs,
    /// `ConnState::after_handshake`).
    pub tls: bool,
    /// Measurement: run the VMs with wasmtime fuel on, so `/stats/vm` reports wasm
    /// instructions. Slows the VM down; never on for throughput runs or tests.
    pub measure: bool,
}

impl Options {
    pub fn new(listen: SocketAddr, upstream: String, wasm: Vec<u8>) -> Options {
        Options {
            listen,
            upstream,
            wasm,
            spec: PluginSpec::default(),
            admin: None,
            workers: 1,
            chunk: 0,
            buffer_limit: DEFAULT_BUFFER_LIMIT,
            conn_props: HashMap::new(),
            tls: false,
            measure: false,
        }
    }
}

/// Run until the process ends. Fails early (before listening) if the plugin does not load or
/// rejects its configuration, as Envoy rejects the listener.
pub fn run(opts: Options, process: Arc<Process>) -> Result<()> {
    let mut config = wasmtime::Config::new();
    config.cranelift_opt_level(wasmtime::OptLevel::Speed);
    config.consume_fuel(opts.measure);
    let engine = Engine::new(&config)?;
    let module = crate::host::compile(&engine, &opts.wasm)?;
    let mut senders = Vec::new();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<()>>();
    for w in 0..opts.workers.max(1) {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<std::net::TcpStream>();
        senders.push(tx);
        let (engine, module, process, opts, ready_tx) = (
            engine.clone(),
            module.clone(),
            process.clone(),
            opts.clone(),
            ready_tx.clone(),
        );
        std::thread::Builder::new()
            .name(format!("worker-{w}"))
            .spawn(move || {
                worker(w, engine, module, process, opts, rx, ready_tx);
            })?;
    }
    for _ in 0..opts.workers.max(1) {
        ready_rx.recv().context("worker exited")??;
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let listener = TcpListener::bind(opts.listen)
            .await
            .with_context(|| format!("binding {}", opts.listen))?;
        if let Some(admin) = opts.admin {
            let admin_listener = TcpListener::bind(admin)
                .await
                .with_context(|| format!("binding admin {admin}"))?;
            tokio::spawn(serve_admin(admin_listener, process.clone()));
        }
        eprintln!(
            "wasm-sidecar: listening on {} -> {} ({} workers)",
            opts.listen,
            opts.upstream,
            opts.workers.max(1)
        );
        let mut next = 0usize;
        loop {
            let (sock, _) = listener.accept().await?;
            let std_sock = sock.into_std()?;
            if let Some(tx) = senders.get(next % senders.len()) {
                let _ = tx.send(std_sock);
            }
            next = next.wrapping_add(1);
        }
    })
}

fn worker(
    w: usize,
    engine: Engine,
    module: Module,
    process: Arc<Process>,
    opts: Options,
    mut rx: tokio::sync::mpsc::UnboundedReceiver<std::net::TcpStream>,
    ready: std::sync::mpsc::Sender<Result<()>>,
) {
    let vm = match Vm::start(&engine, &module, process.clone(), opts.spec.clone()) {
        Ok(vm) => {
            let _ = ready.send(Ok(()));
            Rc::new(RefCell::new(vm))
        }
        Err(e) => {
            let _ = ready.send(Err(e.context(format!("worker {w}"))));
            return;
        }
    };
    let Ok(rt) = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    else {
        return;
    };
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, async move {
        // Measurement: publish this VM's counters for `/stats/vm`.
        let cvm = vm.clone();
        let cprocess = process.clone();
        tokio::task::spawn_local(async move {
            loop {
                publish_counters(w, &cvm, &cprocess);
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        });
        // tick timer, as Envoy's root context timer
        let tvm = vm.clone();
        tokio::task::spawn_local(async move {
            loop {
                let period = tvm.borrow().tick_period_ms();
                if period == 0 {
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
                tokio::time::sleep(std::time::Duration::from_millis(u64::from(period))).await;
                let _ = tvm.borrow_mut().tick();
            }
        });
        while let Some(sock) = rx.recv().await {
            let vm = vm.clone();
            let opts = opts.clone();
            let process = process.clone();
            tokio::task::spawn_local(async move {
                if let Err(e) = relay(vm.clone(), sock, &opts).await {
                    eprintln!("wasm-sidecar: connection ended: {e:#}");
                }
                publish_counters(w, &vm, &process);
            });
        }
    });
}

async fn relay(vm: Rc<RefCell<Vm>>, sock: std::net::TcpStream, opts: &Options) -> Result<()> {
    sock.set_nonblocking(true)?;
    let client = TcpStream::from_std(sock)?;
    client.set_nodelay(true)?;
    let peer = client.peer_addr()?;
    let server = TcpStream::connect(&opts.upstream)
        .await
        .with_context(|| format!("connecting upstream {}", opts.upstream))?;
    server.set_nodelay(true)?;
    let mut props = opts.conn_props.clone();
    // Envoy attributes: source.address / destination.address are "ip:port" strings.
    props
        .entry("source.address".into())
        .or_insert_with(|| peer.to_string().into_bytes());
    if let Ok(local) = client.local_addr() {
        props
            .entry("destination.address".into())
            .or_insert_with(|| local.to_string().into_bytes());
    }
    let id = if opts.tls {
        let (late, early): (HashMap<_, _>, HashMap<_, _>) = props
            .into_iter()
            .partition(|(k, _)| k.starts_with("connection."));
        vm.borrow_mut().new_connection_tls(early, late)?
    } else {
        vm.borrow_mut().new_connection(props)?
    };
    let (mut cr, mut cw) = client.into_split();
    let (mut sr, mut sw) = server.into_split();
    let chunk = if opts.chunk == 0 {
        64 * 1024
    } else {
        opts.chunk
    };
    let mut cbuf = vec![0u8; chunk];
    let mut sbuf = vec![0u8; chunk];
    let (mut c_eof, mut s_eof) = (false, false);
    let result: Result<()> = async {
        loop {
            // Watermark: stop reading a side whose paused buffer is over the limit.
            let c_ok = !c_eof && vm.borrow().buffered(id, Dir::Downstream) < opts.buffer_limit;
            let s_ok = !s_eof && vm.borrow().buffered(id, Dir::Upstream) < opts.buffer_limit;
            if !c_ok && !s_ok {
                anyhow::bail!(
                    "both directions stalled over the buffer limit (filter held too much)"
                );
            }
            tokio::select! {
                r = cr.read(&mut cbuf), if c_ok => {
                    let n = r?;
                    c_eof = n == 0;
                    let res = vm.borrow_mut().data(id, Dir::Downstream, &cbuf[..n], c_eof);
                    if !res.forwarded.is_empty() { sw.write_all(&res.forwarded).await?; }
                    // Envoy listeners do not half-close by default: an EOF from either peer
                    // closes the whole connection once the filter has seen end_of_stream.
                    if res.close || c_eof { return Ok(()); }
                }
                r = sr.read(&mut sbuf), if s_ok => {
                    let n = r?;
                    s_eof = n == 0;
                    let res = vm.borrow_mut().data(id, Dir::Upstream, &sbuf[..n], s_eof);
                    if !res.forwarded.is_empty() { cw.write_all(&res.forwarded).await?; }
                    if res.close || s_eof { return Ok(()); }
                }
            }
        }
    }
    .await;
    let _ = cw.shutdown().await;
    let _ = sw.shutdown().await;
    vm.borrow_mut().close(id, s_eof);
    result
}

fn publish_counters(w: usize, vm: &Rc<RefCell<Vm>>, process: &Process) {
    let Ok(vm) = vm.try_borrow() else { return };
    let snapshot = vm.counters();
    if let Ok(mut m) = process.vm_counters.lock() {
        m.insert(w, snapshot);
    }
}

/// `/stats/vm`: every worker's counters and their sum.
fn vm_stats_json(process: &Process) -> String {
    let Ok(m) = process.vm_counters.lock() else {
        return "{}".into();
    };
    let mut total = VmCounters::default();
    let mut workers = serde_json::Map::new();
    for (w, k) in m.iter() {
        total.add(k);
        workers.insert(w.to_string(), k.to_json());
    }
    serde_json::json!({"total": total.to_json(), "workers": workers}).to_string()
}

async fn serve_admin(listener: TcpListener, process: Arc<Process>) {
    loop {
        let Ok((mut sock, _)) = listener.accept().await else {
            continue;
        };
        let process = process.clone();
        tokio::spawn(async move {
            let mut req = vec![0u8; 4096];
            let n = sock.read(&mut req).await.unwrap_or(0);
            let line = String::from_utf8_lossy(&req[..n])
                .lines()
                .next()
                .unwrap_or("")
                .to_string();
            let path = line.split_whitespace().nth(1).unwrap_or("/");
            let mut content_type = "text/plain; version=0.0.4";
            let (code, body) = match path {
                "/ready" => ("200 OK", "LIVE\n".to_string()),
                "/stats/vm" => {
                    content_type = "application/json";
                    ("200 OK", vm_stats_json(&process))
                }
                "/stats/prometheus" => (
                    "200 OK",
                    process
                        .stats
                        .lock()
                        .map(|s| s.render_prometheus())
                        .unwrap_or_default(),
                ),
                _ => ("404 Not Found", "not found\n".to_string()),
            };
            let resp = format!(
                "HTTP/1.1 {code}\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = sock.write_all(resp.as_bytes()).await;
        });
    }
}
