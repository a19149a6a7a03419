"""The kustomizations in deploy/kubernetes: they render with every kubectl found (Debian's
1.20 included), the output validates offline against Kubernetes 1.29 and the newest schema
kubernetes-validate bundles, and the rendered objects keep the promises deploy/README.md
makes (drain timings, probes, hardening, metrics, the native sidecar)."""

from __future__ import annotations

import importlib.resources
import re
import sys
from pathlib import Path

import pytest
import yaml

from deploy_support import EXAMPLES, KUBERNETES, Rendered, run

# ---------------------------------------------------------------------------------------
# Offline schema validation
# ---------------------------------------------------------------------------------------

OLDEST_VERSION = "1.29.0"  # native sidecars (restartPolicy: Always) are on by default here


def bundled_versions() -> list[str]:
    """Kubernetes versions whose strict schemas the installed kubernetes-validate ships."""
    root = importlib.resources.files("kubernetes_validate") / "kubernetes-json-schema"
    versions = []
    for entry in root.iterdir():
        m = re.fullmatch(r"v(\d+\.\d+\.\d+)-local-strict", entry.name)
        if m:
            versions.append(m.group(1))
    return sorted(versions, key=lambda v: tuple(int(x) for x in v.split(".")))


def newest_version() -> str:
    versions = bundled_versions()
    assert versions, "kubernetes-validate ships no strict schemas"
    return versions[-1]


def validate(text: str, version: str, tmp_path: Path) -> list[str]:
    """Validates every document with `kubernetes-validate --strict`; returns the problems.
    A kind without a schema is a problem too (the tool only warns about it)."""
    docs = [d for d in yaml.safe_load_all(text) if d]
    path = tmp_path / f"rendered-{version}.yaml"
    path.write_text(text)
    proc = run(
        [sys.executable, "-m", "kubernetes_validate", "--strict", "-k", version, str(path)]
    )
    out = proc.stdout + proc.stderr
    problems = [line for line in out.splitlines() if not line.startswith("INFO ")]
    passed = [line for line in out.splitlines() if line.startswith("INFO ") and " passed " in line]
    if proc.returncode != 0:
        problems.insert(0, f"kubernetes-validate exited {proc.returncode}")
    if len(passed) != len(docs):
        problems.append(f"{len(passed)} of {len(docs)} documents reported as passed")
    return problems


@pytest.mark.parametrize("version", [OLDEST_VERSION, "newest"])
def test_rendered_output_validates_strictly(rendered: Rendered, version: str, tmp_path):
    version = newest_version() if version == "newest" else version
    assert OLDEST_VERSION in bundled_versions(), f"no {OLDEST_VERSION} schemas bundled"
    problems = validate(rendered.text, version, tmp_path)
    assert not problems, f"{rendered.example} ({rendered.kubectl.id}) against {version}:\n" + (
        "\n".join(problems)
    )


def test_validation_can_fail(tmp_path):
    """The validator is strict: an unknown field and a kind with no schema are both caught."""
    bad_field = """
apiVersion: apps/v1
kind: Deployment
metadata: {name: x}
spec:
  selector: {matchLabels: {a: b}}
  template:
    metadata: {labels: {a: b}}
    spec:
      containers:
        - name: x
          image: x
          lifecycle: {preStop: {sleep: {seconds: 5}, sleepy: true}}
"""
    assert validate(bad_field, OLDEST_VERSION, tmp_path)
    no_schema = "apiVersion: monitoring.coreos.com/v1\nkind: PodMonitor\nmetadata: {name: x}\n"
    assert validate(no_schema, newest_version(), tmp_path)


# ---------------------------------------------------------------------------------------
# Rendering: old kustomize syntax, same result with every kubectl
# ---------------------------------------------------------------------------------------

# Kustomization fields that kubectl 1.20's built-in kustomize (v2.0.3) understands.
OLD_KUSTOMIZE_FIELDS = {
    "apiVersion",
    "kind",
    "resources",
    "bases",
    "namespace",
    "namePrefix",
    "commonLabels",
    "commonAnnotations",
    "configMapGenerator",
    "secretGenerator",
    "generatorOptions",
    "images",
    "patchesStrategicMerge",
    "patchesJson6902",
    "vars",
}
OLD_GENERATOR_FIELDS = {"name", "behavior", "files", "literals", "env", "envs", "type"}


def kustomization(example: str) -> dict:
    return yaml.safe_load((KUBERNETES / example / "kustomization.yaml").read_text())


def test_kustomization_uses_syntax_kubectl_1_20_knows(example: str):
    k = kustomization(example)
    assert set(k) <= OLD_KUSTOMIZE_FIELDS, f"fields too new: {set(k) - OLD_KUSTOMIZE_FIELDS}"
    for field in ("configMapGenerator", "secretGenerator"):
        for gen in k.get(field) or []:
            assert set(gen) <= OLD_GENERATOR_FIELDS, f"{field} {gen['name']}: {set(gen)}"
    for res in k.get("resources") or []:
        assert (KUBERNETES / example / res).is_file(), f"resources lists missing {res}"


def test_every_kustomization_is_tested():
    dirs = sorted(p.parent.name for p in KUBERNETES.glob("*/kustomization.yaml"))
    assert dirs == sorted(EXAMPLES)


def _strip_generated_hashes(r: Rendered) -> list[dict]:
    """The rendered documents with generated names' hash suffixes removed (they differ
    between kustomize versions), sorted by kind and name."""
    text = r.text
    for d in r.docs:
        if d["kind"] in ("ConfigMap", "Secret"):
            name = d["metadata"]["name"]
            m = re.fullmatch(r"(.+)-[a-z0-9]{10}", name)
            assert m, f"{r.example}: generated {d['kind']} {name} has no content hash suffix"
            text = re.sub(rf"\b{re.escape(name)}\b", m.group(1), text)
    docs = [d for d in yaml.safe_load_all(text) if d]
    return sorted(docs, key=lambda d: (d["kind"], d["metadata"]["name"]))


def test_kubectl_versions_render_the_same_objects(rendered_pair):
    a, b = rendered_pair
    assert _strip_generated_hashes(a) == _strip_generated_hashes(b), (
        f"{a.example}: {a.kubectl.id} and {b.kubectl.id} render different objects"
    )


def test_generated_config_and_secret_are_referenced_by_their_hashed_names(rendered: Rendered):
    """Every ConfigMap and Secret the pod uses exists in the output (so kustomize rewrote the
    reference to the hashed name: a config change rolls the pods), with the keys it uses."""
    spec = rendered.pod_spec
    refs: list[tuple[str, str, str | None]] = []  # (kind, name, key)
    for v in spec.get("volumes") or []:
        if "configMap" in v:
            refs.append(("ConfigMap", v["configMap"]["name"], None))
        if "secret" in v:
            refs.append(("Secret", v["secret"]["secretName"], None))
    for c in rendered.all_containers():
        for e in c.get("env") or []:
            src = e.get("valueFrom") or {}
            if "configMapKeyRef" in src:
                refs.append(("ConfigMap", src["configMapKeyRef"]["name"], src["configMapKeyRef"]["key"]))
            if "secretKeyRef" in src:
                refs.append(("Secret", src["secretKeyRef"]["name"], src["secretKeyRef"]["key"]))
        for e in c.get("envFrom") or []:
            if "configMapRef" in e:
                refs.append(("ConfigMap", e["configMapRef"]["name"], None))
            if "secretRef" in e:
                refs.append(("Secret", e["secretRef"]["name"], None))
    assert any(kind == "ConfigMap" for kind, _, _ in refs), "the gateway config is not mounted"
    assert any(kind == "Secret" for kind, _, _ in refs), "the upstream key is not used"
    for kind, name, key in refs:
        obj = rendered.named(kind, name)
        if key is not None:
            assert key in (obj.get("data") or {}), f"{kind} {name} has no key {key}"


def test_upstream_key_variables_are_set_from_the_secret(rendered: Rendered):
    env = rendered.gateway_env()
    for upstream in rendered.gateway_toml()["upstreams"]:
        var = upstream.get("api_key_env")
        if var:
            assert var in env, f"api_key_env {var} is not set in the gateway container"
            assert "secretKeyRef" in env[var].get("valueFrom", {}), f"{var} must come from a Secret"


def test_gateway_image_is_set_by_the_images_transformer(rendered: Rendered):
    gw, _ = rendered.gateway()
    wanted = {i["name"]: i for i in kustomization(rendered.example)["images"]}["vision-gateway"]
    assert gw["image"] == f"{wanted['newName']}:{wanted['newTag']}"


# ---------------------------------------------------------------------------------------
# Drain timing and probes
# ---------------------------------------------------------------------------------------

MIN_MARGIN_SECS = 5


def test_termination_grace_covers_prestop_and_drain(rendered: Rendered):
    gw, _ = rendered.gateway()
    pre_stop = gw["lifecycle"]["preStop"]
    # The image has no shell: `exec` (sleep, sh) cannot work there.
    assert set(pre_stop) == {"sleep"}, f"preStop must be the sleep action, not {set(pre_stop)}"
    sleep = pre_stop["sleep"]["seconds"]
    assert sleep > 0
    grace = rendered.gateway_toml().get("server", {}).get("shutdown_grace_secs", 30)
    tgps = rendered.pod_spec["terminationGracePeriodSeconds"]
    assert tgps >= sleep + grace + MIN_MARGIN_SECS, (
        f"{rendered.example}: terminationGracePeriodSeconds {tgps} < preStop sleep {sleep} "
        f"+ shutdown_grace_secs {grace} + margin {MIN_MARGIN_SECS}"
    )


def _probe_port_matches(probe: dict, port: dict) -> None:
    http = probe["httpGet"]
    assert http.get("scheme", "HTTP") == "HTTP"
    assert http["port"] in (port["containerPort"], port.get("name")), (
        f"probe port {http['port']} is not the gateway port {port}"
    )


def test_probes_hit_healthz_and_readyz_on_the_gateway_port(rendered: Rendered):
    gw, _ = rendered.gateway()
    port = rendered.gateway_port()
    expected = {"startupProbe": "/healthz", "livenessProbe": "/healthz", "readinessProbe": "/readyz"}
    for name, path in expected.items():
        assert name in gw, f"{rendered.example}: the gateway has no {name}"
        assert gw[name]["httpGet"]["path"] == path, f"{name} must GET {path}"
        _probe_port_matches(gw[name], port)
    startup = gw["startupProbe"]
    budget = startup.get("periodSeconds", 10) * startup.get("failureThreshold", 3)
    assert budget >= 10, "the startup probe gives the gateway under 10 s to start"


# ---------------------------------------------------------------------------------------
# Hardening and resources
# ---------------------------------------------------------------------------------------


def test_every_container_is_hardened(rendered: Rendered):
    pod_sc = rendered.pod_spec.get("securityContext") or {}
    for c in rendered.all_containers():
        sc = c.get("securityContext") or {}
        eff = lambda key: sc.get(key, pod_sc.get(key))  # noqa: E731 - container wins over pod
        where = f"{rendered.example}/{c['name']}"
        assert eff("runAsNonRoot") is True, where
        assert eff("runAsUser") == 65532, where
        assert eff("runAsGroup") == 65532, where
        assert (eff("seccompProfile") or {}).get("type") == "RuntimeDefault", where
        assert sc.get("readOnlyRootFilesystem") is True, where
        assert sc.get("allowPrivilegeEscalation") is False, where
        assert sc.get("privileged") in (None, False), where
        caps = sc.get("capabilities") or {}
        assert caps.get("drop") == ["ALL"], where
        assert not caps.get("add"), where


def test_no_service_account_token(rendered: Rendered):
    assert rendered.pod_spec.get("automountServiceAccountToken") is False


def quantity(q: str | int) -> float:
    """A Kubernetes quantity as a number (cores or bytes)."""
    m = re.fullmatch(r"([0-9.]+)([a-zA-Z]*)", str(q))
    assert m, f"bad quantity {q}"
    factors = {"": 1, "m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30}
    return float(m.group(1)) * factors[m.group(2)]


def test_every_container_has_requests_and_limits(rendered: Rendered):
    for c in rendered.all_containers():
        res = c.get("resources") or {}
        for kind in ("cpu", "memory"):
            req, lim = res.get("requests", {}).get(kind), res.get("limits", {}).get(kind)
            assert req and lim, f"{c['name']}: {kind} request and limit are required"
            assert quantity(req) <= quantity(lim), f"{c['name']}: {kind} request above limit"


def test_gateway_memory_limit_fits_streams_and_bodies(rendered: Rendered):
    """About 50 MB holds 1,000 open streams; a request body being read is held whole (up to
    server.max_body_bytes). The limit must fit both, with two maximum-size bodies at once."""
    gw, _ = rendered.gateway()
    max_body = rendered.gateway_toml().get("server", {}).get("max_body_bytes", 32 * 2**20)
    limit = quantity(gw["resources"]["limits"]["memory"])
    assert limit >= 50 * 2**20 + 2 * max_body, f"memory limit {limit / 2**20:.0f} MiB is too low"
    assert quantity(gw["resources"]["requests"]["memory"]) >= 16 * 2**20


# ---------------------------------------------------------------------------------------
# Metrics
# ---------------------------------------------------------------------------------------


def metrics_port(r: Rendered) -> int:
    server = r.gateway_toml().get("server", {})
    assert server.get("metrics", True), "metrics are turned off in the gateway config"
    if server.get("metrics_listen"):
        return int(server["metrics_listen"].rsplit(":", 1)[1])
    return r.gateway_port()["containerPort"]


def test_scrape_annotations_match_the_metrics_port(rendered: Rendered):
    ann = rendered.pod_metadata.get("annotations") or {}
    assert ann.get("prometheus.io/scrape") == "true"
    assert ann.get("prometheus.io/path") == "/metrics"
    port = metrics_port(rendered)
    assert ann.get("prometheus.io/port") == str(port)
    gw, _ = rendered.gateway()
    assert port in [p["containerPort"] for p in gw["ports"]], "the metrics port is not declared"


def test_podmonitor_example_matches_but_is_not_rendered(rendered: Rendered):
    path = KUBERNETES / rendered.example / "podmonitor.yaml"
    assert "podmonitor.yaml" not in (kustomization(rendered.example).get("resources") or [])
    assert not rendered.of_kind("PodMonitor")
    pm = yaml.safe_load(path.read_text())
    assert pm["apiVersion"] == "monitoring.coreos.com/v1" and pm["kind"] == "PodMonitor"
    selector = pm["spec"]["selector"]["matchLabels"]
    labels = rendered.pod_metadata["labels"]
    assert selector.items() <= labels.items(), "the PodMonitor selects no gateway pod"
    (endpoint,) = pm["spec"]["podMetricsEndpoints"]
    assert endpoint["path"] == "/metrics"
    port = rendered.gateway_port()
    assert metrics_port(rendered) == port["containerPort"]
    assert endpoint["port"] == port["name"]


# ---------------------------------------------------------------------------------------
# The two shapes
# ---------------------------------------------------------------------------------------


def test_sidecar_is_a_native_sidecar(sidecar: Rendered):
    gw, where = sidecar.gateway()
    assert where == "initContainers", "the gateway must be an init container"
    assert gw.get("restartPolicy") == "Always", "restartPolicy: Always makes it a sidecar"
    # Init containers start in order: nothing before the gateway may need it, so it is first.
    assert sidecar.pod_spec["initContainers"][0]["name"] == gw["name"]
    assert "startupProbe" in gw, "the app must start only once the gateway answers"
    port = sidecar.gateway_port()["containerPort"]
    apps = sidecar.pod_spec["containers"]
    assert apps, "the example needs an application container"
    for app in apps:
        env = {e["name"]: e.get("value") for e in app.get("env") or []}
        assert env.get("OPENAI_BASE_URL") == f"http://127.0.0.1:{port}/v1", app["name"]


def test_standalone_serves_through_a_clusterip_service(standalone: Rendered):
    gw, where = standalone.gateway()
    assert where == "containers"
    assert not standalone.pod_spec.get("initContainers")
    labels = standalone.pod_metadata["labels"]
    port = standalone.gateway_port()
    svc = standalone.one("Service")
    assert svc["spec"].get("type", "ClusterIP") == "ClusterIP"
    assert svc["spec"]["selector"].items() <= labels.items()
    (svc_port,) = svc["spec"]["ports"]
    assert svc_port["port"] == 8080
    assert svc_port["targetPort"] in (port["containerPort"], port["name"])
    for pdb in standalone.of_kind("PodDisruptionBudget"):
        assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
        replicas = standalone.deployment["spec"].get("replicas", 1)
        assert pdb["spec"].get("minAvailable", 0) < replicas, "the PDB would block every drain"
