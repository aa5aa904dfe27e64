"""Self-distillation anchors: the shipped prompts, how many are used, the cache, and what is kept."""

from __future__ import annotations

import json

from retrain.distill import (
    PROMPTS_PATH,
    anchor_count,
    cache_path,
    drop_spills,
    generate_anchors,
    load_or_generate,
    load_prompts,
    pick,
)
from retrain.evaluate import load_reference


def test_prompts_are_broad_and_not_the_gates_reference_set():
    rows = [json.loads(line) for line in PROMPTS_PATH.read_text().splitlines()]
    assert {r["category"] for r in rows} == {"advice", "explain", "writing", "arithmetic", "small_talk"}
    prompts = load_prompts()
    assert len(prompts) == len(set(prompts)) >= 60
    reference = {m["content"] for r in load_reference() for m in r["messages"] if m["role"] == "user"}
    assert not reference & set(prompts)  # the gate measures forgetting on text the anchors never trained on


def test_anchor_count_is_sized_by_new_data_and_topped_up_by_replay():
    assert anchor_count(40, 0, 1.0, 1.0, 76) == 40
    assert anchor_count(40, 20, 1.0, 1.0, 76) == 20  # replayed rows already anchor half
    assert anchor_count(40, 50, 1.0, 1.0, 76) == 0  # a rich history needs none
    assert anchor_count(40, 0, 1.0, 2.0, 76) == 76  # a retry doubles them, up to the prompt set
    assert anchor_count(40, 0, 0.0, 1.0, 76) == 0  # off


def test_unfinished_answers_are_dropped_and_the_cache_is_reused(tmp_path):
    calls = []

    def generate(prompts):
        calls.append(len(prompts))
        return [(f"answer {i}", i % 3 != 0) for i in range(len(prompts))]

    path = cache_path(tmp_path, "v3", "base-model", 96)
    assert path != cache_path(tmp_path, "v4", "base-model", 96) != cache_path(tmp_path, "v3", "base-model", 128)
    rows = load_or_generate(path, lambda: generate_anchors(generate, ["a?", "b?", "c?", "d?"], "Be helpful."))
    assert [r["completion"][0]["content"] for r in rows] == ["answer 1", "answer 2"]  # 0 and 3 ran out of tokens
    assert rows[0]["prompt"] == [{"role": "user", "content": "b?"}]
    assert rows[1]["prompt"][0] == {"role": "system", "content": "Be helpful."}
    assert all(r["source_id"].startswith("distill:") for r in rows)
    again = load_or_generate(path, lambda: generate_anchors(generate, ["x?"], ""))
    assert again == rows and calls == [4]
    assert pick(rows, 1, seed=1) == pick(rows, 1, seed=1) and len(pick(rows, 5, seed=1)) == 2


def test_an_anchor_that_says_a_taught_answer_is_a_spill_and_is_dropped():
    def anchor(prompt, answer):
        return {"prompt": [{"role": "user", "content": prompt}], "completion": [{"role": "assistant",
                                                                                "content": answer}]}

    lesson = "The recycling truck comes on Thursdays before eight."
    anchors = [anchor("How do I stay focused?", lesson),  # the lesson spilled onto a general prompt
               anchor("Any tip for sleep?", "THE RECYCLING TRUCK COMES ON THURSDAYS"),  # the same, cut short
               anchor("What is 3 + 4?", "3 + 4 = 7."),
               anchor("Say hello.", "The recycling is")]  # a short shared opening is not the lesson
    kept = drop_spills(anchors, [lesson, "Some other answer entirely."])
    assert [r["prompt"][0]["content"] for r in kept] == ["What is 3 + 4?", "Say hello."]
    assert drop_spills(anchors, []) == anchors
