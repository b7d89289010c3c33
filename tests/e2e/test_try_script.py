"""wasm-plugin-manifests/envoy/try.py, the script the README's "Try it with Envoy and Kafka in
docker" runs against compose.yaml's Envoy, run here against the test host instead: a real
tansu broker, wasm-sidecar in front of it loaded with the filter configuration embedded in
envoy.yaml (the same string Envoy passes to on_configure), its admin standing in for Envoy's.
Docker is not available where the tests run; this is the part of that setup we can run."""
import json
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
TRY = ROOT / "wasm-plugin-manifests" / "envoy" / "try.py"
ENVOY_YAML = ROOT / "wasm-plugin-manifests" / "envoy" / "envoy.yaml"


def envoy_filter_config():
    doc = yaml.safe_load(ENVOY_YAML.read_text())
    for listener in doc["static_resources"]["listeners"]:
        for chain in listener["filter_chains"]:
            for f in chain["filters"]:
                if f["name"] == "envoy.filters.network.wasm":
                    return f["typed_config"]["config"]["configuration"]["value"]
    raise AssertionError("no envoy.filters.network.wasm filter in envoy.yaml")


def run_try(stack, *args):
    return subprocess.run(
        [sys.executable, str(TRY), "--bootstrap", stack.bootstrap,
         "--admin", f"127.0.0.1:{stack.sidecar.admin}", "--timeout", "60", *args],
        capture_output=True, text=True, timeout=180)


def test_try_script_against_the_test_host_and_tansu(stack_factory):
    config = envoy_filter_config()
    json.loads(config)
    st = stack_factory(config=config, workers=2)
    r = run_try(st, "--records", "40", "--topic", "try-e2e", "--partitions", "2")
    assert r.returncode == 0, r.stdout + r.stderr
    out = r.stdout
    assert "consumed 40 of them back: all match" in out, out
    assert 'kafka_mesh_produce_records_total{topic="try-e2e"} 40' in out, out
    assert 'kafka_mesh_fetch_records_total{topic="try-e2e"}' in out, out
    assert "the filter counted 40 records produced" in out, out
    assert out.rstrip().endswith("OK"), out
    # what try.py prints is what the admin serves
    assert st.sidecar.metric("kafka_mesh_produce_records_total", topic="try-e2e") == 40
    # a second run on the same (now existing) topic: the topic is reused, the records are
    # new, and the counts are the sum of both runs
    r = run_try(st, "--records", "10", "--topic", "try-e2e")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "consumed 10 of them back: all match" in r.stdout, r.stdout
    assert st.sidecar.metric("kafka_mesh_produce_records_total", topic="try-e2e") == 50


def test_try_script_fails_when_the_filter_does_not_count(stack_factory):
    """The stats check can fail: with the produce and fetch families off the records still
    come back, but the filter's counts are missing and try.py exits 1 (and 0 with
    --no-stats-check)."""
    st = stack_factory(config=json.dumps({"metrics": {"families": ["api"]}}))
    r = run_try(st, "--records", "5", "--stats-wait", "1")
    assert r.returncode == 1, r.stdout + r.stderr
    assert "all match" in r.stdout and r.stdout.rstrip().endswith("FAILED"), r.stdout
    r = run_try(st, "--records", "5", "--no-stats-check")
    assert r.returncode == 0, r.stdout + r.stderr
