import pytest

from serving.errors import ModelUnavailable
from serving.model_loading import load_base_model, resolve_quantization


@pytest.fixture
def hub_offline(monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    # huggingface_hub reads the variable once at import; set the parsed value too.
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)


def test_uncached_hub_id_offline_names_model_and_demo(hub_offline):
    with pytest.raises(ModelUnavailable) as info:
        load_base_model("tuneloop-nobody/no-such-model-xyz", "none")
    message = str(info.value)
    assert "--model PATH" in message and "--demo" in message
    assert "no-such-model-xyz" in message
    assert "Traceback" not in message


def test_missing_local_path(tmp_path):
    with pytest.raises(ModelUnavailable, match="--demo"):
        load_base_model(str(tmp_path / "nope"), "none")


def test_demo_model_loads_left_padded_with_pad(demo_model_dir):
    model, tokenizer = load_base_model(str(demo_model_dir.model), "auto")
    assert tokenizer.padding_side == "left"
    assert tokenizer.pad_token is not None
    assert not model.training


def test_auto_quantization_is_4bit_on_cuda_only():
    assert resolve_quantization("auto", cuda=True) == "4bit"
    assert resolve_quantization("auto", cuda=False) == "none"
    assert resolve_quantization("8bit", cuda=False) == "8bit"
    with pytest.raises(ValueError):
        resolve_quantization("3bit", cuda=False)
