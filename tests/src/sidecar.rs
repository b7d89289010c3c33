//! `wasm-sidecar`: a TCP relay that runs the filter the way an Envoy listener with a
//! `envoy.filters.network.wasm` filter in front of `tcp_proxy` does.
//!
//! - `--workers N` threads, each with its own VM (Envoy: one VM per worker thread); accepted
//!   connections are spread round-robin across workers.
//! - Reads are handed to the filter as they arrive; `--chunk K` cuts each into pieces of at
//!   most K bytes, each its own callback, to exercise reassembly.
//! - Half-close, as tcp_proxy enables it on both connections (envoyproxy/envoy
//!   `source/common/tcp_proxy/tcp_proxy.cc`, `Filter::initialize` and `onPoolReady`:
//!   `enableHalfClose(true)`): a peer's FIN is handed to the filter as `end_of_stream` on
//!   that direction's data callback, then passed on as a FIN to the other peer
//!   (`Filter::onData` / `onUpstreamData` write with `end_stream`), and the other direction
//!   keeps flowing. The connection ends when both directions have ended
//!   (`ConnectionImpl::bothSidesHalfClosed`, `source/common/network/connection_impl.cc`), when
//!   the filter closes it, or on an error; only then do the close callbacks and
//!   `proxy_on_done`/`_log`/`_delete` run ([`Vm::close_as`]), apart from
//!   `proxy_on_upstream_connection_close`, which Envoy calls at the upstream's end of stream
//!   ([`Vm::upstream_end_of_stream`]).
//! - A paused buffer keeps accumulating; past `--buffer-limit` (Envoy's 1 MiB
//!   `per_connection_buffer_limit_bytes` default) the relay stops reading that side, as Envoy's
//!   read-disable on the high watermark does.
//! - Per connection the relay keeps only its sockets and the VM's connection state: the
//!   options are shared, and all connections of a worker read into one buffer of the worker
//!   (they run on its thread), so an idle connection costs the host a few KiB, not the
//!   plugin's size or a read buffer.
//! - `--admin ADDR` serves `/stats/prometheus`, `/ready` and, for `make bench`, `/stats/vm`:
//!   each worker VM's [`VmCounters`] (host calls, bytes copied in and out of the VM, callbacks,
//!   and with `--measure` wasm fuel) as JSON, republished by every worker every 50 ms and
//!   whenever a connection closes.

use std::cell::RefCell;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{anyhow, Context as _, Result};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::OwnedReadHalf;
use tokio::net::{TcpListener, TcpStream};
use wasmtime::{Engine, Module};

use crate::host::{
    DataResult, Dir, Peer, PluginSpec, Process, Vm, VmCounters, DEFAULT_BUFFER_LIMIT,
};
use crate::worker::{Admission, Worker};

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
    // Shared, never copied per worker or connection: `Options` holds the whole module.
    let opts = Arc::new(opts);
    let mut config = wasmtime::Config::new();
    config.cranelift_opt_level(wasmtime::OptLevel::Speed);
    config.consume_fuel(opts.measure);
    let engine = Engine::new(&config)?;
    let module = crate::host::compile(&engine, &opts.wasm)?;
    // The configuration canary: before any worker VM exists, a clone is started and
    // configured on the main thread, then killed (proxy-wasm/proxy-wasm-cpp-host `src/wasm.cc`,
    // `createWasm` -> `WasmHandleBase::canary`). Its `on_configure` is the first, alone; the
    // filter creates its shared-data keys there (labels.rs, "Insert-if-absent").
    drop(crate::host::Vm::start(
        &engine,
        &module,
        process.clone(),
        opts.spec.clone(),
    )?);
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
    opts: Arc<Options>,
    mut rx: tokio::sync::mpsc::UnboundedReceiver<std::net::TcpStream>,
    ready: std::sync::mpsc::Sender<Result<()>>,
) {
    let worker = match Worker::start(
        &engine,
        &module,
        process.clone(),
        opts.spec.clone(),
        Instant::now(),
    ) {
        Ok(worker) => {
            let _ = ready.send(Ok(()));
            Rc::new(RefCell::new(worker))
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
        let cworker = worker.clone();
        let cprocess = process.clone();
        tokio::task::spawn_local(async move {
            loop {
                publish_counters(w, &cworker.borrow().vm(), &cprocess);
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        });
        // tick timer, as Envoy's root context timer (of the worker's current VM)
        let tworker = worker.clone();
        tokio::task::spawn_local(async move {
            loop {
                let tvm = tworker.borrow().vm();
                let period = tvm.borrow().tick_period_ms();
                if period == 0 {
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
                tokio::time::sleep(std::time::Duration::from_millis(u64::from(period))).await;
                let _ = tvm.borrow_mut().tick();
            }
        });
        // The worker's one read buffer (see `read_to_filter`).
        let scratch = Rc::new(RefCell::new(vec![
            0u8;
            if opts.chunk == 0 {
                64 * 1024
            } else {
                opts.chunk
            }
        ]));
        while let Some(sock) = rx.recv().await {
            let worker = worker.clone();
            let opts = opts.clone();
            let process = process.clone();
            let scratch = scratch.clone();
            tokio::task::spawn_local(async move {
                if let Err(e) = connection(&worker, sock, &opts, &scratch).await {
                    eprintln!("wasm-sidecar: connection ended: {e:#}");
                }
                publish_counters(w, &worker.borrow().vm(), &process);
            });
        }
    });
}

/// One accepted connection: the worker decides whether the filter sees it (see
/// [`Worker::new_connection`] for what a failed VM means under each failure policy); the
/// network filter runs before tcp_proxy opens the upstream connection, so a connection failed
/// closed never reaches the broker.
async fn connection(
    worker: &RefCell<Worker>,
    sock: std::net::TcpStream,
    opts: &Options,
    scratch: &RefCell<Vec<u8>>,
) -> Result<()> {
    sock.set_nonblocking(true)?;
    let client = TcpStream::from_std(sock)?;
    client.set_nodelay(true)?;
    let peer = client.peer_addr()?;
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
    let (early, late): (HashMap<_, _>, HashMap<_, _>) = if opts.tls {
        let (late, early) = props
            .into_iter()
            .partition(|(k, _)| k.starts_with("connection."));
        (early, late)
    } else {
        (props, HashMap::new())
    };
    let admission = worker
        .borrow_mut()
        .new_connection(Instant::now(), early, late)?;
    let (vm, id) = match admission {
        Admission::Filtered { vm, id } => (vm, id),
        // FAIL_CLOSED / FAIL_RELOAD in its backoff: closed before tcp_proxy connects upstream.
        Admission::Closed => return Ok(()),
        Admission::Unfiltered => return unfiltered(client, opts).await,
    };
    let server = match TcpStream::connect(&opts.upstream).await {
        Ok(s) => s,
        Err(e) => {
            vm.borrow_mut().close_as(id, Peer::Local);
            return Err(anyhow!(e).context(format!("connecting upstream {}", opts.upstream)));
        }
    };
    server.set_nodelay(true)?;
    relay(&vm, id, client, server, opts, scratch).await
}

/// FAIL_OPEN with a failed VM: no filter on the connection, tcp_proxy alone (half-close
/// included: each direction's FIN is passed on, and the other keeps flowing).
async fn unfiltered(client: TcpStream, opts: &Options) -> Result<()> {
    let server = TcpStream::connect(&opts.upstream)
        .await
        .with_context(|| format!("connecting upstream {}", opts.upstream))?;
    server.set_nodelay(true)?;
    let (mut cr, mut cw) = client.into_split();
    let (mut sr, mut sw) = server.into_split();
    let up = async {
        tokio::io::copy(&mut cr, &mut sw).await?;
        sw.shutdown().await
    };
    let down = async {
        tokio::io::copy(&mut sr, &mut cw).await?;
        cw.shutdown().await
    };
    let (a, b) = tokio::join!(up, down);
    a.and(b).context("unfiltered relay")
}

async fn relay(
    vm: &RefCell<Vm>,
    id: u32,
    client: TcpStream,
    server: TcpStream,
    opts: &Options,
    scratch: &RefCell<Vec<u8>>,
) -> Result<()> {
    let (cr, mut cw) = client.into_split();
    let (sr, mut sw) = server.into_split();
    // Which direction's peer has sent its FIN (read returned 0).
    let (mut c_eof, mut s_eof) = (false, false);
    // Who ends the downstream connection, for `proxy_on_downstream_connection_close`, as
    // Envoy's close event says it: a failure on the client's socket, or the client's FIN when
    // our FIN to it has already gone, is a `RemoteClose`; our own close (the filter's
    // `closeStream`, FlushWrite), an upstream failure (tcp_proxy `Filter::onUpstreamEvent`
    // closes the client's connection) or our FIN to the client completing the half-closes
    // (`ConnectionImpl::onWriteReady`: `bothSidesHalfClosed` then `closeConnectionImmediately`)
    // is a `LocalClose`.
    let on_client = |e: std::io::Error| (Peer::Remote, anyhow!(e).context("client"));
    let on_upstream = |e: std::io::Error| (Peer::Local, anyhow!(e).context("upstream"));
    let ended: std::result::Result<Peer, (Peer, anyhow::Error)> = async {
        let mut last = Peer::Remote;
        while !(c_eof && s_eof) {
            // Watermark: stop reading a side whose paused buffer is over the limit.
            let c_ok = !c_eof && vm.borrow().buffered(id, Dir::Downstream) < opts.buffer_limit;
            let s_ok = !s_eof && vm.borrow().buffered(id, Dir::Upstream) < opts.buffer_limit;
            if !c_ok && !s_ok {
                return Err((
                    Peer::Local,
                    anyhow!(
                        "no direction can make progress: each has ended or is over the buffer \
                         limit (filter held too much)"
                    ),
                ));
            }
            tokio::select! {
                r = cr.readable(), if c_ok => {
                    r.map_err(on_client)?;
                    let Some((res, eof)) =
                        read_to_filter(&cr, scratch, vm, id, Dir::Downstream).map_err(on_client)?
                    else {
                        continue;
                    };
                    c_eof = eof;
                    if !res.forwarded.is_empty() {
                        sw.write_all(&res.forwarded).await.map_err(on_upstream)?;
                    }
                    if res.close {
                        return Ok(Peer::Local);
                    }
                    // tcp_proxy `Filter::onData` writes the client's end_stream to the upstream
                    // (its FIN) once the filter chain lets it through; a filter that paused on
                    // it keeps it, as Envoy holds a stopped end_stream until it continues.
                    if eof && !res.paused {
                        sw.shutdown().await.map_err(on_upstream)?;
                    }
                    last = Peer::Remote;
                }
                r = sr.readable(), if s_ok => {
                    r.map_err(on_upstream)?;
                    let Some((res, eof)) =
                        read_to_filter(&sr, scratch, vm, id, Dir::Upstream).map_err(on_upstream)?
                    else {
                        continue;
                    };
                    s_eof = eof;
                    if !res.forwarded.is_empty() {
                        cw.write_all(&res.forwarded).await.map_err(on_client)?;
                    }
                    if eof {
                        vm.borrow_mut().upstream_end_of_stream(id);
                    }
                    if res.close {
                        return Ok(Peer::Local);
                    }
                    // tcp_proxy `Filter::onUpstreamData`: the broker's FIN goes to the client.
                    if eof && !res.paused {
                        cw.shutdown().await.map_err(on_client)?;
                    }
                    last = Peer::Local;
                }
            }
        }
        Ok(last)
    }
    .await;
    let (peer, result) = match ended {
        Ok(peer) => (peer, Ok(())),
        Err((peer, e)) => (peer, Err(e)),
    };
    let _ = cw.shutdown().await;
    let _ = sw.shutdown().await;
    vm.borrow_mut().close_as(id, peer);
    result
}

/// Read what `from` has ready into the worker's buffer and hand it to the filter: the filter's
/// answer and whether this was the peer's FIN, or `None` if the readiness was spurious.
///
/// All connections of a worker share that buffer: they run on the worker's one thread, and it
/// is borrowed only here, from the read to the synchronous callback that copies the bytes into
/// the connection's host buffer, never across an `.await`. So a connection keeps no read buffer
/// of its own, as an Envoy connection keeps none beyond the bytes it has not yet consumed.
fn read_to_filter(
    from: &OwnedReadHalf,
    scratch: &RefCell<Vec<u8>>,
    vm: &RefCell<Vm>,
    id: u32,
    dir: Dir,
) -> std::io::Result<Option<(DataResult, bool)>> {
    let mut buf = scratch.borrow_mut();
    let n = match from.try_read(&mut buf) {
        Ok(n) => n,
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Ok(None),
        Err(e) => return Err(e),
    };
    let eof = n == 0;
    let res = vm
        .borrow_mut()
        .data(id, dir, buf.get(..n).unwrap_or(&[]), eof);
    Ok(Some((res, eof)))
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
                // Fault injection for the failure-policy tests: the next call into a VM fails
                // as a trap does (host.rs `Vm::fail_next_call`).
                "/fault/trap" => {
                    process
                        .inject_traps
                        .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    ("200 OK", "armed\n".to_string())
                }
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
