"""The kustomizations under wasm-plugin-manifests/ (base/, overlays/*, examples/kafka-on-istio,
observability/), rendered with `kubectl kustomize` as a user would apply them.

- Every rendered object validates: Istio kinds against the vendored CRD schema (istio/,
  manifest_checks.validate), the core Kubernetes kinds listed in manifest_checks.CORE_KINDS
  for metadata. The few third-party kinds, Strimzi's and prometheus-operator's, are checked for
  the fields this file can assert without their CRDs (THIRD_PARTY below; none is vendored). Any
  other kind fails.
- Each overlay renders what overlays/README.md documents (name, namespace, selector, mode,
  ports, failStrategy, phase, priority), pinned by digest. Its pluginConfig is exactly the JSON
  file the table names, and the built filter accepts it.
- The two rewrite configs do what their comments say: the filter, run with each in front of a
  scripted broker, rewrites a Metadata response's broker addresses to those the Istio objects
  beside them route (rewrite/gateway.yaml, rewrite/sidecar-serviceentry.yaml).
- The worked example (examples/kafka-on-istio) hangs together: the WasmPlugin selects
  Strimzi's broker pods and the listener's port, and the policy's principal is the client's
  service account. The extraStatTags are the filter's tags, and the PodMonitor scrapes the
  same pods.
"""
import json
import re
import socket
import struct
import subprocess
import threading
import time

import pytest
import yaml

from manifest_checks import (CORE_KINDS, MANIFESTS, assert_filter_accepts, gateway_mode_errors, gvk, has_crd,
                             kubectl, kustomization_dirs, kustomize, start_sidecar, validate)

OVERLAYS = MANIFESTS / "overlays"
EXAMPLE = MANIFESTS / "examples" / "kafka-on-istio"
DIGEST_URL = re.compile(r"^oci://[^@\s]+@sha256:([a-f0-9]{64})$")
STATS_TAGS = [t["tag_name"] for t in json.loads((MANIFESTS / "envoy/stats_config.json").read_text())["stats_tags"]]
STRIMZI = "kafka.strimzi.io/v1"


def rel(p):
    return str(p.relative_to(MANIFESTS))


@pytest.fixture(scope="module")
def rendered():
    cache = {}

    def get(directory):
        if directory not in cache:
            cache[directory] = kustomize(directory)
        return cache[directory]
    return get


def test_kubectl_has_a_kustomize_that_knows_patches():
    """`patches:` needs kustomize v3.1+ (kubectl 1.21+ embeds v4)."""
    out = subprocess.run([kubectl(), "version", "--client", "-o", "json"], capture_output=True, text=True, check=True).stdout
    version = json.loads(out).get("kustomizeVersion", "")
    m = re.match(r"v(\d+)\.", version)
    assert m and int(m.group(1)) >= 4, f"kubectl's kustomize is {version or 'unknown'}: needs v4+ (kubectl 1.21+)"


# --- every rendered object -------------------------------------------------------------------

def check_kafka(o):
    spec = o["spec"]
    assert "kafka" in spec and spec["kafka"]["listeners"], "spec.kafka.listeners is required"
    for li in spec["kafka"]["listeners"]:
        assert {"name", "port", "type", "tls"} <= set(li), li  # Strimzi's required listener fields
    assert "zookeeper" not in spec, "Strimzi 1.x is KRaft only"


def check_node_pool(o):
    spec = o["spec"]
    assert {"replicas", "roles", "storage"} <= set(spec), "spec.replicas, roles and storage are required"
    assert set(spec["roles"]) <= {"controller", "broker"} and spec["roles"]
    assert spec["storage"]["type"] in ("jbod", "ephemeral", "persistent-claim")
    assert o["metadata"]["labels"]["strimzi.io/cluster"], "a pool names its Kafka cluster"


def check_topic(o):
    assert o["metadata"]["labels"]["strimzi.io/cluster"], "the topic operator only watches labelled topics"
    assert isinstance(o["spec"].get("partitions"), int) and isinstance(o["spec"].get("replicas"), int)


def check_pod_monitor(o):
    spec = o["spec"]
    assert "selector" in spec, "spec.selector is required"
    for ep in spec["podMetricsEndpoints"]:
        assert ep.get("port") or ep.get("portNumber"), ep


# Kinds with no CRD here: (group, version, kind) -> structural check. Strimzi 1.x serves only
# kafka.strimzi.io/v1 (packaging/install/cluster-operator/04*-Crd-*.yaml of strimzi 1.2.0); the
# required fields are those of those CRDs' openAPIV3Schema.
THIRD_PARTY = {
    ("kafka.strimzi.io", "v1", "Kafka"): check_kafka,
    ("kafka.strimzi.io", "v1", "KafkaNodePool"): check_node_pool,
    ("kafka.strimzi.io", "v1", "KafkaTopic"): check_topic,
    ("monitoring.coreos.com", "v1", "PodMonitor"): check_pod_monitor,
}


@pytest.mark.parametrize("directory", kustomization_dirs(), ids=rel)
def test_every_rendered_object_validates(directory, rendered):
    objs = rendered(directory)
    assert objs, f"{rel(directory)} renders nothing"
    for o in objs:
        key = gvk(o)
        where = f"{rel(directory)}: {o['apiVersion']} {o['kind']} {o['metadata'].get('name')}"
        if key in THIRD_PARTY:
            assert o["metadata"].get("name") and o["metadata"].get("namespace"), where
            THIRD_PARTY[key](o)
        else:
            assert has_crd(o) or key in CORE_KINDS, f"{where}: no CRD and not a listed core or third-party kind"
            assert validate(o) == [], where
        if o["kind"] == "WasmPlugin":
            assert gateway_mode_errors(o) == [], where


def test_the_kustomizations_tested_are_all_there_are():
    assert {rel(d) for d in kustomization_dirs()} >= {
        "base", "overlays/broker-sidecar", "overlays/client-sidecar", "overlays/gateway",
        "examples/kafka-on-istio", "examples/kafka-on-istio/monitoring"}


# --- the overlays, as documented -------------------------------------------------------------

def documented_overlays():
    """The table in overlays/README.md, one dict per row."""
    lines = [ln for ln in (OVERLAYS / "README.md").read_text().splitlines() if ln.startswith("|")]
    head = [c.strip() for c in lines[0].strip("|").split("|")]
    rows = []
    for ln in lines[2:]:
        cells = [c.strip().strip("`") for c in ln.strip("|").split("|")]
        rows.append(dict(zip(head, cells)))
    assert rows
    return rows


def test_the_table_covers_every_overlay():
    assert sorted(r["overlay"] for r in documented_overlays()) == sorted(
        p.name for p in OVERLAYS.iterdir() if (p / "kustomization.yaml").exists())


def only_wasmplugin(objs):
    plugins = [o for o in objs if o["kind"] == "WasmPlugin"]
    assert len(plugins) == 1, [o["kind"] for o in objs]
    return plugins[0]


@pytest.mark.parametrize("row", documented_overlays(), ids=lambda r: r["overlay"])
def test_overlay_renders_what_the_readme_says(row, rendered):
    wp = only_wasmplugin(rendered(OVERLAYS / row["overlay"]))
    spec = wp["spec"]
    assert wp["metadata"]["name"] == row["name"]
    assert wp["metadata"]["namespace"] == row["namespace"]
    key, _, value = row["selector"].partition(": ")
    assert spec["selector"] == {"matchLabels": {key: value}}
    assert spec["type"] == "NETWORK"
    assert spec["match"] == [{"mode": row["mode"],
                              "ports": [{"number": int(p)} for p in row["ports"].split(", ")]}]
    assert spec["failStrategy"] == row["failStrategy"]
    assert spec["phase"] == row["phase"]
    assert spec["priority"] == int(row["priority"])
    m = DIGEST_URL.match(spec["url"])
    assert m, f"{spec['url']} is not pinned by digest"
    assert spec["sha256"] == m.group(1), "url digest and sha256 are the same manifest digest"


@pytest.mark.parametrize("row", documented_overlays(), ids=lambda r: r["overlay"])
def test_overlay_plugin_config_is_the_tested_file(row, rendered):
    wp = only_wasmplugin(rendered(OVERLAYS / row["overlay"]))
    assert wp["spec"]["pluginConfig"] == json.loads((MANIFESTS / row["pluginConfig"]).read_text())


def plugin_dirs():
    return [OVERLAYS / r["overlay"] for r in documented_overlays()] + [MANIFESTS / "base", EXAMPLE]


@pytest.mark.parametrize("directory", plugin_dirs(), ids=rel)
def test_rendered_plugin_configs_are_accepted_by_the_filter(directory, rendered, tmp_path):
    for o in rendered(directory):
        if o["kind"] == "WasmPlugin":
            assert_filter_accepts(o["spec"].get("pluginConfig", {}), tmp_path)


# --- the rewrite configs, run -----------------------------------------------------------------

def kstr(s):
    b = s.encode()
    return struct.pack(">h", len(b)) + b


def metadata_v1_request(corr):
    body = struct.pack(">hhi", 3, 1, corr) + kstr("kmf-test") + struct.pack(">i", -1)  # all topics
    return struct.pack(">i", len(body)) + body


def metadata_v1_response(corr, brokers):
    body = struct.pack(">ii", corr, len(brokers))
    for node, host, port in brokers:
        body += struct.pack(">i", node) + kstr(host) + struct.pack(">i", port) + struct.pack(">h", -1)
    body += struct.pack(">ii", brokers[0][0], 0)  # controller id, no topics
    return struct.pack(">i", len(body)) + body


def read_exact(sock, n):
    out = b""
    while len(out) < n:
        chunk = sock.recv(n - len(out))
        if not chunk:
            raise AssertionError(f"connection closed after {len(out)} of {n} bytes")
        out += chunk
    return out


def read_frame(sock):
    (n,) = struct.unpack(">i", read_exact(sock, 4))
    return read_exact(sock, n)


def parse_metadata_v1_brokers(frame):
    (corr, count), off = struct.unpack(">ii", frame[:8]), 8
    out = []
    for _ in range(count):
        (node,) = struct.unpack(">i", frame[off:off + 4])
        (hl,) = struct.unpack(">h", frame[off + 4:off + 6])
        host = frame[off + 6:off + 6 + hl].decode()
        off += 6 + hl
        (port, rack) = struct.unpack(">ih", frame[off:off + 6])
        off += 6 + max(rack, 0)
        out.append((node, host, port))
    return corr, out


def brokers_through_the_filter(config, advertised, tmp_path):
    """What a client is told about the brokers when a scripted broker advertises `advertised`
    [(node id, host, port)] and the built filter runs with `config` between them."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    srv.settimeout(20)

    def broker():
        conn, _ = srv.accept()
        with conn:
            req = read_frame(conn)
            (corr,) = struct.unpack(">i", req[4:8])
            conn.sendall(metadata_v1_response(corr, advertised))
            conn.recv(1)  # until the client closes
    t = threading.Thread(target=broker, daemon=True)
    t.start()
    p, port = start_sidecar(config, tmp_path, upstream=f"127.0.0.1:{srv.getsockname()[1]}")
    try:
        deadline = time.time() + 15
        while True:
            try:
                c = socket.create_connection(("127.0.0.1", port), timeout=10)
                break
            except OSError:
                assert p.poll() is None, p.communicate()[0]
                assert time.time() < deadline, "the sidecar never listened"
                time.sleep(0.1)
        with c:
            c.sendall(metadata_v1_request(7))
            corr, brokers = parse_metadata_v1_brokers(read_frame(c))
        assert corr == 7
        return brokers
    finally:
        p.kill()
        p.wait()
        srv.close()
        t.join(5)


def rewrite_docs(name):
    return [d for d in yaml.safe_load_all((MANIFESTS / "rewrite" / name).read_text()) if d]


def test_gateway_config_rewrites_to_the_gateways_per_broker_ports(tmp_path, rendered):
    config = json.loads((MANIFESTS / "rewrite/gateway.json").read_text())
    advertised = [(n, f"my-cluster-kafka-{n}.kafka.svc", 9092) for n in range(3)]
    got = brokers_through_the_filter(config, advertised, tmp_path)
    assert got == [(n, "kafka.example.com", 19093 + n) for n in range(3)]
    # ...and those ports, plus bootstrap 19092, are the Gateway's servers, the VirtualService's
    # routes and the overlay's match ports, all four the same.
    gw = next(d for d in rewrite_docs("gateway.yaml") if d["kind"] == "Gateway")
    vs = next(d for d in rewrite_docs("gateway.yaml") if d["kind"] == "VirtualService")
    ports = {19092} | {p for _, _, p in got}
    assert {s["port"]["number"] for s in gw["spec"]["servers"]} == ports
    assert {r["match"][0]["port"] for r in vs["spec"]["tcp"]} == ports
    wp = only_wasmplugin(rendered(OVERLAYS / "gateway"))
    assert {p["number"] for m in wp["spec"]["match"] for p in m["ports"]} == ports


def test_client_sidecar_config_rewrites_to_the_service_entry_hosts(tmp_path):
    config = json.loads((MANIFESTS / "rewrite/client-sidecar.json").read_text())
    advertised = [(n, f"broker-{n}.dc2.internal", 9092) for n in range(3)] + [(9, "kafka-9.local", 9092)]
    got = brokers_through_the_filter(config, advertised, tmp_path)
    assert got == [(n, f"kafka-{n}.dc2.mesh", 9092) for n in range(3)] + [(9, "kafka-9.local", 9092)]
    se = next(d for d in rewrite_docs("sidecar-serviceentry.yaml") if d["kind"] == "ServiceEntry")
    assert {h for _, h, _ in got[:3]} == set(se["spec"]["hosts"])
    assert {p["number"] for p in se["spec"]["ports"]} == {9092}


# --- the worked example ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def example(rendered):
    objs = rendered(EXAMPLE)
    by_kind = {}
    for o in objs:
        by_kind.setdefault(o["kind"], []).append(o)
    return by_kind


def test_example_namespaces_are_in_the_mesh(example):
    ns = {o["metadata"]["name"]: o for o in example["Namespace"]}
    assert set(ns) == {"kafka", "shop"}
    assert all(o["metadata"]["labels"]["istio-injection"] == "enabled" for o in ns.values())


def test_example_requires_mtls_where_the_brokers_are(example):
    (pa,) = example["PeerAuthentication"]
    assert pa["metadata"]["namespace"] == "kafka"
    assert pa["spec"] == {"mtls": {"mode": "STRICT"}}


def test_example_kafka_is_strimzi_kraft_with_a_plain_listener(example):
    (kafka,) = example["Kafka"]
    pools = example["KafkaNodePool"]
    assert kafka["apiVersion"] == STRIMZI and all(p["apiVersion"] == STRIMZI for p in pools)
    assert all(p["metadata"]["labels"]["strimzi.io/cluster"] == kafka["metadata"]["name"] for p in pools)
    assert any("broker" in p["spec"]["roles"] for p in pools)
    assert any("controller" in p["spec"]["roles"] for p in pools)
    assert [(li["name"], li["port"], li["tls"]) for li in kafka["spec"]["kafka"]["listeners"]] == [("plain", 9092, False)]
    # a pool's template.pod would replace the Kafka's whole (strimzi KafkaPool.processTemplate)
    assert all("pod" not in p["spec"].get("template", {}) for p in pools)


def test_example_broker_pods_carry_the_istio_annotations(example):
    (kafka,) = example["Kafka"]
    ann = kafka["spec"]["kafka"]["template"]["pod"]["metadata"]["annotations"]
    assert yaml.safe_load(ann["proxy.istio.io/config"])["extraStatTags"] == STATS_TAGS
    strimzi_ports = {"9090", "9091", "8443"}  # controllers, replication/operator, agent
    assert set(ann["traffic.sidecar.istio.io/excludeInboundPorts"].split(",")) == strimzi_ports
    assert set(ann["traffic.sidecar.istio.io/excludeOutboundPorts"].split(",")) == strimzi_ports
    assert "9092" not in strimzi_ports
    eo = kafka["spec"]["entityOperator"]["template"]["pod"]["metadata"]["labels"]
    assert eo["sidecar.istio.io/inject"] == "false"


def test_example_wasmplugin_is_the_broker_overlay_on_strimzis_brokers(example, rendered):
    (kafka,) = example["Kafka"]
    (wp,) = example["WasmPlugin"]
    overlay = only_wasmplugin(rendered(OVERLAYS / "broker-sidecar"))
    assert wp["metadata"] == {**overlay["metadata"], "namespace": kafka["metadata"]["namespace"]}
    assert wp["spec"]["selector"] == {"matchLabels": {
        "strimzi.io/cluster": kafka["metadata"]["name"], "strimzi.io/broker-role": "true"}}
    assert {k: v for k, v in wp["spec"].items() if k != "selector"} == \
        {k: v for k, v in overlay["spec"].items() if k != "selector"}
    listener_ports = {li["port"] for li in kafka["spec"]["kafka"]["listeners"]}
    assert {p["number"] for m in wp["spec"]["match"] for p in m["ports"]} == listener_ports
    assert wp["spec"]["pluginConfig"] == json.loads((MANIFESTS / "policies/mesh-principals.json").read_text())


def glob_match(pattern, s):
    return re.fullmatch(re.escape(pattern).replace(r"\*", ".*").replace(r"\?", "."), s) is not None


def test_example_client_is_the_principal_the_policy_allows(example):
    (wp,) = example["WasmPlugin"]
    (dep,) = example["Deployment"]
    (sa,) = example["ServiceAccount"]
    pod = dep["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == sa["metadata"]["name"]
    assert sa["metadata"]["namespace"] == dep["metadata"]["namespace"]
    principal = f"spiffe://cluster.local/ns/{dep['metadata']['namespace']}/sa/{sa['metadata']['name']}"
    rules = wp["spec"]["pluginConfig"]["policy"]["rules"]
    produce = [r for r in rules if "produce" in r.get("operations", []) and r["action"] == "allow"]
    assert any(principal in r.get("principals", []) for r in produce)
    topics = {t["metadata"]["name"] for t in example["KafkaTopic"]}
    allowed = {t for t in topics for r in produce if principal in r["principals"]
               if any(glob_match(p, t) for p in r["topics"])}
    assert allowed == {"orders.eu"} and "payments" in topics  # the README tries both
    (kafka,) = example["Kafka"]
    tag = pod["containers"][0]["image"].rsplit(":", 1)[1]
    assert tag.endswith(f"-kafka-{kafka['spec']['kafka']['version']}"), tag


def test_example_podmonitor_scrapes_the_brokers_envoy(rendered, example):
    (pm,) = rendered(EXAMPLE / "monitoring")
    (wp,) = example["WasmPlugin"]
    assert pm["apiVersion"] == "monitoring.coreos.com/v1"
    assert pm["metadata"]["namespace"] == wp["metadata"]["namespace"]
    assert pm["spec"]["selector"] == wp["spec"]["selector"]
    (ep,) = pm["spec"]["podMetricsEndpoints"]
    # the istio-proxy container's 15090 (istio/istio injection-template.yaml)
    assert (ep["port"], ep["path"]) == ("http-envoy-prom", "/stats/prometheus")


def test_example_readme_pins_the_versions_the_manifests_use(example):
    text = (EXAMPLE / "README.md").read_text()
    (dep,) = example["Deployment"]
    strimzi = dep["spec"]["template"]["spec"]["containers"][0]["image"].rsplit(":", 1)[1].split("-kafka-")[0]
    assert f"--version {strimzi}" in text, "the Helm install pins the Strimzi release of the client image"
    for name in ("kafka-mesh-filter", "my-cluster-kafka-bootstrap.kafka.svc:9092", "orders.eu", "payments"):
        assert name in text
