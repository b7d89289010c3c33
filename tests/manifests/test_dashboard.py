"""The Grafana dashboard (wasm-plugin-manifests/observability/grafana-dashboard.json) and the
PrometheusRule (prometheus-rules.yaml) checked against the filter's metric reference, the
README table "### Reference" under "## Metrics".

Every PromQL expression is read by a small parser, enough PromQL for our queries. It works out
the labels each part of a query carries. Then it checks that each metric is in the reference,
that `_bucket`/`_sum`/`_count` go only on histograms, that each label in `{...}`,
`by (...)`, `without (...)`, `on (...)` or `ignoring (...)` exists on what it applies to, that
both sides of a vector/vector operator carry the same labels, and that every `{{label}}` in a
legend or rule annotation is in the result. A construct it does not know is reported too, never
skipped. test_checker_reports_* show that each check fails when it should.

Conventions followed (what Istio does for its own dashboards, istio/istio manifests/addons/):
- uid: the MD5 of a file name, `std.md5('ztunnel.json')` (dashboards/README.md "Dashboard
  Linking", ztunnel.libsonnet).
- The datasource variable `datasource` of type datasource, query `prometheus`, used by every
  target (dashboards/lib/variables.libsonnet, lib/queries.libsonnet `'$' +
  variables.datasource.name`). Also: schemaVersion 39, refresh 15s, now-30m to now, shared
  crosshair, utc (lib/dashboard.libsonnet and the *.gen.json files). Rates use
  `$__rate_interval` (lib/lib-query.libsonnet).
- The ConfigMap is built from the JSON file itself, as gen.sh does with `kubectl create
  configmap --from-file`. Here kustomize's configMapGenerator does it (kustomization.yaml
  beside the dashboard).
"""
import hashlib
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
OBS = ROOT / "wasm-plugin-manifests" / "observability"
DASHBOARD = OBS / "grafana-dashboard.json"
RULES = OBS / "prometheus-rules.yaml"
README = ROOT / "README.md"
FILTER_SRC = ROOT / "filter" / "wasm" / "src" / "lib.rs"
CONFIGMAP_NAME = "kafka-mesh-grafana-dashboards"
CONFIGMAP_KEY = "kafka-mesh-filter-dashboard.json"

# Labels Prometheus puts on every scraped series, beside the filter's own. Istio's addon job
# `kubernetes-pods` (istio/istio samples/addons/prometheus.yaml, from
# manifests/addons/values-prometheus.yaml) sets `namespace` and `pod` and copies every pod
# label (labelmap __meta_kubernetes_pod_label_(.+)). The injector gives each pod
# `service.istio.io/canonical-name` and `-revision` (manifests/charts/istio-control/
# istio-discovery/files/injection-template.yaml), which Prometheus exposes sanitized as
# below. Istio's PodMonitor for prometheus-operator (samples/addons/extras/
# prometheus-operator.yaml) sets only `namespace` and `pod`. There a matcher such as
# service_istio_io_canonical_name=~".*" still matches, because ".*" matches a missing label.
# `job` and `instance` come from Prometheus itself.
SCRAPE_LABELS = frozenset({
    "namespace", "pod", "service_istio_io_canonical_name", "service_istio_io_canonical_revision",
    "app", "job", "instance",
})
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")
GRAFANA_BUILTINS = {"__rate_interval", "__range", "__interval", "__range_s", "__interval_ms"}


# --- the metric reference --------------------------------------------------------------------

def readme_section(text, heading, within=None):
    """The body under `heading` up to the next heading of the same or a higher level."""
    if within:
        text = readme_section(text, within)
    level = heading.split()[0]
    lines = text.splitlines()
    start = lines.index(heading)
    out = []
    for line in lines[start + 1:]:
        m = re.match(r"^(#+) ", line)
        if m and len(m.group(1)) <= len(level):
            break
        out.append(line)
    return "\n".join(out)


def metric_reference(text=None):
    """{name: (type, labels)} from the README table. A cell such as
    `kafka_mesh_connections_total` / `_active` with type `counter / gauge` is two metrics: a
    name starting with `_` replaces the last `_word` of the first one."""
    text = text if text is not None else README.read_text()
    body = readme_section(text, "### Reference", within="## Metrics")
    ref = {}
    rows = [line for line in body.splitlines() if line.startswith("|")]
    assert len(rows) > 2, "no table under ## Metrics / ### Reference"
    for line in rows[2:]:
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        names = re.findall(r"`([A-Za-z_:][A-Za-z0-9_:]*)`", cells[0])
        types = [t.strip() for t in cells[1].split("/")]
        labels = frozenset(re.findall(r"`([A-Za-z_][A-Za-z0-9_]*)`", cells[2]))
        assert names, f"no metric name in row {line!r}"
        if len(types) == 1:
            types = types * len(names)
        assert len(types) == len(names), f"{len(names)} names but {len(types)} types in {line!r}"
        first = names[0]
        for name, typ in zip(names, types):
            if name.startswith("_"):
                name = first.rsplit("_", 1)[0] + name
            assert typ in ("counter", "gauge", "histogram"), f"type {typ!r} of {name}"
            assert name not in ref, f"{name} twice in the reference"
            ref[name] = (typ, labels)
    return ref


# --- a PromQL subset: tokens ------------------------------------------------------------------

TOKEN = re.compile(r"""
    (?P<ws>\s+|\#[^\n]*)
  | (?P<string>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|`[^`]*`)
  | (?P<range>\[[^\]]*\])
  | (?P<var>\$\{[A-Za-z_][A-Za-z0-9_]*(?::[a-z]+)?\}|\$[A-Za-z_][A-Za-z0-9_]*)
  | (?P<number>0x[0-9a-fA-F]+|(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?|Inf\b|NaN\b)
  | (?P<ident>[A-Za-z_:][A-Za-z0-9_:]*)
  | (?P<op>==|!=|>=|<=|=~|!~|[-+*/%^<>=(){},])
""", re.X)


def tokenize(expr):
    pos, out = 0, []
    while pos < len(expr):
        m = TOKEN.match(expr, pos)
        if not m:
            raise PromQLError(f"cannot read {expr[pos:pos + 20]!r}")
        pos = m.end()
        kind = m.lastgroup
        if kind != "ws":
            out.append((kind, m.group()))
    out.append(("end", ""))
    return out


class PromQLError(Exception):
    pass


AGGREGATIONS = {"sum", "min", "max", "avg", "count", "group", "stddev", "stdvar",
                "topk", "bottomk", "quantile", "limitk"}
# aggregations whose result keeps the input's labels, with `by` only grouping
KEEPS_LABELS = {"topk", "bottomk", "limitk"}
WITH_PARAM = {"topk", "bottomk", "quantile", "limitk"}
RANGE_FUNCS = {"rate", "irate", "increase", "delta", "idelta", "deriv", "resets", "changes",
               "avg_over_time", "min_over_time", "max_over_time", "sum_over_time",
               "count_over_time", "last_over_time", "stddev_over_time", "stdvar_over_time",
               "present_over_time"}
SAME_LABEL_FUNCS = {"abs", "ceil", "floor", "exp", "ln", "log2", "log10", "sqrt", "sgn", "round",
                    "clamp", "clamp_min", "clamp_max", "sort", "sort_desc", "timestamp"}
SET_OPS = {"and", "or", "unless"}
COMPARISONS = {"==", "!=", ">", "<", ">=", "<="}
PRECEDENCE = [{"or"}, {"and", "unless"}, COMPARISONS, {"+", "-"}, {"*", "/", "%"}, {"^"}]


class Value:
    """What a sub-expression yields: its kind and the labels its series carry (None: unknown,
    after an error already reported)."""

    def __init__(self, kind, labels=None, metrics=()):
        self.kind, self.labels, self.metrics = kind, labels, tuple(metrics)

    def where(self):
        return ", ".join(sorted(set(self.metrics))) or "the expression"


class Checker:
    """Parses one expression and collects everything wrong with it in `errors`."""

    def __init__(self, catalogue, expr):
        self.cat, self.expr = catalogue, expr
        self.errors, self.metrics = [], set()
        self.toks, self.i = [("end", "")], 0

    # token helpers
    def peek(self, k=0):
        return self.toks[self.i + k]

    def take(self, value=None):
        tok = self.toks[self.i]
        if value is not None and tok[1] != value:
            raise PromQLError(f"expected {value!r}, found {tok[1]!r} in {self.expr!r}")
        self.i += 1
        return tok

    def label_list(self):
        self.take("(")
        labels = []
        while self.peek()[1] != ")":
            kind, name = self.take()
            if kind != "ident":
                raise PromQLError(f"label expected, found {name!r}")
            labels.append(name)
            if self.peek()[1] == ",":
                self.take(",")
        self.take(")")
        return labels

    def need(self, labels, value, clause):
        for label in labels:
            if value.labels is not None and label not in value.labels:
                self.errors.append(f"{clause}: label {label!r} is not a label of {value.where()}"
                                   f" (it has {sorted(value.labels)})")

    # grammar
    def parse(self):
        self.toks = tokenize(self.expr)
        v = self.binary(0)
        if self.peek()[0] != "end":
            raise PromQLError(f"unexpected {self.peek()[1]!r} in {self.expr!r}")
        return v

    def binary(self, level):
        if level == len(PRECEDENCE):
            return self.unary()
        left = self.binary(level + 1)
        while self.peek()[1] in PRECEDENCE[level]:
            op = self.take()[1]
            if self.peek()[1] == "bool":
                self.take()
            matching = None
            if self.peek()[1] in ("on", "ignoring"):
                matching = (self.take()[1], self.label_list())
            group = None
            if self.peek()[1] in ("group_left", "group_right"):
                side = self.take()[1]
                group = (side, self.label_list() if self.peek()[1] == "(" else [])
            # ^ is right-associative
            right = self.binary(level if op == "^" else level + 1)
            left = self.combine(op, left, right, matching, group)
        return left

    def combine(self, op, left, right, matching, group):
        metrics = left.metrics + right.metrics
        if left.kind == "scalar" and right.kind == "scalar":
            return Value("scalar", frozenset(), metrics)
        if "vector" not in (left.kind, right.kind) or "range" in (left.kind, right.kind):
            raise PromQLError(f"operator {op!r} between {left.kind} and {right.kind}")
        if left.kind == "scalar" or right.kind == "scalar":
            vec = left if left.kind == "vector" else right
            return Value("vector", vec.labels, metrics)
        known = left.labels is not None and right.labels is not None
        if matching and matching[0] == "on":
            self.need(matching[1], left, f"on ({', '.join(matching[1])})")
            self.need(matching[1], right, f"on ({', '.join(matching[1])})")
            keys = lambda v: set(matching[1])
        elif matching:
            if known:
                for label in matching[1]:
                    if label not in left.labels | right.labels:
                        self.errors.append(f"ignoring ({label}): on neither side ({left.where()}; {right.where()})")
            keys = lambda v: set(v.labels) - set(matching[1])
        else:
            keys = lambda v: set(v.labels)
        if group:
            side, extra = group
            other = right if side == "group_left" else left
            self.need(extra, other, f"{side} ({', '.join(extra)})")
        if op in SET_OPS:
            if op == "or":
                labels = left.labels & right.labels if known else None
            else:
                labels = left.labels
            return Value("vector", labels, metrics)
        if known and not group and keys(left) != keys(right):
            self.errors.append(
                f"{op!r}: the two sides carry different labels, so no series match: "
                f"{sorted(keys(left))} ({left.where()}) vs {sorted(keys(right))} ({right.where()})")
        if group:
            side, extra = group
            base = left if side == "group_left" else right
            labels = None if base.labels is None else base.labels | set(extra)
            return Value("vector", labels, metrics)
        return Value("vector", left.labels, metrics)

    def unary(self):
        if self.peek()[1] in ("-", "+"):
            self.take()
            return self.unary()
        return self.primary()

    def primary(self):
        kind, text = self.peek()
        if kind in ("number", "var"):
            self.take()
            return Value("scalar", frozenset())
        if kind == "string":
            self.take()
            return Value("string")
        if text == "(":
            self.take("(")
            v = self.binary(0)
            self.take(")")
            return self.modifiers(v)
        if text == "{":
            return self.modifiers(self.selector(None))
        if kind == "ident":
            if text in AGGREGATIONS:
                return self.aggregation()
            if self.peek(1)[1] == "(":
                return self.call()
            self.take()
            return self.modifiers(self.selector(text))
        raise PromQLError(f"unexpected {text!r} in {self.expr!r}")

    def modifiers(self, v):
        if self.peek()[1] in ("offset", "@"):
            raise PromQLError(f"{self.peek()[1]!r} is not supported by this checker")
        if self.peek()[0] == "range":
            if ":" in self.peek()[1]:
                raise PromQLError("subqueries are not supported by this checker")
            self.take()
            if v.kind != "vector":
                raise PromQLError(f"range on a {v.kind}")
            return Value("range", v.labels, v.metrics)
        return v

    def selector(self, name):
        matchers = []
        if self.peek()[1] == "{":
            self.take("{")
            while self.peek()[1] != "}":
                kind, label = self.take()
                if kind != "ident":
                    raise PromQLError(f"label expected in {{}}, found {label!r}")
                op = self.take()[1]
                if op not in ("=", "!=", "=~", "!~"):
                    raise PromQLError(f"matcher operator expected, found {op!r}")
                kind, value = self.take()
                if kind != "string":
                    raise PromQLError(f"string expected after {label}{op}")
                matchers.append((label, op, value[1:-1]))
                if self.peek()[1] == ",":
                    self.take(",")
            self.take("}")
        if name is None:
            eq = [v for (l, o, v) in matchers if l == "__name__" and o == "="]
            if not eq:
                self.errors.append(f"a selector without a literal metric name cannot be checked: {self.expr!r}")
                return Value("vector", None)
            name = eq[0]
        matchers = [m for m in matchers if m[0] != "__name__"]
        labels = self.metric_labels(name)
        for label, op, value in matchers:
            if "$" in value and op not in ("=~", "!~"):
                self.errors.append(f"{name}{{{label}{op}...}}: a Grafana variable needs =~ (multi-value and All give a regex)")
        self.need([m[0] for m in matchers], Value("vector", labels, [name]), f"{name}{{...}}")
        return Value("vector", labels, [name])

    def metric_labels(self, name):
        """Labels of `name`, or None (and an error) if it is not a metric we export."""
        if name in self.cat:
            typ, labels, scraped = self.cat[name]
            if typ == "histogram":
                self.errors.append(f"{name} is a histogram: Prometheus has only {name}_bucket, _sum and _count")
                return None
            self.metrics.add(name)
            return frozenset(labels | SCRAPE_LABELS) if scraped else frozenset(labels)
        for suffix in HISTOGRAM_SUFFIXES:
            base = name[:-len(suffix)]
            if name.endswith(suffix) and base in self.cat:
                typ, labels, scraped = self.cat[base]
                if typ != "histogram":
                    self.errors.append(f"{name}: {suffix} is a histogram suffix, but {base} is a {typ}")
                    return None
                self.metrics.add(base)
                return frozenset(labels | SCRAPE_LABELS | ({"le"} if suffix == "_bucket" else set()))
        self.errors.append(f"{name} is not in the metric reference (README ## Metrics / ### Reference)")
        return None

    def args(self):
        self.take("(")
        out = []
        while self.peek()[1] != ")":
            out.append(self.binary(0))
            if self.peek()[1] == ",":
                self.take(",")
        self.take(")")
        return out

    def aggregation(self):
        op = self.take()[1]
        grouping = None
        if self.peek()[1] in ("by", "without"):
            grouping = (self.take()[1], self.label_list())
        args = self.args()
        if self.peek()[1] in ("by", "without"):
            grouping = (self.take()[1], self.label_list())
        want = 2 if op in WITH_PARAM else 1
        if len(args) != want or args[-1].kind != "vector":
            raise PromQLError(f"{op} takes {want} argument(s), the last a vector, in {self.expr!r}")
        v = args[-1]
        if grouping:
            how, labels = grouping
            self.need(labels, v, f"{op} {how} ({', '.join(labels)})")
            if op in KEEPS_LABELS:
                out = v.labels
            elif how == "by":
                out = frozenset(labels)
            else:
                out = None if v.labels is None else v.labels - set(labels)
        else:
            out = v.labels if op in KEEPS_LABELS else frozenset()
        return Value("vector", None if out is None else frozenset(out), v.metrics)

    def call(self):
        fn = self.take()[1]
        args = self.args()
        kinds = [a.kind for a in args]
        if fn in RANGE_FUNCS:
            if kinds != ["range"]:
                raise PromQLError(f"{fn} takes one range vector, got {kinds}")
            return Value("vector", args[0].labels, args[0].metrics)
        if fn in SAME_LABEL_FUNCS:
            if not kinds or kinds[0] != "vector":
                raise PromQLError(f"{fn} takes a vector first, got {kinds}")
            return Value("vector", args[0].labels, args[0].metrics)
        if fn == "histogram_quantile":
            if kinds != ["scalar", "vector"]:
                raise PromQLError(f"histogram_quantile takes (scalar, vector), got {kinds}")
            v = args[1]
            self.need(["le"], v, "histogram_quantile")
            return Value("vector", None if v.labels is None else v.labels - {"le"}, v.metrics)
        if fn == "vector":
            return Value("vector", frozenset())
        if fn in ("scalar", "time"):
            return Value("scalar", frozenset())
        raise PromQLError(f"function {fn!r} is not known to this checker")


def check_expr(catalogue, expr):
    """(errors, metric names used, labels of the result or None)."""
    c = Checker(catalogue, expr)
    try:
        v = c.parse()
    except PromQLError as e:
        return c.errors + [f"cannot check {expr!r}: {e}"], c.metrics, None
    return c.errors, c.metrics, v.labels


def check_legend(labels, legend, where):
    """Every {{label}} (Grafana legend) or {{ $labels.label }} (Prometheus template) must be in
    the result, else it renders empty."""
    if labels is None:
        return []
    used = re.findall(r"\{\{\s*(?:\$labels\.)?([A-Za-z_][A-Za-z0-9_]*)\s*\}\}", legend)
    return [f"{where}: {{{{{u}}}}} is not a label of the result {sorted(labels)}" for u in used if u not in labels]


def catalogue():
    return {name: (typ, labels, True) for name, (typ, labels) in metric_reference().items()}


# --- the dashboard ----------------------------------------------------------------------------

def dashboard():
    return json.loads(DASHBOARD.read_text())


def all_panels(d):
    for p in d["panels"]:
        yield p
        yield from p.get("panels", [])  # a collapsed row holds its panels


def targets():
    """(panel title, target) for every query in the dashboard."""
    return [(p["title"], t) for p in all_panels(dashboard()) for t in p.get("targets", [])]


def variables():
    return dashboard()["templating"]["list"]


def variable_expr(var):
    """The PromQL inside a query variable, and the labels it must yield."""
    q = var["query"] if isinstance(var["query"], str) else var["query"]["query"]
    m = re.fullmatch(r"\s*label_values\((.*),\s*([A-Za-z_][A-Za-z0-9_]*)\s*\)\s*", q, re.S)
    if m:
        return m.group(1), [m.group(2)]
    m = re.fullmatch(r"\s*query_result\((.*)\)\s*", q, re.S)
    if m:
        return m.group(1), re.findall(r"([A-Za-z_][A-Za-z0-9_]*)=", var.get("regex", ""))
    raise AssertionError(f"variable {var['name']}: only label_values(metric, label) and query_result(...) are checked, not {q!r}")


def test_dashboard_parses_and_follows_istio_conventions():
    d = dashboard()
    # Istio: g.dashboard.withUid(std.md5('ztunnel.json')); Grafana allows at most 40 characters
    assert d["uid"] == hashlib.md5(b"kafka-mesh-filter.json").hexdigest()
    assert re.fullmatch(r"[A-Za-z0-9_-]{1,40}", d["uid"])
    assert isinstance(d["schemaVersion"], int) and d["schemaVersion"] >= 39
    assert d["title"] and "kafka" in [t.lower() for t in d["tags"]]
    assert d["refresh"] and d["time"] == {"from": "now-30m", "to": "now"}
    assert "id" not in d or d["id"] is None, "an exported id ties the JSON to one Grafana instance"


def test_uid_and_title_are_unique_among_the_istio_dashboards():
    """Loaded next to Istio's in one Grafana, neither uid nor title may collide (Istio's gen.json
    uids are md5 of these names, manifests/addons/dashboards/*.libsonnet)."""
    d = dashboard()
    istio = {hashlib.md5(n.encode()).hexdigest() for n in
             ("istio-mesh.json", "pilot.json", "ztunnel.json", "istio-workload-dashboard.json",
              "istio-service-dashboard.json")}
    assert d["uid"] not in istio
    assert not d["title"].startswith("Istio ")


def test_datasource_variable_and_every_panel_uses_it():
    ds = [v for v in variables() if v["type"] == "datasource"]
    assert len(ds) == 1 and ds[0]["name"] == "datasource" and ds[0]["query"] == "prometheus"
    ok = {"${datasource}", "$datasource"}
    for p in all_panels(dashboard()):
        if p["type"] == "row":
            continue
        assert p["datasource"] == {"type": "prometheus", "uid": p["datasource"]["uid"]} and p["datasource"]["uid"] in ok, p["title"]
        for t in p["targets"]:
            assert t["datasource"]["type"] == "prometheus" and t["datasource"]["uid"] in ok, p["title"]
    for v in variables():
        if v["type"] == "query":
            assert v["datasource"]["uid"] in ok, v["name"]


def test_panels_have_unique_ids_targets_and_fit_the_grid():
    d = dashboard()
    ids = [p["id"] for p in all_panels(d)]
    assert len(ids) == len(set(ids)), "duplicate panel ids"
    assert all(isinstance(i, int) for i in ids)
    boxes = []
    for p in all_panels(d):
        assert p["type"] in ("row", "timeseries", "stat", "table"), p["type"]
        g = p["gridPos"]
        assert 0 <= g["x"] and g["x"] + g["w"] <= 24, p["title"]
        for (x, y, w, h, title) in boxes:
            overlap = g["x"] < x + w and x < g["x"] + g["w"] and g["y"] < y + h and y < g["y"] + g["h"]
            assert not overlap, f"{p['title']!r} overlaps {title!r}"
        boxes.append((g["x"], g["y"], g["w"], g["h"], p["title"]))
        if p["type"] == "row":
            continue
        assert p.get("title"), p["id"]
        assert p.get("targets"), f"panel {p['title']!r} has no target"
        refs = [t["refId"] for t in p["targets"]]
        assert len(refs) == len(set(refs)), p["title"]
        for t in p["targets"]:
            assert t.get("expr", "").strip(), p["title"]


@pytest.mark.parametrize("title,target", targets(), ids=lambda x: x if isinstance(x, str) else x["refId"])
def test_dashboard_query_uses_only_reference_metrics_and_labels(title, target):
    errors, metrics, labels = check_expr(catalogue(), target["expr"])
    errors += check_legend(labels, target.get("legendFormat", ""), title)
    assert errors == []
    assert metrics, f"{title}: no kafka_mesh metric in {target['expr']!r}"


def test_dashboard_variables_are_optional_and_checked():
    names = {v["name"] for v in variables()}
    for v in variables():
        if v["type"] != "query":
            continue
        # optional: All selects everything, series without the label included
        assert v["includeAll"] and v["allValue"] == ".*", v["name"]
        expr, need = variable_expr(v)
        errors, metrics, labels = check_expr(catalogue(), expr)
        assert metrics and need, v["name"]
        for label in need:
            if labels is not None and label not in labels:
                errors.append(f"variable {v['name']}: {label!r} is not a label of {sorted(labels)}")
        assert errors == [], v["name"]
        for ref in re.findall(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)", expr):
            assert ref in names, f"variable {v['name']} uses undefined ${ref}"


def test_queries_use_only_defined_variables():
    names = {v["name"] for v in variables()} | GRAFANA_BUILTINS
    for title, t in targets():
        for ref in re.findall(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)", t["expr"]):
            assert ref in names, f"{title}: ${ref} is not a dashboard variable"


def test_every_metric_in_the_reference_is_on_the_dashboard():
    used = set()
    for _, t in targets():
        used |= check_expr(catalogue(), t["expr"])[1]
    assert set(metric_reference()) - used == set()


# --- the rules, and the README's own queries --------------------------------------------------

def rules():
    doc = yaml.safe_load(RULES.read_text())
    return [r for g in doc["spec"]["groups"] for r in g["rules"]]


def test_prometheus_rules_use_only_reference_metrics_and_labels():
    """Rules in order: a recorded series becomes a metric with exactly the labels of its expr,
    so alerts on it are checked too, and so are their {{ $labels.x }}."""
    cat = catalogue()
    errors = []
    for r in rules():
        name = r.get("record") or r.get("alert")
        errs, metrics, labels = check_expr(cat, r["expr"])
        errors += [f"{name}: {e}" for e in errs]
        if "record" in r:
            assert labels is not None, name
            cat[r["record"]] = ("recording", labels, False)
        for text in list(r.get("annotations", {}).values()) + list(r.get("labels", {}).values()):
            errors += check_legend(labels, str(text), name)
    assert errors == []


def readme_queries():
    body = readme_section(README.read_text(), "### Prometheus and Grafana", within="## Metrics")
    blocks = re.findall(r"```promql\n(.*?)```", body, re.S)
    return [line.split("#")[0].strip() for b in blocks for line in b.splitlines() if line.split("#")[0].strip()]


@pytest.mark.parametrize("expr", readme_queries())
def test_readme_queries_use_only_reference_metrics_and_labels(expr):
    assert check_expr(catalogue(), expr)[0] == []


def test_the_reference_names_what_the_filter_defines():
    """The reference itself against the filter's source: every "kafka_mesh_..." literal in
    filter/wasm/src/lib.rs is a series name, and each must be in the table, and back."""
    literals = set(re.findall(r'"(kafka_mesh_[a-z0-9_]+)"', FILTER_SRC.read_text()))
    assert literals, "no metric names found in the filter source"
    assert set(metric_reference()) == literals


# --- the checker can fail ---------------------------------------------------------------------

BAD = [
    ("made-up metric", 'sum by (topic) (rate(kafka_mesh_produce_recrods_total[5m]))',
     ["kafka_mesh_produce_recrods_total is not in the metric reference"]),
    ("wrong by label", 'sum by (partition) (rate(kafka_mesh_produce_records_total[5m]))',
     ["label 'partition' is not a label of kafka_mesh_produce_records_total"]),
    ("both at once", 'sum by (topic) (rate(kafka_mesh_bogus_total[5m])) or sum by (clientid) (rate(kafka_mesh_client_requests_total[5m]))',
     ["kafka_mesh_bogus_total is not in the metric reference", "label 'clientid'"]),
    ("wrong label after args", 'max (kafka_mesh_consumer_lag) by (group)', ["label 'group'"]),
    ("wrong matcher label", 'kafka_mesh_consumer_lag{api="produce"}', ["label 'api' is not a label of kafka_mesh_consumer_lag"]),
    ("without an absent label", 'sum without (rule) (kafka_mesh_connections_active)', ["label 'rule'"]),
    ("bucket on a counter", 'rate(kafka_mesh_requests_total_bucket[5m])', ["_bucket is a histogram suffix, but kafka_mesh_requests_total is a counter"]),
    ("bare histogram name", 'rate(kafka_mesh_request_latency_ms[5m])', ["kafka_mesh_request_latency_ms is a histogram"]),
    ("le on a counter", 'histogram_quantile(0.9, sum by (le) (rate(kafka_mesh_requests_total[5m])))', ["label 'le'"]),
    ("quantile after le is gone", 'histogram_quantile(0.9, sum by (api) (rate(kafka_mesh_request_latency_ms_bucket[5m])))', ["label 'le'"]),
    ("by on an aggregated result", 'sum by (topic) (sum by (api) (rate(kafka_mesh_topic_errors_total[5m])))', ["label 'topic'"]),
    ("sides with different labels", 'sum by (api) (rate(kafka_mesh_requests_total[5m])) / sum by (api, error) (rate(kafka_mesh_errors_total[5m]))',
     ["the two sides carry different labels"]),
    ("on a label one side lacks", 'kafka_mesh_errors_total / on (topic) kafka_mesh_requests_total', ["on (topic): label 'topic' is not a label of kafka_mesh_requests_total"]),
    ("variable with =", 'kafka_mesh_requests_total{namespace="$namespace"}', ["needs =~"]),
    ("unknown function", 'frobnicate(kafka_mesh_requests_total)', ["function 'frobnicate' is not known"]),
    ("no literal name", '{__name__=~"kafka_mesh_.*"}', ["without a literal metric name"]),
    ("not PromQL", 'sum(rate(kafka_mesh_requests_total[5m])', ["cannot check"]),
    ("unreadable", 'kafka_mesh_requests_total ? 1', ["cannot read"]),
]


@pytest.mark.parametrize("expr,wants", [pytest.param(e, w, id=i) for i, e, w in BAD])
def test_checker_reports_bad_queries(expr, wants):
    errors = check_expr(catalogue(), expr)[0]
    for want in wants:
        assert any(want in e for e in errors), f"{want!r} not reported for {expr!r}: {errors}"


def test_checker_reports_a_legend_label_the_result_lacks():
    _, _, labels = check_expr(catalogue(), 'sum by (api) (rate(kafka_mesh_errors_total[5m]))')
    assert check_legend(labels, "{{api}} {{error}}", "p") == ["p: {{error}} is not a label of the result ['api']"]
    assert check_legend(labels, "{{ $labels.pod }}", "alert") != []


def test_checker_reports_an_alert_on_a_missing_recorded_label():
    cat = catalogue()
    _, _, labels = check_expr(cat, 'max by (namespace, topic) (kafka_mesh_consumer_lag)')
    cat["kafka_mesh:lag"] = ("recording", labels, False)
    errors, _, out = check_expr(cat, 'kafka_mesh:lag{partition="0"} > 10')
    assert any("label 'partition'" in e for e in errors)
    assert check_legend(out, "{{ $labels.pod }}", "a") != []


def test_metric_names_ignore_labels_strings_and_keywords():
    expr = ('sum by (topic) (rate(kafka_mesh_fetch_bytes_total{topic=~"kafka_mesh_fake_total|by"}[$__rate_interval]))'
            ' / on (topic) group_left () sum by (topic) (rate(kafka_mesh_produce_bytes_total[5m]))  # kafka_mesh_comment_total')
    errors, metrics, labels = check_expr(catalogue(), expr)
    assert errors == [] and metrics == {"kafka_mesh_fetch_bytes_total", "kafka_mesh_produce_bytes_total"}
    assert labels == {"topic"}
    assert check_expr(catalogue(), "histogram_quantile(0.5, sum by (api, le) (rate(kafka_mesh_request_latency_ms_bucket[5m])))")[1:] == (
        {"kafka_mesh_request_latency_ms"}, {"api"})


def test_reference_parser_reads_two_name_rows():
    ref = metric_reference()
    assert ref["kafka_mesh_connections_total"][0] == "counter"
    assert ref["kafka_mesh_connections_active"][0] == "gauge"
    assert ref["kafka_mesh_request_bytes_total"] == ref["kafka_mesh_response_bytes_total"] == ("counter", {"api"})
    assert ref["kafka_mesh_request_latency_ms"] == ("histogram", {"api"})
    table = "## Metrics\n### Reference\n| name | type | labels |\n|---|---|---|\n| `a_x_total` / `_y` | counter / counter / gauge | |\n"
    with pytest.raises(AssertionError, match="2 names but 3 types"):
        metric_reference(table)


def test_queries_also_parse_with_promql_parser():
    """An independent PromQL parser (promql-parser on PyPI, GreptimeTeam's Rust parser) must
    accept every query and find the same metrics (tests/e2e/requirements.txt pins it)."""
    import promql_parser as pp

    def names(node, out):
        if type(node).__name__ == "VectorSelector":
            out.add(node.name)
        for attr in ("expr", "lhs", "rhs", "param", "vector_selector"):
            sub = getattr(node, attr, None)
            if sub is not None and type(sub).__module__ == type(node).__module__:
                names(sub, out)
        for a in getattr(node, "args", None) or []:
            names(a, out)
        return out

    cat = catalogue()

    def base(name):
        for s in HISTOGRAM_SUFFIXES:
            if name.endswith(s) and cat.get(name[:-len(s)], ("",))[0] == "histogram":
                return name[:-len(s)]
        return name

    recorded = {r["record"]: ("recording", frozenset(), False) for r in rules() if "record" in r}
    exprs = ([t["expr"] for _, t in targets()] + [r["expr"] for r in rules()]
             + [variable_expr(v)[0] for v in variables() if v["type"] == "query"] + readme_queries())
    for expr in exprs:
        concrete = expr.replace("$__rate_interval", "1m").replace("$__range", "1h")
        theirs = {base(n) for n in names(pp.parse(concrete), set())}
        mine = check_expr(cat | recorded, expr)[1]
        assert theirs == mine, expr


# --- the ConfigMap ----------------------------------------------------------------------------

def test_configmap_is_generated_from_the_dashboard_file():
    """kustomization.yaml builds the ConfigMap from grafana-dashboard.json, so they cannot drift.
    kubectl renders it (manifest_checks.kubectl: PATH, else the venv's, which `make setup` installs)."""
    from manifest_checks import kubectl as find_kubectl
    kubectl = find_kubectl()
    out = subprocess.run([kubectl, "kustomize", str(OBS)], check=True, capture_output=True, text=True).stdout
    docs = [d for d in yaml.safe_load_all(out) if d]
    assert [d["kind"] for d in docs] == ["ConfigMap"]
    cm = docs[0]
    assert cm["metadata"]["name"] == CONFIGMAP_NAME  # fixed, no hash suffix: Istio's addon mounts by name
    # the label Grafana's dashboard sidecar selects on (grafana/helm-charts charts/grafana
    # values.yaml sidecar.dashboards.label; kube-prometheus-stack labelValue "1")
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert "namespace" not in cm["metadata"], "kubectl apply -k ... -n <grafana's namespace> must decide"
    assert list(cm["data"]) == [CONFIGMAP_KEY]
    assert cm["data"][CONFIGMAP_KEY] == DASHBOARD.read_text()
    assert json.loads(cm["data"][CONFIGMAP_KEY]) == dashboard()
    # client-side `kubectl apply` copies the object into the last-applied-configuration
    # annotation; all annotations together may not pass 256 KiB
    # (k8s.io/apimachinery pkg/api/validation/objectmeta.go, TotalAnnotationSizeLimitB). Istio
    # compacts and splits its dashboards for the same reason (manifests/addons/gen.sh).
    assert len(json.dumps(cm)) < 256 * 1024 - 4096
