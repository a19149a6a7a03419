"""The gateway configurations of the examples: each gateway.toml, as written and as the
rendered ConfigMap carries it, passes `vision-gateway check-config`, and says what the
examples promise (Scaleway, SCW_SECRET_KEY, pixtral-12b-2409, listen left to the image)."""

from __future__ import annotations

import tomllib
from pathlib import Path

from deploy_support import KUBERNETES, Rendered, check_config
from test_dockerfile import baked_config_source


def test_example_config_passes_check_config(example: str, gateway_bin: Path):
    proc = check_config(gateway_bin, KUBERNETES / example / "gateway.toml")
    assert proc.returncode == 0, proc.stderr


def test_rendered_configmap_passes_check_config(rendered: Rendered, gateway_bin, tmp_path):
    """The TOML the pod actually mounts, with the listen address the pod actually sets."""
    path = tmp_path / "config.toml"
    path.write_text(rendered.gateway_toml_text())
    listen = rendered.gateway_env()["VISION_GATEWAY_LISTEN"]["value"]
    proc = check_config(gateway_bin, path, {"VISION_GATEWAY_LISTEN": listen})
    assert proc.returncode == 0, proc.stderr


def test_config_baked_into_the_image_passes_check_config(gateway_bin: Path):
    proc = check_config(gateway_bin, baked_config_source())
    assert proc.returncode == 0, proc.stderr


def test_check_config_can_fail(gateway_bin: Path, tmp_path):
    """A misspelt key is refused and named, so a passing check means something."""
    text = (KUBERNETES / "standalone" / "gateway.toml").read_text()
    bad = tmp_path / "bad.toml"
    bad.write_text(text.replace("shutdown_grace_secs", "shutdown_grace_seconds"))
    proc = check_config(gateway_bin, bad)
    assert proc.returncode != 0 and "shutdown_grace_seconds" in proc.stderr, proc.stderr


def test_example_config_says_what_the_examples_promise(example: str):
    cfg = tomllib.loads((KUBERNETES / example / "gateway.toml").read_text())
    server = cfg.get("server", {})
    assert "listen" not in server, "listen is left to VISION_GATEWAY_LISTEN"
    assert "shutdown_grace_secs" in server, "state the drain time the manifests are sized for"
    (upstream,) = cfg["upstreams"]
    assert upstream["base_url"] == "https://api.scaleway.ai/v1"
    assert upstream["api_key_env"] == "SCW_SECRET_KEY"
    assert [m["id"] for m in cfg["models"]] == ["pixtral-12b-2409"]
    assert all(m["upstream"] == upstream["name"] for m in cfg["models"])

