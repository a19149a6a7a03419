"""deploy/Dockerfile: hadolint-clean at its default settings, and the image facts the
manifests and deploy/README.md rely on. (No Docker engine is needed: nothing is built.)"""

from __future__ import annotations

import os
import re
import shlex
from pathlib import Path

import pytest

from deploy_support import DEPLOY, REPO, Rendered, run, venv_tool

DOCKERFILE = DEPLOY / "Dockerfile"
# BuildKit reads <Dockerfile>.dockerignore next to the Dockerfile instead of the context
# root's .dockerignore.
DOCKERIGNORE = DEPLOY / "Dockerfile.dockerignore"


def hadolint(path: Path, tmp_path: Path) -> tuple[int, str]:
    """hadolint at its default settings: no config file (it reads one from the working
    directory and the home directory, so both are an empty temporary directory), no
    HADOLINT_* environment."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("HADOLINT_")}
    env.update(HOME=str(tmp_path), XDG_CONFIG_HOME=str(tmp_path))
    proc = run([venv_tool("hadolint", "HADOLINT"), str(path)], cwd=tmp_path, env=env)
    return proc.returncode, (proc.stdout + proc.stderr).strip()


def test_hadolint_passes_with_no_findings(tmp_path):
    rc, out = hadolint(DOCKERFILE, tmp_path)
    assert rc == 0 and out == "", out


def test_hadolint_can_fail(tmp_path):
    bad = tmp_path / "Dockerfile.bad"
    bad.write_text("FROM debian:latest\nRUN apt-get update && apt-get install -y curl\n")
    rc, out = hadolint(bad, tmp_path)
    assert rc != 0 and "DL3007" in out, out


def test_inline_hadolint_ignores_say_why():
    for line in DOCKERFILE.read_text().splitlines():
        m = re.match(r"\s*#\s*hadolint\s+ignore=(\S+)(.*)", line)
        if m:
            assert m.group(2).strip(), f"an ignore needs a reason on the same line: {line}"


# ---------------------------------------------------------------------------------------
# A small Dockerfile reader: instructions with their arguments, stage by stage.
# ---------------------------------------------------------------------------------------


def instructions(text: str) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    buf = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not buf and (not line or line.startswith("#")):
            continue
        if buf and line.startswith("#"):
            continue  # comment inside a continued instruction
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        buf += line
        op, _, args = buf.partition(" ")
        out.append((op.upper(), args.strip()))
        buf = ""
    return out


def stages(text: str) -> list[list[tuple[str, str]]]:
    result: list[list[tuple[str, str]]] = []
    for op, args in instructions(text):
        if op == "FROM":
            result.append([])
        if result:
            result[-1].append((op, args))
    return result


def env_of(stage: list[tuple[str, str]]) -> dict[str, str]:
    env: dict[str, str] = {}
    for op, args in stage:
        if op == "ENV":
            for word in shlex.split(args):
                key, _, value = word.partition("=")
                env[key] = value
    return env


STAGES = stages(DOCKERFILE.read_text())
BUILD, RUNTIME = STAGES[0], STAGES[-1]


def test_builder_is_rust_bookworm_building_release_locked():
    assert BUILD[0] == ("FROM", "rust:1-bookworm AS builder")
    runs = [args for op, args in BUILD if op == "RUN"]
    assert any("cargo build --release --locked" in r for r in runs), runs


def test_runtime_is_distroless_cc_nonroot():
    image = RUNTIME[0][1].split()[0]
    assert re.fullmatch(r"gcr\.io/distroless/cc-debian12:nonroot(@sha256:[0-9a-f]{64})?", image)
    assert len(STAGES) == 2


def test_runtime_runs_as_numeric_non_root_user():
    users = [args for op, args in RUNTIME if op == "USER"]
    assert users and users[-1] == "65532:65532", users


def test_runtime_environment_exposes_and_entrypoint():
    env = env_of(RUNTIME)
    assert env.get("VISION_GATEWAY_CONFIG") == "/etc/vision-gateway/config.toml"
    assert env.get("VISION_GATEWAY_LISTEN") == "0.0.0.0:8080"
    assert [args for op, args in RUNTIME if op == "EXPOSE"] == ["8080"]
    assert not any(op == "HEALTHCHECK" for op, _ in RUNTIME + BUILD), "probes do health checks"
    (entry,) = [args for op, args in RUNTIME if op == "ENTRYPOINT"]
    assert entry == '["/usr/local/bin/vision-gateway"]'  # exec form: the gateway is PID 1
    copies = [args.split() for op, args in RUNTIME if op == "COPY"]
    assert ["--from=builder", "/out/vision-gateway", "/usr/local/bin/vision-gateway"] in copies


def baked_config_source() -> Path:
    """The repository file the image ships at VISION_GATEWAY_CONFIG."""
    target = env_of(RUNTIME)["VISION_GATEWAY_CONFIG"]
    for op, args in RUNTIME:
        words = args.split()
        if op == "COPY" and not words[0].startswith("--") and words[-1] == target:
            return REPO / words[0]
    raise AssertionError(f"the image ships no file at {target}")


def test_baked_config_exists():
    assert baked_config_source().is_file()


def test_manifests_use_the_image_paths(rendered: Rendered):
    env = rendered.gateway_env()
    image_env = env_of(RUNTIME)
    for key in ("VISION_GATEWAY_CONFIG", "VISION_GATEWAY_LISTEN"):
        assert env[key]["value"] == image_env[key], key
    gw, _ = rendered.gateway()
    mounts = {m["mountPath"]: m for m in gw["volumeMounts"]}
    config_dir = image_env["VISION_GATEWAY_CONFIG"].rsplit("/", 1)[0]
    assert mounts[config_dir].get("readOnly") is True


# ---------------------------------------------------------------------------------------
# Build context: every COPY source exists and passes Dockerfile.dockerignore.
# ---------------------------------------------------------------------------------------


def _pattern_regex(pattern: str) -> re.Pattern[str]:
    out = ""
    i = 0
    while i < len(pattern):
        ch = pattern[i]
        if pattern.startswith("**", i):
            out += ".*"
            i += 2
            continue
        out += {"*": "[^/]*", "?": "[^/]"}.get(ch, re.escape(ch))
        i += 1
    return re.compile(out)


def ignored(path: str, patterns: list[str]) -> bool:
    """Docker's rule: the last pattern matching the path or one of its parents wins."""
    parts = path.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    result = False
    for raw in patterns:
        negate = raw.startswith("!")
        pat = os.path.normpath(raw[1:] if negate else raw).lstrip("/")
        rx = _pattern_regex(pat)
        if any(rx.fullmatch(p) for p in prefixes):
            result = not negate
    return result


def dockerignore_patterns() -> list[str]:
    lines = DOCKERIGNORE.read_text().splitlines()
    return [ln.strip() for ln in lines if ln.strip() and not ln.strip().startswith("#")]


def copy_sources() -> list[str]:
    sources = []
    for stage in STAGES:
        for op, args in stage:
            words = args.split()
            if op in ("COPY", "ADD") and not any(w.startswith("--from") for w in words):
                sources += [w for w in words[:-1] if not w.startswith("--")]
    return sources


def test_copy_sources_exist_and_are_in_the_build_context():
    patterns = dockerignore_patterns()
    sources = copy_sources()
    assert sources
    for src in sources:
        path = REPO / src
        assert path.exists(), f"COPY {src}: no such file in the repository"
        files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
        for f in files:
            rel = f.relative_to(REPO).as_posix()
            assert not ignored(rel, patterns), f"{rel} is copied but Dockerfile.dockerignore drops it"


@pytest.mark.parametrize(
    "path", ["target/release/vision-gateway", ".venv/bin/python", ".git/HEAD", "README.md"]
)
def test_build_context_leaves_out_the_rest(path: str):
    assert ignored(path, dockerignore_patterns())


def test_copies_every_file_cargo_needs():
    """Cargo refuses a manifest whose declared targets are missing, even those that
    `cargo build` does not compile (tests, benches): the image must copy them all."""
    import tomllib

    manifest = tomllib.loads((REPO / "Cargo.toml").read_text())
    needed = {"Cargo.toml", "Cargo.lock"}
    needed.add(manifest.get("lib", {}).get("path", "src/lib.rs"))
    for section, default_dir in (("bin", "src/bin"), ("test", "tests"), ("bench", "benches"),
                                 ("example", "examples")):
        for target in manifest.get(section, []):
            needed.add(target.get("path", f"{default_dir}/{target['name']}.rs"))
    if (REPO / "build.rs").exists():
        needed.add("build.rs")
    # Patched dependencies ([patch.crates-io] hyper = { path = "vendor/hyper" }).
    for patches in manifest.get("patch", {}).values():
        needed.update(dep["path"] for dep in patches.values() if "path" in dep)
    sources = [s.rstrip("/") for s in copy_sources()]
    for path in sorted(needed):
        assert (REPO / path).exists(), f"Cargo.toml names {path}, which does not exist"
        assert any(path == s or path.startswith(s + "/") for s in sources), (
            f"deploy/Dockerfile does not COPY {path}, which Cargo.toml needs"
        )
