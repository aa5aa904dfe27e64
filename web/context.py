"""What the API and the UI are handed: the app's long-lived services, built once by app.py."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from web.sessions import SessionOwners

if TYPE_CHECKING:  # keeps `import web` free of torch and of the retrain loop's heavy imports
    from feedback.store import FeedbackStore
    from retrain.promotion import Promoter
    from retrain.runner import RetrainRunner
    from serving.backend import Backend
    from settings import Settings
    from web.arena import ArenaService
    from web.auth import UserDirectory
    from web.chat import ChatService
    from web.metrics import Metrics


@dataclass
class AppContext:
    settings: Settings
    store: FeedbackStore
    backend: Backend
    users: UserDirectory
    chat: ChatService
    arena: ArenaService
    promoter: Promoter
    retrain: RetrainRunner
    metrics: Metrics
    control_token: str  # lets `python app.py retrain` on this machine hand a cycle to the running app
    sessions: SessionOwners = field(default_factory=lambda: SessionOwners())  # UI session hash -> its user
