"""Adapter checks refuse broken or foreign adapters by name; leases make unload wait for in-flight use."""

import json
import shutil
import threading
import time

import pytest

from serving.adapters import check_adapter_dir, check_name
from serving.errors import AdapterInUse, AdapterRejected, UnknownAdapter
from serving.types import BASE, PRODUCTION, SamplingParams
from tests.serving.conftest import PROMPT


@pytest.fixture(scope="module")
def foreign_adapter(tmp_path_factory):
    """A LoRA adapter for a differently shaped tiny Llama: same module names, other shapes."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=300, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2)
    model = get_peft_model(LlamaForCausalLM(config), LoraConfig(r=4, target_modules="all-linear"))
    out = tmp_path_factory.mktemp("foreign") / "adapter"
    model.save_pretrained(out)
    return out


@pytest.fixture
def adapters_root(tmp_path, serving_adapters_dir):
    shutil.copytree(serving_adapters_dir / "demo-a", tmp_path / "good")
    return tmp_path


def check(backend, name, path, root):
    return check_adapter_dir(name, path, adapters_dir=root, base_model_name_or_path=backend.model_path,
                             base_modules=backend.adapters._base_modules)


def test_good_adapter_passes(backend, adapters_root):
    assert check(backend, "good", adapters_root / "good", adapters_root)["peft_type"] == "LORA"


def test_truncated_safetensors(backend, adapters_root):
    weights = adapters_root / "good" / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(AdapterRejected, match=r"'good'.*corrupt"):
        check(backend, "good", adapters_root / "good", adapters_root)


def test_garbage_safetensors(backend, adapters_root):
    (adapters_root / "good" / "adapter_model.safetensors").write_bytes(b"\x00" * 64)
    with pytest.raises(AdapterRejected, match=r"'good'.*corrupt"):
        check(backend, "good", adapters_root / "good", adapters_root)


def test_pickle_bin_only_is_refused(backend, adapters_root):
    d = adapters_root / "good"
    (d / "adapter_model.safetensors").rename(d / "adapter_model.bin")
    with pytest.raises(AdapterRejected, match=r"'good'.*adapter_model\.bin"):
        check(backend, "good", d, adapters_root)


def test_missing_config(backend, adapters_root):
    (adapters_root / "good" / "adapter_config.json").unlink()
    with pytest.raises(AdapterRejected, match=r"'good'.*adapter_config\.json is missing"):
        check(backend, "good", adapters_root / "good", adapters_root)


def test_not_lora(backend, adapters_root):
    path = adapters_root / "good" / "adapter_config.json"
    config = json.loads(path.read_text())
    config["peft_type"] = "IA3"
    path.write_text(json.dumps(config))
    with pytest.raises(AdapterRejected, match=r"'good'.*IA3"):
        check(backend, "good", adapters_root / "good", adapters_root)


def test_adapter_for_another_base(backend, adapters_root, foreign_adapter):
    shutil.copytree(foreign_adapter, adapters_root / "foreign")
    with pytest.raises(AdapterRejected, match=r"'foreign'.*does not fit"):
        check(backend, "foreign", adapters_root / "foreign", adapters_root)


def test_unknown_target_module(backend, adapters_root):
    from safetensors.torch import load_file, save_file

    weights = adapters_root / "good" / "adapter_model.safetensors"
    tensors = {k.replace("q_proj", "qkv_fused"): v for k, v in load_file(weights).items()}
    save_file(tensors, weights)
    with pytest.raises(AdapterRejected, match=r"'good'.*qkv_fused.*lacks"):
        check(backend, "good", adapters_root / "good", adapters_root)


def test_outside_adapters_dir(backend, adapters_root, tmp_path_factory):
    outside = tmp_path_factory.mktemp("outside") / "evil"
    shutil.copytree(adapters_root / "good", outside)
    with pytest.raises(AdapterRejected, match=r"'evil'.*outside the adapters directory"):
        check(backend, "evil", outside, adapters_root)
    with pytest.raises(AdapterRejected, match="outside"):
        check(backend, "evil", adapters_root / ".." / outside.parent.name / "evil", adapters_root)


@pytest.mark.parametrize("name", ["../x", "a/b", "/abs", "..", ".hidden", "", "x" * 65, "a b", BASE, PRODUCTION])
def test_bad_names(name):
    with pytest.raises(AdapterRejected):
        check_name(name)


def test_backend_refuses_outside_dir_and_duplicates(backend, tmp_path, serving_adapters_dir):
    shutil.copytree(serving_adapters_dir / "demo-a", tmp_path / "x")
    with pytest.raises(AdapterRejected, match="'x'.*outside"):
        backend.load_adapter("x", tmp_path / "x")
    with pytest.raises(AdapterRejected, match="'demo-a'.*already loaded"):
        backend.load_adapter("demo-a", serving_adapters_dir / "demo-a")
    assert "x" not in backend.adapters.names()


def test_load_all_skips_broken(backend, serving_adapters_dir, caplog):
    broken = serving_adapters_dir / "broken-one"
    shutil.copytree(serving_adapters_dir / "demo-b", broken)
    (broken / "adapter_model.safetensors").write_bytes(b"nope")
    try:
        assert backend.load_all_adapters() == []
        assert "broken-one" in caplog.text
        assert "broken-one" not in backend.adapters.names()
    finally:
        shutil.rmtree(broken)


def test_unknown_adapter_and_alias(backend):
    with pytest.raises(UnknownAdapter):
        backend.stream_chat(PROMPT, "nope", SamplingParams(temperature=0))
    with pytest.raises(UnknownAdapter):
        backend.set_alias(PRODUCTION, "nope")
    with pytest.raises(UnknownAdapter):
        backend.set_alias("staging", BASE)


def test_unload_waits_for_in_flight(backend, serving_adapters_dir, solo_answers, production_at_base):
    path = serving_adapters_dir / "demo-b-copy"
    if not path.exists():
        shutil.copytree(serving_adapters_dir / "demo-b", path)
    backend.load_adapter("demo-b-copy", path)
    backend.set_alias(PRODUCTION, "demo-b-copy")
    with pytest.raises(AdapterInUse, match="production"):
        backend.unload_adapter("demo-b-copy")
    backend.set_alias(PRODUCTION, BASE)

    stream = backend.stream_chat(PROMPT, "demo-b-copy", SamplingParams(max_tokens=64, temperature=0))
    first = next(iter(stream))  # generation has started and holds the lease
    assert backend.adapters._info("demo-b-copy").in_flight == 1
    done = threading.Event()

    def unload():
        backend.unload_adapter("demo-b-copy")
        done.set()

    t = threading.Thread(target=unload)
    t.start()
    time.sleep(0.2)
    # Retiring: new requests are refused, the one in flight is not disturbed.
    with pytest.raises(UnknownAdapter):
        backend.stream_chat(PROMPT, "demo-b-copy", SamplingParams(temperature=0))
    assert not done.is_set() or stream.completion.finish_reason is not None
    text = first + "".join(stream)
    t.join(30)
    assert done.is_set()
    assert stream.completion.finish_reason == "length" and stream.completion.adapter == "demo-b-copy"
    assert text.startswith(solo_answers["demo-b"][0])
    assert "demo-b-copy" not in backend.adapters.names()


def test_unload_times_out_while_in_use(backend):
    concrete = backend.adapters.acquire("demo-a")
    try:
        with pytest.raises(AdapterInUse, match="demo-a"):
            backend.adapters.unload("demo-a", timeout_s=0.1)
        assert "demo-a" in backend.adapters.names()  # still served after the refusal
    finally:
        backend.adapters.release(concrete)


def test_reserved_cannot_be_unloaded(backend):
    for name in (BASE, PRODUCTION):
        with pytest.raises(AdapterInUse):
            backend.unload_adapter(name)


# The manager stores what a target resolves to, so an alias never points at an alias (promoting
# "production" once stored production -> production in the registry; feedback/store_adapters.py guards that).
def test_alias_points_at_a_concrete_adapter(backend, serving_adapters_dir):
    backend.set_alias(PRODUCTION, "demo-a")
    try:
        backend.set_alias(PRODUCTION, PRODUCTION)
        assert backend.resolve(PRODUCTION) == "demo-a"
        assert backend.adapters._info("demo-a").aliases == (PRODUCTION,)
    finally:
        backend.set_alias(PRODUCTION, BASE)
    for name in (BASE, PRODUCTION):
        with pytest.raises(AdapterRejected, match="reserved"):
            backend.load_adapter(name, serving_adapters_dir / "demo-a")
