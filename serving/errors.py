"""Errors the serving core raises; the web edge turns them into HTTP and UI messages in one place."""


class ServingError(Exception):
    """Base class: a request the backend cannot serve, with a message fit for the user."""


class BadRequest(ServingError):
    """The request itself is malformed (empty messages, bad roles, bad sampling values)."""


class PromptTooLong(BadRequest):
    """The rendered prompt is over ``max_prompt_tokens``."""


class RequestTooLarge(BadRequest):
    """Too many messages, or too many characters in all, to be worth tokenizing (checked before rendering)."""


class UnescapableControlToken(BadRequest):
    """Message text holds a control-token string that this tokenizer would still read as a control token after
    escaping (its normalizer undoes the break): refused rather than let the text forge a turn."""


class MaxTokensTooLarge(BadRequest):
    """``max_tokens`` asks for more than ``max_new_tokens``."""


class UnknownAdapter(ServingError):
    """No adapter (or alias) of that name is loaded."""


class AdapterRejected(ServingError):
    """An adapter directory failed its checks (format, base model, files, path) and was not loaded."""


class AdapterInUse(ServingError):
    """An operation that needs an adapter idle timed out while requests still used it."""


class ModelUnavailable(ServingError):
    """The base model cannot be loaded (not cached and the hub is unreachable, or a bad path)."""


class BackendUnavailable(ServingError):
    """The generation engine is down or did not answer in time."""
