"""Our Istio manifests checked against Istio's own WasmPlugin CRD schema
(../shared/istio/customresourcedefinitions.gen.yaml, generated from istio/api), the way the
Kubernetes API server would: the OpenAPI v3 structural schema (JSON Schema), list-map key
uniqueness, and the CEL `x-kubernetes-validations` rules the CRD carries. The validator is
first held to Istio's own valid and invalid WasmPlugin test cases, so a check that cannot fail
cannot pass here."""
import re
import urllib.parse
from pathlib import Path

import jsonschema
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
SHARED = Path(__import__("os").environ.get("KMF_SHARED", ROOT.parent / "shared")) / "istio"
MANIFESTS = ROOT / "wasm-plugin-manifests"


def wasmplugin_schema():
    for doc in yaml.safe_load_all((SHARED / "customresourcedefinitions.gen.yaml").read_text()):
        if doc and doc.get("kind") == "CustomResourceDefinition" and doc["spec"]["names"]["kind"] == "WasmPlugin":
            for v in doc["spec"]["versions"]:
                if v["name"] == "v1alpha1":
                    return v["schema"]["openAPIV3Schema"]
    raise AssertionError("WasmPlugin v1alpha1 not in the CRD file")


def go_url_ok(u):
    """Go's url.Parse rejects bad percent-escapes; that is what makes CEL's isURL false."""
    return not re.search(r"%(?![0-9A-Fa-f]{2})", u)


def cel(message, value):
    """The CEL rules of the WasmPlugin CRD, by message. An unknown rule fails loudly."""
    schemes = ["", "http", "https", "oci", "file"]
    if message == "wildcard not allowed in label value match":
        return "*" not in value
    if message == "wildcard not allowed in label key match":
        return all("*" not in k for k in value)
    if message == "key must not be empty":
        return all(len(k) != 0 for k in value)
    if message == "cross namespace referencing is not currently supported":
        return len(value) == 0
    if message == "url must have schema one of [http, https, file, oci]":
        if "://" in value and go_url_ok(value):
            return urllib.parse.urlsplit(value).scheme in schemes
        alt = "http://" + value
        return go_url_ok(alt) and urllib.parse.urlsplit(alt).scheme in schemes
    if message == "value may only be set when valueFrom is INLINE":
        return value.get("valueFrom", "") != "HOST" or "value" not in value
    if message == "only one of targetRefs or selector can be set":
        return sum(k in value for k in ("selector", "targetRef", "targetRefs")) <= 1
    raise AssertionError(f"validator does not know CEL rule {message!r}")


def k8s_extras(schema, value, path, errors):
    """List-map key uniqueness and CEL rules, walking the schema beside the value."""
    for rule in schema.get("x-kubernetes-validations", []):
        if not cel(rule["message"], value):
            errors.append(f"{path}: {rule['message']}")
    if isinstance(value, dict):
        props = schema.get("properties", {})
        for k, v in value.items():
            sub = props.get(k) or (schema.get("additionalProperties") if isinstance(schema.get("additionalProperties"), dict) else None)
            if sub:
                k8s_extras(sub, v, f"{path}.{k}", errors)
    if isinstance(value, list) and "items" in schema:
        if schema.get("x-kubernetes-list-type") == "map":
            keys = schema.get("x-kubernetes-list-map-keys", [])
            seen = set()
            for i, item in enumerate(value):
                key = tuple(item.get(k) for k in keys)
                if key in seen:
                    errors.append(f"{path}[{i}]: Duplicate value: {key}")
                seen.add(key)
        for i, item in enumerate(value):
            k8s_extras(schema["items"], item, f"{path}[{i}]", errors)


def validate(obj):
    schema = wasmplugin_schema()
    errors = [f"{'.'.join(str(p) for p in e.absolute_path)}: {e.message}"
              for e in jsonschema.Draft7Validator(schema).iter_errors(obj)]
    if not errors and obj.get("spec") is not None:
        k8s_extras(schema["properties"]["spec"], obj["spec"], "spec", errors)
    return errors


def cases(name):
    return [d for d in yaml.safe_load_all((SHARED / name).read_text()) if d]


@pytest.mark.parametrize("doc", cases("wasm-valid.yaml"), ids=lambda d: d["metadata"]["name"])
def test_istio_valid_cases_pass(doc):
    assert validate(doc) == []


@pytest.mark.parametrize("doc", cases("wasm-invalid.yaml"), ids=lambda d: d["metadata"]["name"])
def test_istio_invalid_cases_fail(doc):
    doc = dict(doc)
    want = doc.pop("_err")
    errors = validate(doc)
    assert errors, f"accepted, but Istio rejects it with {want!r}"


def our_wasmplugins():
    out = []
    for f in sorted(MANIFESTS.rglob("*.yaml")):
        for d in yaml.safe_load_all(f.read_text()):
            if d and d.get("kind") == "WasmPlugin":
                out.append(pytest.param(d, id=f"{f.relative_to(MANIFESTS)}:{d['metadata']['name']}"))
    assert out
    return out


@pytest.mark.parametrize("doc", our_wasmplugins())
def test_our_wasmplugins_are_valid(doc):
    assert validate(doc) == []
    assert doc["spec"]["type"] == "NETWORK"


@pytest.mark.parametrize("doc", our_wasmplugins())
def test_our_plugin_configs_are_accepted_by_the_filter(doc, tmp_path):
    """The pluginConfig in each manifest must pass the filter's own configure-time checks:
    load the built .wasm in the test host with it (wasm-sidecar exits non-zero on rejection)."""
    import json
    import subprocess
    import socket
    sidecar = ROOT / "target/sidecar/wasm-sidecar"
    wasm = ROOT / "target/wasm32-wasip1/release/kafka_mesh_filter.wasm"
    cfg = tmp_path / "cfg.json"
    cfg.write_text(json.dumps(doc["spec"].get("pluginConfig", {})))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    p = subprocess.Popen([str(sidecar), "--listen", f"127.0.0.1:{port}", "--upstream", "127.0.0.1:1",
                          "--wasm", str(wasm), "--config", str(cfg)],
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        out, _ = p.communicate(timeout=5)
        raise AssertionError(f"sidecar exited: {out}")
    except subprocess.TimeoutExpired:
        pass  # still running: the config was accepted and it is listening
    finally:
        p.kill()
        p.wait()


def test_a_bad_plugin_config_is_rejected_with_its_path(tmp_path):
    import subprocess
    sidecar = ROOT / "target/sidecar/wasm-sidecar"
    wasm = ROOT / "target/wasm32-wasip1/release/kafka_mesh_filter.wasm"
    cfg = tmp_path / "cfg.json"
    cfg.write_text('{"metrics": {"families": ["produce", "bogus"]}}')
    r = subprocess.run([str(sidecar), "--listen", "127.0.0.1:0", "--upstream", "127.0.0.1:1",
                        "--wasm", str(wasm), "--config", str(cfg), "--log-level", "error"],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode != 0
    assert ".metrics.families[1]" in r.stdout + r.stderr


def test_policy_examples_in_manifests_are_the_tested_files():
    import json
    docs = {d["metadata"]["name"]: d for d in yaml.safe_load_all(
        (MANIFESTS / "policies/wasmplugins.yaml").read_text()) if d}
    for name in ["orders-producers", "mesh-principals", "audit"]:
        want = json.loads((MANIFESTS / f"policies/{name}.json").read_text())
        assert docs[f"kafka-policy-{name}"]["spec"]["pluginConfig"] == want, name


def test_stats_tags_are_the_same_everywhere():
    """The tags the test host extracts, the plain-Envoy config and Istio's extraStatTags."""
    import json
    shipped = [t["tag_name"] for t in json.loads((MANIFESTS / "envoy/stats_config.json").read_text())["stats_tags"]]
    envoy = yaml.safe_load((MANIFESTS / "envoy/envoy.yaml").read_text())["stats_config"]["stats_tags"]
    assert [t["tag_name"] for t in envoy] == shipped
    assert all(t["regex"] == f"({t['tag_name']}=\\.=(.*?);\\.;)" for t in envoy)
    patch = yaml.safe_load((MANIFESTS / "istio/proxy-config-patch.yaml").read_text())
    proxy = yaml.safe_load(patch["spec"]["template"]["metadata"]["annotations"]["proxy.istio.io/config"])
    assert proxy["extraStatTags"] == shipped


def test_istio_needs_only_extra_stat_tags():
    """Istio always includes stats starting with `wasm` (pkg/bootstrap/config.go, vendored with
    the test host, which applies it in `--stats-config istio`), so our `wasmcustom.*` series
    need no proxyStatsMatcher: the patch must not tell users they do."""
    import json
    istio = json.loads((ROOT / "tests/src/istio/bootstrap_stats.json").read_text())
    assert istio["use_all_default_tags"] is False
    assert "wasm" in istio["inclusion_prefixes"]
    assert "wasmcustom.topic=.=orders;.;kafka_mesh_produce_records_total".startswith(
        tuple(istio["inclusion_prefixes"]))
    patch = yaml.safe_load((MANIFESTS / "istio/proxy-config-patch.yaml").read_text())
    proxy = yaml.safe_load(patch["spec"]["template"]["metadata"]["annotations"]["proxy.istio.io/config"])
    assert set(proxy) == {"extraStatTags"}
