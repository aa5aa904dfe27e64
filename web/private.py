"""Data-dir files are private: conversation text sits in the DuckDB file, its WAL, the turn journal,
training sets and run logs, so nobody but the app's own user may read them.

``make_private`` runs once at start: a umask of 077 for this process and the training child it starts
(so every file made from then on is 0600 and every directory 0700, DuckDB's WAL included), and a pass
over what already exists (a data dir made by an older Tuneloop, or copied in) to take group and other
bits away.
"""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

log = logging.getLogger(__name__)


def make_private(data_dir: Path) -> None:
    os.umask(0o077)
    data_dir = Path(data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    fixed = 0
    for root, dirs, files in os.walk(data_dir):
        for name in [".", *dirs, *files]:
            path = os.path.join(root, name)
            try:
                st = os.lstat(path)
                if stat.S_ISLNK(st.st_mode) or st.st_uid != os.getuid():
                    continue  # a link's target, or a file owned by someone else (a mount), is not ours to change
                mode = stat.S_IMODE(st.st_mode)
                if mode & 0o077:
                    os.chmod(path, mode & 0o700)
                    fixed += 1
            except OSError as exc:
                log.warning("could not make %s private: %s", path, exc.strerror)
    if fixed:
        log.info("data dir %s: group and other access removed from %d files and directories", data_dir, fixed)
