"""pytest hooks and fixtures for the deploy/ tests (helpers: deploy_support.py)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from deploy_support import EXAMPLES, KUBECTLS, REPO, Rendered, rendered_for

NO_KUBECTL = (
    "no kubectl: install one with tests/deploy/install.sh (Debian's kubernetes-client) "
    "or point KUBECTL at a kubectl binary"
)


def pytest_report_header(config):
    lines = [f"deploy tests: repo {REPO}"]
    if KUBECTLS:
        lines += [f"  kubectl {k.version}: {k.path}" for k in KUBECTLS]
    else:
        lines.append(f"  {NO_KUBECTL}")
    return lines


def pytest_generate_tests(metafunc):
    """Parametrizes the manifest fixtures over every kubectl found:
    `rendered` over (example, kubectl) pairs, `sidecar` and `standalone` over kubectls, and
    `rendered_pair` over (example, kubectl, other kubectl) when there are two or more.
    `example` alone goes over the examples."""
    if "rendered" in metafunc.fixturenames:
        params = [(ex, k) for ex in EXAMPLES for k in KUBECTLS] or [(ex, None) for ex in EXAMPLES]
        ids = [f"{ex}-{k.id if k else 'no-kubectl'}" for ex, k in params]
        metafunc.parametrize("rendered", params, ids=ids, indirect=True)
    for name in ("sidecar", "standalone"):
        if name in metafunc.fixturenames:
            params = [(name, k) for k in KUBECTLS] or [(name, None)]
            ids = [k.id if k else "no-kubectl" for _, k in params]
            metafunc.parametrize(name, params, ids=ids, indirect=True)
    if "rendered_pair" in metafunc.fixturenames:
        params = [
            pytest.param((ex, a, b), id=f"{ex}-{a.id}-vs-{b.id}")
            for ex in EXAMPLES
            for i, a in enumerate(KUBECTLS)
            for b in KUBECTLS[i + 1 :]
        ]
        if not params:
            found = ", ".join(k.version for k in KUBECTLS) or "none"
            reason = f"one kubectl found ({found}): set KUBECTL to a second one to compare"
            params = [pytest.param(None, id="one-kubectl", marks=pytest.mark.skip(reason=reason))]
        metafunc.parametrize("rendered_pair", params, indirect=True)
    if "example" in metafunc.fixturenames:
        metafunc.parametrize("example", EXAMPLES)


def _rendered(request) -> Rendered:
    example, kubectl = request.param
    if kubectl is None:
        pytest.fail(NO_KUBECTL)
    return rendered_for(kubectl, example)


@pytest.fixture
def sidecar(request) -> Rendered:
    return _rendered(request)


@pytest.fixture
def standalone(request) -> Rendered:
    return _rendered(request)


@pytest.fixture
def rendered_pair(request) -> tuple[Rendered, Rendered]:
    example, a, b = request.param
    return rendered_for(a, example), rendered_for(b, example)


@pytest.fixture
def rendered(request) -> Rendered:
    return _rendered(request)


@pytest.fixture(scope="session")
def gateway_bin() -> Path:
    path = Path(os.environ.get("VISION_GATEWAY_BIN", REPO / "target/debug/vision-gateway"))
    if not path.is_absolute():
        path = REPO / path
    if not path.exists():
        pytest.fail(
            f"gateway binary {path} not found: run `cargo build --locked --bin vision-gateway` "
            "or set VISION_GATEWAY_BIN"
        )
    return path


