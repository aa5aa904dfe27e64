"""The CUDA paths, run by `make test-gpu` on a GPU machine: the 4-bit NF4 base and mixed-adapter batches on it."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


def test_auto_quantization_loads_4bit_nf4_on_cuda(demo_model_dir):
    from serving.model_loading import load_base_model

    model, tokenizer = load_base_model(str(demo_model_dir.model), "auto")
    linear = model.model.layers[0].self_attn.q_proj
    assert type(linear).__name__ == "Linear4bit" and linear.weight.quant_type == "nf4"
    ids = tokenizer("Hello", return_tensors="pt").to(model.device)
    out = model.generate(**ids, max_new_tokens=4, do_sample=False)
    assert out.shape[1] > ids.input_ids.shape[1]


def test_mixed_adapter_batch_on_4bit_base_matches_solo(demo_model_dir):
    from serving.local import LocalBackend
    from serving.types import SamplingParams

    backend = LocalBackend(str(demo_model_dir.model), quantization="4bit", adapters_dir=demo_model_dir.adapters)
    try:
        backend.load_all_adapters()
        messages = [{"role": "user", "content": "Who are you?"}]
        greedy = SamplingParams(max_tokens=12, temperature=0)
        solo = {name: backend.stream_chat(messages, name, greedy).text() for name in ("base", "demo-a", "demo-b")}
        streams = {name: backend.stream_chat(messages, name, greedy) for name in solo}
        assert {name: s.text() for name, s in streams.items()} == solo
    finally:
        backend.close()
