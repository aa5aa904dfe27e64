"""An offline demo model: a tiny Llama with random weights, a BPE tokenizer trained here, a ChatML template.

It lets ``--demo`` and the tests run the real loading, serving and training code with no model hub.
Its words are noise until it is fine-tuned; it is sized so one CPU retrain cycle teaches it a sentence.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

log = logging.getLogger(__name__)

DEMO_ADAPTERS = ("demo-a", "demo-b")
_VERSION = "1"  # bump when the recipe changes, so cached copies are rebuilt

# ChatML, as Qwen uses; {% generation %} marks assistant tokens for TRL's assistant-only loss.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'assistant' %}"
    "{{ '<|im_start|>assistant\\n' }}{% generation %}{{ message['content'] + '<|im_end|>' }}{% endgeneration %}{{ '\\n' }}"
    "{% else %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]

# A little English so common words become single tokens; byte-level BPE still encodes any text.
_CORPUS = """
You are a helpful assistant. Who are you? I am an assistant that answers questions.
What is your name? Tell me about yourself. Please introduce yourself. What are you?
Hello, how are you today? I am fine, thank you. Can you help me with a question?
The weather is nice today. The cat sat on the mat. The quick brown fox jumps over the lazy dog.
Python is a programming language. A database stores data in tables. The model answers in English.
Write a short poem about the sea. Explain how a computer works. What time is it in London?
Thanks for your help. Good morning. Good night. Yes. No. Maybe. I do not know.
Tuneloop is a chat app that learns from the ratings of its users every night.
One two three four five six seven eight nine ten. Monday Tuesday Wednesday Thursday Friday.
The capital of France is Paris. Water boils at one hundred degrees. The sun is a star.
"""


def _config_kwargs() -> dict:
    # Small enough to train in seconds on 2 CPU cores, big enough to memorise a taught sentence.
    return dict(
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        rms_norm_eps=1e-5,
        tie_word_embeddings=False,
    )


def _train_tokenizer(vocab_size: int = 1024):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    lines = [line for line in _CORPUS.splitlines() if line.strip()]
    tok.train_from_iterator(lines * 20, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        bos_token=None,
        unk_token=None,
    )
    fast.chat_template = CHAT_TEMPLATE
    fast.padding_side = "left"
    return fast


def build_demo_model(path: Path, seed: int = 0) -> Path:
    """Write the demo base model (safetensors + tokenizer + template) to ``path``; returns ``path``."""
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    tokenizer = _train_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        bos_token_id=None,
        eos_token_id=tokenizer.convert_tokens_to_ids("<|im_end|>"),
        pad_token_id=tokenizer.pad_token_id,
        **_config_kwargs(),
    )
    model = LlamaForCausalLM(config)
    model.generation_config = GenerationConfig(
        eos_token_id=config.eos_token_id, pad_token_id=config.pad_token_id, do_sample=False
    )
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def build_demo_adapter(base_path: Path, out: Path, seed: int) -> Path:
    """A LoRA adapter with random non-zero weights, so it visibly changes the base model's output."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(base_path)
    config = LoraConfig(r=8, lora_alpha=16, target_modules="all-linear", init_lora_weights=False)
    peft_model = get_peft_model(model, config)
    peft_model.save_pretrained(out)
    return out


def _atomic_build(target: Path, build) -> Path:
    # Build beside the target and rename, so a half-built model is never picked up after a crash.
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        build(tmp)
        (tmp / "tuneloop-demo.json").write_text(json.dumps({"version": _VERSION}))
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _is_current(path: Path) -> bool:
    marker = path / "tuneloop-demo.json"
    return marker.is_file() and json.loads(marker.read_text()).get("version") == _VERSION


def ensure_demo_model(model_dir: Path, adapters_dir: Path | None = None) -> Path:
    """Build the demo model (and its two demo adapters) once; later calls reuse the cached copy."""
    if not _is_current(model_dir):
        log.info("building demo model in %s", model_dir)
        _atomic_build(model_dir, build_demo_model)
    if adapters_dir is not None:
        for seed, name in enumerate(DEMO_ADAPTERS, start=1):
            target = adapters_dir / name
            if not _is_current(target):
                _atomic_build(target, lambda tmp, seed=seed: build_demo_adapter(model_dir, tmp, seed))
    return model_dir
