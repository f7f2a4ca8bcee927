"""Offline checks of retentiond's packaging: docker/k8s/ (the base and the
optional monitoring component), docker/compose.yaml, docker/Dockerfile and
.dockerignore. Run by scripts/validate-manifests, which provides the tools
(PyYAML, kubernetes-validate, promql-parser, hadolint, kubectl, promtool, and
the npm packages @kubernetes-models/prometheus-operator and typescript).

Prints one line per check (`ok`, `FAIL`, `skip`) and closes with
`manifests: N passed, N failed, N skipped`; exits 1 when any check failed.

Kubernetes objects are validated with kubernetes-validate's strict schemas
(unknown fields fail) for every --kubernetes-version. Unlike the
kubernetes-validate command, which only warns about an apiVersion/kind it has
no schema for (so a removed API such as policy/v1beta1 would pass), a missing
schema fails here, except for the kinds in NOT_IN_SCHEMAS. The Prometheus
Operator's kinds (ServiceMonitor, PrometheusRule) are validated against the
schemas generated from the operator's CRDs (@kubernetes-models/prometheus-
operator: its JSON-schema validators for patterns, enums and required fields,
and its TypeScript types, compiled with tsc, for unknown fields). Then the
objects are checked against each other (selectors, ports, volumes, env, Secret
keys), against the hardening the packaging promises, and the ConfigMap
against the repository's retention.toml.

`kubectl kustomize` renders the base (which must hold no Prometheus Operator
kind, so it applies on any cluster) and the base with the monitoring
component, both ways it is documented; the rendered objects are validated
again. The alerts go through `promtool check rules` and the unit tests next to
them (`promtool test rules`); every PromQL expression of the alerts and of the
Grafana dashboard is parsed (promql-parser) and may name only the metrics and
labels that src/daemon/metrics.rs registers, plus those Prometheus adds.
"""

from __future__ import annotations

import argparse
import difflib
import fnmatch
import http.server
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import urllib.parse
from pathlib import Path

import yaml

try:
    import kubernetes_validate.utils as kv
    from kubernetes_validate.version import __version__ as KV_VERSION
except ImportError:  # reported as a failure below
    kv = None
    KV_VERSION = None

try:
    import promql_parser
except ImportError:  # reported as a failure below
    promql_parser = None

NAMESPACE = "retentiond"
UID = 65532
METRICS_PORT = 9464
CONFIG_PATH = "/etc/retentiond/retention.toml"
KEY_PATH = "/var/run/secrets/retentiond/signing.pem"
# Kinds kubernetes-validate has no schema for, and what is checked instead.
NOT_IN_SCHEMAS = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"): "a Prometheus Operator CRD",
    ("monitoring.coreos.com/v1", "PrometheusRule"): "a Prometheus Operator CRD",
    ("kustomize.config.k8s.io/v1beta1", "Kustomization"): "kustomize's own file, not an API object",
    ("kustomize.config.k8s.io/v1alpha1", "Component"): "kustomize's own file, not an API object",
}
KUSTOMIZE_KINDS = ("Kustomization", "Component")
CRD_KINDS = {("monitoring.coreos.com/v1", "ServiceMonitor"), ("monitoring.coreos.com/v1", "PrometheusRule")}
# The optional component with the Prometheus Operator objects and the dashboard.
MONITORING = "monitoring"
DASHBOARD_FILE = "retentiond-dashboard.json"
DASHBOARD_CONFIGMAP = "retentiond-grafana-dashboard"
# Labels Prometheus (with the operator's ServiceMonitor discovery) puts on
# every scraped series, and the series it makes itself.
TARGET_LABELS = {"job", "instance", "namespace", "pod", "service", "container", "endpoint"}
SCRAPE_SERIES = {"up": set(), "scrape_duration_seconds": set(), "scrape_samples_scraped": set()}
# Metrics the alerts use that src/daemon/metrics.rs may not register yet:
# reported as skipped (not failed) until it does. The alerts fall back to
# fixed thresholds without them.
ASSUMED_METRICS = {
    "retentiond_rule_interval_seconds": {"rule"},
}
SEVERITIES = {"critical", "warning", "info"}
# Grafana's built-in variables, and what they stand for when an expression is
# parsed outside Grafana.
GRAFANA_BUILTINS = {"__rate_interval": "5m", "__interval": "1m", "__range": "1d", "__range_s": "86400",
                    "__range_ms": "86400000", "__interval_ms": "60000"}
COMPOSE_SERVICES = {"postgres", "s3", "azurite", "keygen", "migrate", "retentiond"}


class Report:
    def __init__(self) -> None:
        self.passed = self.failed = self.skipped = 0

    def ok(self, what: str) -> None:
        self.passed += 1
        print(f"ok    {what}")

    def fail(self, what: str, why: str) -> None:
        self.failed += 1
        print(f"FAIL  {what}: {why}")

    def skip(self, what: str, why: str) -> None:
        self.skipped += 1
        print(f"skip  {what}: {why}")

    def check(self, what: str, problems: list[str]) -> None:
        """One check: passes when `problems` is empty."""
        if problems:
            self.fail(what, "; ".join(problems))
        else:
            self.ok(what)


def load_yaml_docs(path: Path) -> list[dict]:
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    for d in docs:
        if not isinstance(d, dict):
            raise ValueError(f"a document is a {type(d).__name__}, not a mapping")
    return docs


def dig(obj, *keys, default=None):
    for k in keys:
        if isinstance(obj, dict) and k in obj:
            obj = obj[k]
        elif isinstance(obj, list) and isinstance(k, int) and k < len(obj):
            obj = obj[k]
        else:
            return default
    return obj


def env_refs(text: str) -> set[str]:
    """The environment variables a retention.toml refers to: ${VAR} in its
    string values (not in comments; `$${` is a literal `${`)."""
    try:
        import tomllib  # Python 3.11+
    except ImportError:  # older Pythons: scripts/validate-manifests installs tomli
        import tomli as tomllib

    refs: set[str] = set()

    def walk(node) -> None:
        if isinstance(node, dict):
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)
        elif isinstance(node, str):
            refs.update(re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}", node.replace("$${", "")))

    walk(tomllib.loads(text))
    return refs


def parse_seconds(text: str) -> float | None:
    m = re.fullmatch(r"(\d+)(ms|s|m|h)?", str(text))
    if not m:
        return None
    n, unit = int(m.group(1)), m.group(2) or "s"
    return n * {"ms": 0.001, "s": 1, "m": 60, "h": 3600}[unit]


def arg_value(args: list[str], *names: str) -> str | None:
    for i, a in enumerate(args):
        for n in names:
            if a == n and i + 1 < len(args):
                return args[i + 1]
            if a.startswith(n + "="):
                return a[len(n) + 1:]
    return None


# --- Kubernetes -----------------------------------------------------------------


def pod_spec(obj: dict) -> dict | None:
    kind = obj.get("kind")
    if kind in ("Deployment", "Job", "StatefulSet", "DaemonSet"):
        return dig(obj, "spec", "template", "spec")
    if kind == "CronJob":
        return dig(obj, "spec", "jobTemplate", "spec", "template", "spec")
    return None


def pod_labels(obj: dict) -> dict:
    if obj.get("kind") == "CronJob":
        return dig(obj, "spec", "jobTemplate", "spec", "template", "metadata", "labels", default={})
    return dig(obj, "spec", "template", "metadata", "labels", default={})


def selects(selector: dict | None, labels: dict) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def check_schemas(rep: Report, objects: list[tuple[str, dict]], versions: list[str]) -> None:
    if kv is None:
        rep.fail("kubernetes-validate", "the Python package kubernetes_validate is not importable")
        return
    for fname, obj in objects:
        api, kind = obj.get("apiVersion"), obj.get("kind")
        name = f"{fname}: {kind}" + (f"/{dig(obj, 'metadata', 'name')}" if dig(obj, "metadata", "name") else "")
        if (api, kind) in NOT_IN_SCHEMAS:
            # CRDs: check_crd_schemas; kustomize's files: kubectl kustomize.
            continue
        for version in versions:
            what = f"{name} against the Kubernetes {version} schema (strict)"
            try:
                got = kv.validate(obj, version, strict=True)
            except kv.ValidationError as e:
                path = ".".join(str(p) for p in e.path) or "(top)"
                rep.fail(what, f"{path}: {e.message}")
            except kv.SchemaNotFoundError as e:
                rep.fail(what, f"{e.message} (unknown kind, or an apiVersion this Kubernetes does not serve)")
            except kv.VersionNotSupportedError:
                rep.fail(what, f"kubernetes-validate {KV_VERSION} has no schemas for Kubernetes {version}")
            else:
                if got != kv.major_minor(version):
                    rep.fail(what, f"validated against {got} instead: no {version} schemas")
                else:
                    rep.ok(what)


def check_service_monitor(rep: Report, fname: str, sm: dict) -> None:
    """What the CRD's schema cannot say (fields, types, patterns and enums are
    checked against it in check_crd_schemas)."""
    p: list[str] = []
    spec = sm.get("spec") if isinstance(sm.get("spec"), dict) else {}
    if not isinstance(dig(spec, "selector", "matchLabels"), dict):
        p.append("spec.selector.matchLabels is missing")
    endpoints = spec.get("endpoints")
    if not isinstance(endpoints, list) or not endpoints:
        p.append("spec.endpoints is empty")
        endpoints = []
    for i, ep in enumerate(endpoints):
        if not isinstance(ep, dict):
            p.append(f"endpoints[{i}] is not a mapping")
            continue
        if not isinstance(ep.get("port"), str) and "targetPort" not in ep:
            p.append(f"endpoints[{i}] needs port (a Service port name) or targetPort")
        if "path" in ep and not str(ep["path"]).startswith("/"):
            p.append(f"endpoints[{i}].path must start with /")
        iv, to = parse_seconds(ep.get("interval", "")), parse_seconds(ep.get("scrapeTimeout", ""))
        if iv is not None and to is not None and to > iv:
            p.append(f"endpoints[{i}].scrapeTimeout exceeds interval")
    rep.check(f"{fname}: ServiceMonitor selector, endpoints, scrapeTimeout within interval", p)


def schema_problem(obj: dict, version: str) -> str | None:
    """Why `obj` fails kubernetes-validate's strict schema of `version`, or None."""
    try:
        got = kv.validate(obj, version, strict=True)
    except kv.ValidationError as e:
        return f"{'.'.join(str(p) for p in e.path) or '(top)'}: {e.message}"
    except kv.SchemaNotFoundError as e:
        return f"{e.message} (unknown kind, or an apiVersion this Kubernetes does not serve)"
    except kv.VersionNotSupportedError:
        return f"kubernetes-validate {KV_VERSION} has no schemas for Kubernetes {version}"
    return None if got == kv.major_minor(version) else f"validated against {got}: no {version} schemas"


def obj_name(obj: dict) -> str:
    return f"{obj.get('kind')}/{dig(obj, 'metadata', 'name')}"


# --- the Prometheus Operator's kinds: schemas from its CRDs --------------------

_AJV_SCRIPT = """
// Validates Prometheus Operator objects with @kubernetes-models/prometheus-operator
// (JSON-schema validators generated from the operator's CRDs). stdin: [[id, obj]...];
// stdout: {id: [problem...]}.
import { PrometheusRule } from "@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1/PrometheusRule";
import { ServiceMonitor } from "@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1/ServiceMonitor";
const models = {
  "monitoring.coreos.com/v1/PrometheusRule": PrometheusRule,
  "monitoring.coreos.com/v1/ServiceMonitor": ServiceMonitor,
};
let input = "";
for await (const chunk of process.stdin) input += chunk;
const out = {};
for (const [id, obj] of JSON.parse(input)) {
  const Model = models[`${obj.apiVersion}/${obj.kind}`];
  if (!Model) { out[id] = [`no schema for ${obj.apiVersion} ${obj.kind}`]; continue; }
  try { new Model(obj).validate(); out[id] = []; } catch (e) { out[id] = [String(e.message)]; }
}
console.log(JSON.stringify(out));
"""

_TS_TYPES = {
    "ServiceMonitor": ("IServiceMonitor", "monitoring.coreos.com/v1/ServiceMonitor"),
    "PrometheusRule": ("IPrometheusRule", "monitoring.coreos.com/v1/PrometheusRule"),
}


class CrdValidator:
    """The Prometheus Operator's kinds against their CRD schemas, from the npm
    package @kubernetes-models/prometheus-operator installed in `npm_dir`:
    its JSON-schema validators (types, patterns, enums, required fields), and
    its TypeScript interfaces, which tsc checks object literals against
    (unknown fields: the generated validators let them through)."""

    def __init__(self, npm_dir: str | None) -> None:
        self.npm_dir = Path(npm_dir).resolve() if npm_dir else None
        self.node = shutil.which("node")
        pkg = self.npm_dir / "node_modules" / "@kubernetes-models" / "prometheus-operator" if self.npm_dir else None
        self.tsc = self.npm_dir / "node_modules" / "typescript" / "bin" / "tsc" if self.npm_dir else None
        self.why_not = None
        if not self.node:
            self.why_not = "node is not installed"
        elif pkg is None or not (pkg / "package.json").is_file():
            self.why_not = ("@kubernetes-models/prometheus-operator is not installed "
                            "(scripts/validate-manifests installs it)")
        elif not self.tsc.is_file():
            self.why_not = "typescript is not installed (scripts/validate-manifests installs it)"
        self.version = json.loads((pkg / "package.json").read_text())["version"] if not self.why_not else None
        ts_pkg = self.npm_dir / "node_modules" / "typescript" / "package.json" if self.npm_dir else None
        self.ts_version = json.loads(ts_pkg.read_text())["version"] if not self.why_not else None

    def label(self) -> str:
        return f"@kubernetes-models/prometheus-operator {self.version}, tsc {self.ts_version}"

    def validate(self, items: list[tuple[str, dict]]) -> dict[str, list[str]]:
        """Problems per id; every id gets an entry. An object validated before
        (the same, rendered by kustomize) is not validated again."""
        if not hasattr(self, "_cache"):
            self._cache: dict[str, list[str]] = {}
        key = {i: json.dumps(o, sort_keys=True) for i, o in items}
        todo = [(i, o) for i, o in items if key[i] not in self._cache]
        for i, problems in self._validate(todo).items():
            self._cache[key[i]] = problems
        return {i: self._cache[key[i]] for i, _ in items}

    def _validate(self, items: list[tuple[str, dict]]) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {i: [] for i, _ in items}
        if not items:
            return out
        with tempfile.TemporaryDirectory(dir=self.npm_dir, prefix="check-") as tmp:
            t = Path(tmp)
            script = t / "validate.mjs"
            script.write_text(_AJV_SCRIPT)
            r = subprocess.run([self.node, str(script)], input=json.dumps(items), capture_output=True,
                               text=True, timeout=120, check=False)
            if r.returncode != 0:
                for i in out:
                    out[i].append(f"the schema validator failed: {r.stderr.strip()[-400:]}")
                return out
            for i, problems in json.loads(r.stdout).items():
                out[i] += [f"schema: {m}" for m in problems]
            sources = {}
            for n, (i, obj) in enumerate(items):
                iface, module = _TS_TYPES.get(obj.get("kind"), (None, None))
                if iface is None:
                    continue
                f = t / f"o{n}.ts"
                f.write_text(f'import type {{ {iface} }} from "@kubernetes-models/prometheus-operator/{module}";\n'
                             f"export const o: {iface} = {json.dumps(obj, indent=2)};\n")
                sources[f.name] = i
            r = subprocess.run([self.node, str(self.tsc), "--noEmit", "--strict", "--skipLibCheck",
                                "--module", "nodenext", "--moduleResolution", "nodenext",
                                *[str(t / f) for f in sources]],
                               capture_output=True, text=True, timeout=180, check=False, cwd=t)
            errors = [ln for ln in r.stdout.splitlines() if ": error TS" in ln]
            for ln in errors:
                m = re.match(r"(o\d+\.ts)\((\d+),\d+\): error TS\d+: (.*)", ln)
                if m and m.group(1) in sources:
                    out[sources[m.group(1)]].append(f"types (line {m.group(2)} of the JSON): {m.group(3)}")
            if r.returncode != 0 and not errors:
                for i in sources.values():
                    out[i].append(f"tsc failed: {(r.stdout + r.stderr).strip()[-400:]}")
        return out


def check_crd_schemas(rep: Report, crds: CrdValidator, objects: list[tuple[str, dict]]) -> None:
    items = [(f"{fname}: {obj_name(o)}", o) for fname, o in objects
             if (o.get("apiVersion"), o.get("kind")) in CRD_KINDS]
    for what, _ in items:
        if crds.why_not:
            rep.fail(f"{what} against its CRD schema", crds.why_not)
    if crds.why_not:
        return
    for what, problems in crds.validate(items).items():
        rep.check(f"{what} against its CRD schema (strict; {crds.label()})", problems)


# --- kustomize ------------------------------------------------------------------


def check_kustomization(rep: Report, k8s_dir: Path, fname: str, kust: dict, files: list[str]) -> None:
    """A kustomization.yaml (Kustomization or Component): what it lists exists,
    and every manifest beside it is listed or excluded on purpose."""
    kdir = (k8s_dir / fname).parent
    resources = [str(r) for r in kust.get("resources") or []]
    components = [str(c) for c in kust.get("components") or []]
    generated = [str(f).split("=", 1)[-1] for g in kust.get("configMapGenerator") or []
                 for f in g.get("files") or []]
    p = [f"resource {r} does not exist" for r in resources if not (kdir / r).is_file()]
    p += [f"component {c} is not a kustomization directory" for c in components
          if not (kdir / c / "kustomization.yaml").is_file()]
    p += [f"generator file {f} does not exist" for f in generated if not (kdir / f).is_file()]
    p += [f"resource {r} listed twice" for r in set(resources) if resources.count(r) > 1]
    text = (k8s_dir / fname).read_text()

    def excluded(name: str) -> bool:
        # A manifest (or component) left out on purpose is named in a commented-out entry.
        return bool(re.search(rf"^\s*#\s*-\s*{re.escape(name)}/?(\s|$)", text, re.M))

    for f in files:
        path = k8s_dir / f
        if path.parent != kdir or path.name == "kustomization.yaml" or path.name in resources:
            continue
        if not excluded(path.name):
            p.append(f"{path.name} is neither listed in resources nor named in a commented-out entry")
    for sub in sorted(d for d in kdir.iterdir() if (d / "kustomization.yaml").is_file()):
        if sub.name not in components and sub.name not in resources and not excluded(sub.name):
            p.append(f"{sub.name}/ is neither a listed component nor named in a commented-out entry")
    if kust.get("kind") == "Kustomization" and kust.get("namespace") != NAMESPACE:
        p.append(f"namespace is {kust.get('namespace')!r}, expected {NAMESPACE!r}")
    if kust.get("kind") == "Component" and kust.get("apiVersion") != "kustomize.config.k8s.io/v1alpha1":
        p.append("a Component's apiVersion is kustomize.config.k8s.io/v1alpha1")
    rep.check(f"{fname}: {kust.get('kind')}: what it lists exists, every manifest listed or excluded on purpose", p)


def kubectl_version(kubectl: str) -> tuple[int, int] | None:
    r = subprocess.run([kubectl, "version", "--client", "-o", "json"], capture_output=True, text=True,
                       check=False, timeout=30)
    try:
        v = json.loads(r.stdout)["clientVersion"]
        return int(v["major"]), int(re.sub(r"\D.*", "", v["minor"]))
    except (ValueError, KeyError, TypeError):
        return None


def kustomize(kubectl: str, path: Path) -> tuple[list[dict] | None, str]:
    """`kubectl kustomize path`: the objects, or None and why."""
    try:
        r = subprocess.run([kubectl, "kustomize", str(path)], check=False, capture_output=True, text=True,
                           timeout=120)
    except (OSError, subprocess.TimeoutExpired) as e:
        return None, str(e)
    if r.returncode != 0:
        return None, (r.stderr.strip() or f"exit {r.returncode}").replace("\n", " ")
    return [d for d in yaml.safe_load_all(r.stdout) if d], ""


def check_renderings(rep: Report, k8s_dir: Path, versions: list[str], crds: CrdValidator) -> None:
    """Renders the base, and the base with the monitoring component both ways
    the README gives (an overlay of one's own; the uncommented `components:`),
    and validates what comes out."""
    kubectl = shutil.which("kubectl")
    if not kubectl:
        rep.fail("kubectl kustomize docker/k8s", "kubectl is not installed (scripts/validate-manifests "
                 "installs Debian's kubernetes-client when it is missing)")
        return
    version = kubectl_version(kubectl)
    vtext = f"kubectl {version[0]}.{version[1]}" if version else "kubectl"

    def validate_rendered(docs: list[dict]) -> list[str]:
        p = []
        crd_items = []
        for d in docs:
            if (d.get("apiVersion"), d.get("kind")) in CRD_KINDS:
                crd_items.append((obj_name(d), d))
                continue
            for v in versions:
                if kv is not None and (err := schema_problem(d, v)):
                    p.append(f"{obj_name(d)} (Kubernetes {v}): {err}")
        if crd_items:
            if crds.why_not:
                p.append(f"cannot validate {', '.join(i for i, _ in crd_items)}: {crds.why_not}")
            else:
                p += [f"{i}: {m}" for i, ms in crds.validate(crd_items).items() for m in ms]
        p += [f"{obj_name(d)} is not in namespace {NAMESPACE}" for d in docs
              if d.get("kind") != "Namespace" and dig(d, "metadata", "namespace") != NAMESPACE]
        return p

    what = f"{vtext} kustomize docker/k8s (the base)"
    base, err = kustomize(kubectl, k8s_dir)
    if base is None:
        rep.fail(what, err)
    else:
        p = validate_rendered(base)
        p += [f"{obj_name(d)} needs the Prometheus Operator (move it to {MONITORING}/)" for d in base
              if str(d.get("apiVersion", "")).startswith("monitoring.coreos.com/")]
        kinds = ", ".join(sorted(str(d.get("kind")) for d in base))
        rep.check(f"{what}: {len(base)} objects ({kinds}), each valid against the Kubernetes "
                  f"{', '.join(versions)} schemas (strict); no Prometheus Operator kind, so it applies "
                  "on a cluster without the operator", p)

    if version and version < (1, 21):
        rep.skip(f"{vtext} kustomize docker/k8s with the {MONITORING} component",
                 f"{vtext} embeds a kustomize without components (needs kubectl >= 1.21)")
        return
    expect = {("ServiceMonitor", "retentiond"), ("PrometheusRule", "retentiond"),
              ("ConfigMap", DASHBOARD_CONFIGMAP)}
    dashboard = (k8s_dir / MONITORING / DASHBOARD_FILE).read_text()

    def check_with_monitoring(what: str, docs: list[dict] | None, err: str) -> None:
        if docs is None:
            rep.fail(what, err)
            return
        p = validate_rendered(docs)
        got = {(d.get("kind"), dig(d, "metadata", "name")) for d in docs}
        want = {(d.get("kind"), dig(d, "metadata", "name")) for d in base or []} | expect
        if base is not None and got != want:
            p.append(f"objects differ from the base plus {sorted(expect)}: extra {sorted(got - want)}, "
                     f"missing {sorted(want - got)}")
        cm = next((d for d in docs if d.get("kind") == "ConfigMap"
                   and dig(d, "metadata", "name") == DASHBOARD_CONFIGMAP), None)
        if cm is not None:
            if dig(cm, "data", DASHBOARD_FILE) != dashboard:
                p.append(f"ConfigMap {DASHBOARD_CONFIGMAP} does not hold {DASHBOARD_FILE} verbatim")
            if dig(cm, "metadata", "labels", "grafana_dashboard") != "1":
                p.append(f"ConfigMap {DASHBOARD_CONFIGMAP} lacks the label grafana_dashboard: \"1\"")
        rep.check(f"{what}: {len(docs)} objects, the base's plus ServiceMonitor, PrometheusRule and the "
                  "dashboard ConfigMap, each valid against its schema", p)

    # 1. An overlay of one's own, outside docker/k8s/ (kustomize allows only
    #    relative paths, and no kustomization inside the base's directory).
    with tempfile.TemporaryDirectory(prefix="retentiond-overlay-") as tmp:
        (Path(tmp) / "kustomization.yaml").write_text(yaml.safe_dump({
            "apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
            "resources": [os.path.relpath(k8s_dir, tmp)],
            "components": [os.path.relpath(k8s_dir / MONITORING, tmp)]}))
        docs, err = kustomize(kubectl, Path(tmp))
    check_with_monitoring(f"{vtext} kustomize: an overlay with resources [docker/k8s], "
                          f"components [docker/k8s/{MONITORING}]", docs, err)

    # 2. docker/k8s/kustomization.yaml with its `components:` uncommented.
    text = (k8s_dir / "kustomization.yaml").read_text()
    uncommented, n = re.subn(rf"^#\s?(components:)\s*\n#(\s+-\s+{MONITORING})\s*$", r"\1\n\2", text, flags=re.M)
    what = f"{vtext} kustomize docker/k8s with `components: [{MONITORING}]` uncommented"
    if n != 1:
        rep.fail(what, f"kustomization.yaml has no commented-out `# components:` / `#   - {MONITORING}` entry")
        return
    with tempfile.TemporaryDirectory(prefix="retentiond-k8s-") as tmp:
        copy = Path(tmp) / "k8s"
        shutil.copytree(k8s_dir, copy)
        (copy / "kustomization.yaml").write_text(uncommented)
        docs, err = kustomize(kubectl, copy)
    check_with_monitoring(what, docs, err)


def check_workload(rep: Report, fname: str, obj: dict, cfg: dict) -> None:
    """Hardening, config/key mounts, env of one Deployment, Job or CronJob."""
    kind, name = obj["kind"], dig(obj, "metadata", "name")
    spec = pod_spec(obj) or {}
    psc = spec.get("securityContext") or {}
    p: list[str] = []
    # Pod-level hardening.
    if psc.get("runAsNonRoot") is not True:
        p.append("pod runAsNonRoot is not true")
    if psc.get("runAsUser") != UID:
        p.append(f"pod runAsUser is not {UID}")
    if spec.get("automountServiceAccountToken") is not False:
        p.append("automountServiceAccountToken is not false")
    containers = (spec.get("containers") or []) + (spec.get("initContainers") or [])
    if not containers:
        p.append("no containers")
    volumes = {v.get("name"): v for v in spec.get("volumes") or []}
    for c in containers:
        cn = c.get("name")
        sc = c.get("securityContext") or {}
        if sc.get("runAsNonRoot", psc.get("runAsNonRoot")) is not True:
            p.append(f"{cn}: runAsNonRoot is not true")
        if sc.get("runAsUser", psc.get("runAsUser")) != UID:
            p.append(f"{cn}: runAsUser is not {UID}")
        if sc.get("readOnlyRootFilesystem") is not True:
            p.append(f"{cn}: readOnlyRootFilesystem is not true")
        if sc.get("allowPrivilegeEscalation") is not False:
            p.append(f"{cn}: allowPrivilegeEscalation is not false")
        if sc.get("privileged"):
            p.append(f"{cn}: privileged")
        if dig(sc, "capabilities", "drop") != ["ALL"] or dig(sc, "capabilities", "add"):
            p.append(f"{cn}: capabilities are not exactly drop [ALL]")
        seccomp = dig(sc, "seccompProfile", "type") or dig(psc, "seccompProfile", "type")
        if seccomp != "RuntimeDefault":
            p.append(f"{cn}: seccompProfile is not RuntimeDefault")
        for r in ("requests", "limits"):
            res = dig(c, "resources", r) or {}
            if not {"cpu", "memory"} <= set(res):
                p.append(f"{cn}: resources.{r} lacks cpu or memory")
    rep.check(f"{fname}: {kind}/{name} hardening (non-root {UID}, read-only root, no privilege "
              "escalation, drop ALL, seccomp, resources, no SA token)", p)

    # The retentiond container: config, key, env.
    c = next((c for c in spec.get("containers") or [] if str(c.get("image", "")).startswith("retentiond")), None)
    if c is None:
        rep.fail(f"{fname}: {kind}/{name} retentiond container", "no container runs the retentiond image")
        return
    p = []
    args = [str(a) for a in c.get("args") or []]
    mounts = {m.get("mountPath"): m for m in c.get("volumeMounts") or []}
    env = {e.get("name"): e for e in c.get("env") or []}

    def mounted_file(path: str, source: str) -> str | None:
        """The volume that provides `path` read-only from a `source` volume, or a problem."""
        d, base = os.path.dirname(path), os.path.basename(path)
        m = mounts.get(d)
        if m is None:
            return f"nothing is mounted at {d} (for {path})"
        if m.get("readOnly") is not True:
            p.append(f"the mount at {d} is not readOnly")
        if m.get("subPath"):
            p.append(f"the mount at {d} uses subPath (never updated in place)")
        v = volumes.get(m.get("name")) or {}
        if source not in v:
            return f"{d} is not a {source} volume"
        items = v[source].get("items")
        if items is not None and base not in [i.get("path") for i in items]:
            return f"the {source} volume at {d} does not project {base}"
        return None

    conf = arg_value(args, "-c", "--config") or dig(env, "RETENTIOND_CONFIG", "value")
    if conf != CONFIG_PATH:
        p.append(f"-c is {conf!r}, expected {CONFIG_PATH}")
    elif (err := mounted_file(conf, "configMap")):
        p.append(err)
    else:
        cm_name = dig(volumes, mounts[os.path.dirname(conf)]["name"], "configMap", "name")
        if cm_name not in cfg["configmaps"]:
            p.append(f"ConfigMap {cm_name} is not defined in docker/k8s/")
    key = dig(env, "RETENTIOND_SIGNING_KEY", "value")
    if key != KEY_PATH:
        p.append(f"RETENTIOND_SIGNING_KEY is {key!r}, expected {KEY_PATH}")
    elif (err := mounted_file(key, "secret")):
        p.append(err)
    else:
        sv = volumes[mounts[os.path.dirname(key)]["name"]]["secret"]
        mode = sv.get("defaultMode", 0o644)
        if mode & 0o007:
            p.append(f"the key's mode {mode:o} lets anyone read it")
        if mode & 0o040 and psc.get("fsGroup") != UID:
            p.append("the key is group-readable but fsGroup is not the runtime UID's group")
        if not mode & 0o400:
            p.append(f"the key's mode {mode:o} is not owner-readable")
        if sv.get("secretName") not in cfg["secrets"]:
            p.append(f"Secret {sv.get('secretName')} is not defined in docker/k8s/")
        elif "signing.pem" not in cfg["secrets"][sv["secretName"]]:
            p.append(f"Secret {sv['secretName']} has no key signing.pem")
    if dig(env, "POD_NAME", "valueFrom", "fieldRef", "fieldPath") != "metadata.name":
        p.append("POD_NAME is not the downward API's metadata.name")
    for var in sorted(cfg["env_refs"]):
        if var not in env:
            p.append(f"retention.toml needs ${{{var}}}, which the container's env lacks")
    for e in env.values():
        ref = dig(e, "valueFrom", "secretKeyRef")
        if ref:
            keys = cfg["secrets"].get(ref.get("name"))
            if keys is None:
                p.append(f"env {e['name']}: Secret {ref.get('name')} is not defined in docker/k8s/")
            elif ref.get("key") not in keys:
                p.append(f"env {e['name']}: Secret {ref.get('name')} has no key {ref.get('key')}")
    if c.get("envFrom"):
        p.append("envFrom would put every Secret key (signing.pem too) into the environment")
    rep.check(f"{fname}: {kind}/{name} config at {CONFIG_PATH}, key at {KEY_PATH}, env "
              "(retention.toml's ${VAR}s, Secret keys, POD_NAME)", p)


def check_deployment(rep: Report, fname: str, d: dict) -> None:
    spec = d.get("spec") or {}
    pspec = pod_spec(d) or {}
    c = (pspec.get("containers") or [{}])[0]
    args = [str(a) for a in c.get("args") or []]
    p: list[str] = []
    if not selects(dig(spec, "selector", "matchLabels"), pod_labels(d)):
        p.append("spec.selector does not match the pod template's labels")
    if spec.get("replicas") != 2:
        p.append("replicas is not 2")
    ru = dig(spec, "strategy", "rollingUpdate") or {}
    if dig(spec, "strategy", "type") != "RollingUpdate" or ru.get("maxUnavailable") != 0 or ru.get("maxSurge") != 1:
        p.append("strategy is not RollingUpdate with maxUnavailable 0, maxSurge 1")
    if args[:1] != ["serve"]:
        p.append(f"args do not start with serve: {args}")
    grace = parse_seconds(arg_value(args, "--grace-period") or "25s")
    tgps = pspec.get("terminationGracePeriodSeconds", 30)
    if grace is None or grace + 3 > tgps:
        p.append(f"--grace-period {arg_value(args, '--grace-period')} leaves under 3 s before "
                 f"terminationGracePeriodSeconds {tgps}")
    listen = arg_value(args, "--listen") or f"0.0.0.0:{METRICS_PORT}"
    ports = {pt.get("name"): pt.get("containerPort") for pt in c.get("ports") or []}
    if ports.get("metrics") != METRICS_PORT or not listen.endswith(f":{METRICS_PORT}"):
        p.append(f"container port `metrics` {ports.get('metrics')} / --listen {listen} is not {METRICS_PORT}")
    probes = {
        "startupProbe": "/healthz", "livenessProbe": "/healthz", "readinessProbe": "/readyz",
    }
    for probe, path in probes.items():
        got = dig(c, probe, "httpGet")
        if not got or got.get("path") != path or got.get("port") not in ("metrics", METRICS_PORT):
            p.append(f"{probe} is not GET {path} on the metrics port")
    terms = dig(pspec, "affinity", "podAntiAffinity", "preferredDuringSchedulingIgnoredDuringExecution") or []
    if not any(dig(t, "podAffinityTerm", "topologyKey") == "kubernetes.io/hostname"
               and selects(dig(t, "podAffinityTerm", "labelSelector", "matchLabels"), pod_labels(d))
               for t in terms):
        p.append("no preferred pod anti-affinity across nodes (kubernetes.io/hostname) on its own pods")
    rep.check(f"{fname}: Deployment/{dig(d, 'metadata', 'name')} rollout, grace period, port, "
              "probes, anti-affinity", p)


def check_k8s(rep: Report, root: Path, versions: list[str], crds: CrdValidator, promtool: str | None) -> None:
    k8s_dir = root / "docker" / "k8s"
    # Every manifest, the monitoring component's too; *.test.yaml are
    # promtool's unit tests, not Kubernetes objects.
    files = sorted(str(f.relative_to(k8s_dir)) for pattern in ("*.yaml", "*.yml") for f in k8s_dir.rglob(pattern)
                   if not f.name.endswith((".test.yaml", ".test.yml")))
    if not files:
        rep.fail("docker/k8s", "no manifests found")
        return
    objects: list[tuple[str, dict]] = []
    for fname in files:
        try:
            docs = load_yaml_docs(k8s_dir / fname)
        except (yaml.YAMLError, ValueError) as e:
            rep.fail(f"{fname}: YAML", str(e).replace("\n", " "))
            continue
        p = []
        if not docs:
            p.append("no documents")
        for d in docs:
            if not d.get("apiVersion") or not d.get("kind") or (
                    d.get("kind") not in KUSTOMIZE_KINDS and not dig(d, "metadata", "name")):
                p.append("a document lacks apiVersion, kind or metadata.name")
        rep.check(f"{fname}: YAML, {len(docs)} document(s) with apiVersion, kind, name", p)
        objects += [(fname, d) for d in docs]

    check_schemas(rep, objects, versions)
    check_crd_schemas(rep, crds, objects)

    by_kind: dict[str, list[tuple[str, dict]]] = {}
    for fname, o in objects:
        by_kind.setdefault(o["kind"], []).append((fname, o))

    # Namespaces.
    p = []
    for fname, o in objects:
        if o["kind"] in ("Namespace", *KUSTOMIZE_KINDS):
            continue
        if dig(o, "metadata", "namespace") != NAMESPACE:
            p.append(f"{fname}: {o['kind']} is not in namespace {NAMESPACE}")
    if [dig(o, "metadata", "name") for _, o in by_kind.get("Namespace", [])] not in ([], [NAMESPACE]):
        p.append(f"namespace.yaml does not define namespace {NAMESPACE}")
    rep.check(f"every object is in namespace {NAMESPACE}", p)

    # What the workloads may refer to.
    toml = (root / "retention.toml").read_text()
    configmaps = {dig(o, "metadata", "name"): o.get("data") or {} for _, o in by_kind.get("ConfigMap", [])}
    secrets = {dig(o, "metadata", "name"): set((o.get("stringData") or {}) | (o.get("data") or {}))
               for _, o in by_kind.get("Secret", [])}
    cfg = {"configmaps": configmaps, "secrets": secrets, "env_refs": env_refs(toml)}

    for fname, cm in by_kind.get("ConfigMap", []):
        data = (cm.get("data") or {}).get("retention.toml")
        what = f"{fname}: data.retention.toml is the repository's retention.toml, verbatim"
        if data is None:
            rep.fail(what, "no key retention.toml")
        elif data != toml:
            diff = list(difflib.unified_diff(toml.splitlines(), data.splitlines(), "retention.toml",
                                             fname, lineterm="", n=0))
            rep.fail(what, "they differ; first lines of the diff: " + " | ".join(diff[2:8]))
        else:
            rep.ok(what)

    for fname, s in by_kind.get("Secret", []):
        p = []
        if s.get("data"):
            p.append("uses data (base64): write the example with stringData")
        values = s.get("stringData") or {}
        for k in ("APP_DATABASE_URL", "ADMIN_DATABASE_URL", "signing.pem"):
            if k not in values:
                p.append(f"no key {k}")
        pem = str(values.get("signing.pem", ""))
        if "PLACEHOLDER" not in pem or re.search(r"[A-Za-z0-9+/]{40,}", pem):
            p.append("signing.pem does not look like the placeholder: never commit a real key")
        for k in ("APP_DATABASE_URL", "ADMIN_DATABASE_URL"):
            if k in values and "CHANGE-ME" not in str(values[k]):
                p.append(f"{k} holds no CHANGE-ME placeholder password")
        rep.check(f"{fname}: example Secret with placeholders only (stringData: APP_DATABASE_URL, "
                  "ADMIN_DATABASE_URL, signing.pem)", p)

    for kind in ("Deployment", "Job", "CronJob"):
        for fname, o in by_kind.get(kind, []):
            check_workload(rep, fname, o, cfg)
    for fname, d in by_kind.get("Deployment", []):
        check_deployment(rep, fname, d)

    deployments = [o for _, o in by_kind.get("Deployment", [])]
    others = [o for k in ("Job", "CronJob") for _, o in by_kind.get(k, [])]
    for fname, cj in by_kind.get("CronJob", []):
        p = []
        if dig(cj, "spec", "concurrencyPolicy") != "Forbid":
            p.append("concurrencyPolicy is not Forbid")
        args = [str(a) for a in dig(pod_spec(cj), "containers", 0, "args", default=[])]
        if args[:1] != ["run"]:
            p.append(f"args do not start with run: {args}")
        rep.check(f"{fname}: CronJob/{dig(cj, 'metadata', 'name')} runs `retentiond run`, "
                  "concurrencyPolicy Forbid", p)
    for fname, j in by_kind.get("Job", []):
        args = [str(a) for a in dig(pod_spec(j), "containers", 0, "args", default=[])]
        env = {e.get("name"): e for e in dig(pod_spec(j), "containers", 0, "env", default=[])}
        p = []
        if args[:1] != ["migrate"]:
            p.append(f"args do not start with migrate: {args}")
        if dig(env, "APP_DATABASE_URL", "valueFrom", "secretKeyRef", "key") != "ADMIN_DATABASE_URL":
            p.append("APP_DATABASE_URL is not the Secret's ADMIN_DATABASE_URL")
        # --grant-to gives the runtime role (the daemon's database user) its
        # rights on schema retentiond, so the daemon comes up ready.
        grant = arg_value(args, "--grant-to")
        runtime = {urllib.parse.urlsplit(str((o.get("stringData") or {}).get("APP_DATABASE_URL", ""))).username
                   for _, o in by_kind.get("Secret", [])} - {None}
        if not grant:
            p.append("no --grant-to ROLE: the runtime role would get no rights on schema retentiond")
        elif runtime and grant not in runtime:
            p.append(f"--grant-to {grant}, but the example Secret's APP_DATABASE_URL connects as "
                     f"{', '.join(sorted(runtime))}")
        rep.check(f"{fname}: Job/{dig(j, 'metadata', 'name')} runs `retentiond migrate` as the admin URL, "
                  f"--grant-to the runtime role ({grant})", p)

    for fname, svc in by_kind.get("Service", []):
        sel = dig(svc, "spec", "selector")
        p = []
        if not any(selects(sel, pod_labels(d)) for d in deployments):
            p.append("the selector matches no Deployment's pods")
        if any(selects(sel, pod_labels(o)) for o in others):
            p.append("the selector also matches Job/CronJob pods")
        if dig(svc, "spec", "type", default="ClusterIP") != "ClusterIP":
            p.append("type is not ClusterIP")
        port = next((pt for pt in dig(svc, "spec", "ports", default=[]) if pt.get("name") == "metrics"), None)
        if not port or port.get("port") != METRICS_PORT:
            p.append(f"no port named metrics on {METRICS_PORT}")
        elif not any(port.get("targetPort") in (pt.get("name"), pt.get("containerPort"))
                     for d in deployments for c in dig(pod_spec(d), "containers", default=[])
                     for pt in c.get("ports") or []):
            p.append(f"targetPort {port.get('targetPort')} is no container port")
        rep.check(f"{fname}: Service/{dig(svc, 'metadata', 'name')} selects the daemon pods only, "
                  f"port metrics {METRICS_PORT}", p)

    for fname, pdb in by_kind.get("PodDisruptionBudget", []):
        sel = dig(pdb, "spec", "selector", "matchLabels")
        p = []
        matched = [d for d in deployments if selects(sel, pod_labels(d))]
        if not matched:
            p.append("the selector matches no Deployment's pods")
        if any(selects(sel, pod_labels(o)) for o in others):
            p.append("the selector also matches Job/CronJob pods")
        if dig(pdb, "spec", "minAvailable") != 1:
            p.append("minAvailable is not 1")
        for d in matched:
            if dig(d, "spec", "replicas", default=1) <= 1:
                p.append("minAvailable 1 with a single replica would block every drain")
        rep.check(f"{fname}: PodDisruptionBudget/{dig(pdb, 'metadata', 'name')} minAvailable 1 "
                  "on the daemon pods", p)

    services = [o for _, o in by_kind.get("Service", [])]
    jobs: set[str] = set()
    for fname, sm in by_kind.get("ServiceMonitor", []):
        check_service_monitor(rep, fname, sm)
        sel = dig(sm, "spec", "selector", "matchLabels")
        p = []
        targets = [s for s in services if selects(sel, dig(s, "metadata", "labels", default={}))]
        if not targets:
            p.append("the selector matches no Service's labels")
        for ep in dig(sm, "spec", "endpoints", default=[]):
            for s in targets:
                if ep.get("port") not in [pt.get("name") for pt in dig(s, "spec", "ports", default=[])]:
                    p.append(f"endpoint port {ep.get('port')!r} is not a port name of Service "
                             f"{dig(s, 'metadata', 'name')}")
            if ep.get("path", "/metrics") != "/metrics":
                p.append("endpoint path is not /metrics")
        # The scraped series' job label: the Service's jobLabel label, else its name.
        job_label = dig(sm, "spec", "jobLabel")
        for s in targets:
            job = dig(s, "metadata", "labels", job_label) if job_label else dig(s, "metadata", "name")
            if job is None:
                p.append(f"jobLabel {job_label} is not a label of Service {dig(s, 'metadata', 'name')}")
            else:
                jobs.add(job)
        rep.check(f"{fname}: ServiceMonitor/{dig(sm, 'metadata', 'name')} selects the Service "
                  f"and its metrics port (job=\"{'/'.join(sorted(jobs))}\")", p)

    for fname, k in objects:
        if k.get("kind") in KUSTOMIZE_KINDS:
            check_kustomization(rep, k8s_dir, fname, k, files)
    check_renderings(rep, k8s_dir, versions, crds)

    # Alerts and dashboard: what they query must exist.
    metrics = exposed_metrics(root)
    promql = Promql(metrics, run_outcomes(root), next(iter(jobs)) if len(jobs) == 1 else None)
    for fname, pr in by_kind.get("PrometheusRule", []):
        check_prometheus_rule(rep, k8s_dir, fname, pr, promql, promtool)
    check_dashboard(rep, k8s_dir, promql, promtool)
    check_metric_names(rep, root, metrics, promql)


# --- metrics, PromQL, alerts, dashboard -------------------------------------------


def exposed_metrics(root: Path) -> dict[str, set[str]]:
    """The series src/daemon/metrics.rs registers, with their label names.

    A metric is a "retentiond_..." string that is the first string argument of
    a call (`counter(&r, "name", "help", &["rule"])`, `HistogramOpts::new("name",
    ...)`, `IntGauge::new("name", ...)`); its labels are the first `&[...]`
    before the call's `)?`. A histogram exposes _bucket (with le), _sum, _count.
    """
    text = (root / "src" / "daemon" / "metrics.rs").read_text().split("#[cfg(test)]")[0]
    text = re.sub(r"^\s*//[^\n]*", "", text, flags=re.M)
    out: dict[str, set[str]] = {}
    for m in re.finditer(r'\(\s*(?:&\w+\s*,\s*)?"(retentiond_[a-zA-Z0-9_]+)"', text):
        name, rest = m.group(1), text[m.end():]
        end = rest.find(")?")
        lm = re.search(r"&\[([^\]]*)\]", rest[:max(end, 0)])
        labels = set(re.findall(r'"([a-zA-Z_][a-zA-Z0-9_]*)"', lm.group(1))) if lm else set()
        if "Histogram" in text[max(0, m.start() - 20):m.start()]:
            out |= {f"{name}_bucket": labels | {"le"}, f"{name}_sum": labels, f"{name}_count": labels}
        else:
            out[name] = labels
    return out


def run_outcomes(root: Path) -> set[str]:
    """The `outcome` label values of retentiond_runs_total: metrics.rs's
    RUN_OUTCOMES, or else the variants of plan::Outcome (snake_case)."""
    m = re.search(r"RUN_OUTCOMES\s*:\s*\[&str;\s*\d+\]\s*=\s*\[([^\]]*)\]",
                  (root / "src" / "daemon" / "metrics.rs").read_text())
    if m:
        return set(re.findall(r'"(\w+)"', m.group(1)))
    m = re.search(r"pub enum Outcome\s*\{(.*?)\n\}", (root / "src" / "plan" / "mod.rs").read_text(), re.S)
    variants = re.findall(r"^\s*([A-Z]\w*),", m.group(1), re.M) if m else []
    return {re.sub(r"(?<!^)([A-Z])", r"_\1", v).lower() for v in variants}


class Promql:
    """What the PromQL expressions may name: the metrics and labels the service
    exports, the series Prometheus adds, recorded series, the run outcomes and
    the scrape job."""

    def __init__(self, metrics: dict[str, set[str]], outcomes: set[str], job: str | None) -> None:
        self.metrics = {**SCRAPE_SERIES, **metrics}
        self.outcomes = outcomes
        self.job = job
        self.assumed_used: set[str] = set()

    def record(self, name: str) -> None:
        self.metrics.setdefault(name, set().union(*self.metrics.values()))

    def problems(self, expr: str) -> list[str]:
        if promql_parser is None:
            return ["promql-parser is not importable"]
        try:
            ast = promql_parser.parse(expr)
        except ValueError as e:
            return [f"does not parse: {e}"]
        p: list[str] = []
        grouping: set[str] = set()

        def visit(node) -> None:
            if isinstance(node, promql_parser.VectorSelector):
                matchers = [(m.name, m.op, m.value) for m in node.matchers.matchers]
                matchers += [(m.name, m.op, m.value) for group in node.matchers.or_matchers for m in group]
                name = node.name or next((v for n, o, v in matchers
                                          if n == "__name__" and o == promql_parser.MatchOp.Equal), None)
                if name is None:
                    p.append("a selector without a metric name")
                    return
                if name in self.metrics:
                    known = self.metrics[name]
                elif name in ASSUMED_METRICS:
                    self.assumed_used.add(name)
                    known = ASSUMED_METRICS[name]
                else:
                    p.append(f"{name} is not a metric that src/daemon/metrics.rs registers")
                    return
                for label, op, value in matchers:
                    if label == "__name__":
                        continue
                    if label not in known | TARGET_LABELS:
                        p.append(f"{name} has no label {label}")
                    values = value.split("|") if op == promql_parser.MatchOp.Re else [value]
                    if label == "outcome" and op in (promql_parser.MatchOp.Equal, promql_parser.MatchOp.Re):
                        p.extend(f"outcome {v!r} is not one of {sorted(self.outcomes)}" for v in values
                                 if v not in self.outcomes)
                    if label == "job" and op == promql_parser.MatchOp.Equal and self.job and value != self.job:
                        p.append(f'job="{value}", but the ServiceMonitor scrapes the daemon as job="{self.job}"')
            elif isinstance(node, promql_parser.AggregateExpr) and node.modifier:
                grouping.update(node.modifier.labels)
            elif isinstance(node, promql_parser.BinaryExpr) and node.modifier:
                if node.modifier.matching:
                    grouping.update(node.modifier.matching.labels)
                grouping.update(node.modifier.group_labels or [])

        promql_parser.walk(ast, visit)
        known = set().union(*self.metrics.values(), *ASSUMED_METRICS.values()) | TARGET_LABELS
        p += [f"no series has the label {label}" for label in sorted(grouping - known)]
        return p


def run_promtool(promtool: str, args: list[str], cwd: Path) -> tuple[bool, str]:
    try:
        r = subprocess.run([promtool, *args], cwd=cwd, capture_output=True, text=True, timeout=120, check=False)
    except (OSError, subprocess.TimeoutExpired) as e:
        return False, str(e)
    return r.returncode == 0, (r.stdout + r.stderr).strip()


def promtool_version(promtool: str) -> str:
    r = subprocess.run([promtool, "--version"], capture_output=True, text=True, check=False)
    m = re.search(r"version (\S+)", r.stdout + r.stderr)
    return f"promtool {m.group(1)}" if m else "promtool"


def check_prometheus_rule(rep: Report, k8s_dir: Path, fname: str, pr: dict, promql: Promql,
                          promtool: str | None) -> None:
    name = f"{fname}: PrometheusRule/{dig(pr, 'metadata', 'name')}"
    groups = dig(pr, "spec", "groups", default=[]) or []
    rules = [r for g in groups for r in g.get("rules") or [] if isinstance(r, dict)]
    alerts = [r for r in rules if "alert" in r]

    # What an operator needs on each alert.
    p = []
    names = [a["alert"] for a in alerts]
    p += [f"alert {n} defined twice" for n in sorted(set(names)) if names.count(n) > 1]
    for a in alerts:
        n = a["alert"]
        if not re.fullmatch(r"Retentiond[A-Z][A-Za-z]+", n):
            p.append(f"{n}: not named Retentiond<CamelCase>")
        if not a.get("for"):
            p.append(f"{n}: no `for:`")
        if dig(a, "labels", "severity") not in SEVERITIES:
            p.append(f"{n}: severity {dig(a, 'labels', 'severity')!r} is not one of {sorted(SEVERITIES)}")
        for k in ("summary", "description", "runbook"):
            if not str(dig(a, "annotations", k, default="")).strip():
                p.append(f"{n}: no {k} annotation")
    rep.check(f"{name}: {len(alerts)} alerts, each with for, a severity label, summary, description "
              "and runbook annotations", p)

    # PromQL: parses, and names only what the service exports.
    for r in rules:
        if "record" in r:
            promql.record(r["record"])
    p = []
    for r in rules:
        p += [f"{r.get('alert') or r.get('record')}: {m}" for m in promql.problems(str(r.get("expr", "")))]
    rep.check(f"{name}: every expression parses (promql-parser) and names only metrics and labels of "
              "src/daemon/metrics.rs and the scrape", p)

    # The alerts the issue asks for.
    exprs = {a["alert"]: str(a.get("expr", "")) for a in alerts}

    def some(*needles: str) -> bool:
        return any(all(n in e for n in needles) for e in exprs.values())

    p = []
    for what, needles in (("compliance lag above the rule's interval",
                           ("retentiond_compliance_lag_seconds", "retentiond_rule_interval_seconds")),
                          ("failed runs", ("retentiond_runs_total", 'outcome="failed"')),
                          ("refused runs", ("retentiond_runs_total", 'outcome="refused"')),
                          ("an instance not ready", ("retentiond_ready",)),
                          ("an instance down", ("up{",))):
        if not some(*needles):
            p.append(f"no alert on {what} ({', '.join(needles)})")
    rep.check(f"{name}: alerts on compliance lag above the interval, failed and refused runs, "
              "readiness, scrape health", p)

    if not promtool:
        rep.skip(f"{name}: promtool check rules / test rules",
                 "promtool is not installed (scripts/validate-manifests extracts it from Debian's "
                 "`prometheus` package)")
        return
    test_file = (k8s_dir / fname).with_name(Path(fname).stem + ".test.yaml")
    with tempfile.TemporaryDirectory(prefix="retentiond-rules-") as tmp:
        t = Path(tmp)
        (t / "rules.yaml").write_text(yaml.safe_dump(pr.get("spec") or {}, sort_keys=False))
        ok, out = run_promtool(promtool, ["check", "rules", "rules.yaml"], t)
        what = f"{name}: {promtool_version(promtool)} check rules (spec.groups)"
        if ok:
            rep.ok(f"{what}: {re.search(r'SUCCESS: (.*)', out).group(1) if 'SUCCESS' in out else 'ok'}")
        else:
            rep.fail(what, out.replace("\n", " | "))
        what = f"{name}: {promtool_version(promtool)} test rules {test_file.relative_to(k8s_dir)}"
        if not test_file.is_file():
            rep.fail(what, "missing: the alerts need unit tests")
            return
        test = yaml.safe_load(test_file.read_text()) or {}
        if test.get("rule_files") != ["prometheusrule.rules.yaml"]:
            rep.fail(what, "rule_files is not [prometheusrule.rules.yaml] (the spec written out here)")
            return
        stripped = yaml.safe_load(yaml.safe_dump(pr.get("spec") or {}))
        for g in stripped.get("groups") or []:
            for r in g.get("rules") or []:
                r.pop("annotations", None)
        (t / "prometheusrule.rules.yaml").write_text(yaml.safe_dump(stripped, sort_keys=False))
        shutil.copy(test_file, t / test_file.name)
        ok, out = run_promtool(promtool, ["test", "rules", test_file.name], t)
        tested = sorted({str(c.get("alertname")) for tc in test.get("tests") or []
                         for c in tc.get("alert_rule_test") or []})
        untested = sorted(set(names) - set(tested))
        if not ok:
            rep.fail(what, out.replace("\n", " | ")[-1500:])
        elif untested:
            rep.fail(what, f"passes, but no test covers {', '.join(untested)}")
        else:
            rep.ok(f"{what}: every alert tested, all pass")


def grafana_expr(expr: str, defined: set[str]) -> tuple[str, list[str]]:
    """`expr` with Grafana's variables replaced (built-ins by a duration, the
    dashboard's by .*), and the variables it uses that are not defined."""
    undefined: list[str] = []

    def sub(m: re.Match) -> str:
        var = m.group(1) or m.group(2) or m.group(3)
        if var in GRAFANA_BUILTINS:
            return GRAFANA_BUILTINS[var]
        if var not in defined:
            undefined.append(var)
        return ".*"

    return re.sub(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)|\[\[(\w+)\]\]", sub, expr), undefined


def check_dashboard(rep: Report, k8s_dir: Path, promql: Promql, promtool: str | None) -> None:
    path = k8s_dir / MONITORING / DASHBOARD_FILE
    fname = str(path.relative_to(k8s_dir))
    try:
        dash = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        rep.fail(f"{fname}: JSON", str(e))
        return
    variables = dig(dash, "templating", "list", default=[]) or []
    defined = {v.get("name") for v in variables}
    ds_ref = {"type": "prometheus", "uid": "${datasource}"}

    def flat(panels: list[dict]) -> list[dict]:
        return [q for pnl in panels for q in [pnl, *flat(pnl.get("panels") or [])]]

    panels = flat(dash.get("panels") or [])
    graphs = [pnl for pnl in panels if pnl.get("type") != "row"]

    p = []
    if not isinstance(dash.get("schemaVersion"), int) or dash["schemaVersion"] < 36:
        p.append(f"schemaVersion {dash.get('schemaVersion')!r} is not a Grafana 9+ schema (>= 36)")
    for k in ("uid", "title"):
        if not str(dash.get(k, "")).strip():
            p.append(f"no {k}")
    ds = next((v for v in variables if v.get("name") == "datasource"), None)
    if not ds or ds.get("type") != "datasource" or ds.get("query") != "prometheus":
        p.append("no variable `datasource` of type datasource, query prometheus")
    for v in variables:
        if v.get("type") == "query" and v.get("datasource") != ds_ref:
            p.append(f"variable {v.get('name')}: datasource is not ${{datasource}}")
    ids = [pnl.get("id") for pnl in panels]
    p += [f"panel id {i} used twice" for i in sorted({i for i in ids if ids.count(i) > 1}, key=str)]
    boxes = []
    for pnl in panels:
        g = pnl.get("gridPos") or {}
        if not all(isinstance(g.get(k), int) for k in ("h", "w", "x", "y")) or g["x"] + g["w"] > 24:
            p.append(f"panel {pnl.get('title')!r}: gridPos is not h, w, x, y within 24 columns")
            continue
        for other, og in boxes:
            if (g["x"] < og["x"] + og["w"] and og["x"] < g["x"] + g["w"]
                    and g["y"] < og["y"] + og["h"] and og["y"] < g["y"] + g["h"]):
                p.append(f"panels {other!r} and {pnl.get('title')!r} overlap")
        boxes.append((pnl.get("title"), g))
    for pnl in graphs:
        t = pnl.get("title")
        if pnl.get("datasource") != ds_ref:
            p.append(f"panel {t!r}: datasource is not ${{datasource}}")
        targets = pnl.get("targets") or []
        if not targets:
            p.append(f"panel {t!r}: no targets")
        refs = [x.get("refId") for x in targets]
        if len(set(refs)) != len(refs) or None in refs:
            p.append(f"panel {t!r}: refIds missing or not unique")
        for x in targets:
            if x.get("datasource", ds_ref) != ds_ref:
                p.append(f"panel {t!r} {x.get('refId')}: datasource is not ${{datasource}}")
            if not str(x.get("expr", "")).strip():
                p.append(f"panel {t!r} {x.get('refId')}: no expr")
    rep.check(f"{fname}: Grafana dashboard JSON (schemaVersion {dash.get('schemaVersion')}, {len(graphs)} "
              "panels): ${datasource} variable on every panel and query, unique ids, layout", p)

    # Every expression: variables defined, parses, names only exported series.
    p = []
    exprs: list[tuple[str, str]] = []
    for v in variables:
        q = v.get("query")
        q = q.get("query") if isinstance(q, dict) else q
        if v.get("type") != "query":
            continue
        m = re.fullmatch(r"\s*label_values\((.*),\s*(\w+)\s*\)\s*", str(q), re.S)
        if not m:
            p.append(f"variable {v.get('name')}: query {q!r} is not label_values(SELECTOR, LABEL)")
            continue
        exprs.append((f"variable {v.get('name')}", m.group(1)))
        exprs.append((f"variable {v.get('name')}", f"count by ({m.group(2)}) ({m.group(1)})"))
    exprs += [(f"panel {pnl.get('title')!r} {x.get('refId')}", str(x.get("expr", "")))
              for pnl in graphs for x in pnl.get("targets") or []]
    parsed: list[tuple[str, str]] = []
    for where, e in exprs:
        e2, undefined = grafana_expr(e, defined)
        p += [f"{where}: variable ${u} is not defined" for u in undefined]
        p += [f"{where}: {m}" for m in promql.problems(e2)]
        parsed.append((where, e2))
    rep.check(f"{fname}: every query ({len(exprs)}) parses (promql-parser) and names only metrics and labels "
              "of src/daemon/metrics.rs and the scrape", p)

    text = " ".join(e for _, e in exprs)
    p = [f"no panel shows {what} ({metric})" for what, metric in (
        ("the compliance lag per rule", "retentiond_compliance_lag_seconds"),
        ("the overdue items per rule", "retentiond_overdue_items"),
        ("runs by outcome", "retentiond_runs_total"),
        ("rows deleted", "retentiond_rows_deleted_total"),
        ("rows masked", "retentiond_rows_masked_total"),
        ("objects deleted", "retentiond_objects_deleted_total"),
        ("readiness", "retentiond_ready")) if metric not in text]
    rep.check(f"{fname}: panels for compliance lag, overdue items, runs by outcome, rows and objects "
              "removed, readiness", p)

    if not promtool:
        rep.skip(f"{fname}: promtool parse of the queries", "promtool is not installed")
        return
    with tempfile.TemporaryDirectory(prefix="retentiond-dashboard-") as tmp:
        rules = {"groups": [{"name": "dashboard", "rules": [
            {"record": f"dashboard_query:{i}", "expr": e} for i, (_, e) in enumerate(parsed)]}]}
        (Path(tmp) / "dashboard.rules.yaml").write_text(yaml.safe_dump(rules, sort_keys=False))
        ok, out = run_promtool(promtool, ["check", "rules", "dashboard.rules.yaml"], Path(tmp))
    what = f"{fname}: {promtool_version(promtool)} parses every query (as recording rules)"
    if ok:
        rep.ok(what)
    else:
        rep.fail(what, out.replace("\n", " | "))


def check_metric_names(rep: Report, root: Path, metrics: dict[str, set[str]], promql: Promql) -> None:
    what = "src/daemon/metrics.rs: the metrics the alerts and dashboard may use"
    if not metrics:
        rep.fail(what, "found no retentiond_* metric registrations: the parser in validate_manifests.py "
                 "needs updating")
        return
    rep.ok(f"{what}: {len(metrics)} series ({', '.join(sorted(metrics))})")
    for name in sorted(promql.assumed_used - set(metrics)):
        rep.skip(f"metric {name}{{{','.join(sorted(ASSUMED_METRICS[name]))}}}",
                 "the alerts use it, but src/daemon/metrics.rs does not register it yet: until it does, "
                 "they fall back to fixed thresholds")



# --- compose ----------------------------------------------------------------------


def check_compose(rep: Report, root: Path) -> None:
    path = root / "docker" / "compose.yaml"
    base = path.parent
    try:
        doc = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as e:
        rep.fail("docker/compose.yaml: YAML", str(e).replace("\n", " "))
        return
    services = (doc or {}).get("services") if isinstance(doc, dict) else None
    if not isinstance(services, dict):
        rep.fail("docker/compose.yaml: YAML", "no services mapping")
        return
    missing = COMPOSE_SERVICES - set(services)
    rep.check(f"docker/compose.yaml: YAML with services {', '.join(sorted(services))}",
              [f"missing services: {', '.join(sorted(missing))}"] if missing else [])

    p = []
    images = {n: str(s.get("image", "")) for n, s in services.items()}
    expect = {"postgres": "postgres:15", "s3": "motoserver/moto",
              "azurite": "mcr.microsoft.com/azure-storage/azurite"}
    for n, prefix in expect.items():
        if n in images and not images[n].startswith(prefix):
            p.append(f"{n} image {images[n]!r} is not {prefix}*")
    rep.check("docker/compose.yaml: postgres 15, moto, Azurite images", p)

    p = []
    named = set((doc.get("volumes") or {}).keys())
    for n, s in services.items():
        build = s.get("build")
        if build is not None:
            ctx = base / (build.get("context", ".") if isinstance(build, dict) else build)
            dockerfile = build.get("dockerfile", "Dockerfile") if isinstance(build, dict) else "Dockerfile"
            if not ctx.is_dir():
                p.append(f"{n}: build context {ctx} is missing")
            elif not (ctx / dockerfile).is_file():
                p.append(f"{n}: {dockerfile} not found in the build context")
        for v in s.get("volumes") or []:
            src = v.split(":")[0] if isinstance(v, str) else v.get("source")
            if src is None:
                continue
            if src.startswith((".", "/", "~")):
                if not (base / src).exists():
                    p.append(f"{n}: bind mount source {src} does not exist")
            elif src not in named:
                p.append(f"{n}: named volume {src} is not declared under volumes:")
        deps = s.get("depends_on") or {}
        for dep, cond in (deps.items() if isinstance(deps, dict) else ((d, {}) for d in deps)):
            condition = (cond or {}).get("condition", "service_started")
            if dep not in services:
                p.append(f"{n}: depends on unknown service {dep}")
            elif condition not in ("service_started", "service_healthy", "service_completed_successfully"):
                p.append(f"{n}: unknown depends_on condition {condition}")
            elif condition == "service_healthy" and not dig(services[dep], "healthcheck", "test"):
                p.append(f"{n}: waits for {dep} to be healthy, but {dep} has no healthcheck")
    rep.check("docker/compose.yaml: build context, Dockerfile, bind mounts, named volumes, depends_on", p)

    # Compose interpolates $VAR and ${VAR} in every string; a shell's `$` must
    # be written `$$`. Nothing here is meant to be interpolated.
    p = []

    def walk(node, where):
        if isinstance(node, dict):
            for k, v in node.items():
                walk(v, f"{where}.{k}")
        elif isinstance(node, list):
            for i, v in enumerate(node):
                walk(v, f"{where}[{i}]")
        elif isinstance(node, str) and "$" in node.replace("$$", ""):
            p.append(f"{where} has a lone $ (compose would interpolate it; write $$)")

    walk(services, "services")
    rep.check("docker/compose.yaml: no unintended variable interpolation", p)

    p = []
    toml = (root / "retention.toml").read_text()
    for n in ("migrate", "retentiond"):
        s = services.get(n) or {}
        env = s.get("environment") or {}
        if isinstance(env, list):
            env = dict(e.split("=", 1) if "=" in e else (e, None) for e in env)
        for var in sorted(env_refs(toml)):
            if var not in env:
                p.append(f"{n}: retention.toml needs ${{{var}}}, not in its environment")
        mounts = [v.split(":") for v in s.get("volumes") or [] if isinstance(v, str)]
        if not any(m[1] == CONFIG_PATH and (base / m[0]).resolve() == (root / "retention.toml").resolve()
                   for m in mounts if len(m) >= 2):
            p.append(f"{n}: ../retention.toml is not mounted at {CONFIG_PATH}")
        if not any(m[1] == os.path.dirname(KEY_PATH) for m in mounts if len(m) >= 2):
            p.append(f"{n}: no key volume at {os.path.dirname(KEY_PATH)}")
    cmd = [str(a) for a in (services.get("retentiond") or {}).get("command") or []]
    if cmd[:1] != ["serve"]:
        p.append(f"retentiond: command does not start with serve: {cmd}")
    stop = parse_seconds(str((services.get("retentiond") or {}).get("stop_grace_period", "10s")))
    grace = parse_seconds(arg_value(cmd, "--grace-period") or "25s")
    if stop is None or grace is None or stop <= grace:
        p.append("retentiond: stop_grace_period does not exceed --grace-period")
    kg = " ".join(str(x) for x in [(services.get("keygen") or {}).get("entrypoint"),
                                    (services.get("keygen") or {}).get("command")])
    if "keygen" not in kg or "signing.pem" not in kg:
        p.append("keygen: does not run `retentiond keygen` guarded by an existing-key test")
    mig = [str(a) for a in (services.get("migrate") or {}).get("command") or []]
    if mig[:1] != ["migrate"]:
        p.append(f"migrate: command does not start with migrate: {mig}")
    rep.check("docker/compose.yaml: keygen, migrate and serve wiring (config, key, env, grace)", p)


# --- Dockerfile -----------------------------------------------------------------


def dockerfile_instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    out, cur = [], ""
    for line in text.splitlines():
        s = line.strip()
        if not cur and (not s or s.startswith("#")):
            continue
        if cur and s.startswith("#"):
            continue
        cur += (" " if cur else "") + s
        if cur.endswith("\\"):
            cur = cur[:-1].rstrip()
            continue
        word, _, rest = cur.partition(" ")
        out.append((word.upper(), rest.strip()))
        cur = ""
    return out


class _Health(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        code = self.server.codes.get(self.path, 404)
        body = b"ok\n" if code == 200 else b"no\n"
        self.send_response(code)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def try_healthcheck(script: str, codes: dict) -> int:
    """Runs the HEALTHCHECK's bash script against a stub server on 127.0.0.1."""
    srv = http.server.HTTPServer(("127.0.0.1", 0), _Health)
    srv.codes = codes
    port = srv.server_address[1]
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    try:
        r = subprocess.run(["bash", "-c", script.replace(str(METRICS_PORT), str(port))],
                           check=False, capture_output=True, timeout=10)
        return r.returncode
    finally:
        srv.shutdown()
        srv.server_close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def check_dockerfile(rep: Report, root: Path, hadolint: str | None) -> None:
    path = root / "docker" / "Dockerfile"
    text = path.read_text()
    ins = dockerfile_instructions(text)
    args = {}
    for word, rest in ins:
        if word == "ARG" and "=" in rest:
            k, v = rest.split("=", 1)
            args[k.strip()] = v.strip()

    def expand(s: str) -> str:
        return re.sub(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)\}?", lambda m: args.get(m.group(1), m.group(0)), s)

    froms = [expand(rest).split() for word, rest in ins if word == "FROM"]
    p = []
    if not froms or not froms[0][0].startswith("rust:1") or "bookworm" not in froms[0][0]:
        p.append(f"the build stage is not rust:1-*-bookworm: {froms[:1]}")
    final = froms[-1][0] if froms else ""
    if final not in ("debian:bookworm-slim", "gcr.io/distroless/cc-debian12"):
        p.append(f"the runtime stage is {final!r}")
    copies = [rest.split() for word, rest in ins if word == "COPY" and "--from" not in rest]
    sources = {s.rstrip("/") for c in copies for s in c[:-1] if not s.startswith("--")}
    for need in ("Cargo.toml", "Cargo.lock", "src", "migrations"):
        if need not in sources:
            p.append(f"{need} is not copied into the build stage")
    for s in sources:
        if not (root / s).exists():
            p.append(f"COPY source {s} does not exist")
    if "--locked" not in text or "cargo build --release" not in text:
        p.append("no `cargo build --release --locked`")
    last = ins[max(i for i, (w, _) in enumerate(ins) if w == "FROM"):]
    user = [rest for w, rest in last if w == "USER"]
    if not user or user[-1].split(":")[0] != str(UID):
        p.append(f"the runtime stage's USER is not {UID}: {user}")
    if not any(w == "EXPOSE" and str(METRICS_PORT) in rest.split() for w, rest in last):
        p.append(f"no EXPOSE {METRICS_PORT}")
    ep = [rest for w, rest in last if w == "ENTRYPOINT"]
    if not ep or json.loads(ep[-1]) != ["retentiond"]:
        p.append(f'ENTRYPOINT is not ["retentiond"]: {ep}')
    cmd = [rest for w, rest in last if w == "CMD"]
    cmd_list = json.loads(cmd[-1]) if cmd else []
    if cmd_list[:3] != ["serve", "-c", CONFIG_PATH] or arg_value(cmd_list, "--log-format") != "json":
        p.append(f"CMD is not serve -c {CONFIG_PATH} ... --log-format json: {cmd_list}")
    if "ca-certificates" not in text:
        p.append("no ca-certificates in the runtime image")
    rep.check("docker/Dockerfile: stages, inputs, USER 65532, EXPOSE 9464, ENTRYPOINT, CMD", p)

    # The HEALTHCHECK, run for real against stub servers.
    hc = [rest for w, rest in last if w == "HEALTHCHECK"]
    what = "docker/Dockerfile: HEALTHCHECK script (run against stub servers on 127.0.0.1)"
    m = re.search(r"CMD\s+(\[.*\])\s*$", hc[-1]) if hc else None
    if not m:
        rep.fail(what, "no HEALTHCHECK with an exec-form CMD")
    else:
        argv = json.loads(m.group(1))
        script = argv[2] if argv[:2] == ["bash", "-c"] and len(argv) == 3 else None
        if script is None:
            rep.fail(what, f"not bash -c SCRIPT: {argv}")
        else:
            p = []
            if try_healthcheck(script, {"/healthz": 200}) != 0:
                p.append("fails against a server answering 200 on /healthz")
            if try_healthcheck(script, {"/healthz": 503}) == 0:
                p.append("passes against a server answering 503")
            r = subprocess.run(["bash", "-c", script.replace(str(METRICS_PORT), str(free_port()))],
                               check=False, capture_output=True, timeout=10)
            if r.returncode == 0:
                p.append("passes with nothing listening")
            rep.check(what + ": 200 healthy; 503, nothing listening unhealthy", p)
            # compose repeats the script with $ doubled.
            try:
                compose = yaml.safe_load((root / "docker" / "compose.yaml").read_text()) or {}
            except (OSError, yaml.YAMLError):
                compose = {}  # reported in the compose section
            test = dig(compose, "services", "retentiond", "healthcheck", "test")
            if isinstance(test, list) and test[:3] == ["CMD", "bash", "-c"]:
                rep.check("docker/compose.yaml: retentiond healthcheck is the image's HEALTHCHECK script",
                          [] if test[3].replace("$$", "$") == script else ["the scripts differ"])

    # .dockerignore: keeps target/ and .git out, lets the build inputs in.
    di = root / ".dockerignore"
    what = ".dockerignore: excludes target/ and .git, keeps Cargo.toml, Cargo.lock, src/, migrations/"
    if not di.is_file():
        rep.fail(what, "missing")
    else:
        pats = [ln.strip() for ln in di.read_text().splitlines() if ln.strip() and not ln.startswith("#")]

        def ignored(name: str) -> bool:
            hit = False
            for pat in pats:
                neg = pat.startswith("!")
                pat = pat.lstrip("!").strip("/")
                if fnmatch.fnmatch(name, pat) or fnmatch.fnmatch(name, pat.removeprefix("**/")):
                    hit = not neg
            return hit

        p = [f"{n} is not excluded" for n in ("target", ".git") if not ignored(n)]
        p += [f"{n} is excluded" for n in ("Cargo.toml", "Cargo.lock", "src", "migrations") if ignored(n)]
        rep.check(what, p)

    what = "docker/Dockerfile: hadolint"
    if not hadolint:
        rep.skip(what, "hadolint is not installed")
        return
    try:
        r = subprocess.run([hadolint, "--no-color", str(path)], check=False, capture_output=True,
                           text=True, timeout=120)
    except (OSError, subprocess.TimeoutExpired) as e:
        rep.fail(what, str(e))
        return
    version = subprocess.run([hadolint, "--version"], check=False, capture_output=True, text=True).stdout.strip()
    if r.returncode == 0 and not r.stdout.strip():
        rep.ok(f"{what} ({version}): no findings")
    else:
        rep.fail(f"{what} ({version})", (r.stdout + r.stderr).strip().replace("\n", " | "))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--root", type=Path, default=Path(__file__).resolve().parents[2])
    ap.add_argument("-k", "--kubernetes-version", action="append", required=True)
    ap.add_argument("--hadolint", help="path of the hadolint binary (skipped when absent)")
    ap.add_argument("--promtool", help="path of promtool (its checks are skipped when absent)")
    ap.add_argument("--npm-dir", help="npm prefix with @kubernetes-models/prometheus-operator and typescript")
    a = ap.parse_args()
    rep = Report()
    root = a.root.resolve()
    hadolint = a.hadolint if a.hadolint and os.access(a.hadolint, os.X_OK) else None
    promtool = os.path.abspath(a.promtool) if a.promtool and os.access(a.promtool, os.X_OK) else None
    crds = CrdValidator(a.npm_dir)
    try:
        from importlib.metadata import version as _version
        pp = f"promql-parser {_version('promql-parser')}"
    except Exception:  # reported where it is needed
        pp = "no promql-parser"
    print(f"kubernetes-validate {KV_VERSION}; Kubernetes schemas {', '.join(a.kubernetes_version)}; "
          f"PyYAML {yaml.__version__}; {pp}; {crds.label() if not crds.why_not else crds.why_not}; "
          f"{promtool_version(promtool) if promtool else 'no promtool'}")
    for section, fn in (("Kubernetes manifests (docker/k8s)",
                         lambda: check_k8s(rep, root, a.kubernetes_version, crds, promtool)),
                        ("compose (docker/compose.yaml)", lambda: check_compose(rep, root)),
                        ("image (docker/Dockerfile, .dockerignore)", lambda: check_dockerfile(rep, root, hadolint))):
        print(f"\n--- {section}")
        try:
            fn()
        except Exception as e:  # a bug or an unexpected shape: fail, do not crash silently
            rep.fail(section, f"{type(e).__name__}: {e}")
    print(f"\nmanifests: {rep.passed} passed, {rep.failed} failed, {rep.skipped} skipped")
    return 1 if rep.failed else 0


if __name__ == "__main__":
    sys.exit(main())
