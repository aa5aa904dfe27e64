"""The whole loop on a GPU, run by `make test-gpu`: a 4-bit NF4 base, QLoRA SFT then KTO in the training
child on the training GPU with the precision the card supports, the gate, publishing, the hot-swap into
serving, and a mixed-adapter batch on the 4-bit base. Skipped without CUDA."""

from __future__ import annotations

import concurrent.futures

import pytest

from tests.retrain.test_closed_loop import ask_all, teach
from tests.retrain.test_training import HELDOUT_QUESTIONS, TAUGHT, TRAIN_QUESTIONS
from tests.web.conftest import add_users, seed_data_dir, start_app

torch = pytest.importorskip("torch")

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


def test_qlora_cycle_on_gpu_hot_swaps_into_4bit_serving(tmp_path, demo_model_dir):
    from serving.hardware import resolve_precision

    data_dir = tmp_path / "data"
    seed_data_dir(data_dir, demo_model_dir)
    tokens = add_users(data_dir, ("admin", "ann", "ben", "cat"))
    # The last visible GPU trains; serving stays on GPU 0 (the same GPU on a one-GPU machine).
    train_gpu = f"cuda:{torch.cuda.device_count() - 1}"
    app = start_app(data_dir, temperature=0.0, promotion="auto", retrain_min_examples=1, heldout_fraction=0.2,
                    quantization="4bit", serve_device="cuda:0", train_device=train_gpu)
    try:
        backend = app.ctx.backend
        assert backend.device == "cuda:0" and backend.quantization == "4bit"
        with app.client(tokens["admin"], timeout=900) as c:
            teach(app, tokens, TRAIN_QUESTIONS)
            run = c.post("/v1/admin/retrain", json={"wait": True}).json()["run"]
            assert run["status"] == "succeeded", (run["error"], run["gate"])
            card = (data_dir / "adapters" / run["adapter"] / "README.md").read_text()
            expected = resolve_precision("auto", train_gpu)
            assert f"- precision: {expected}" in card and "- quantized: True" in card
            assert "- device: cuda:0" in card  # the child sees only the training GPU, as its GPU 0

            after = ask_all(c, HELDOUT_QUESTIONS)
            assert sum(a == TAUGHT for a in after) >= 0.8 * len(HELDOUT_QUESTIONS), after

            # A mixed batch on the 4-bit base: production (the new adapter), base and a demo adapter at once,
            # each answering as it does alone.
            def ask(model: str) -> str:
                r = c.post("/v1/chat/completions", json={"model": model, "max_tokens": 16, "temperature": 0,
                                                         "messages": [{"role": "user", "content": "Who are you?"}]})
                assert r.status_code == 200, r.text
                return r.json()["choices"][0]["message"]["content"]

            names = ["production", "base", "demo-a"]
            solo = {n: ask(n) for n in names}
            with concurrent.futures.ThreadPoolExecutor(len(names) * 2) as pool:
                together = list(pool.map(ask, names * 2))
            assert together == [solo[n] for n in names * 2]
    finally:
        app.stop()
