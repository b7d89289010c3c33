"""Real tansu broker + wasm-sidecar running the built filter, for the end-to-end tests."""
import os
import re
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
WASM = Path(os.environ.get("KMF_WASM", ROOT / "target/wasm32-wasip1/release/kafka_mesh_filter.wasm"))
SIDECAR = Path(os.environ.get("KMF_SIDECAR", ROOT / "target/sidecar/wasm-sidecar"))
TANSU = os.environ.get("TANSU", "tansu")


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
        time.sleep(0.1)
    raise RuntimeError(f"nothing listening on {port}")


def wait_for(cond, what, timeout=20):
    """Poll `cond` every 50 ms until it holds; fail naming `what` after `timeout` seconds."""
    end = time.time() + timeout
    while time.time() < end:
        if cond():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


class Sidecar:
    def __init__(self, tmp, upstream, chunk=0, workers=1, config="{}", port=None, log_level="warn",
                 properties=None, buffer_limit=None, extra_args=()):
        self.port, self.admin = port or free_port(), free_port()
        cfg = tmp / f"cfg-{self.port}.json"
        cfg.write_text(config)
        self.log = open(tmp / f"sidecar-{self.port}.log", "w")
        args = [str(SIDECAR), "--listen", f"127.0.0.1:{self.port}", "--upstream", upstream,
                "--wasm", str(WASM), "--config", str(cfg), "--admin", f"127.0.0.1:{self.admin}",
                "--workers", str(workers), "--log-level", log_level]
        if chunk:
            args += ["--chunk", str(chunk)]
        if buffer_limit:
            # Envoy's per_connection_buffer_limit_bytes (1 MiB default; Istio's gateway: 32 KiB)
            args += ["--buffer-limit", str(buffer_limit)]
        for k, v in (properties or {}).items():
            args += ["--property", f"{k}={v}"]
        args += list(extra_args)
        self.proc = subprocess.Popen(args, stdout=self.log, stderr=subprocess.STDOUT)
        wait_port(self.port)
        self.bootstrap = f"127.0.0.1:{self.port}"

    def prometheus(self):
        return urllib.request.urlopen(f"http://127.0.0.1:{self.admin}/stats/prometheus", timeout=5).read().decode()

    def stats(self):
        """Every series, keyed as Prometheus shows it: `name{label="v",...}`."""
        out = {}
        for line in self.prometheus().splitlines():
            if line and not line.startswith("#"):
                name, _, value = line.rpartition(" ")
                out[name] = float(value)
        return out

    def metric(self, family, stats=None, **labels):
        """Sum of the series of `family` whose labels include `labels`."""
        total = 0.0
        for key, value in (stats if stats is not None else self.stats()).items():
            name, _, rest = key.partition("{")
            if name != family:
                continue
            have = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', rest))
            if all(have.get(k) == str(v) for k, v in labels.items()):
                total += value
        return total

    def trap_next_vm_call(self):
        """Fault injection: the next call into a VM fails as a trap does (admin /fault/trap)."""
        urllib.request.urlopen(f"http://127.0.0.1:{self.admin}/fault/trap", timeout=5).read()

    def read_log(self):
        self.log.flush()
        return Path(self.log.name).read_text()

    def stop(self):
        self.proc.terminate()
        self.proc.wait(10)
        self.log.close()


@pytest.fixture(scope="session")
def tmp_session(tmp_path_factory):
    return tmp_path_factory.mktemp("e2e")


class Stack:
    """tansu advertising the sidecar's address, so clients that follow the advertised broker
    address after bootstrap stay behind the filter, and the sidecar in front of it."""

    def __init__(self, tmp, chunk=0, workers=1, config="{}", log_level="warn", properties=None,
                 advertise=None, buffer_limit=None, sidecar_args=()):
        assert WASM.exists(), f"{WASM} missing: run `make build`"
        assert SIDECAR.exists(), f"{SIDECAR} missing: run `make build`"
        self.broker_port = free_port()
        sidecar_port = free_port()
        self.sidecar_port = sidecar_port
        if callable(config):
            config = config(sidecar_port)
        self.tansu_log = open(tmp / f"tansu-{self.broker_port}.log", "w")
        self.tansu = subprocess.Popen(
            [TANSU, "broker", "--storage-engine", "memory://tansu/",
             "--listener-url", f"tcp://127.0.0.1:{self.broker_port}",
             "--advertised-listener-url", advertise or f"tcp://127.0.0.1:{sidecar_port}"],
            stdout=self.tansu_log, stderr=subprocess.STDOUT)
        wait_port(self.broker_port)
        self.sidecar = Sidecar(tmp, f"127.0.0.1:{self.broker_port}", chunk, workers, config,
                               port=sidecar_port, log_level=log_level, properties=properties,
                               buffer_limit=buffer_limit, extra_args=sidecar_args)
        self.bootstrap = self.sidecar.bootstrap

    def stop(self):
        self.sidecar.stop()
        self.tansu.terminate()
        self.tansu.wait(10)
        self.tansu_log.close()


@pytest.fixture(scope="session")
def tmp_session(tmp_path_factory):
    return tmp_path_factory.mktemp("e2e")


@pytest.fixture
def stack_factory(tmp_session):
    made = []

    def make(**kw):
        st = Stack(tmp_session, **kw)
        made.append(st)
        return st

    yield make
    for st in made:
        st.stop()


def pytest_terminal_summary(terminalreporter):
    """Lines a test left in its user_properties under "summary" (the load test's throughput
    per mode), shown after the run even when output is captured."""
    lines = [value for reports in terminalreporter.stats.values() for r in reports
             if getattr(r, "when", None) == "call"
             for key, value in getattr(r, "user_properties", []) if key == "summary"]
    if lines:
        terminalreporter.section("summary")
        for line in lines:
            terminalreporter.write_line(line)
