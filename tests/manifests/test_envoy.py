"""wasm-plugin-manifests/envoy/: the Envoy bootstrap (envoy.yaml) and the docker compose file
that runs it with a Kafka broker (compose.yaml), checked offline: there is no docker engine
and no Envoy binary where the tests run. tests/e2e/test_try_script.py runs try.py, the
script that goes with them, against the test host and a real tansu broker instead.

envoy.yaml against Envoy's v3 API types
---------------------------------------
The YAML is read as Envoy reads its bootstrap: converted to JSON and parsed by protobuf's JSON
rules (envoyproxy/envoy source/common/protobuf/utility.cc, MessageUtil::loadFromYaml and
loadFromJson, JsonStringToMessage) into envoy.config.bootstrap.v3.Bootstrap, unknown fields
being an error (Envoy rejects them in static config unless started with
--allow-unknown-static-fields; docs/root/operations/cli.rst, PR #4096). The message types come
from the envoy-data-plane package (betterproto2 dataclasses generated from the api/ protos of
one Envoy release, cetanu/envoy_data_plane build.py). 2.2.0 is Envoy 1.39's API: it has the
fields 1.39 added and none of those 1.40 added
(test_the_types_are_the_api_of_the_pinned_envoy), and compose.yaml pins Envoy v1.39.3 to
match. `check_message` below walks the document beside those types: every key must be a
field of its message (its proto name or its lowerCamel JSON name), every value of its field's
kind (message, list, map, enum name, bool, string, integer in range, Duration string...),
two members of one oneof are an error, duplicate YAML keys are an error, a field the protos
mark `deprecated = true` is an error (the generated classes warn), and every Any
(`typed_config`, the plugin `configuration`) is resolved by its @type and walked as that
message, an unknown @type being an error. Then betterproto2's own from_dict must accept the
document too. The walk exists because from_dict alone is lax: it takes "yes" for a bool,
casts 1.5 to an int, snake-cases any spelling of a key and ignores extra keys beside an Any's
`value`. The validator is first held to wrong documents (`MUTATIONS`), each of which it must
reject, and to right spellings it must accept (`ACCEPTED`).

By hand, because no type carries them: every tcp_proxy cluster is a defined cluster, names
are unique, the wasm filter comes before tcp_proxy and tcp_proxy (the terminal filter) is last,
ports are at most 65535.

What this cannot catch:
- protoc-gen-validate rules (min_len, required oneofs, numeric bounds, ...): they are
  annotations in Envoy's .proto files, not in the generated types; only the few above are
  checked.
- other cross-references Envoy resolves at load time, and extension availability: whether the
  image was built with envoy.wasm.runtime.v8 and these filters (the official image is).
- differences between 1.39.0's API, which the types are, and a later 1.39 patch (patches do
  not change the API as a rule); deprecations written only in a field's comment (such as
  the cluster-level DNS settings, deprecated for DNS clusters in favour of cluster_type).
- YAML typing differences: PyYAML types scalars by YAML 1.1, Envoy's yaml-cpp loader by its
  own rules (`yes` is a bool here); envoy.yaml quotes nothing ambiguous.
- anything at run time: DNS for `kafka`, V8 compiling the module, file permissions in the
  container, ports being free. The module's on_configure with the embedded configuration is
  run here in the test host (test_the_embedded_filter_config_is_accepted_by_the_filter).

compose.yaml
------------
Parsed as YAML and held to what envoy.yaml and the Kafka image expect: pinned images, the
built module and envoy.yaml mounted read-only at the paths envoy.yaml and Envoy's command
use, Envoy's listener and admin published where try.py looks, the broker advertising exactly
that published address on the listener Envoy's cluster connects to, and Envoy waiting for a
healthy broker. Not checked: compose's own schema (no compose here) and the images' contents.
"""
import base64
import binascii
import copy
import difflib
import importlib
import json
import math
import re
import shlex
import socket
import subprocess
import warnings
from pathlib import Path

import pytest
import yaml

try:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        import betterproto2
        from envoy_data_plane.envoy.config.bootstrap.v3 import Bootstrap
        from envoy_data_plane.message_pool import default_message_pool
except ImportError as e:  # a missing package fails the run: it is in tests/e2e/requirements.txt
    raise ImportError("envoy-data-plane is missing: .venv/bin/pip install -r tests/e2e/requirements.txt") from e

ROOT = Path(__file__).resolve().parents[2]
ENVOY_DIR = ROOT / "wasm-plugin-manifests" / "envoy"
ENVOY_YAML = ENVOY_DIR / "envoy.yaml"
COMPOSE = ENVOY_DIR / "compose.yaml"
MODULE = ROOT / "target" / "kafka_mesh_filter.wasm"
WASM_OUT = ROOT / "target" / "wasm32-wasip1" / "release" / "kafka_mesh_filter.wasm"
SIDECAR = ROOT / "target" / "sidecar" / "wasm-sidecar"
WASM_FILTER = "envoy.filters.network.wasm"
TCP_PROXY = "envoy.filters.network.tcp_proxy"
WASM_TYPE = "type.googleapis.com/envoy.extensions.filters.network.wasm.v3.Wasm"
TCP_PROXY_TYPE = "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy"
STRING_VALUE = "type.googleapis.com/google.protobuf.StringValue"
# Network filters whose factories say they are terminal (isTerminalFilterByProto): Envoy
# requires one of them last in a chain and none before the end (envoyproxy/envoy
# source/common/config/utility.cc, Utility::validateTerminalFilters, called per network filter
# of a filter chain).
TERMINAL_FILTERS = {TCP_PROXY, "envoy.filters.network.http_connection_manager",
                    "envoy.filters.network.redis_proxy", "envoy.filters.network.thrift_proxy",
                    "envoy.filters.network.dubbo_proxy", "envoy.filters.network.echo",
                    "envoy.filters.network.direct_response"}
# envoyproxy/envoy distribution/docker/Dockerfile-envoy: CMD ["envoy", "-c", "/etc/envoy/envoy.yaml"]
IMAGE_DEFAULT_CONFIG = "/etc/envoy/envoy.yaml"


# --- YAML ----------------------------------------------------------------------------------

class StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses a key given twice in one mapping (PyYAML keeps the last)."""


def _no_duplicates(loader, node, deep=False):
    seen = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                "while constructing a mapping", node.start_mark, f"duplicate key {key!r}", key_node.start_mark)
        seen.add(key)
    return loader.construct_mapping(node, deep)


StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _no_duplicates)


def load(path):
    return yaml.load(path.read_text(), Loader=StrictLoader)


# --- the validator -------------------------------------------------------------------------
# Protobuf's JSON mapping (protobuf.dev/programming-guides/json): field names, the value forms
# of each scalar type, and the well-known types with a JSON form of their own.

INT_RANGES = {
    "int32": (-2**31, 2**31 - 1), "sint32": (-2**31, 2**31 - 1), "sfixed32": (-2**31, 2**31 - 1),
    "uint32": (0, 2**32 - 1), "fixed32": (0, 2**32 - 1),
    "int64": (-2**63, 2**63 - 1), "sint64": (-2**63, 2**63 - 1), "sfixed64": (-2**63, 2**63 - 1),
    "uint64": (0, 2**64 - 1), "fixed64": (0, 2**64 - 1),
}
WRAPPERS = {"DoubleValue": "double", "FloatValue": "float", "Int64Value": "int64",
            "UInt64Value": "uint64", "Int32Value": "int32", "UInt32Value": "uint32",
            "BoolValue": "bool", "StringValue": "string", "BytesValue": "bytes"}
# Well-known types whose JSON form is not an object of their fields; inside an Any they go in
# a "value" key beside "@type".
SPECIAL_JSON = set(WRAPPERS) | {"Any", "Duration", "Timestamp", "FieldMask", "Struct", "Value", "ListValue"}
DURATION = re.compile(r"-?\d+(\.\d{1,9})?s")
TIMESTAMP = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,9})?(Z|[+-]\d\d:\d\d)")
INTEGER = re.compile(r"-?\d+")


def wkt_name(cls):
    """The name of a google.protobuf well-known type, or None."""
    return cls.__name__ if cls.__module__.endswith("google.protobuf") else None


def json_name(proto_name):
    """protoc's default json_name: drop each underscore and upper-case the letter after it."""
    head, *rest = proto_name.split("_")
    return head + "".join(p[:1].upper() + p[1:] for p in rest)


def resolve_type_url(url):
    """The message class of an Any's @type: import the generated module of its package (that
    registers its messages in the pool), then look the URL up."""
    prefix = "type.googleapis.com/"
    if not isinstance(url, str) or not url.startswith(prefix):
        return None
    package = url[len(prefix):].rpartition(".")[0]
    while package:
        try:
            with warnings.catch_warnings():  # the generated modules use a pydantic API
                warnings.simplefilter("ignore", DeprecationWarning)  # deprecated in 2.12
                importlib.import_module(f"envoy_data_plane.{package}")
            break
        except ModuleNotFoundError:
            package = package.rpartition(".")[0]  # a nested message: Outer.Inner
    return default_message_pool.url_to_type.get(url)


def check_scalar(kind, value, path, errors):
    if kind == "bool":
        ok = isinstance(value, bool)
    elif kind == "string":
        ok = isinstance(value, str)
    elif kind == "bytes":
        ok = isinstance(value, str)
        if ok:
            try:
                # standard or URL-safe alphabet, padding optional
                alt = b"-_" if ("-" in value or "_" in value) else None
                base64.b64decode(value + "=" * (-len(value) % 4), altchars=alt, validate=True)
            except binascii.Error:
                ok = False
    elif kind in INT_RANGES:
        n = None
        if isinstance(value, int) and not isinstance(value, bool):
            n = value
        elif isinstance(value, float) and value.is_integer():
            n = int(value)
        elif isinstance(value, str) and INTEGER.fullmatch(value):
            n = int(value)
        lo, hi = INT_RANGES[kind]
        ok = n is not None and lo <= n <= hi
    elif kind in ("float", "double"):
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            ok = math.isfinite(value) and (kind == "double" or abs(value) <= 3.4028234663852886e38)
        elif isinstance(value, str):
            ok = value in ("NaN", "Infinity", "-Infinity")
            if not ok:
                try:
                    ok = math.isfinite(float(value))
                except ValueError:
                    ok = False
        else:
            ok = False
    else:
        raise AssertionError(f"validator does not know scalar type {kind}")
    if not ok:
        errors.append(f"{path}: {value!r} is not a valid {kind}")


def check_enum(enum_cls, value, path, errors):
    if isinstance(value, int) and not isinstance(value, bool):
        if not -2**31 <= value < 2**31:
            errors.append(f"{path}: {value} is out of range for enum {enum_cls.__name__}")
        return
    if isinstance(value, str):
        try:
            if enum_cls.betterproto_renamed_proto_names_to_value().get(value) is None:
                enum_cls.from_string(value)
            return
        except ValueError:
            pass
    names = [m.name for m in enum_cls]
    errors.append(f"{path}: {value!r} is not a value of enum {enum_cls.__name__} {names}")


def check_value(meta, field_cls, value, path, errors):
    if value is None:
        errors.append(f"{path}: null")
    elif meta.proto_type == betterproto2.TYPE_MESSAGE:
        check_message(meta.unwrap() if meta.unwrap else field_cls, value, path, errors)
    elif meta.proto_type == betterproto2.TYPE_ENUM:
        check_enum(field_cls, value, path, errors)
    else:
        check_scalar(meta.proto_type, value, path, errors)


def check_any(value, path, errors):
    if not isinstance(value, dict):
        errors.append(f"{path}: expected an Any (a mapping with @type), got {type(value).__name__}")
        return
    url = value.get("@type")
    target = resolve_type_url(url)
    if target is None:
        errors.append(f"{path}: unknown @type {url!r}")
        return
    rest = {k: v for k, v in value.items() if k != "@type"}
    name = wkt_name(target)
    if name in SPECIAL_JSON:
        if set(rest) != {"value"}:
            errors.append(f"{path}: an Any of google.protobuf.{name} takes only 'value' beside "
                          f"'@type', got {sorted(rest)}")
            return
        check_message(target, rest["value"], f"{path}.value", errors)
    else:
        check_message(target, rest, path, errors)


def check_message(cls, value, path, errors):
    """Append to `errors` everything in `value` (parsed YAML/JSON) that protobuf's JSON parser
    would reject for message `cls`, recursively."""
    name = wkt_name(cls)
    if name == "Any":
        return check_any(value, path, errors)
    if name in WRAPPERS:
        return check_scalar(WRAPPERS[name], value, path, errors)
    if name == "Duration":
        if not (isinstance(value, str) and DURATION.fullmatch(value)):
            errors.append(f"{path}: {value!r} is not a Duration (a string like \"5s\" or \"0.25s\")")
        return
    if name == "Timestamp":
        if not (isinstance(value, str) and TIMESTAMP.fullmatch(value)):
            errors.append(f"{path}: {value!r} is not an RFC 3339 Timestamp")
        return
    if name == "FieldMask":
        if not isinstance(value, str):
            errors.append(f"{path}: {value!r} is not a FieldMask string")
        return
    if name == "Struct":
        if not isinstance(value, dict):
            errors.append(f"{path}: a Struct is a mapping, got {type(value).__name__}")
        return
    if name == "ListValue":
        if not isinstance(value, list):
            errors.append(f"{path}: a ListValue is a list, got {type(value).__name__}")
        return
    if name == "Value":
        return
    if not isinstance(value, dict):
        errors.append(f"{path}: expected a mapping (message {cls.__name__}), got {type(value).__name__}")
        return
    fields = cls._betterproto.meta_by_field_name
    by_key = {}
    for py_name in fields:
        by_key[py_name] = py_name
        by_key[json_name(py_name)] = py_name
    seen, oneofs = {}, {}
    for key, item in value.items():
        at = f"{path}.{key}" if path else str(key)
        py_name = by_key.get(key) if isinstance(key, str) else None
        if py_name is None:
            close = difflib.get_close_matches(str(key), list(fields), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            errors.append(f"{at}: unknown field of {cls.__name__}{hint}")
            continue
        if py_name in seen:
            errors.append(f"{at}: the same field as {seen[py_name]!r}")
            continue
        seen[py_name] = key
        meta = fields[py_name]
        if meta.group:
            oneofs.setdefault(meta.group, []).append(key)
        field_cls = cls._betterproto.cls_by_field[py_name]
        if item is None:
            errors.append(f"{at}: null")
        elif meta.proto_type == betterproto2.TYPE_MAP:
            if not isinstance(item, dict):
                errors.append(f"{at}: a map is a mapping, got {type(item).__name__}")
                continue
            key_meta, value_meta = meta.map_meta
            value_cls = cls._betterproto.cls_by_field[f"{py_name}.value"]
            for k, v in item.items():
                if key_meta.proto_type == betterproto2.TYPE_BOOL:  # JSON keys are "true"/"false"
                    as_bool = k if isinstance(k, bool) else {"true": True, "false": False}.get(k, k)
                    check_scalar("bool", as_bool, f"{at}[{k!r}]", errors)
                elif key_meta.proto_type in INT_RANGES:
                    check_scalar(key_meta.proto_type, k, f"{at}[{k!r}]", errors)
                elif not isinstance(k, (str, int, float)) or isinstance(k, bool):
                    errors.append(f"{at}[{k!r}]: not a string map key")
                check_value(value_meta, value_cls, v, f"{at}[{k!r}]", errors)
        elif meta.repeated:
            if not isinstance(item, list):
                errors.append(f"{at}: a repeated field is a list, got {type(item).__name__}")
                continue
            for i, v in enumerate(item):
                check_value(meta, field_cls, v, f"{at}[{i}]", errors)
        else:
            check_value(meta, field_cls, item, at, errors)
    for group, keys in oneofs.items():
        if len(keys) > 1:
            errors.append(f"{path or '<root>'}: {keys} are members of one oneof ({group}); set one")


def field(msg, name, default=None):
    """A field of a parsed message under its proto name or its JSON name."""
    if not isinstance(msg, dict):
        return default
    return msg.get(name, msg.get(json_name(name), default))


def filters(doc):
    resources = field(doc, "static_resources", {})
    for li, listener in enumerate(field(resources, "listeners", [])):
        for ci, chain in enumerate(field(listener, "filter_chains", [])):
            yield f"static_resources.listeners[{li}].filter_chains[{ci}]", field(chain, "filters", [])


def check_references(doc, errors):
    """What Envoy checks across messages at load time and the types cannot say, for the parts
    envoy.yaml uses."""
    resources = field(doc, "static_resources", {})
    clusters = [field(c, "name") for c in field(resources, "clusters", [])]
    listeners = [field(li, "name") for li in field(resources, "listeners", [])]
    for kind, names in (("cluster", clusters), ("listener", listeners)):
        for n in {n for n in names if names.count(n) > 1}:
            errors.append(f"static_resources: {kind} name {n!r} is used twice")
    for at, chain in filters(doc):
        names = [field(f, "name") for f in chain]
        for n in names[:-1]:
            if n in TERMINAL_FILTERS:
                errors.append(f"{at}: {n} is a terminal filter and must be last")
        if names and names[-1] not in TERMINAL_FILTERS:
            errors.append(f"{at}: the last filter {names[-1]!r} is not a terminal filter")
        for i, f in enumerate(chain):
            cfg = field(f, "typed_config", {})
            if field(f, "name") == TCP_PROXY:
                weighted = field(cfg, "weighted_clusters")
                wanted = ([field(w, "name") for w in field(weighted, "clusters", [])]
                          if weighted is not None else [field(cfg, "cluster")])
                for c in wanted:
                    if c not in clusters:
                        errors.append(f"{at}.filters[{i}]: tcp_proxy cluster {c!r} is not defined (clusters: {clusters})")
                if not field(cfg, "stat_prefix"):
                    errors.append(f"{at}.filters[{i}]: tcp_proxy stat_prefix must not be empty")

    def ports(node, path):
        if isinstance(node, dict):
            for k, v in node.items():
                if k in ("port_value", "portValue") and isinstance(v, int) and not 0 <= v <= 65535:
                    errors.append(f"{path}.{k}: {v} is not a port")
                ports(v, f"{path}.{k}" if path else k)
        elif isinstance(node, list):
            for i, v in enumerate(node):
                ports(v, f"{path}[{i}]")
    ports(doc, "")


def validate_bootstrap(doc):
    """Every problem found in a parsed bootstrap, as `path: reason` strings."""
    errors = []
    check_message(Bootstrap, doc, "", errors)
    if not errors:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                Bootstrap.from_dict(doc)
            except Exception as e:  # betterproto2 / pydantic disagree with the walk
                errors.append(f"betterproto2 from_dict: {type(e).__name__}: {e}")
        # the generated classes warn when a field the protos mark `deprecated = true` is set
        errors += [f"deprecated: {w.message}" for w in caught
                   if issubclass(w.category, DeprecationWarning) and re.fullmatch(r"\w+\.\w+ is deprecated", str(w.message))]
    check_references(doc, errors)
    return errors


def validate_text(text):
    try:
        doc = yaml.load(text, Loader=StrictLoader)
    except yaml.YAMLError as e:
        return [f"YAML: {e}"]
    return validate_bootstrap(doc)


# --- envoy.yaml ----------------------------------------------------------------------------

def envoy_doc():
    return load(ENVOY_YAML)


def the_filter(doc, name):
    found = [f for _, chain in filters(doc) for f in chain if f.get("name") == name]
    assert len(found) == 1, f"expected one {name} filter, found {len(found)}"
    return found[0]


def plugin_config(doc):
    return the_filter(doc, WASM_FILTER)["typed_config"]["config"]


def test_envoy_yaml_is_a_valid_bootstrap():
    assert validate_bootstrap(envoy_doc()) == []


def test_envoy_yaml_runs_the_filter_before_tcp_proxy():
    doc = envoy_doc()
    chains = list(filters(doc))
    assert chains, "no filter chain"
    for at, chain in chains:
        assert [f["name"] for f in chain] == [WASM_FILTER, TCP_PROXY], at
        assert [f["typed_config"]["@type"] for f in chain] == [WASM_TYPE, TCP_PROXY_TYPE], at
    cfg = plugin_config(doc)
    assert cfg["vm_config"]["runtime"] == "envoy.wasm.runtime.v8"
    assert cfg["configuration"]["@type"] == STRING_VALUE
    assert cfg.get("failure_policy", "FAIL_CLOSED") == "FAIL_CLOSED"
    assert "fail_open" not in cfg, "deprecated in favour of failure_policy"
    cluster = next(c for c in doc["static_resources"]["clusters"] if c["name"] == "broker")
    assert cluster["type"] == "STRICT_DNS"


def test_envoy_yaml_keeps_the_shipped_stats_tags():
    doc = envoy_doc()
    shipped = json.loads((ENVOY_DIR / "stats_config.json").read_text())["stats_tags"]
    assert doc["stats_config"]["stats_tags"] == shipped
    assert doc["stats_config"]["use_all_default_tags"] is True


# Wrong documents the validator must reject: (id, change to envoy.yaml's parsed form or a
# text edit, a piece of the expected error).
def _tcp(d):
    return the_filter(d, TCP_PROXY)["typed_config"]


def _wasm(d):
    return plugin_config(d)


def _set(get, key, value):
    def change(d):
        get(d)[key] = value
    return change


MUTATIONS = [
    ("typo-stat_prefx", lambda d: _tcp(d).__setitem__("stat_prefx", _tcp(d).pop("stat_prefix")),
     "stat_prefx: unknown field of TcpProxy (did you mean 'stat_prefix'?)"),
    ("tcp_proxy-typed-as-wasm", _set(_tcp, "@type", WASM_TYPE), "unknown field of Wasm"),
    ("wasm-typed-as-tcp_proxy", _set(lambda d: the_filter(d, WASM_FILTER)["typed_config"], "@type", TCP_PROXY_TYPE),
     "config: unknown field of TcpProxy"),
    ("no-such-type", _set(_tcp, "@type", TCP_PROXY_TYPE + "X"), "unknown @type"),
    ("type-url-without-prefix", _set(_tcp, "@type", TCP_PROXY_TYPE.split("/")[1]), "unknown @type"),
    ("no-@type", lambda d: _tcp(d).pop("@type"), "unknown @type None"),
    ("string-value-typo", _set(lambda d: _wasm(d)["configuration"], "valeu", "{}"), "takes only 'value'"),
    ("string-value-not-a-string", _set(lambda d: _wasm(d)["configuration"], "value", {"metrics": {}}), "is not a valid string"),
    ("vm_config-typo", _set(lambda d: _wasm(d)["vm_config"], "runtim", "v8"), "unknown field of VmConfig"),
    ("code-local-typo", _set(lambda d: _wasm(d)["vm_config"]["code"]["local"], "file_name", "/x"), "unknown field of DataSource"),
    ("bad-enum", _set(lambda d: d["static_resources"]["clusters"][0], "type", "STRICTDNS"), "not a value of enum"),
    ("bad-failure-policy", _set(_wasm, "failure_policy", "FAIL_CLOSE"), "not a value of enum FailurePolicy"),
    ("bool-as-string", _set(_wasm, "fail_open", "yes"), "'yes' is not a valid bool"),
    ("string-as-int", _set(_tcp, "stat_prefix", 5), "5 is not a valid string"),
    ("port-not-a-number", _set(lambda d: d["admin"]["address"]["socket_address"], "port_value", "abc"), "is not a valid uint32"),
    ("port-negative", _set(lambda d: d["admin"]["address"]["socket_address"], "port_value", -1), "is not a valid uint32"),
    ("port-fraction", _set(lambda d: d["admin"]["address"]["socket_address"], "port_value", 9901.5), "is not a valid uint32"),
    ("port-too-large", _set(lambda d: d["admin"]["address"]["socket_address"], "port_value", 70000), "70000 is not a port"),
    ("bad-duration", _set(lambda d: d["static_resources"]["clusters"][0], "connect_timeout", "5"), "is not a Duration"),
    ("message-as-string", _set(lambda d: d, "admin", "127.0.0.1:9901"), "expected a mapping (message Admin)"),
    ("list-as-mapping", _set(lambda d: d["stats_config"], "stats_tags", {"tag_name": "api"}), "a repeated field is a list"),
    ("stats-tag-typo", lambda d: d["stats_config"]["stats_tags"][0].__setitem__("tag_nme", "x"), "unknown field of TagSpecifier"),
    ("null-field", _set(_tcp, "cluster", None), "cluster: null"),
    ("two-oneof-members", _set(_tcp, "weighted_clusters", {"clusters": [{"name": "broker", "weight": 1}]}), "members of one oneof"),
    ("field-twice-by-both-names", _set(_tcp, "statPrefix", "kafka"), "the same field as 'stat_prefix'"),
    ("unknown-top-level", _set(lambda d: d, "static_resource", {}), "unknown field of Bootstrap"),
    ("undefined-cluster", _set(_tcp, "cluster", "brokers"), "cluster 'brokers' is not defined"),
    ("tcp_proxy-not-last", lambda d: next(c for _, c in filters(d)).reverse(), "must be last"),
    ("empty-stat_prefix", _set(_tcp, "stat_prefix", ""), "stat_prefix must not be empty"),
    ("deprecated-fail_open", _set(_wasm, "fail_open", True), "deprecated: PluginConfig.fail_open is deprecated"),
    ("duplicate-cluster", lambda d: d["static_resources"]["clusters"].append(copy.deepcopy(d["static_resources"]["clusters"][0])),
     "cluster name 'broker' is used twice"),
]


@pytest.mark.parametrize("mutate,expected", [pytest.param(m, e, id=i) for i, m, e in MUTATIONS])
def test_the_validator_rejects_a_wrong_bootstrap(mutate, expected):
    doc = envoy_doc()
    mutate(doc)
    errors = validate_bootstrap(doc)
    assert any(expected in e for e in errors), f"expected an error with {expected!r}, got {errors}"


def test_the_validator_rejects_a_duplicate_yaml_key():
    text = ENVOY_YAML.read_text().replace("stat_prefix: kafka", "stat_prefix: kafka\n                stat_prefix: other")
    errors = validate_text(text)
    assert errors and "duplicate key 'stat_prefix'" in errors[0], errors


# Right spellings it must take, as protobuf's JSON parser does.
ACCEPTED = [
    ("lowerCamel-json-names", lambda d: _tcp(d).__setitem__("statPrefix", _tcp(d).pop("stat_prefix"))),
    ("uint32-as-string", _set(lambda d: d["admin"]["address"]["socket_address"], "port_value", "9901")),
    ("enum-as-number", _set(lambda d: d["static_resources"]["clusters"][0], "type", 1)),
    ("fractional-duration", _set(lambda d: d["static_resources"]["clusters"][0], "connect_timeout", "0.250s")),
    ("wrapper-as-scalar", _set(lambda d: d["static_resources"]["clusters"][0], "per_connection_buffer_limit_bytes", 1048576)),
    ("weighted-clusters-instead", lambda d: _tcp(d).__setitem__("weighted_clusters", {"clusters": [{"name": _tcp(d).pop("cluster"), "weight": 1}]})),
]


@pytest.mark.parametrize("mutate", [pytest.param(m, id=i) for i, m in ACCEPTED])
def test_the_validator_accepts_other_valid_spellings(mutate):
    doc = envoy_doc()
    mutate(doc)
    assert validate_bootstrap(doc) == []


# --- the filter configuration embedded in envoy.yaml -----------------------------------------

def embedded_filter_config():
    return plugin_config(envoy_doc())["configuration"]["value"]


def run_sidecar(tmp_path, config_text):
    """wasm-sidecar with the built filter and `config_text` as pluginConfig: (accepted, output).
    It keeps running (listening) when on_configure accepts the configuration and exits
    non-zero when it is rejected (tests/manifests/test_wasmplugin.py uses the same)."""
    assert WASM_OUT.exists(), f"{WASM_OUT} missing: run `make build`"
    assert SIDECAR.exists(), f"{SIDECAR} missing: run `make build`"
    cfg = tmp_path / "cfg.json"
    cfg.write_text(config_text)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    p = subprocess.Popen([str(SIDECAR), "--listen", f"127.0.0.1:{port}", "--upstream", "127.0.0.1:1",
                          "--wasm", str(WASM_OUT), "--config", str(cfg)],
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        out, _ = p.communicate(timeout=5)
        return False, out
    except subprocess.TimeoutExpired:
        return True, ""
    finally:
        p.kill()
        p.wait()


def test_the_embedded_filter_config_is_json_with_metrics_and_access_log():
    cfg = json.loads(embedded_filter_config())
    assert set(cfg["metrics"]["families"]) == {"api", "produce", "fetch", "errors", "lag", "groups", "clients"}
    assert cfg["accessLog"]["enabled"] is True


def test_the_embedded_filter_config_is_accepted_by_the_filter(tmp_path):
    accepted, out = run_sidecar(tmp_path, embedded_filter_config())
    assert accepted, f"the filter rejected envoy.yaml's configuration: {out}"


def test_a_typo_in_the_embedded_config_would_be_rejected(tmp_path):
    bad = embedded_filter_config().replace('"enabled"', '"enabld"')
    assert bad != embedded_filter_config()
    accepted, out = run_sidecar(tmp_path, bad)
    assert not accepted and "enabld" in out, out


# --- compose.yaml --------------------------------------------------------------------------

def compose():
    return load(COMPOSE)


def service(name):
    services = compose()["services"]
    assert name in services, f"compose.yaml has no service {name!r}: {sorted(services)}"
    return services[name]


def env(svc):
    e = svc.get("environment", {})
    if isinstance(e, list):
        e = dict(item.split("=", 1) for item in e)
    return {k: str(v) for k, v in e.items()}


def mounts(svc):
    """Each volume as {source, target, read_only, create_host_path}, from either syntax
    (compose-spec 05-services.md, volumes: the short form creates a missing host path)."""
    out = []
    for v in svc.get("volumes", []):
        if isinstance(v, str):
            parts = v.split(":")
            opts = parts[2].split(",") if len(parts) > 2 else []
            out.append(dict(type="bind", source=parts[0], target=parts[1], read_only="ro" in opts,
                            create_host_path=True))
        else:
            out.append(dict(type=v.get("type"), source=v.get("source"), target=v.get("target"),
                            read_only=bool(v.get("read_only")),
                            create_host_path=v.get("bind", {}).get("create_host_path", True)))
    return out


def published(svc):
    """{container port: (host ip, host port)} from the service's ports, either syntax."""
    out = {}
    for p in svc.get("ports", []):
        if isinstance(p, dict):
            out[int(p["target"])] = (p.get("host_ip", "0.0.0.0"), int(p.get("published", 0)))
            continue
        parts = str(p).split("/")[0].split(":")
        if len(parts) == 3:
            out[int(parts[2])] = (parts[0], int(parts[1]))
        elif len(parts) == 2:
            out[int(parts[1])] = ("0.0.0.0", int(parts[0]))
        else:
            out[int(parts[0])] = ("0.0.0.0", 0)
    return out


def listeners(value):
    """'NAME://host:port,...' as {NAME: (host, port)}."""
    out = {}
    for item in value.split(","):
        m = re.fullmatch(r"([A-Za-z0-9_]+)://(\[[^\]]*\]|[^:]*):(\d+)", item.strip())
        assert m, f"cannot read listener {item!r}"
        out[m.group(1)] = (m.group(2), int(m.group(3)))
    return out


def envoy_command_config(svc):
    cmd = svc.get("command")
    if cmd is None:
        return IMAGE_DEFAULT_CONFIG
    args = shlex.split(cmd) if isinstance(cmd, str) else [str(a) for a in cmd]
    for flag in ("-c", "--config-path"):
        if flag in args:
            return args[args.index(flag) + 1]
    raise AssertionError(f"the Envoy command gives no -c: {args}")


def test_compose_images_are_pinned():
    images = {name: svc.get("image", "") for name, svc in compose()["services"].items()}
    assert set(images) == {"envoy", "kafka"}, images
    assert re.fullmatch(r"envoyproxy/envoy:v\d+\.\d+\.\d+", images["envoy"]), images["envoy"]
    assert re.fullmatch(r"apache/kafka:\d+\.\d+\.\d+", images["kafka"]), images["kafka"]
    assert not any("latest" in i for i in images.values())
    assert "entrypoint" not in service("envoy"), "the image's entrypoint runs the command as given"


def test_compose_mounts_the_built_module_where_envoy_yaml_loads_it():
    filename = plugin_config(envoy_doc())["vm_config"]["code"]["local"]["filename"]
    found = [m for m in mounts(service("envoy")) if m["target"] == filename]
    assert len(found) == 1, f"nothing (or more than one mount) at {filename}: {mounts(service('envoy'))}"
    m = found[0]
    assert m["type"] == "bind"
    assert (COMPOSE.parent / m["source"]).resolve() == MODULE.resolve(), m
    assert m["read_only"], "mount the module read-only"
    assert m["create_host_path"] is False, "a missing module must be an error, not an empty directory"


def test_compose_mounts_envoy_yaml_where_the_command_reads_it():
    svc = service("envoy")
    path = envoy_command_config(svc)
    found = [m for m in mounts(svc) if m["target"] == path]
    assert len(found) == 1, f"nothing mounted at {path}, the config Envoy is started with"
    assert (COMPOSE.parent / found[0]["source"]).resolve() == ENVOY_YAML.resolve(), found[0]
    assert found[0]["read_only"] and found[0]["create_host_path"] is False


def test_compose_publishes_envoys_listener_and_admin_on_the_host_loopback():
    doc = envoy_doc()
    ports = published(service("envoy"))
    (listener,) = doc["static_resources"]["listeners"]
    lport = listener["address"]["socket_address"]["port_value"]
    aport = doc["admin"]["address"]["socket_address"]["port_value"]
    assert ports.get(lport) == ("127.0.0.1", 19092), ports
    assert ports.get(aport) == ("127.0.0.1", 9901), ports
    # in the container both must listen on every interface, or the published ports lead nowhere
    assert listener["address"]["socket_address"]["address"] == "0.0.0.0"
    assert doc["admin"]["address"]["socket_address"]["address"] == "0.0.0.0"
    # try.py's defaults are these two addresses
    text = (ENVOY_DIR / "try.py").read_text()
    assert 'default="127.0.0.1:19092"' in text and 'default="127.0.0.1:9901"' in text


def test_kafka_advertises_envoys_published_listener_on_the_listener_envoy_connects_to():
    doc = envoy_doc()
    kafka = service("kafka")
    e = env(kafka)
    # the endpoint of Envoy's broker cluster: the kafka service, on one of its listeners
    (cluster,) = doc["static_resources"]["clusters"]
    (endpoint,) = [lb["endpoint"]["address"]["socket_address"]
                   for ep in cluster["load_assignment"]["endpoints"] for lb in ep["lb_endpoints"]]
    assert endpoint["address"] in ("kafka", kafka.get("hostname")), endpoint
    bound = listeners(e["KAFKA_LISTENERS"])
    names = [n for n, (_, port) in bound.items() if port == endpoint["port_value"]]
    assert len(names) == 1, f"no Kafka listener on port {endpoint['port_value']}: {bound}"
    advertised = listeners(e["KAFKA_ADVERTISED_LISTENERS"])
    lport = doc["static_resources"]["listeners"][0]["address"]["socket_address"]["port_value"]
    assert advertised[names[0]] == published(service("envoy"))[lport], (
        f"listener {names[0]} advertises {advertised[names[0]]}, Envoy is published on "
        f"{published(service('envoy'))[lport]}")
    # the broker itself is reachable only through Envoy
    assert "ports" not in kafka and "network_mode" not in kafka


def test_kafka_kraft_settings_are_consistent():
    e = env(service("kafka"))
    bound = listeners(e["KAFKA_LISTENERS"])
    advertised = listeners(e["KAFKA_ADVERTISED_LISTENERS"])
    protocols = dict(p.split(":") for p in e["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"].split(","))
    assert set(bound) <= set(protocols), (bound, protocols)
    assert set(e["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}
    controller = e["KAFKA_CONTROLLER_LISTENER_NAMES"]
    assert controller in bound and controller not in advertised
    node, _, voter = e["KAFKA_CONTROLLER_QUORUM_VOTERS"].partition("@")
    assert node == e["KAFKA_NODE_ID"] and voter.endswith(f":{bound[controller][1]}"), voter
    assert e["KAFKA_INTER_BROKER_LISTENER_NAME"] in advertised
    assert set(advertised) == set(bound) - {controller}
    for key in ("KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR", "KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR",
                "KAFKA_TRANSACTION_STATE_LOG_MIN_ISR", "KAFKA_SHARE_COORDINATOR_STATE_TOPIC_REPLICATION_FACTOR",
                "KAFKA_SHARE_COORDINATOR_STATE_TOPIC_MIN_ISR"):
        assert e[key] == "1", key


def test_envoy_starts_after_kafka_is_healthy():
    assert service("envoy")["depends_on"]["kafka"]["condition"] == "service_healthy"
    kafka = service("kafka")
    test = kafka["healthcheck"]["test"]
    assert test[0] in ("CMD", "CMD-SHELL")
    # the healthcheck talks to the broker's internal listener, whose advertised address is
    # reachable inside the container (the client listener advertises the host's loopback)
    internal = listeners(env(kafka)["KAFKA_ADVERTISED_LISTENERS"])[env(kafka)["KAFKA_INTER_BROKER_LISTENER_NAME"]]
    assert f"--bootstrap-server {internal[0]}:{internal[1]}" in " ".join(test[1:]), test


# Fields that tell Envoy 1.39's API from 1.38's and 1.40's (envoyproxy/envoy changelogs/
# 1.39.0.yaml and 1.40.0.yaml, new_features): (module, class, field).
ADDED_IN_1_39 = [
    ("envoy.config.cluster.v3", "CircuitBreakersThresholdsRetryBudget", "budget_interval"),
    ("envoy.extensions.filters.http.basic_auth.v3", "BasicAuth", "allow_missing"),
    ("envoy.extensions.clusters.dns.v3", "DnsCluster", "dns_min_refresh_rate"),
]
ADDED_IN_1_40 = [
    ("envoy.extensions.filters.udp.dns_filter.v3", "DnsFilterConfig", "case_insensitive"),
]
TYPES_API = "1.39"


def has_field(module, cls, name):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        mod = importlib.import_module(f"envoy_data_plane.{module}")
    return name in getattr(mod, cls)._betterproto.meta_by_field_name


def test_the_types_are_the_api_of_the_pinned_envoy():
    """The validator's types and the image agree on the Envoy minor version: bump both."""
    assert all(has_field(*f) for f in ADDED_IN_1_39), "the types predate Envoy 1.39"
    assert not any(has_field(*f) for f in ADDED_IN_1_40), "the types are Envoy 1.40's or newer"
    image = service("envoy")["image"]
    assert image.startswith(f"envoyproxy/envoy:v{TYPES_API}."), (
        f"{image}: envoy.yaml is validated against Envoy {TYPES_API}'s API")


def test_the_module_compose_mounts_exists_after_make_wasm():
    assert MODULE.exists(), f"{MODULE.relative_to(ROOT)} missing: run `make wasm` before `docker compose up`"
    assert MODULE.read_bytes()[:4] == b"\0asm", f"{MODULE} is not a Wasm module"
