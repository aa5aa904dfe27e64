"""Serving fixtures: one LocalBackend over the demo model, with its own copy of the demo adapters."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from serving.demo_model import DEMO_ADAPTERS
from serving.local import LocalBackend
from serving.types import BASE, PRODUCTION, SamplingParams

GREEDY = SamplingParams(max_tokens=16, temperature=0)
PROMPT = [{"role": "user", "content": "Hello, how are you today?"}]


@pytest.fixture(scope="session")
def serving_adapters_dir(demo_model_dir, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("serving-adapters")
    for name in DEMO_ADAPTERS:
        shutil.copytree(demo_model_dir.adapters / name, root / name)
    return root


@pytest.fixture(scope="session")
def backend(demo_model_dir, serving_adapters_dir):
    b = LocalBackend(
        str(demo_model_dir.model), quantization="none", adapters_dir=serving_adapters_dir,
        max_prompt_tokens=256, max_new_tokens=64, max_batch_size=8,
    )
    assert sorted(b.load_all_adapters()) == sorted(DEMO_ADAPTERS)
    yield b
    b.close()


@pytest.fixture(scope="session")
def solo_answers(backend) -> dict[str, tuple[str, int]]:
    """Each adapter's greedy answer to PROMPT generated alone: (text, completion tokens)."""
    answers = {}
    for name in (BASE, *DEMO_ADAPTERS):
        stream = backend.stream_chat(PROMPT, name, GREEDY)
        answers[name] = (stream.text(), stream.completion.completion_tokens)
    return answers


@pytest.fixture
def production_at_base(backend):
    yield
    backend.set_alias(PRODUCTION, BASE)


def build_random_qwen(out: Path, seed: int = 0) -> Path:
    """A random-weight Qwen2-architecture model saved next to the demo tokenizer (trained in a second).

    Its eos row of ``lm_head`` is zero, so eos scores 0 against random logits: greedy never picks it and
    sampling rarely does, and answers run to ``max_tokens`` (long batches on purpose).
    """
    import torch
    from transformers import GenerationConfig, Qwen2Config, Qwen2ForCausalLM

    from serving.demo_model import _train_tokenizer

    torch.manual_seed(seed)
    tokenizer = _train_tokenizer()
    eos = tokenizer.eos_token_id
    config = Qwen2Config(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048, initializer_range=0.1,
        tie_word_embeddings=False, eos_token_id=eos, pad_token_id=tokenizer.pad_token_id, bos_token_id=None,
    )
    model = Qwen2ForCausalLM(config)
    with torch.no_grad():
        model.lm_head.weight[eos].zero_()
    model.generation_config = GenerationConfig(eos_token_id=eos, pad_token_id=tokenizer.pad_token_id)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def qwen_dirs(tmp_path_factory) -> tuple[Path, Path]:
    """(random Qwen2 model dir, adapters dir holding its LoRA adapters qa and qb)."""
    from serving.demo_model import build_demo_adapter

    root = tmp_path_factory.mktemp("qwen")
    model = build_random_qwen(root / "model")
    for seed, name in enumerate(("qa", "qb"), start=1):
        build_demo_adapter(model, root / "adapters" / name, seed=seed)
    return model, root / "adapters"


@pytest.fixture(scope="session")
def qwen_backend(qwen_dirs):
    model, adapters = qwen_dirs
    b = LocalBackend(str(model), quantization="none", adapters_dir=adapters, max_prompt_tokens=256,
                     max_new_tokens=512, max_batch_size=8)
    assert sorted(b.load_all_adapters()) == ["qa", "qb"]
    yield b
    b.close()
