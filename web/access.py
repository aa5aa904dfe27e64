"""Who may touch what, for the API and the UI alike.

A user may rate, correct, regenerate (``replaces``) and continue only their own messages and
conversations; admins may touch any. An arena battle is voted on by its own user only, admins included: its
one vote is the verdict of whoever was shown it. Anything else is answered exactly as an unknown id is (404, same
words), so a guessed or leaked id tells nothing about whether it exists. Users may chat with
``production``, ``base`` and the adapters an admin marked public; A/B routing and the arena still
choose other adapters for them.
"""

from __future__ import annotations

from feedback.errors import UnknownBattle, UnknownConversation, UnknownMessage
from feedback.models import StoredMessage
from feedback.store import FeedbackStore
from serving.errors import UnknownAdapter
from serving.types import BASE, PRODUCTION
from web.auth import Principal


def owned_message(store: FeedbackStore, user: Principal, message_id: str) -> StoredMessage:
    """The message, if ``user`` may act on it; ``UnknownMessage`` otherwise (also when it exists)."""
    message = store.get_message(message_id)
    if message is None or not (user.is_admin or message.user == user.name):
        raise UnknownMessage(f"unknown message {message_id!r}")
    return message


def check_conversation(store: FeedbackStore, user: Principal, conversation_id: str) -> None:
    """Continuing a conversation: it must have been issued by this server, to this user (admins: any)."""
    owner = store.conversation_owner(conversation_id)
    if owner is None or not (user.is_admin or owner == user.name):
        raise UnknownConversation(f"unknown conversation {conversation_id!r}: send no conversation_id to start "
                                  "one, then send back the conversation_id of the response")


def check_battle(store: FeedbackStore, user: Principal, battle_id: str) -> None:
    """Voting on a battle: only the user it was shown to, admins too (a second voter counted it twice)."""
    battle = store.get_battle(battle_id)
    if battle is None or battle.user != user.name:
        raise UnknownBattle(f"unknown battle {battle_id!r}")


def public_models(store: FeedbackStore) -> set[str]:
    """What any user may name as ``model``."""
    return {PRODUCTION, BASE, store.production(), *store.public_adapters()}


def check_model(store: FeedbackStore, user: Principal, model: str) -> None:
    if not user.is_admin and model not in public_models(store):
        raise UnknownAdapter(f"no adapter named {model!r} is loaded")  # the words of a truly unknown name


def chat_choices(store: FeedbackStore, backend, user: Principal) -> list[str]:
    """The adapter names the chat picker offers ``user``."""
    names = sorted(a.name for a in backend.list_adapters() if a.name not in (PRODUCTION, BASE))
    if not user.is_admin:
        allowed = public_models(store)
        names = [n for n in names if n in allowed]
    return [PRODUCTION, BASE, *names]
