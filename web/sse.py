"""A server-sent-event response that lets go of its generator as soon as the client goes away.

Why not Starlette's ``StreamingResponse`` alone: it reads a sync iterator in the threadpool and, when the
client disconnects, stops sending but never closes the iterator. The generator behind it (and the model
generating for it) then ran on to ``max_tokens`` and was closed only by garbage collection, seconds later:
the answer was stored late, with text the client never saw, and a rating sent meanwhile found no message.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import anyio
from starlette.responses import StreamingResponse

_END = object()


class EventStream(StreamingResponse):
    """``text/event-stream`` of ``events``; ``on_disconnect`` runs on the event loop when the client leaves.

    ``on_disconnect`` must be quick and thread-safe (e.g. setting cancel events): a threadpool thread may be
    waiting for the generator's next chunk, which then comes at the next decode step; the generator is closed
    after that thread returns, in the threadpool, whether the stream ended, failed or was abandoned.
    """

    def __init__(self, events: Iterator[str], on_disconnect: Callable[[], None]):
        self._events = events
        self._on_disconnect = on_disconnect
        super().__init__(self._chunks(), media_type="text/event-stream",
                         headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    async def _chunks(self):
        while (chunk := await anyio.to_thread.run_sync(next, self._events, _END)) is not _END:
            yield chunk

    async def listen_for_disconnect(self, receive) -> None:
        await super().listen_for_disconnect(receive)
        self._on_disconnect()

    async def stream_response(self, send) -> None:
        try:
            await super().stream_response(send)
        finally:
            with anyio.CancelScope(shield=True):  # runs even when the send loop was cancelled
                await anyio.to_thread.run_sync(self._events.close)
