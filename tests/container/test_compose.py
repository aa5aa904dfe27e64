"""compose.yaml, as Docker Compose reads it (``docker-compose config``): the set-ups of docs/deploy.md with
their volumes and healthchecks, the app's data in one volume that the engine only reads."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def compose() -> dict:
    exe = shutil.which("docker-compose")
    if exe is None:
        pytest.skip("docker-compose is not installed (Debian: apt-get install docker-compose)")
    out = subprocess.run([exe, "-f", str(ROOT / "compose.yaml"), "config"], capture_output=True, text=True,
                         timeout=60, env={"PATH": "/usr/bin:/bin", "ENGINE_KEY": "test-key"})
    assert out.returncode == 0, out.stderr
    return yaml.safe_load(out.stdout)


def test_each_setup_is_a_profile(compose):
    profiles = {name: tuple(s.get("profiles", ())) for name, s in compose["services"].items()}
    assert profiles == {"app": ("one-box",), "app-cpu": ("cpu",), "app-remote": ("vllm",), "vllm": ("vllm",)}


def test_apps_keep_everything_in_the_data_volume_and_have_a_healthcheck(compose):
    assert "tuneloop-data" in compose["volumes"]
    for name in ("app", "app-cpu", "app-remote"):
        service = compose["services"][name]
        assert "tuneloop-data:/data:rw" in service["volumes"] or "tuneloop-data:/data" in service["volumes"], name
        assert "/healthz" in " ".join(service["healthcheck"]["test"]), name
        assert service["ports"][0]["target"] == 7860


def test_gpu_where_the_setup_needs_one_and_cpu_image_without(compose):
    services = compose["services"]
    for name in ("app", "app-remote", "vllm"):
        devices = services[name]["deploy"]["resources"]["reservations"]["devices"]
        assert devices[0]["capabilities"] == ["gpu"], name
    assert "deploy" not in services["app-cpu"] and services["app-cpu"]["build"]["args"]["TORCH"] == "cpu"


def test_vllm_setup_shares_adapters_read_only_and_its_key(compose):
    app, engine = compose["services"]["app-remote"], compose["services"]["vllm"]
    env = app["environment"]
    assert env["TUNELOOP_BACKEND"] == "remote" and env["TUNELOOP_REMOTE_URL"] == "http://vllm:8000/v1"
    assert env["TUNELOOP_REMOTE_ADAPTER_DIR"] == "/data/adapters"
    assert "tuneloop-data:/data:ro" in engine["volumes"]  # the engine never writes the app's data
    assert env["TUNELOOP_REMOTE_API_KEY"] == engine["environment"]["VLLM_API_KEY"] == "test-key"
    assert engine["environment"]["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] == "True"
    assert "--enable-lora" in engine["command"] and "ports" not in engine  # private to the project network
    assert app["depends_on"]["vllm"]["condition"] == "service_healthy"
    assert "/health" in " ".join(engine["healthcheck"]["test"])
