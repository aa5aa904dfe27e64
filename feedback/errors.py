"""Errors the feedback store raises; web/errors.py maps each to an HTTP status in one place."""

from __future__ import annotations


class FeedbackError(Exception):
    """Base of every error the store raises on purpose."""


class UnknownMessage(FeedbackError):
    """No message with that id (HTTP 404)."""


class NotAssistantMessage(FeedbackError):
    """Only assistant answers can be rated (HTTP 422)."""


class InvalidRating(FeedbackError):
    """A rating, comment, correction or vote that is not acceptable (HTTP 422)."""


class UnknownBattle(FeedbackError):
    """No arena battle with that id (HTTP 404)."""


class AlreadyVoted(FeedbackError):
    """The battle already has its vote (HTTP 409)."""


class BattleClosed(FeedbackError):
    """A vote on a battle one of whose adapters was archived since: it would rate an adapter out of use (HTTP 409)."""


class SchemaTooNew(FeedbackError):
    """The file was written by a newer Tuneloop than this one; refusing to touch it."""


class UnknownRun(FeedbackError):
    """No training run with that id."""


class UnknownConversation(FeedbackError):
    """No conversation with that id that the asking user may continue (HTTP 404)."""


class InvalidReview(FeedbackError):
    """A review request that is not acceptable: bad state, bad or too many ids (HTTP 400)."""


class InvalidTitle(FeedbackError):
    """A conversation title that is not acceptable (HTTP 422)."""


class ReservedName(FeedbackError):
    """A registry write naming ``production`` (an alias) or ``base`` where only an adapter version fits."""
