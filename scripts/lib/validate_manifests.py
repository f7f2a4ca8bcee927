"""Offline checks of retentiond's packaging: docker/k8s/, docker/compose.yaml,
docker/Dockerfile and .dockerignore. Run by scripts/validate-manifests, which
provides the Python environment (PyYAML, kubernetes-validate, hadolint).

Prints one line per check (`ok`, `FAIL`, `skip`) and closes with
`manifests: N passed, N failed, N skipped`; exits 1 when any check failed.

Kubernetes objects are validated with kubernetes-validate's strict schemas
(unknown fields fail) for every --kubernetes-version. Unlike the
kubernetes-validate command, which only warns about an apiVersion/kind it has
no schema for (so a removed API such as policy/v1beta1 would pass), a missing
schema fails here, except for the kinds in NOT_IN_SCHEMAS, which get checks of
their own. Then the objects are checked against each other (selectors, ports,
volumes, env, Secret keys), against the hardening the packaging promises, and
the ConfigMap against the repository's retention.toml.
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
import threading
from pathlib import Path

import yaml

try:
    import kubernetes_validate.utils as kv
    from kubernetes_validate.version import __version__ as KV_VERSION
except ImportError:  # reported as a failure below
    kv = None
    KV_VERSION = None

NAMESPACE = "retentiond"
UID = 65532
METRICS_PORT = 9464
CONFIG_PATH = "/etc/retentiond/retention.toml"
KEY_PATH = "/var/run/secrets/retentiond/signing.pem"
# Kinds kubernetes-validate has no schema for, and what is checked instead.
NOT_IN_SCHEMAS = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"): "a Prometheus Operator CRD",
    ("kustomize.config.k8s.io/v1beta1", "Kustomization"): "kustomize's own file, not an API object",
}
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
            rep.skip(f"{name} schema", f"{NOT_IN_SCHEMAS[(api, kind)]} ({api}): kubernetes-validate "
                     "ships no schema for it; checked structurally below")
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
    """A structural check standing in for the CRD's schema."""
    p: list[str] = []
    allowed_top = {"apiVersion", "kind", "metadata", "spec"}
    p += [f"unknown top-level field {k}" for k in sm if k not in allowed_top]
    spec = sm.get("spec")
    if not isinstance(spec, dict):
        p.append("spec is missing")
        spec = {}
    known_spec = {"selector", "endpoints", "namespaceSelector", "jobLabel", "targetLabels",
                  "podTargetLabels", "sampleLimit", "targetLimit", "labelLimit",
                  "labelNameLengthLimit", "labelValueLengthLimit", "attachMetadata",
                  "scrapeProtocols", "fallbackScrapeProtocol", "keepDroppedTargets",
                  "scrapeClass", "bodySizeLimit", "selectorMechanism", "serviceDiscoveryRole",
                  "nativeHistogramBucketLimit", "nativeHistogramMinBucketFactor",
                  "scrapeClassicHistograms", "convertClassicHistogramsToNHCB"}
    p += [f"unknown field spec.{k}" for k in spec if k not in known_spec]
    if not isinstance(dig(spec, "selector", "matchLabels"), dict):
        p.append("spec.selector.matchLabels is missing")
    endpoints = spec.get("endpoints")
    if not isinstance(endpoints, list) or not endpoints:
        p.append("spec.endpoints is empty")
        endpoints = []
    known_ep = {"port", "targetPort", "path", "scheme", "params", "interval", "scrapeTimeout",
                "honorLabels", "honorTimestamps", "trackTimestampsStaleness", "relabelings",
                "metricRelabelings", "tlsConfig", "bearerTokenSecret", "authorization",
                "basicAuth", "oauth2", "proxyUrl", "followRedirects", "enableHttp2",
                "filterRunning", "noProxy", "proxyFromEnvironment", "proxyConnectHeader"}
    duration = re.compile(r"^(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?"
                          r"(([0-9]+)s)?(([0-9]+)ms)?$")
    for i, ep in enumerate(endpoints):
        if not isinstance(ep, dict):
            p.append(f"endpoints[{i}] is not a mapping")
            continue
        p += [f"unknown field endpoints[{i}].{k}" for k in ep if k not in known_ep]
        if not isinstance(ep.get("port"), str) and "targetPort" not in ep:
            p.append(f"endpoints[{i}] needs port (a Service port name) or targetPort")
        if "path" in ep and not str(ep["path"]).startswith("/"):
            p.append(f"endpoints[{i}].path must start with /")
        if ep.get("scheme", "http") not in ("http", "https"):
            p.append(f"endpoints[{i}].scheme must be http or https")
        for k in ("interval", "scrapeTimeout"):
            if k in ep and not duration.match(str(ep[k])):
                p.append(f"endpoints[{i}].{k} {ep[k]!r} is not a Prometheus duration")
        iv, to = parse_seconds(ep.get("interval", "")), parse_seconds(ep.get("scrapeTimeout", ""))
        if iv is not None and to is not None and to > iv:
            p.append(f"endpoints[{i}].scrapeTimeout exceeds interval")
    rep.check(f"{fname}: ServiceMonitor structure (fields, selector, endpoints, durations)", p)


def check_kustomization(rep: Report, k8s_dir: Path, kust: dict, files: list[Path]) -> None:
    fname = "kustomization.yaml"
    resources = kust.get("resources") or []
    p = [f"resource {r} does not exist" for r in resources if not (k8s_dir / r).is_file()]
    p += [f"resource {r} listed twice" for r in set(resources) if resources.count(r) > 1]
    text = (k8s_dir / fname).read_text()
    for f in files:
        if f.name == fname or f.name in resources:
            continue
        # A manifest left out on purpose is named in a commented-out entry.
        if not re.search(rf"^\s*#\s*-\s*{re.escape(f.name)}\b", text, re.M):
            p.append(f"{f.name} is neither listed in resources nor named in a commented-out entry")
    if kust.get("namespace") != NAMESPACE:
        p.append(f"namespace is {kust.get('namespace')!r}, expected {NAMESPACE!r}")
    rep.check(f"{fname}: resources exist, every manifest listed or excluded on purpose", p)


def kubectl_kustomize(rep: Report, k8s_dir: Path) -> None:
    what = "kubectl kustomize docker/k8s (renders offline)"
    kubectl = shutil.which("kubectl")
    if not kubectl:
        rep.skip(what, "kubectl is not installed")
        return
    try:
        r = subprocess.run([kubectl, "kustomize", str(k8s_dir)], check=False, capture_output=True, text=True,
                           timeout=120)
    except (OSError, subprocess.TimeoutExpired) as e:
        rep.fail(what, str(e))
        return
    if r.returncode != 0:
        rep.fail(what, r.stderr.strip() or f"exit {r.returncode}")
        return
    docs = [d for d in yaml.safe_load_all(r.stdout) if d]
    kinds = sorted(d.get("kind", "?") for d in docs)
    rep.ok(f"{what}: {len(docs)} objects ({', '.join(kinds)})")


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


def check_k8s(rep: Report, root: Path, versions: list[str]) -> None:
    k8s_dir = root / "docker" / "k8s"
    files = sorted(list(k8s_dir.glob("*.yaml")) + list(k8s_dir.glob("*.yml")))
    if not files:
        rep.fail("docker/k8s", "no manifests found")
        return
    objects: list[tuple[str, dict]] = []
    for f in files:
        try:
            docs = load_yaml_docs(f)
        except (yaml.YAMLError, ValueError) as e:
            rep.fail(f"{f.name}: YAML", str(e).replace("\n", " "))
            continue
        p = []
        if not docs:
            p.append("no documents")
        for d in docs:
            if not d.get("apiVersion") or not d.get("kind") or (
                    d.get("kind") != "Kustomization" and not dig(d, "metadata", "name")):
                p.append("a document lacks apiVersion, kind or metadata.name")
        rep.check(f"{f.name}: YAML, {len(docs)} document(s) with apiVersion, kind, name", p)
        objects += [(f.name, d) for d in docs]

    check_schemas(rep, objects, versions)

    by_kind: dict[str, list[tuple[str, dict]]] = {}
    for fname, o in objects:
        by_kind.setdefault(o["kind"], []).append((fname, o))

    # Namespaces.
    p = []
    for fname, o in objects:
        if o["kind"] in ("Namespace", "Kustomization"):
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
        rep.check(f"{fname}: Job/{dig(j, 'metadata', 'name')} runs `retentiond migrate` as the admin URL", p)

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
        rep.check(f"{fname}: ServiceMonitor/{dig(sm, 'metadata', 'name')} selects the Service "
                  "and its metrics port", p)

    for _, k in by_kind.get("Kustomization", []):
        check_kustomization(rep, k8s_dir, k, files)
    kubectl_kustomize(rep, k8s_dir)


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
    a = ap.parse_args()
    rep = Report()
    print(f"kubernetes-validate {KV_VERSION}; Kubernetes schemas {', '.join(a.kubernetes_version)}; "
          f"PyYAML {yaml.__version__}")
    root = a.root.resolve()
    hadolint = a.hadolint if a.hadolint and os.access(a.hadolint, os.X_OK) else None
    for section, fn in (("Kubernetes manifests (docker/k8s)", lambda: check_k8s(rep, root, a.kubernetes_version)),
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
