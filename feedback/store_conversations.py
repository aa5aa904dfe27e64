"""A user's own conversations: the list (newest first, searchable, paged in SQL), resume, rename, delete.

A conversation whose history was edited continues in branches (``<id>.<n>``, see ``store_turns``); the
list shows the root once, dated by its newest message in any branch, and resume opens the branch
that was written last. Every method takes the user and touches only that user's conversations, so
an id guessed or copied from someone else's URL reads as unknown.
"""

from __future__ import annotations

import logging

from feedback.errors import InvalidTitle, UnknownConversation
from feedback.models import ConversationSummary, ConversationView
from feedback.store_core import StoreCore, _from_db, _now, _rows
from feedback.text import text_problem

log = logging.getLogger(__name__)

MAX_TITLE_CHARS = 200
MAX_PAGE = 100  # most conversations one list call returns
TITLE_PREVIEW_CHARS = 60


# Roots of one user's conversations with the newest message of the root or any of its branches.
_LIST_SQL = """
WITH mine AS (SELECT id, coalesce(parent_id, id) AS root FROM conversations WHERE "user" = $user),
activity AS (
    SELECT mine.root, max(m.created_at) AS updated_at, max(m.seq) AS last_seq,
           count(*) FILTER (m.role = 'assistant' AND NOT m.superseded) AS answers,
           bool_or($query::VARCHAR IS NOT NULL AND contains(lower(m.content), lower($query))) AS hit
    FROM mine JOIN messages m ON m.conversation_id = mine.id GROUP BY mine.root)
SELECT c.id, c.title, a.updated_at, a.answers,
       (SELECT content FROM messages WHERE conversation_id = c.id AND role = 'user'
        ORDER BY position, seq LIMIT 1) AS first_question
FROM conversations c JOIN activity a ON a.root = c.id
WHERE c.parent_id IS NULL AND c.deleted_at IS NULL
  AND ($query::VARCHAR IS NULL OR a.hit OR contains(lower(coalesce(c.title, '')), lower($query)))
ORDER BY a.last_seq DESC  -- insert order: a batch of turns shares one created_at
LIMIT $limit OFFSET $offset
"""


def _title(title: str | None, first_question: str | None) -> str:
    if title:
        return title
    text = " ".join((first_question or "").split())
    if not text:
        return "New chat"
    return text if len(text) <= TITLE_PREVIEW_CHARS else text[: TITLE_PREVIEW_CHARS - 1] + "…"


class ConversationStore(StoreCore):
    """A user's own conversations: list, search, resume, rename, delete."""

    def list_conversations(self, user: str, query: str | None = None, limit: int = 50,
                           offset: int = 0) -> list[ConversationSummary]:
        """``user``'s conversations, newest activity first; ``query`` matches any message or the title."""
        query = (query or "").strip() or None
        limit = max(1, min(int(limit), MAX_PAGE))
        with self._read(settle=True) as cur:
            cur.execute(_LIST_SQL, {"user": user, "query": query, "limit": limit, "offset": max(0, int(offset))})
            rows = _rows(cur)
        return [ConversationSummary(id=r["id"], title=_title(r["title"], r["first_question"]),
                                    updated_at=_from_db(r["updated_at"]), answers=r["answers"]) for r in rows]

    def _owned_root(self, cur, user: str, conversation_id: str) -> dict:
        cur.execute("""SELECT id, title, deleted_at FROM conversations
                       WHERE id = ? AND "user" = ? AND parent_id IS NULL""", [conversation_id, user])
        rows = _rows(cur)
        if not rows or rows[0]["deleted_at"] is not None:
            raise UnknownConversation(f"no conversation {conversation_id!r}")
        return rows[0]

    def load_conversation(self, user: str, conversation_id: str) -> ConversationView:
        """The branch written last of ``user``'s conversation, with that user's ratings and corrections."""
        with self._read(settle=True) as cur:
            root = self._owned_root(cur, user, conversation_id)
            cur.execute("""SELECT c.id FROM conversations c JOIN messages m ON m.conversation_id = c.id
                           WHERE (c.id = ? OR c.parent_id = ?) AND c."user" = ?
                           ORDER BY m.seq DESC LIMIT 1""", [conversation_id, conversation_id, user])
            latest = cur.fetchone()
            branch = latest[0] if latest else conversation_id
            cur.execute("""SELECT id FROM messages WHERE conversation_id = ? AND NOT superseded
                           ORDER BY position, seq""", [branch])
            ids = [r[0] for r in cur.fetchall()]
            cur.execute("""SELECT message_id, rating, reason FROM ratings
                           WHERE "user" = ? AND message_id IN (SELECT unnest(?::VARCHAR[]))""", [user, ids])
            ratings = {m: (r, why) for m, r, why in cur.fetchall()}
            cur.execute("""SELECT message_id, content FROM corrections
                           WHERE "user" = ? AND message_id IN (SELECT unnest(?::VARCHAR[]))""", [user, ids])
            corrections = dict(cur.fetchall())
        messages = self.conversation(branch)
        first = next((m.content for m in messages if m.role == "user"), None)
        return ConversationView(id=conversation_id, title=_title(root["title"], first), messages=messages,
                                ratings=ratings, corrections=corrections)

    def rename_conversation(self, user: str, conversation_id: str, title: str) -> str:
        """Set the title (blank: back to the first question); returns the title shown."""
        title = " ".join((title or "").split())
        if len(title) > MAX_TITLE_CHARS:
            raise InvalidTitle(f"title longer than {MAX_TITLE_CHARS} characters")
        if problem := text_problem(title):
            raise InvalidTitle(f"a title must be plain text: it {problem}")
        self._turns.wait()  # a conversation started a moment ago may still be in the turn journal
        with self._write() as cur:
            self._owned_root(cur, user, conversation_id)
            cur.execute("UPDATE conversations SET title = ? WHERE id = ?", [title or None, conversation_id])
        log.info("conversation renamed id=%s user=%s", conversation_id, user)
        return self.load_conversation(user, conversation_id).title

    def delete_conversation(self, user: str, conversation_id: str, forget: bool = False) -> None:
        """Take a conversation off ``user``'s list. Its rated answers stay training data unless ``forget``,
        which erases its messages, ratings and corrections for good (snapshots already built keep theirs)."""
        self._turns.wait()  # as in rename
        with self._write() as cur:
            self._owned_root(cur, user, conversation_id)
            if not forget:
                cur.execute("UPDATE conversations SET deleted_at = ? WHERE id = ? OR parent_id = ?",
                            [_now(), conversation_id, conversation_id])
            else:
                scope = "SELECT id FROM conversations WHERE id = $c OR parent_id = $c"
                messages = f"SELECT id FROM messages WHERE conversation_id IN ({scope})"
                # Scrubbed copies of its texts go too (keyed by the raw text's sha256, as retrain.pii hashes).
                cur.execute(f"""DELETE FROM scrubbed WHERE key IN (
                                SELECT sha256(content) FROM messages WHERE conversation_id IN ({scope})
                                UNION SELECT sha256(content) FROM corrections WHERE message_id IN ({messages}))""",
                            {"c": conversation_id})
                cur.execute(f"DELETE FROM ratings WHERE message_id IN ({messages})", {"c": conversation_id})
                cur.execute(f"DELETE FROM corrections WHERE message_id IN ({messages})", {"c": conversation_id})
                cur.execute(f"DELETE FROM messages WHERE conversation_id IN ({scope})", {"c": conversation_id})
                cur.execute("DELETE FROM conversations WHERE id = $c OR parent_id = $c", {"c": conversation_id})
        self._note_judged()  # its ratings leave the stats (forget) or it leaves a list
        log.info("conversation deleted id=%s user=%s forget=%s", conversation_id, user, forget)
