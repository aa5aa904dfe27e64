"""How a CLI command finds the running app: a file in the data dir with its address and a control token.

The app owns the DuckDB file (one writer per file), so `python app.py retrain` hands its cycle to the
running app over HTTP instead of opening the file. The token is random per start and the file is
readable by the app's user only, so only someone who can read the data dir can use it.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path

FILE_NAME = "running-app.json"


@contextlib.contextmanager
def running_app_file(settings, token: str):
    path = Path(settings.data_dir) / FILE_NAME
    host = "127.0.0.1" if settings.host in ("0.0.0.0", "::", "") else settings.host
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump({"pid": os.getpid(), "url": f"http://{host}:{settings.port}", "token": token}, f)
    os.replace(tmp, path)
    try:
        yield path
    finally:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def find_running_app(data_dir: Path) -> dict | None:
    """The running app's {url, token, pid}, or None when no live app owns this data dir."""
    path = Path(data_dir) / FILE_NAME
    try:
        info = json.loads(path.read_text())
        os.kill(int(info["pid"]), 0)
    except (FileNotFoundError, ValueError, KeyError, ProcessLookupError, json.JSONDecodeError):
        return None
    except PermissionError:  # alive, owned by another user
        pass
    return info
