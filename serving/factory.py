"""Pick the backend named in settings; the only place that knows both exist."""

from __future__ import annotations

from serving.backend import Backend


def create_backend(settings) -> Backend:
    if settings.backend == "remote":
        from serving.remote import RemoteBackend

        return RemoteBackend.from_settings(settings)
    from serving.local import LocalBackend

    backend = LocalBackend.from_settings(settings)
    backend.load_all_adapters()
    return backend
