"""Publishing an adapter: complete or invisible under its final name, never overwritten."""

from __future__ import annotations

import json

import pytest

from retrain import artifacts
from retrain.artifacts import AdapterExists, NotAnAdapter, publish_adapter, read_manifest

CARD = {"parent": "v1", "base_model": "tuneloop-demo", "snapshot_id": "snap-1", "snapshot_hash": "ab" * 32,
        "run_id": "run-1", "hyperparameters": {"lora_r": 16}, "gate": {"reference_ppl_rise": 0.01}}


@pytest.fixture
def trained(tmp_path):
    src = tmp_path / "run" / "adapter"
    src.mkdir(parents=True)
    (src / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 16}))
    (src / "adapter_model.safetensors").write_bytes(b"\0" * 128)
    (src / "chat_template.jinja").write_text("{{ messages }}")
    return src


def test_publish_writes_manifest_and_keeps_source(trained, tmp_path):
    adapters = tmp_path / "adapters"
    path = publish_adapter(trained, adapters, "v2", CARD)
    assert path == adapters / "v2"
    assert sorted(p.name for p in adapters.iterdir()) == ["v2"]  # no .tmp- leftovers
    manifest = read_manifest(path)
    assert manifest["name"] == "v2" and manifest["parent"] == "v1" and manifest["snapshot_hash"] == "ab" * 32
    assert manifest["hyperparameters"] == {"lora_r": 16} and manifest["gate"] == {"reference_ppl_rise": 0.01}
    assert len(manifest["chat_template_hash"]) == 64
    assert (path / "adapter_model.safetensors").read_bytes() == b"\0" * 128
    assert (trained / "adapter_config.json").exists()


def test_refuses_to_overwrite(trained, tmp_path):
    adapters = tmp_path / "adapters"
    publish_adapter(trained, adapters, "v2", CARD)
    before = (adapters / "v2" / "tuneloop.json").read_text()
    with pytest.raises(AdapterExists):
        publish_adapter(trained, adapters, "v2", {**CARD, "parent": "other"})
    assert (adapters / "v2" / "tuneloop.json").read_text() == before


def test_crash_before_manifest_leaves_nothing_under_final_name(trained, tmp_path, monkeypatch):
    def boom(path, data):
        raise OSError("disk full")

    monkeypatch.setattr(artifacts, "_write_json_atomic", boom)
    with pytest.raises(OSError, match="disk full"):
        publish_adapter(trained, tmp_path / "adapters", "v3", CARD)
    assert list((tmp_path / "adapters").iterdir()) == []


def test_stale_tmp_from_earlier_crash_is_replaced(trained, tmp_path):
    adapters = tmp_path / "adapters"
    (adapters / ".tmp-v4").mkdir(parents=True)
    (adapters / ".tmp-v4" / "junk").write_text("x")
    path = publish_adapter(trained, adapters, "v4", CARD)
    assert not (path / "junk").exists() and not (adapters / ".tmp-v4").exists()


@pytest.mark.parametrize("name", ["", ".hidden", "a/b", "production"])
def test_bad_names(trained, tmp_path, name):
    with pytest.raises(ValueError):
        publish_adapter(trained, tmp_path / "adapters", name, CARD)


def test_not_an_adapter(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(NotAnAdapter):
        publish_adapter(tmp_path / "empty", tmp_path / "adapters", "v5", CARD)
    assert read_manifest(tmp_path / "empty") is None
