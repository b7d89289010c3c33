"""Our Istio manifests checked against Istio's own CRD schemas (tests/manifests/istio/, vendored
from istio/api, see istio/SOURCE.md) the way the Kubernetes API server would: the OpenAPI v3
structural schema (JSON Schema), unknown fields, list-map key uniqueness, and the CEL
`x-kubernetes-validations` rules the CRDs carry (manifest_checks.py). The validator is first held
to Istio's own valid and invalid WasmPlugin test cases, so a check that cannot fail cannot pass
here.

Which files: every YAML file under wasm-plugin-manifests/ except kustomize's own files and the
patches a kustomization applies (partial objects). The rendered kustomizations are checked in
test_kustomize.py."""
import json

import pytest
import yaml

from manifest_checks import (CEL, MANIFESTS, ROOT, SIDECAR, VENDORED, WASM, assert_filter_accepts,
                             crd_index, gateway_mode_errors, go_duration_ns, has_crd, patch_files,
                             validate)


def cases(name):
    return [d for d in yaml.safe_load_all((VENDORED / name).read_text()) if d]


@pytest.mark.parametrize("doc", cases("wasm-valid.yaml"), ids=lambda d: d["metadata"]["name"])
def test_istio_valid_cases_pass(doc):
    assert validate(doc, check_metadata=False) == []


@pytest.mark.parametrize("doc", cases("wasm-invalid.yaml"), ids=lambda d: d["metadata"]["name"])
def test_istio_invalid_cases_fail(doc):
    """Rejected, and for Istio's reason: as istio/api tests/validation_test.go does, the expected
    `_err` must be a substring of an error (the validator words errors as the API server)."""
    doc = dict(doc)
    want = doc.pop("_err")
    errors = validate(doc, check_metadata=False)
    assert errors, f"accepted, but Istio rejects it with {want!r}"
    assert any(want in e for e in errors), f"rejected with {errors}, but Istio says {want!r}"


def test_every_istio_kind_is_looked_up_by_group_version_kind():
    index = crd_index()
    for key in [("extensions.istio.io", "v1alpha1", "WasmPlugin"), ("security.istio.io", "v1", "PeerAuthentication"),
                ("networking.istio.io", "v1", "Gateway"), ("networking.istio.io", "v1beta1", "Gateway"),
                ("networking.istio.io", "v1", "VirtualService"), ("networking.istio.io", "v1", "ServiceEntry")]:
        assert key in index, key
    assert ("extensions.istio.io", "v1", "WasmPlugin") not in index  # not a served version


def test_the_validator_fails_where_the_api_server_would():
    """Each check of the generalised validator, on kinds beyond WasmPlugin."""
    wp = {"apiVersion": "extensions.istio.io/v1alpha1", "kind": "WasmPlugin",
          "metadata": {"name": "x", "namespace": "kafka"}, "spec": {"url": "oci://r/x", "type": "NETWORK"}}
    assert validate(wp) == []
    assert any("unknown field" in e for e in validate({**wp, "spec": {**wp["spec"], "faillStrategy": "FAIL_OPEN"}}))
    assert validate({**wp, "spec": {**wp["spec"], "priority": None}}) == []  # nullable
    assert validate({**wp, "apiVersion": "extensions.istio.io/v1"})[0].startswith("no CRD")
    assert validate({**wp, "kind": "Kafka", "apiVersion": "kafka.strimzi.io/v1"})[0].startswith("no CRD")
    assert any("DNS-1123" in e for e in validate({**wp, "metadata": {"name": "Bad_Name"}}))
    pa = {"apiVersion": "security.istio.io/v1", "kind": "PeerAuthentication",
          "metadata": {"name": "default", "namespace": "kafka"}, "spec": {"mtls": {"mode": "STRICT"}}}
    assert validate(pa) == []
    assert any("portLevelMtls requires selector" in e
               for e in validate({**pa, "spec": {"mtls": {"mode": "STRICT"}, "portLevelMtls": {"9091": {"mode": "DISABLE"}}}}))
    with_sel = {"selector": {"matchLabels": {"a": "b"}}, "mtls": {"mode": "STRICT"}}
    assert validate({**pa, "spec": {**with_sel, "portLevelMtls": {"9091": {"mode": "DISABLE"}}}}) == []
    assert any("port must be between" in e for e in validate({**pa, "spec": {**with_sel, "portLevelMtls": {"0": {"mode": "DISABLE"}}}}))
    assert any("spec.mtls.mode: Unsupported value" in e for e in validate({**pa, "spec": {"mtls": {"mode": "STRICTER"}}}))
    se = {"apiVersion": "networking.istio.io/v1", "kind": "ServiceEntry", "metadata": {"name": "s", "namespace": "shop"},
          "spec": {"hosts": ["a.mesh"], "ports": [{"number": 9092, "name": "tcp", "protocol": "TCP"}], "resolution": "DNS"}}
    assert validate(se) == []
    assert any("hostname cannot be wildcard" in e for e in validate({**se, "spec": {**se["spec"], "hosts": ["*"]}}))
    assert any("port number cannot be duplicated" in e for e in validate(
        {**se, "spec": {**se["spec"], "ports": [{"number": 1, "name": "a"}, {"number": 1, "name": "b"}]}}))
    assert any("NONE mode cannot set endpoints" in e for e in validate(
        {**se, "spec": {**se["spec"], "resolution": "NONE", "endpoints": [{"address": "1.2.3.4"}]}}))
    gw = {"apiVersion": "networking.istio.io/v1", "kind": "Gateway", "metadata": {"name": "g", "namespace": "kafka"},
          "spec": {"servers": [{"port": {"number": 1, "name": "t", "protocol": "TLS"}, "hosts": ["*"],
                                "tls": {"credentialName": "a", "credentialNames": ["b"]}}]}}
    assert any("only one of credentialName or credentialNames" in e for e in validate(gw))
    assert go_duration_ns("1.5s") == 1.5e9 and go_duration_ns("1h2m") == 3720e9
    assert go_duration_ns("0") == 0 and go_duration_ns("1") is None and go_duration_ns("ms") is None


def test_every_cel_rule_of_the_kinds_we_ship_is_written_out():
    """The CEL rules of the kinds in our manifests are all in the table, so none is met for the
    first time in a user's manifest (an unknown one would fail loudly there)."""
    def rules(s):
        if isinstance(s, dict):
            yield from (r["rule"] for r in s.get("x-kubernetes-validations", []))
            for v in list(s.get("properties", {}).values()) + [s.get("items"), s.get("additionalProperties")]:
                yield from rules(v)
    for key, (schema, _) in crd_index().items():
        if key[2] in ("WasmPlugin", "PeerAuthentication", "Gateway", "ServiceEntry", "VirtualService"):
            missing = set(rules(schema)) - set(CEL)
            assert not missing, (key, missing)


def test_an_unknown_cel_rule_fails_loudly():
    from manifest_checks import k8s_extras
    schema = {"type": "object", "x-kubernetes-validations": [{"rule": "self.size() > 1000", "message": "new rule"}]}
    with pytest.raises(AssertionError, match="does not know CEL rule"):
        k8s_extras(schema, {}, "spec", [])
    assert "self.size() > 1000" not in CEL


def manifest_docs():
    """(file, doc) for every object in a YAML file that is neither a kustomization nor a patch."""
    patches = patch_files()
    out = []
    for f in sorted(MANIFESTS.rglob("*.yaml")):
        if f.name == "kustomization.yaml" or f.resolve() in patches:
            continue
        for d in yaml.safe_load_all(f.read_text()):
            if isinstance(d, dict) and d.get("kind"):
                out.append((f, d))
    return out


def our_wasmplugins():
    out = [pytest.param(d, id=f"{f.relative_to(MANIFESTS)}:{d['metadata']['name']}")
           for f, d in manifest_docs() if d["kind"] == "WasmPlugin"]
    assert out
    return out


def our_istio_objects():
    out = [pytest.param(d, id=f"{f.relative_to(MANIFESTS)}:{d['kind']}/{d['metadata']['name']}")
           for f, d in manifest_docs() if d["apiVersion"].split("/")[0].endswith("istio.io")]
    assert out
    return out


def test_patch_files_are_not_taken_for_manifests():
    """Kustomize patches are partial objects: they are left to test_kustomize (rendered), and
    the overlays' patches are among them."""
    patches = patch_files()
    assert MANIFESTS.joinpath("overlays/broker-sidecar/wasmplugin-patch.yaml").resolve() in patches
    assert MANIFESTS.joinpath("overlays/gateway/plugin-config-patch.yaml").resolve() in patches
    assert not any(f.resolve() in patches for f, _ in manifest_docs())


@pytest.mark.parametrize("doc", our_istio_objects())
def test_our_istio_objects_are_valid(doc):
    assert has_crd(doc), f"{doc['apiVersion']} {doc['kind']} has no CRD in the vendored file"
    assert validate(doc) == []


@pytest.mark.parametrize("doc", our_wasmplugins())
def test_our_wasmplugins_are_valid(doc):
    assert validate(doc) == []
    assert doc["spec"]["type"] == "NETWORK"


@pytest.mark.parametrize("doc", our_wasmplugins())
def test_a_gateway_plugin_does_not_match_server_mode(doc):
    """Istio classes gateway listeners as CLIENT for WasmPlugin matching (istio/istio
    pilot/pkg/model/extensions.go workloadModeForListenerClass), so a SERVER match never
    attaches on a gateway."""
    assert gateway_mode_errors(doc) == []


@pytest.mark.parametrize("doc", our_wasmplugins())
def test_our_plugin_configs_are_accepted_by_the_filter(doc, tmp_path):
    """The pluginConfig in each manifest must pass the filter's own configure-time checks:
    load the built .wasm in the test host with it (wasm-sidecar exits non-zero on rejection)."""
    assert_filter_accepts(doc["spec"].get("pluginConfig", {}), tmp_path)


def test_a_bad_plugin_config_is_rejected_with_its_path(tmp_path):
    import subprocess
    cfg = tmp_path / "cfg.json"
    cfg.write_text('{"metrics": {"families": ["produce", "bogus"]}}')
    r = subprocess.run([str(SIDECAR), "--listen", "127.0.0.1:0", "--upstream", "127.0.0.1:1",
                        "--wasm", str(WASM), "--config", str(cfg), "--log-level", "error"],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode != 0
    assert ".metrics.families[1]" in r.stdout + r.stderr


def test_policy_examples_in_manifests_are_the_tested_files():
    docs = {d["metadata"]["name"]: d for d in yaml.safe_load_all(
        (MANIFESTS / "policies/wasmplugins.yaml").read_text()) if d}
    for name in ["orders-producers", "mesh-principals", "audit"]:
        want = json.loads((MANIFESTS / f"policies/{name}.json").read_text())
        assert docs[f"kafka-policy-{name}"]["spec"]["pluginConfig"] == want, name


def test_rewrite_examples_in_manifests_are_the_tested_files():
    """rewrite/*-wasmplugin and the ServiceEntry file carry the configs that test_kustomize runs
    against a scripted broker (rewrite/gateway.json, rewrite/client-sidecar.json)."""
    for f, name, cfg in [("rewrite/gateway-wasmplugin.yaml", "kafka-mesh-filter-gateway", "rewrite/gateway.json"),
                         ("rewrite/sidecar-serviceentry.yaml", "kafka-mesh-filter-client", "rewrite/client-sidecar.json")]:
        docs = {d["metadata"]["name"]: d for d in yaml.safe_load_all((MANIFESTS / f).read_text())
                if d and d["kind"] == "WasmPlugin"}
        assert docs[name]["spec"]["pluginConfig"] == json.loads((MANIFESTS / cfg).read_text()), f


def test_stats_tags_are_the_same_everywhere():
    """The tags the test host extracts, the plain-Envoy config and Istio's extraStatTags."""
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
    istio = json.loads((ROOT / "tests/src/istio/bootstrap_stats.json").read_text())
    assert istio["use_all_default_tags"] is False
    assert "wasm" in istio["inclusion_prefixes"]
    assert "wasmcustom.topic=.=orders;.;kafka_mesh_produce_records_total".startswith(
        tuple(istio["inclusion_prefixes"]))
    patch = yaml.safe_load((MANIFESTS / "istio/proxy-config-patch.yaml").read_text())
    proxy = yaml.safe_load(patch["spec"]["template"]["metadata"]["annotations"]["proxy.istio.io/config"])
    assert set(proxy) == {"extraStatTags"}
