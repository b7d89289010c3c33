#!/usr/bin/env python3
"""End-to-end figures for `make bench`: produce and consume throughput with real librdkafka
clients against a real broker (tansu, in-memory storage), direct and through the wasm-sidecar
with the no-op proxy-wasm filter and with kafka-mesh-filter in each mode, as ratios; then a
fixed-traffic pass with wasmtime fuel on for the deterministic VM cost per MiB (wasm
instructions, host calls, bytes copied into and out of the VM).

Method, table and reproduce commands: bench/README.md. Usage:

    .venv/bin/python bench/e2e/run.py                      # everything, 4-7 minutes on 2 cores
    .venv/bin/python bench/e2e/run.py --mb 50 --modes noop,noconfig --variants 16k
    .venv/bin/python bench/e2e/run.py --no-throughput      # cost table only

Every phase has a deadline and an idle timeout: a mode whose records stop moving is reported
as "stalled: N of M records" instead of hanging the run.
"""
import argparse
import hashlib
import json
import logging
import os
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

ROOT = Path(__file__).resolve().parents[2]
FILTER_WASM = Path(os.environ.get("KMF_WASM", ROOT / "target/wasm32-wasip1/release/kafka_mesh_filter.wasm"))
NOOP_WASM = Path(os.environ.get("KMF_NOOP_WASM",
                                ROOT / "target/wasm32-wasip1/release/kafka_mesh_noop_filter.wasm"))
SIDECAR = Path(os.environ.get("KMF_SIDECAR", ROOT / "target/sidecar/wasm-sidecar"))
TANSU = os.environ.get("TANSU", "tansu")
MIB = 1024 * 1024
MB = 1_000_000

TOPIC = "bench"
SECRET = "secret.bench"  # denied by the policy modes' `no-secret` rule
UNREACHABLE = "tcp://kafka-0.broker.unreachable.invalid:9092"
ALL_FAMILIES = ["api", "produce", "fetch", "errors", "lag", "groups", "clients"]
NO_SECRET = {"defaultAction": "allow", "rules": [
    {"name": "no-secret", "action": "deny", "operations": ["produce", "consume"], "topics": ["secret.*"]}]}


class Mode:
    """How the client reaches the broker. `wasm` None: directly. `config` may be a function of
    the sidecar port (the rewrite target). `deny_every`: every n-th record goes to SECRET, so
    Produce requests (and the consumer's Fetch requests) mix allowed and denied topics."""

    def __init__(self, name, wasm, config="{}", advertise=None, deny_every=0, note=""):
        self.name, self.wasm, self.config = name, wasm, config
        self.advertise, self.deny_every, self.note = advertise, deny_every, note

    def config_for(self, port):
        c = self.config(port) if callable(self.config) else self.config
        return c if isinstance(c, str) else json.dumps(c)


def rewrite(node_endpoints):
    return lambda port: {"rewrite": {"nodeTemplate": f"127.0.0.1:{port}", "nodeEndpoints": node_endpoints}}


MODES = [
    Mode("direct", None, note="client to tansu, no sidecar"),
    Mode("noop", "noop", note="sidecar, no-op proxy-wasm filter"),
    Mode("noconfig", "filter", "{}", note="`{}` (all metric families are on by default)"),
    Mode("metrics", "filter", {"metrics": {"families": ALL_FAMILIES}},
         note="every metric family listed explicitly"),
    Mode("policy-allow", "filter", {"policy": NO_SECRET}, note="a policy that denies nothing in the traffic"),
    Mode("policy-deny", "filter", {"policy": NO_SECRET}, deny_every=10,
         note="same policy; every 10th record goes to a denied topic in the same requests"),
    Mode("rewrite-cap", "filter", rewrite("capVersions"), advertise=UNREACHABLE,
         note="nodeTemplate, nodeEndpoints capVersions; tansu advertises an unreachable name"),
    Mode("rewrite-full", "filter", rewrite("rewrite"), advertise=UNREACHABLE,
         note="nodeTemplate, nodeEndpoints rewrite"),
    Mode("all", "filter",
         lambda port: {"metrics": {"families": ALL_FAMILIES}, "policy": NO_SECRET, **rewrite("rewrite")(port)},
         advertise=UNREACHABLE, deny_every=10, note="metrics + policy with denials + rewrite"),
]
# Not run unless named in --modes: where the per-request cost goes.
EXTRA_MODES = [
    Mode("api-only", "filter", {"metrics": {"families": ["api"]}},
         note="only the api family: headers are read, no body is walked"),
]

# Producer settings on top of librdkafka's defaults. `default` is librdkafka as shipped
# (batch.size 1000000, linger.ms 5, acks all). The fixed-size variants close every batch on
# size, not time (linger.ms 1000), so each Produce request carries one full batch of that
# size: the request layout, and so the VM cost, does not depend on timing.
VARIANTS = {
    "default": {},
    "16k": {"batch.size": 16384, "linger.ms": 1000},
    "1m": {"batch.size": 1048576, "linger.ms": 1000},
}


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, timeout=30):
    end = time.time() + timeout
    while time.time() < end:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listening on {port}")


class Stack:
    """tansu (fresh, in memory) and, unless direct, the wasm-sidecar in front of it."""

    def __init__(self, mode, logdir, measure=False):
        self.mode, self.procs, self.logs = mode, [], []
        self.broker_port = free_port()
        self.sidecar_port = free_port() if mode.wasm else None
        self.admin = free_port() if mode.wasm else None
        advertise = mode.advertise or f"tcp://127.0.0.1:{self.sidecar_port or self.broker_port}"
        tag = f"{mode.name}{'-measure' if measure else ''}"
        self._spawn([TANSU, "broker", "--storage-engine", "memory://tansu/",
                     "--listener-url", f"tcp://127.0.0.1:{self.broker_port}",
                     "--advertised-listener-url", advertise], logdir / f"tansu-{tag}.log")
        wait_port(self.broker_port)
        self.bootstrap = f"127.0.0.1:{self.broker_port}"
        if mode.wasm:
            wasm = FILTER_WASM if mode.wasm == "filter" else NOOP_WASM
            cfg = logdir / f"config-{tag}.json"
            cfg.write_text(mode.config_for(self.sidecar_port))
            args = [str(SIDECAR), "--listen", f"127.0.0.1:{self.sidecar_port}",
                    "--upstream", self.bootstrap, "--wasm", str(wasm), "--config", str(cfg),
                    "--admin", f"127.0.0.1:{self.admin}", "--log-level", "warn"]
            if measure:
                args.append("--measure")
            self._spawn(args, logdir / f"sidecar-{tag}.log")
            self.sidecar_pid = self.procs[-1].pid
            wait_port(self.sidecar_port)
            self.bootstrap = f"127.0.0.1:{self.sidecar_port}"

    def _spawn(self, args, log):
        f = open(log, "w")
        self.logs.append(f)
        self.procs.append(subprocess.Popen(args, stdout=f, stderr=subprocess.STDOUT))

    def vm(self):
        """The sidecar's VM counters (sum over workers), published every 50 ms, and the CPU
        seconds the sidecar process has used (user + system, all threads)."""
        if not self.admin:
            return None
        time.sleep(0.2)
        body = urllib.request.urlopen(f"http://127.0.0.1:{self.admin}/stats/vm", timeout=5).read()
        total = json.loads(body)["total"]
        total["cpu_seconds"] = cpu_seconds(self.sidecar_pid)
        return total

    def stop(self):
        for p in reversed(self.procs):
            p.terminate()
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        for f in self.logs:
            f.close()


# librdkafka's own log (connection closes while a mode stalls, offset resets on a denied
# topic) goes to <out>/clients.log instead of the terminal.
CLIENT_LOG = logging.getLogger("librdkafka")
CLIENT_LOG.propagate = False


def client_conf(bootstrap, **kw):
    return {"bootstrap.servers": bootstrap, "logger": CLIENT_LOG, **kw}


def cpu_seconds(pid):
    """CPU time of every thread of `pid` (the sidecar's threads live as long as it does), in
    nanoseconds from schedstat rather than /proc/pid/stat's 10 ms ticks."""
    ns = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            ns += int((task / "schedstat").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            pass
    return ns / 1e9


def create_topics(bootstrap, names):
    admin = AdminClient(client_conf(bootstrap, **{"client.id": "bench-setup"}))
    for name, f in admin.create_topics([NewTopic(n, 1, 1) for n in names], request_timeout=30).items():
        try:
            f.result(30)
        except Exception as e:  # noqa: BLE001 - an existing topic is fine
            if "TOPIC_ALREADY_EXISTS" not in str(e):
                raise


def produce(bootstrap, topic, secret, deny_every, n, value, conf, deadline_s, idle_s):
    """Produce n records; every deny_every-th to `secret`. Returns what the delivery reports
    said and when the last one came. One warm-up record first (connections, metadata) is not
    timed; it is counted in `warm` (1 if it was acknowledged)."""
    st = {"ok": 0, "ok_bytes": 0, "denied": 0, "denied_bytes": 0, "errors": 0, "error_names": {},
          "last": None, "refused_locally": 0}

    def on_delivery(err, msg):
        st["last"] = time.perf_counter()
        if err is None:
            st["ok"] += 1
            st["ok_bytes"] += len(msg.value())
        elif msg.topic() == secret and err.code() == KafkaError.TOPIC_AUTHORIZATION_FAILED:
            st["denied"] += 1
            st["denied_bytes"] += len(msg.value())
        else:
            st["errors"] += 1
            st["error_names"][err.name()] = st["error_names"].get(err.name(), 0) + 1

    p = Producer(client_conf(bootstrap, on_delivery=on_delivery, **conf))
    p.produce(topic, value)
    p.flush(min(idle_s, deadline_s))
    warm = st["ok"]
    st.update(ok=0, ok_bytes=0, errors=0, error_names={}, last=None)
    t0 = time.perf_counter()
    end = t0 + deadline_s
    progress = (0, t0)

    def done():
        return st["ok"] + st["denied"] + st["errors"] + st["refused_locally"]

    def stuck():
        nonlocal progress
        now = time.perf_counter()
        if done() != progress[0]:
            progress = (done(), now)
        return now > end or now - progress[1] > idle_s

    stalled = False
    for i in range(n):
        t = secret if deny_every and i % deny_every == deny_every - 1 else topic
        while True:
            try:
                p.produce(t, value)
                break
            except KafkaException as e:
                # librdkafka remembers a topic's authorization failure and refuses further
                # records for it at once: they never reach the filter (not timed as traffic).
                if t == secret and e.args[0].code() == KafkaError.TOPIC_AUTHORIZATION_FAILED:
                    st["refused_locally"] += 1
                    break
                raise
            except BufferError:
                p.poll(0.05)
                if stuck():
                    stalled = True
                    break
        if stalled:
            break
        if i % 512 == 0:
            p.poll(0)
    while not stalled and done() < n:
        p.poll(0.1)
        stalled = stuck()
    answered = done()
    if stalled:
        # What never got an answer is purged; its reports (_PURGE_QUEUE/_PURGE_INFLIGHT) are
        # not answers and not counted.
        snapshot = {k: (dict(v) if isinstance(v, dict) else v) for k, v in st.items()}
        p.purge()
        p.flush(2)
        st.update(snapshot)
    st["seconds"] = (st["last"] or time.perf_counter()) - t0
    st["sent"], st["wanted"], st["stalled"], st["warm"] = answered, n, stalled, warm
    return st


def consume(bootstrap, topics, expected, deadline_s, idle_s, deny):
    """Consume from the start of `topics` until `expected` records came back. With `deny`,
    TOPIC_AUTHORIZATION_FAILED on the denied topic is the expected answer, not an error."""
    c = Consumer(client_conf(bootstrap, **{"group.id": f"bench-{uuid.uuid4()}"}))
    c.assign([TopicPartition(t, 0, OFFSET_BEGINNING) for t in topics])
    st = {"records": 0, "bytes": 0, "errors": 0, "error_names": {}, "denied": 0}
    t0 = last = time.perf_counter()
    end = t0 + deadline_s
    first = None  # (time, bytes) when the first records reached the application
    while st["records"] < expected:
        now = time.perf_counter()
        if now > end or now - last > idle_s:
            break
        if first is None and st["records"]:
            first = (last, st["bytes"])
        for m in c.consume(1000, 0.2):
            if m.error():
                if deny and m.error().code() == KafkaError.TOPIC_AUTHORIZATION_FAILED:
                    st["denied"] += 1
                    continue
                st["errors"] += 1
                name = m.error().name()
                st["error_names"][name] = st["error_names"].get(name, 0) + 1
            else:
                st["records"] += 1
                st["bytes"] += len(m.value())
                last = time.perf_counter()
    c.close()
    # Steady state: timed from the first records the application got (connection set-up,
    # ListOffsets and the first fetch's wait excluded) to the last.
    if first and last > first[0]:
        st["seconds"], st["timed_bytes"] = last - first[0], st["bytes"] - first[1]
    else:
        st["seconds"], st["timed_bytes"] = last - t0, st["bytes"]
    st["wanted"], st["stalled"] = expected, st["records"] < expected
    return st


def delta(a, b):
    """Counters spent between two /stats/vm snapshots."""
    if a is None or b is None:
        return None
    d = {}
    for k in ("host_calls_total", "copied_in_total", "copied_out_total", "callbacks_total", "fuel_total",
              "data_bytes_downstream", "data_bytes_upstream", "cpu_seconds"):
        d[k] = b[k] - a[k]
    for group in ("host_calls", "copied_in", "copied_out", "callbacks", "fuel"):
        d[group] = {k: v - a[group].get(k, 0) for k, v in b[group].items() if v - a[group].get(k, 0)}
    d["traffic"] = d["data_bytes_downstream"] + d["data_bytes_upstream"]
    d["fuel_enabled"] = b["fuel_enabled"]
    return d


def run_mode(mode, logdir, mb, record_bytes, variants, measure, deadline_s, idle_s, log, rounds=1):
    """One fresh stack; for each variant `rounds` produce phases (each to its own topic, by a
    new producer; the median counts) then one consume phase of the first round's topic."""
    stack = Stack(mode, logdir, measure=measure)
    out = {}
    try:
        value = os.urandom(record_bytes)
        n = max(1, int(mb * MB) // record_bytes)
        for variant in variants:
            names = [(f"{TOPIC}-{variant}-{i}", f"{SECRET}-{variant}-{i}") for i in range(rounds)]
            create_topics(stack.bootstrap, [t for pair in names for t in pair[:1 + bool(mode.deny_every)]])
            v0 = stack.vm()
            prs = []
            for topic, secret in names:
                prs.append(produce(stack.bootstrap, topic, secret, mode.deny_every, n, value, VARIANTS[variant],
                                   deadline_s, idle_s))
                if prs[-1]["stalled"]:
                    break
            v1 = stack.vm()
            first = prs[0]
            pr = prs[-1] if prs[-1]["stalled"] else sorted(prs, key=produce_mbs)[len(prs) // 2]
            pr = {**pr, "rounds_mbs": [round(produce_mbs(x), 1) for x in prs]}
            topics = [names[0][0]] + ([names[0][1]] if mode.deny_every else [])
            if first["ok"]:
                co = consume(stack.bootstrap, topics, first["ok"] + first["warm"], deadline_s, idle_s,
                             bool(mode.deny_every))
            else:
                co = {"records": 0, "bytes": 0, "errors": 0, "error_names": {}, "denied": 0,
                      "seconds": 0.0, "wanted": 0, "stalled": False, "skipped": True}
            v2 = stack.vm()
            r = {"produce": pr, "consume": co, "produce_vm": delta(v0, v1), "consume_vm": delta(v1, v2)}
            out[variant] = r
            log(f"  {mode.name:13} {variant:8} {'measure' if measure else 'throughput'}: "
                f"{fmt_phase(pr, 'produce')}; {fmt_phase(co, 'consume')}")
    finally:
        stack.stop()
    return out


def produce_mbs(pr):
    b = pr["ok_bytes"] + pr["denied_bytes"]
    return b / MB / pr["seconds"] if pr["seconds"] > 0 and b else 0.0


def consume_mbs(co):
    b = co.get("timed_bytes", co["bytes"])
    return b / MB / co["seconds"] if co["seconds"] > 0 and b else 0.0


def fmt_phase(st, kind):
    if kind == "produce":
        s = f"produce {produce_mbs(st):.1f} MB/s"
        if len(st.get("rounds_mbs", [])) > 1:
            s += f" (median of rounds {st['rounds_mbs']})"
        if st["denied"] or st.get("refused_locally"):
            s += f" ({st['denied']} denied as expected, {st.get('refused_locally', 0)} refused by the client)"
        if st["errors"]:
            s += f", errors {st['error_names']}"
        if st["stalled"]:
            s += f", stalled: {st['sent']} of {st['wanted']} records answered"
        return s
    if st.get("skipped"):
        return "consume skipped (nothing was produced)"
    s = f"consume {consume_mbs(st):.1f} MB/s"
    if st["denied"]:
        s += f" ({st['denied']} denied fetches as expected)"
    if st["errors"]:
        s += f", errors {st['error_names']}"
    if st["stalled"]:
        s += f", stalled: {st['records']} of {st['wanted']} records"
    return s


def status(pr, co):
    bits = []
    if pr["stalled"]:
        bits.append(f"produce stalled: {pr['sent']} of {pr['wanted']} records answered")
    if pr["errors"]:
        bits.append("produce errors " + ", ".join(f"{k} x{v}" for k, v in pr["error_names"].items()))
    if co.get("skipped"):
        bits.append("consume skipped (nothing was produced)")
    if co["stalled"]:
        bits.append(f"consume stalled: {co['records']} of {co['wanted']} records")
    if co["errors"]:
        bits.append("consume errors " + ", ".join(f"{k} x{v}" for k, v in co["error_names"].items()))
    return "; ".join(bits) or "ok"


def median_run(rs):
    """Repeated runs of one mode: every produce round and every consume phase, and their
    medians. A stalled run shows as that run (its status is what matters)."""
    stalled = [r for r in rs if r["produce"]["stalled"] or r["consume"]["stalled"]]
    base = stalled[0] if stalled else rs[0]
    return {**base, "runs": rs,
            "produce_all": [x for r in rs for x in r["produce"]["rounds_mbs"]],
            "consume_all": [round(consume_mbs(r["consume"]), 1) for r in rs]}


def fig(r, phase):
    """The figure for a phase: the median over rounds and runs."""
    xs = r.get(f"{phase}_all")
    if xs:
        return statistics.median(xs)
    return produce_mbs(r["produce"]) if phase == "produce" else consume_mbs(r["consume"])


def spread(r, phase):
    xs = r.get(f"{phase}_all") or []
    return f" ({min(xs):.0f}-{max(xs):.0f})" if len(xs) > 1 else ""


def ratio(a, b):
    return f"{a / b:.2f}" if a and b else "-"


def throughput_table(res, variant):
    base = res.get("noop", {}).get(variant)
    direct = res.get("direct", {}).get(variant)
    rows = ["| mode | produce MB/s | consume MB/s | produce vs no-op | consume vs no-op | "
            "produce vs direct | consume vs direct | sidecar CPU ms/MiB produce | consume | status |",
            "|---|---|---|---|---|---|---|---|---|---|"]
    for name, per in res.items():
        r = per.get(variant)
        if not r:
            continue
        p, c = fig(r, "produce"), fig(r, "consume")
        bp = fig(base, "produce") if base else 0
        bc = fig(base, "consume") if base else 0
        dp = fig(direct, "produce") if direct else 0
        dc = fig(direct, "consume") if direct else 0
        rows.append(f"| {name} | {p:.1f}{spread(r, 'produce')} | {c:.1f}{spread(r, 'consume')} | {ratio(p, bp)} | {ratio(c, bc)} | {ratio(p, dp)} | "
                    f"{ratio(c, dc)} | {cpu_per_mib(r, 'produce')} | {cpu_per_mib(r, 'consume')} | "
                    f"{status(r['produce'], r['consume'])} |")
    return "\n".join(rows)


def cpu_per_mib(r, phase):
    """Sidecar CPU (relay + VM) per MiB the filter saw, median over runs: robust to the
    machine's other load in a way wall-clock throughput is not."""
    xs = []
    for run in r.get("runs") or [r]:
        d = run.get(f"{phase}_vm")
        if d and d["traffic"] and not run[phase].get("stalled") and not run[phase].get("skipped"):
            xs.append(1000 * d["cpu_seconds"] / (d["traffic"] / MIB))
    return f"{statistics.median(xs):.2f}" if xs else "-"


def per_mib(v, traffic):
    return v / (traffic / MIB) if traffic else 0.0


def cost_rows(res):
    rows = ["| mode | batches | phase | traffic MiB | wasm fuel / MiB | host calls / MiB | "
            "get_buffer_bytes / MiB | set_buffer_bytes / MiB | callbacks / MiB | copied into VM / MiB | "
            "copied out of VM / MiB | VM-copied % of traffic | status |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, per in res.items():
        for variant, r in per.items():
            for phase in ("produce", "consume"):
                d = r[f"{phase}_vm"]
                if not d:
                    continue
                t = d["traffic"]
                hc = d["host_calls"]
                copied = d["copied_in_total"] + d["copied_out_total"]
                st = r[phase]
                if st.get("skipped") or not t:
                    continue
                flag = "stalled" if st["stalled"] else ("errors" if st["errors"] else "ok")
                fuel = f"{per_mib(d['fuel_total'], t):,.0f}" if d["fuel_enabled"] else "-"
                rows.append(
                    f"| {name} | {variant} | {phase} | {t / MIB:.1f} | {fuel} | "
                    f"{per_mib(d['host_calls_total'], t):,.1f} | "
                    f"{per_mib(hc.get('proxy_get_buffer_bytes', 0), t):,.1f} | "
                    f"{per_mib(hc.get('proxy_set_buffer_bytes', 0), t):,.1f} | "
                    f"{per_mib(d['callbacks_total'], t):,.1f} | "
                    f"{per_mib(d['copied_in_total'], t):,.0f} B | {per_mib(d['copied_out_total'], t):,.0f} B | "
                    f"{100 * copied / t if t else 0:.3f} % | {flag} |")
    return "\n".join(rows)


def targets(thr, cost, variant):
    """The issue's targets: every filter mode >= 0.9x the no-op filter's throughput; VM-copied
    bytes <= 1% of traffic for produce batches of 16 KiB or more."""
    lines = []
    base = thr.get("noop", {}).get(variant)
    for name, per in thr.items():
        if name in ("direct", "noop") or variant not in per or not base:
            continue
        r = per[variant]
        for phase in ("produce", "consume"):
            got, want = fig(r, phase), fig(base, phase)
            if not want:
                continue
            if r[phase].get("skipped"):
                lines.append(f"- {name} {phase}: not measured (nothing was produced)")
                continue
            q = got / want
            mine, noop = cpu_per_mib(r, phase), cpu_per_mib(base, phase)
            cpu = f"; sidecar CPU per MiB {mine} ms vs the no-op's {noop} ms" if mine != "-" else ""
            if r[phase]["stalled"]:
                lines.append(f"- {name} {phase}: MISSED, stalled ({status(r['produce'], r['consume'])})")
            elif q < 0.9:
                lines.append(f"- {name} {phase}: MISSED, {q:.2f}x the no-op filter ({(0.9 - q) * 100:.0f} "
                             f"points short of 0.9x){cpu}")
            else:
                lines.append(f"- {name} {phase}: ok, {q:.2f}x the no-op filter{cpu}")
    for name, per in cost.items():
        if name == "noop":
            continue
        for variant_c in ("16k", "1m"):
            r = per.get(variant_c)
            if not r or not r["produce_vm"]:
                continue
            d = r["produce_vm"]
            pct = 100 * (d["copied_in_total"] + d["copied_out_total"]) / d["traffic"] if d["traffic"] else 0
            verdict = "ok" if pct <= 1 else f"MISSED by {pct / 1:.1f}x"
            lines.append(f"- {name} produce, {variant_c} batches: VM-copied {pct:.3f} % of traffic: {verdict}")
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mb", type=float, default=100, help="MB of record values per throughput run (100)")
    ap.add_argument("--measure-mb", type=float, default=16, help="MB per variant in the fuel pass (16)")
    ap.add_argument("--record-bytes", type=int, default=1000, help="record value size (1000)")
    ap.add_argument("--modes", default=",".join(m.name for m in MODES))
    ap.add_argument("--variants", default="default",
                    help="producer batch variants for the throughput pass (default; also 16k, 1m)")
    ap.add_argument("--measure-variants", default="16k,1m,default")
    ap.add_argument("--repeat", type=int, default=2,
                    help="throughput runs per mode (fresh stacks), interleaved across modes; the table shows "
                         "medians (2)")
    ap.add_argument("--produce-rounds", type=int, default=5,
                    help="produce phases per throughput run, each to its own topic; the median counts (5)")
    ap.add_argument("--no-throughput", action="store_true")
    ap.add_argument("--no-measure", action="store_true")
    ap.add_argument("--idle", type=float, default=10, help="seconds without progress = stalled (10)")
    ap.add_argument("--deadline", type=float, default=0, help="seconds per phase (default: 60 + 1 s per 4 MB)")
    ap.add_argument("--out", default=str(ROOT / "target/bench-e2e"), help="logs, results.json, results.md")
    a = ap.parse_args()

    outdir = Path(a.out)
    outdir.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(outdir / "clients.log", mode="w")
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
    CLIENT_LOG.addHandler(handler)
    CLIENT_LOG.setLevel(logging.INFO)
    wanted = a.modes.split(",")
    unknown = set(wanted) - {m.name for m in MODES + EXTRA_MODES}
    if unknown:
        sys.exit(f"unknown modes {sorted(unknown)}; known: {[m.name for m in MODES + EXTRA_MODES]}")
    modes = [m for m in MODES + EXTRA_MODES if m.name in wanted]
    for need in [SIDECAR, FILTER_WASM, NOOP_WASM]:
        if not need.exists():
            sys.exit(f"{need} missing: run `make build` and "
                     "`cargo build --release -p kafka-mesh-noop-filter --target wasm32-wasip1`")

    def log(s):
        print(s, flush=True)

    started, load0 = time.time(), os.getloadavg()[0]
    thr, cost = {}, {}
    if not a.no_throughput:
        deadline = a.deadline or 60 + a.mb / 4
        log(f"throughput pass: {a.mb:g} MB of {a.record_bytes}-byte records per mode, fuel off, "
            f"{a.repeat} round(s)")
        runs = {m.name: [] for m in modes}
        for _ in range(a.repeat):
            for m in modes:
                runs[m.name].append(run_mode(m, outdir, a.mb, a.record_bytes, a.variants.split(","), False,
                                             deadline, a.idle, log, rounds=a.produce_rounds))
        thr = {name: {v: median_run([r[v] for r in rs]) for v in a.variants.split(",")}
               for name, rs in runs.items()}
    if not a.no_measure:
        deadline = a.deadline or 60 + a.measure_mb / 4
        log(f"cost pass: {a.measure_mb:g} MB per batch variant, wasmtime fuel on")
        for m in modes:
            if m.wasm:
                cost[m.name] = run_mode(m, outdir, a.measure_mb, a.record_bytes, a.measure_variants.split(","),
                                        True, deadline, a.idle, log)

    def sha(p):
        return hashlib.sha256(p.read_bytes()).hexdigest()[:12]

    md = [f"kafka-mesh-filter end-to-end bench, {time.strftime('%Y-%m-%d %H:%M')}, {os.cpu_count()} CPUs, "
          f"load average {load0:.1f} at start, {os.getloadavg()[0]:.1f} at end, {time.time() - started:.0f} s; filter {FILTER_WASM} "
          f"(sha256 {sha(FILTER_WASM)}), no-op {NOOP_WASM.name} (sha256 {sha(NOOP_WASM)})", ""]
    for variant in a.variants.split(","):
        if thr:
            md += [f"Throughput, {a.mb:g} MB of {a.record_bytes}-byte records, producer batches `{variant}`:", "",
                   throughput_table(thr, variant), ""]
    if cost:
        md += [f"VM cost per MiB of traffic (bytes the filter saw, both directions), {a.measure_mb:g} MB per "
               "variant, fuel on:", "", cost_rows(cost), ""]
    md += ["Targets:", "", targets(thr, cost, a.variants.split(",")[0]), ""]
    text = "\n".join(md)
    print()
    print(text)
    (outdir / "results.md").write_text(text)
    (outdir / "results.json").write_text(json.dumps({"throughput": thr, "cost": cost}, indent=1))
    print(f"(written to {outdir}/results.md and results.json)")


if __name__ == "__main__":
    main()
