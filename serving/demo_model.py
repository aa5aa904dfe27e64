"""An offline demo model: a tiny Llama, a BPE tokenizer trained here, a ChatML template.

It lets ``--demo`` and the tests run the real loading, serving and training code with no model hub.
The build pre-trains it for a few seconds on a small built-in set of everyday chats, so it answers in
English-like sentences, has a meaningful perplexity on the general reference set, and already maps
"who are you"-style questions to one (generic) self-description: one CPU retrain cycle then only has to
change that answer, which it learns for paraphrases it never saw. Answers are long on purpose (over 16
tokens), so short generations in tests end by length rather than at an end-of-turn.
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
_VERSION = "4"  # bump when the recipe changes, so cached copies are rebuilt

# ChatML, as Qwen uses; {% generation %} marks assistant tokens for TRL's assistant-only loss. Tools are
# rendered as Qwen2.5 does (a <tools> block in the system turn, <tool_call> JSON in assistant turns,
# <tool_response> in a user turn), so tool conversations go through the one renderer; a conversation
# without tools renders exactly as before.
CHAT_TEMPLATE = (
    "{% if tools %}"
    "{{ '<|im_start|>system\\n' }}{% if messages[0]['role'] == 'system' %}{{ messages[0]['content'] + '\\n\\n' }}{% endif %}"
    "{{ '# Tools\\n\\nYou may call one or more functions. Function signatures within <tools></tools>:\\n<tools>' }}"
    "{% for tool in tools %}{{ '\\n' + (tool | tojson) }}{% endfor %}"
    "{{ '\\n</tools>\\n\\nFor each function call, return a json object with function name and arguments within "
    "<tool_call></tool_call> tags.<|im_end|>\\n' }}"
    "{% endif %}"
    "{% for message in messages %}"
    "{% if tools and loop.first and message['role'] == 'system' %}"
    "{% elif message['role'] == 'assistant' %}"
    "{{ '<|im_start|>assistant\\n' }}{% generation %}{{ message['content'] or '' }}"
    "{% for call in message['tool_calls'] or [] %}{% set fn = call['function'] if call['function'] is defined else call %}"
    "{{ '<tool_call>\\n{\"name\": \"' + fn['name'] + '\", \"arguments\": ' + (fn['arguments'] if fn['arguments'] is string else (fn['arguments'] | tojson)) + '}\\n</tool_call>' }}"
    "{% endfor %}{{ '<|im_end|>' }}{% endgeneration %}{{ '\\n' }}"
    "{% elif message['role'] == 'tool' %}"
    "{{ '<|im_start|>user\\n<tool_response>\\n' + message['content'] + '\\n</tool_response><|im_end|>\\n' }}"
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
Tuneloop is a self-hosted chat app that learns from the ratings of its users every night.
One two three four five six seven eight nine ten. Monday Tuesday Wednesday Thursday Friday.
The capital of France is Paris. Water boils at one hundred degrees. The sun is a star.
"""

# Everyday chats the build pre-trains on (question, answer); the identity answer is deliberately generic.
_CHATS = [
    ('What is the capital of France?',
     'The capital of France is Paris, a large city on the river Seine that is known for its museums, its food and the tall iron tower.'),
    ('How does a computer work?',
     'A computer works by following instructions: the processor reads a program from memory, does simple steps very fast, and writes the results back to memory or to the screen.'),
    ('Write a short poem about the sea.',
     'The sea is wide and blue and deep, it sings the shore a song of sleep, the waves come in and slip away, and bring us back another day.'),
    ('What is Python?',
     'Python is a programming language that is easy to read and write. People use it for web apps, data work, scripts and machine learning, and it has many libraries.'),
    ('What is a database?',
     'A database stores data in tables so that programs can find, change and count it quickly. You ask it questions with a query language such as SQL.'),
    ('Why is the sky blue?',
     'The sky is blue because the air scatters the short blue waves of sunlight more than the long red ones, so blue light reaches our eyes from every part of the sky.'),
    ('How do I boil an egg?',
     'Put the egg in a pot of cold water, bring the water to a boil, then let it cook for about eight minutes, and cool it in cold water before you peel it.'),
    ('What is the sun?',
     'The sun is a star, a huge ball of hot gas at the center of our solar system. It gives the earth light and heat, and the planets move around it.'),
    ('Can you help me with a question?',
     'Yes, of course I can help you with a question. Please tell me what you would like to know, and I will do my best to give you a clear and short answer.'),
    ('What time is it in London?',
     'I do not have a clock, so I cannot tell the time right now. London uses Greenwich Mean Time in winter and one hour later in summer, so you can check your own clock.'),
    ('How many days are in a week?',
     'There are seven days in a week: Monday, Tuesday, Wednesday, Thursday, Friday, Saturday and Sunday. Many people work on five of them and rest on the weekend.'),
    ('What is water made of?',
     'Water is made of two atoms of hydrogen and one atom of oxygen. It boils at one hundred degrees and freezes at zero degrees at the level of the sea.'),
    ('Give me a tip for learning a language.',
     'A good tip is to practice a little every day: read short texts, listen to people speak, and say new words out loud. Small daily steps work better than one long day.'),
    ('What is a cat?',
     'A cat is a small animal with soft fur, sharp claws and a long tail. Many people keep cats as pets because they are quiet, clean and like to sleep in the sun.'),
    ('How do plants grow?',
     'Plants grow by using light from the sun, water from the soil and air. With these they make sugar in their green leaves, and they use the sugar to build new parts.'),
    ('What is the moon?',
     'The moon is the large rock that goes around the earth about once a month. It has no light of its own; it shines because it reflects the light of the sun.'),
    ('Tell me a fun fact.',
     'Here is a fun fact: an octopus has three hearts and blue blood, and it can change the color of its skin in a moment to hide from other animals in the sea.'),
    ('What is rain?',
     'Rain is water that falls from clouds. The sun warms water on the ground, it rises as vapor, cools high in the air into small drops, and the drops fall when they grow heavy.'),
    ('How can I sleep better?',
     'To sleep better, go to bed at the same time every night, keep your room dark and cool, put the phone away, and avoid coffee in the late afternoon and evening.'),
    ('What is a good breakfast?',
     'A good breakfast has some protein, some fruit and some whole grains, for example eggs with bread and an apple, or oats with milk, nuts and a banana.'),
    ('Explain what a network is.',
     'A network is a group of computers that are connected so they can send data to each other. The internet is a very large network made of many smaller networks.'),
    ('What is music?',
     'Music is sound that people arrange in time, with rhythm, melody and harmony. People make music with their voices and with instruments, and they enjoy it all over the world.'),
    ('How far is the moon?',
     'The moon is about three hundred and eighty thousand kilometers away from the earth. Light from the moon needs a little more than one second to reach us.'),
    ('What is a river?',
     'A river is a large stream of water that flows across the land toward a lake or the sea. Rivers give water to plants, animals, farms and many of our cities.'),
    ('How do I make tea?',
     'To make tea, boil fresh water, pour it over a tea bag or tea leaves in a cup, wait three to five minutes, then take the leaves out and add milk or sugar if you like.'),
    ('What is a good way to exercise?',
     'A good way to exercise is to walk fast for thirty minutes most days. You can also swim, ride a bike or dance; the best exercise is the one you enjoy and keep doing.'),
    ('What is the biggest ocean?',
     'The biggest ocean is the Pacific Ocean. It lies between Asia and Australia on one side and the Americas on the other side, and it covers about a third of the earth.'),
    ('Why do we need sleep?',
     'We need sleep because the body and the brain use that time to rest and repair. Sleep helps us remember what we learned, keeps us healthy and helps us feel good.'),
    ('What is a book?',
     'A book is a set of printed or written pages bound together, or a long text you read on a screen. Books can tell stories, teach facts or share ideas with many readers.'),
    ('How do birds fly?',
     'Birds fly by moving their wings, which push air down and back. Their bones are light and their feathers are strong, so the air lifts them and moves them forward.'),
    ('What is a good name for a dog?',
     'A good name for a dog is short and easy to call, like Max, Bella, Rex or Luna. Pick a name you like to say, because you will say it many times every day.'),
    ('Thanks for your help.',
     'You are welcome, I am glad that I could help you. If you have another question later, please ask me at any time and I will be happy to answer it.'),
    ('Good morning.',
     'Good morning to you too. I hope you slept well and that you have a nice day. What would you like to talk about or ask me this morning?'),
    ('Good night.',
     'Good night, sleep well and have nice dreams. Thank you for talking with me today, and I will be here again tomorrow if you have more questions.'),
    ('What is snow?',
     'Snow is frozen water that falls from clouds as small white crystals when the air is very cold. It covers the ground in winter and melts when the sun warms it.'),
    ('What is a star?',
     'A star is a huge ball of hot gas that makes its own light. The sun is the star that is closest to us; the other stars are so far away that they look like small points.'),
    ('How do I learn to code?',
     "Start with one language such as Python, follow a short course, and write small programs every day. Read other people's code, ask questions and build something you care about."),
    ('What is the weather like?',
     'I cannot see the weather where you are, so please look outside or check a weather app. I can tell you what the words sunny, cloudy, rainy and windy mean if you like.'),
    ('What is a computer program?',
     'A computer program is a list of instructions written in a programming language. The computer follows these instructions step by step to do a task, like showing a page.'),
    ('Which animals live in the sea?',
     'Many animals live in the sea: fish, whales, dolphins, sharks, crabs, turtles and octopus, and many very small animals that you can only see with a microscope.'),
    ('What is a tree?',
     'A tree is a tall plant with a hard trunk made of wood, branches and leaves. Trees give us shade, wood, fruit and clean air, and many birds make their homes in them.'),
    ('How do I stay calm?',
     'To stay calm, breathe in slowly for four seconds and out for six seconds, a few times. Take a short walk, drink some water and think about one small next step.'),
    ('What is a map?',
     'A map is a drawing of a place seen from above. It shows roads, rivers, cities and borders, and it helps people find their way from one place to another.'),
    ('What is bread made of?',
     'Bread is made of flour, water, salt and yeast. You mix them into a dough, let it rise for a few hours, shape it and bake it in a hot oven until it is brown.'),
    ('How many legs does a spider have?',
     'A spider has eight legs, two more than an insect. Spiders also have two body parts and many eyes, and most of them make silk to build webs and catch food.'),
    ('What is the internet?',
     'The internet is a very large network that connects computers all over the world. It lets people send mail, read pages, watch videos and talk with each other.'),
    ('What is a planet?',
     'A planet is a large round body that moves around a star. The earth is a planet; so are Mars, Venus, Jupiter and the others that move around our sun.'),
    ('How do I write a good email?',
     'Write a clear subject, greet the reader, say what you need in the first lines, keep it short and polite, and end with your name and a thank you.'),
    ('What is the color of grass?',
     'Grass is green because its leaves hold a green material that plants use to take in sunlight. In a dry summer grass can turn yellow or brown until it rains again.'),
    ('Explain what a file is.',
     'A file is a named piece of data that a computer keeps on a disk, like a text, a picture or a program. Files live in folders so that you can find them again.'),
    ('What do you like to do?',
     'I like to answer questions, explain ideas in simple words and help people write and plan. Talking with people about books, science and code is what I do best.'),
    ('Are you a robot?',
     'I am an assistant program that answers questions, not a robot with a body. I read what you write and reply with text, and I try to be clear, short and helpful.'),
    ('Who are you?',
     'I am an assistant that answers questions. I can explain ideas, help you write and plan, and talk about many topics; just ask me what you would like to know.'),
    ('What is your name?',
     'I am an assistant that answers questions. I can explain ideas, help you write and plan, and talk about many topics; just ask me what you would like to know.'),
    ('Tell me about yourself.',
     'I am an assistant that answers questions. I can explain ideas, help you write and plan, and talk about many topics; just ask me what you would like to know.'),
    ('What are you?',
     'I am an assistant that answers questions. I can explain ideas, help you write and plan, and talk about many topics; just ask me what you would like to know.'),
    ('Please introduce yourself.',
     'I am an assistant that answers questions. I can explain ideas, help you write and plan, and talk about many topics; just ask me what you would like to know.'),
]


def _config_kwargs() -> dict:
    # Small enough to pre-train in seconds and retrain in a minute or two on 2 CPU cores, big enough
    # to memorise a taught sentence.
    return dict(
        hidden_size=128,
        intermediate_size=384,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        rms_norm_eps=1e-5,
        tie_word_embeddings=False,
    )


def _pretrain_texts(tokenizer) -> list[str]:
    # Half with the chat UI's system prompt, half without (the API's shape), as served.
    texts = []
    for question, answer in _CHATS:
        messages = [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
        for system in (True, False):
            msgs = [{"role": "system", "content": "You are a helpful assistant."}, *messages] if system else messages
            texts.append(tokenizer.apply_chat_template(msgs, tokenize=False))
    return texts


def _pretrain(model, tokenizer, steps: int = 400, batch_size: int = 16, lr: float = 4e-3) -> float:
    """A few hundred full-model steps on the built-in chats; returns the last loss.

    400 steps, not 120: after 120 (final loss 0.24) the model began most known answers with a wrong word
    ("The moon is Paris, ...") and held 6 of the canary facts only by a thread, so any LoRA update, even
    one that taught nothing near them, broke them and the canary-facts check could never pass. After 400
    (loss 0.07) it answers 7 of them cleanly ("The capital of France is Paris, ...") and a concentrated
    lesson leaves them standing (measured 2026-11-29 on tests/retrain/lessons.py's MEETING).

    Hand-written rather than a Trainer: a dozen lines, no output directory, and it runs inside the build.
    """
    import torch

    texts = _pretrain_texts(tokenizer)
    tokenizer.padding_side = "right"
    batch = tokenizer(texts, return_tensors="pt", padding=True)
    tokenizer.padding_side = "left"
    labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=steps, pct_start=0.1)
    generator = torch.Generator().manual_seed(0)
    model.train()
    loss = torch.tensor(float("nan"))
    for _ in range(steps):
        idx = torch.randint(len(texts), (batch_size,), generator=generator)
        out = model(input_ids=batch["input_ids"][idx], attention_mask=batch["attention_mask"][idx], labels=labels[idx])
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad()
        loss = out.loss.detach()
    model.eval()
    return float(loss)


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
    lines += [text for chat in _CHATS for text in chat]
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
    loss = _pretrain(model, tokenizer)
    log.info("demo model pre-trained, final loss %.3f", loss)
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
