"""``LocalBackend``: generate in this process with transformers + peft, through the batching worker."""

from __future__ import annotations

import logging
import threading
from pathlib import Path

from serving.adapters import AdapterManager, base_modules_of
from serving.batching import GenerationRequest, GenerationWorker
from serving.chat_format import render_prompt
from serving.errors import AdapterRejected, BadRequest, MaxTokensTooLarge, PromptTooLong, ServingError
from serving.structured import build_constraint, parse_tool_calls
from serving.types import PRODUCTION, AdapterInfo, ChatStream, Completion, Message, SamplingParams

log = logging.getLogger(__name__)

ROLES = frozenset({"system", "user", "assistant", "tool"})
MAX_STOP_STRINGS = 4  # as OpenAI's API
MAX_STOP_CHARS = 256  # a stop string is a delimiter; the worker searches a window this long every token


def validate_messages(messages: list[Message]) -> None:
    """Raise ``BadRequest`` unless ``messages`` is a non-empty list of {role, content: str} dicts
    (an assistant turn that calls tools may have ``content`` None and ``tool_calls``)."""
    if not isinstance(messages, list) or not messages:
        raise BadRequest("messages must be a non-empty list")
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            raise BadRequest(f"messages[{i}] must be an object with role and content")
        if m.get("role") not in ROLES:
            raise BadRequest(f"messages[{i}].role must be one of {sorted(ROLES)}")
        if m.get("content") is None and m.get("role") == "assistant" and m.get("tool_calls"):
            continue
        if not isinstance(m.get("content"), str):
            raise BadRequest(f"messages[{i}].content must be a string")


def validate_params(params: SamplingParams, max_new_tokens: int) -> int:
    """Check sampling values; returns the concrete max_tokens."""
    t, p = params.temperature, params.top_p
    if isinstance(t, bool) or not isinstance(t, (int, float)) or not 0 <= t <= 2:
        raise BadRequest("temperature must be between 0 and 2")
    if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0 < p <= 1:
        raise BadRequest("top_p must be in (0, 1]")
    max_tokens = max_new_tokens if params.max_tokens is None else params.max_tokens
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
        raise BadRequest("max_tokens must be a positive integer")
    if max_tokens > max_new_tokens:
        raise MaxTokensTooLarge(f"max_tokens {max_tokens} is over this server's limit of {max_new_tokens}")
    stop = params.stop
    if isinstance(stop, str) or not isinstance(stop, (tuple, list)) or len(stop) > MAX_STOP_STRINGS:
        raise BadRequest(f"stop must be a list of at most {MAX_STOP_STRINGS} strings")
    for s in stop:
        if not isinstance(s, str) or not 0 < len(s) <= MAX_STOP_CHARS:
            raise BadRequest(f"each stop string must be a non-empty string of at most {MAX_STOP_CHARS} characters")
    seed = params.seed
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or not -(2**63) <= seed < 2**64):
        raise BadRequest("seed must be an integer between -2**63 and 2**64 - 1")
    return max_tokens


class LocalBackend:
    """The ``Backend`` that runs the base model and its LoRA adapters in this process."""

    worker_class = GenerationWorker  # bench/ swaps in its copy of the old static scheduler to compare

    def __init__(
        self,
        model: str,
        *,
        quantization: str = "auto",
        device: str = "auto",
        precision: str = "auto",
        adapters_dir: Path,
        max_prompt_tokens: int = 2048,
        max_new_tokens: int = 512,
        max_batch_size: int | None = None,
        prefill_tokens_per_step: int = 512,
        admit_every_steps: int = 2,
    ):
        from serving.model_loading import load_base_model, resolve_quantization

        lm, tokenizer = load_base_model(model, quantization, device, precision)
        self.base_model = model
        self.model_path = str(getattr(lm, "name_or_path", "") or model)  # resolved base, for retraining
        self.tokenizer = tokenizer
        self.adapters_dir = Path(adapters_dir)
        self.max_prompt_tokens = max_prompt_tokens
        self.max_new_tokens = max_new_tokens
        self.device = str(lm.device)
        self.quantization = resolve_quantization(quantization, lm.device.type == "cuda")
        self._worker = self.worker_class(lm, tokenizer, max_batch_size=max_batch_size,
                                         prefill_tokens_per_step=prefill_tokens_per_step,
                                         admit_every_steps=admit_every_steps)
        self.adapters = AdapterManager(
            self.adapters_dir,
            base_model_name_or_path=self.model_path,
            base_modules=base_modules_of(lm),
            apply_load=self._worker.load_adapter,
            apply_unload=self._worker.unload_adapter,
        )
        self._worker.start()

    @classmethod
    def from_settings(cls, settings) -> LocalBackend:
        """Build from ``Settings``; ``settings.demo`` builds (once) and serves the offline demo model."""
        model = settings.model
        if settings.demo:
            from serving.demo_model import ensure_demo_model

            model = str(ensure_demo_model(settings.demo_dir, settings.adapters_dir))
        return cls(
            model,
            quantization=settings.quantization,
            device=settings.serve_device,
            precision=settings.precision,
            adapters_dir=settings.adapters_dir,
            max_prompt_tokens=settings.max_prompt_tokens,
            max_new_tokens=settings.max_new_tokens,
            max_batch_size=settings.max_batch_size,
            prefill_tokens_per_step=settings.prefill_tokens_per_step,
            admit_every_steps=settings.admit_every_steps,
        )

    # --- generation -----------------------------------------------------------------------------
    def stream_chat(
        self, messages: list[Message], adapter: str, params: SamplingParams, *, ignore_eos: bool = False
    ) -> ChatStream:
        """See ``Backend.stream_chat``; ``ignore_eos`` (for the bench) always generates ``max_tokens``."""
        validate_messages(messages)
        max_tokens = validate_params(params, self.max_new_tokens)
        spec = params.structured
        tools = list(spec.tools) if spec is not None and spec.tools else None
        prompt_ids = self.tokenizer(render_prompt(self.tokenizer, messages, tools=tools),
                                    add_special_tokens=False)["input_ids"]
        if len(prompt_ids) > self.max_prompt_tokens:
            raise PromptTooLong(f"the prompt is {len(prompt_ids)} tokens, over the limit of {self.max_prompt_tokens}")
        constraint = params.constraint or build_constraint(spec, self.tokenizer, self._worker.eos_ids, max_tokens)
        concrete = self.adapters.acquire(adapter)
        cancel = threading.Event()
        completion = Completion(adapter=concrete, prompt_tokens=len(prompt_ids))
        request = GenerationRequest(
            prompt_ids=prompt_ids,
            adapter=concrete,
            max_tokens=max_tokens,
            temperature=float(params.temperature),
            top_p=float(params.top_p),
            cancel=cancel,
            completion=completion,
            stop_at_eos=not ignore_eos,
            stop=tuple(params.stop),
            seed=params.seed,
            constraint=constraint,
            on_done=lambda: self.adapters.release(concrete),
        )
        try:
            self._worker.submit(request)
        except BaseException:
            self.adapters.release(concrete)
            raise
        return ChatStream(self._deltas(request, spec), completion, cancel)

    @staticmethod
    def _deltas(request: GenerationRequest, spec=None):
        try:
            yield from request.stream()
            calls = parse_tool_calls(request.completion.text, spec)
            if calls:
                request.completion.tool_calls = calls
                request.completion.finish_reason = "tool_calls"
        except ServingError:
            request.completion.finish_reason = "error"
            raise
        finally:
            # A caller that stops iterating (client went away) stops the generation too.
            if request.completion.finish_reason is None:
                request.cancel.set()

    # --- adapters -------------------------------------------------------------------------------
    def list_adapters(self) -> list[AdapterInfo]:
        infos = self.adapters.list()
        target = self.adapters.resolve(PRODUCTION)
        infos.append(AdapterInfo(name=PRODUCTION, path=None, meta={"alias_of": target}))
        return infos

    def load_adapter(self, name: str, path: Path) -> AdapterInfo:
        return self.adapters.load(name, Path(path))

    def load_all_adapters(self) -> list[str]:
        """Load every valid adapter directory under ``adapters_dir``; broken ones are logged and skipped."""
        loaded = []
        if not self.adapters_dir.is_dir():
            return loaded
        present = set(self.adapters.names())
        for path in sorted(p for p in self.adapters_dir.iterdir() if p.is_dir() and not p.name.startswith(".")):
            if path.name in present or not (path / "adapter_config.json").exists():
                continue
            try:
                self.adapters.load(path.name, path)
                loaded.append(path.name)
            except AdapterRejected as exc:
                log.warning("skipping adapter dir %s: %s", path.name, exc)
        return loaded

    def unload_adapter(self, name: str) -> None:
        self.adapters.unload(name)

    def set_alias(self, alias: str, target: str) -> None:
        self.adapters.set_alias(alias, target)

    def resolve(self, name: str) -> str:
        return self.adapters.resolve(name)

    def health(self) -> dict:
        return {
            "ok": self._worker.alive,
            "backend": "local",
            "base_model": self.base_model,
            "device": self.device,
            "quantization": self.quantization,
            "adapters": self.adapters.names(),
            "queue_depth": self._worker.queue_depth,
        }

    def close(self) -> None:
        self._worker.close()
