"""Whose feedback trains as given and whose waits for an admin: the trust decision at the edge.

An admin's feedback (single-user mode's ``local`` included) and that of users an admin trusts
(``python app.py data trust NAME``, read by the store as it writes the judgement) trains as given;
revoking that trust takes back what it let through and has not trained yet (``ReviewStore.set_user_trust``).
Everyone else's corrections, and by default their thumbs-ups, wait in the review queue
(``settings.review_untrusted``), and so does any judgement of theirs on an answer the model did not write
freely (they wrote it or forced it); what they may still train is capped (``max_untrusted_user_rows``,
``max_untrusted_answer_rows``). The store keeps the state; ``feedback/store_review.py`` says what each state
means.
"""

from __future__ import annotations

from feedback.models import Rating
from feedback.store_review import untrusted_trust
from feedback.store_turns import MODEL
from web.auth import Principal
from web.context import AppContext


def feedback_trust(ctx: AppContext, principal: Principal, rating: Rating) -> str:
    """``trusted`` (an admin), ``untrusted`` (trains, capped) or ``review`` (held for an admin) for this rating.

    A user an admin trusts is left to the store, which reads that trust in the rating's write transaction:
    read here, a revocation could land between the check and the write and the rating would stay trusted.
    So is the hold of an answer the model did not write freely: the store reads its origin in that write too
    (``review_after_rating``), so it is not looked up here as well.
    """
    if principal.is_admin:
        return "trusted"
    return untrusted_trust(ctx.settings.review_untrusted, rating.rating, rating.correction is not None, MODEL)


def rate(ctx: AppContext, principal: Principal, rating: Rating) -> tuple[Rating, str]:
    """Store a rating with its review state (the one way the API and the UI store a user's rating).

    Returns the stored rating and what happens to it: ``trusted`` (trains as given), ``untrusted``
    (trains, capped) or ``pending_review`` (waits for an admin), so the user is told, not left guessing.
    """
    stored = ctx.store.rate(rating, trust=feedback_trust(ctx, principal, rating))
    return stored, stored.review
