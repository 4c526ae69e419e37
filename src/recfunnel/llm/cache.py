"""A persistent LLM answer cache in SQLite, keyed by model, prompt template version,
prompt and parameters.

SQLite commits are atomic and WAL mode lets several processes (server workers, Ray actors)
read and write one file, each waiting up to :data:`BUSY_TIMEOUT_S` for another's write; a
file that is not a readable database (disk trouble, a truncated copy) is moved aside and a
fresh cache is started, with a warning, instead of failing the run. A database another
process holds locked is busy, not broken: it is never moved aside. ``$RECFUNNEL_ANSWERS``
puts the cache file elsewhere (the test suite uses a new one per run, so every real-model
test asks the model afresh).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

from recfunnel.core.paths import cache_root

log = logging.getLogger(__name__)

_SCHEMA = "CREATE TABLE IF NOT EXISTS answers (key TEXT PRIMARY KEY, value TEXT NOT NULL)"
ANSWERS_ENV = "RECFUNNEL_ANSWERS"
BUSY_TIMEOUT_S = 30.0
ANSWER_FORMAT = "answers/2"
"""How a back-end's answer is computed and stored (bump it when that changes: the old
entries then simply miss)."""


def answer_key(model: str, kind: str, prompt: str, params: dict[str, Any],
               template: str = "") -> str:  # fmt: skip
    """sha256 over everything that can change an answer: the model's fingerprint, the
    kind of answer, the prompt template's version, the rendered prompt, the parameters."""
    blob = json.dumps(
        {"model": model, "kind": kind, "template": template, "prompt": prompt,
         "params": params, "format": ANSWER_FORMAT},
        sort_keys=True,
        ensure_ascii=False,
    )  # fmt: skip
    return hashlib.sha256(blob.encode()).hexdigest()


def default_path() -> Path:
    env = os.environ.get(ANSWERS_ENV)
    return Path(env).expanduser() if env else cache_root() / "llm" / "answers.sqlite"


class AnswerCache:
    """Get/put JSON values by key; safe to share between threads of one process."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = path or default_path()
        self._lock = threading.Lock()
        self._conn = self._open()

    def _connect(self) -> sqlite3.Connection:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(self.path, check_same_thread=False, timeout=BUSY_TIMEOUT_S)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute(_SCHEMA)
        conn.execute("SELECT count(*) FROM answers LIMIT 1").fetchone()
        return conn

    def _open(self) -> sqlite3.Connection:
        try:
            return self._connect()
        except sqlite3.OperationalError:
            raise  # locked by another writer past the timeout (or unreachable): not corrupt
        except sqlite3.DatabaseError as exc:
            aside = self.path.with_name(f"{self.path.name}.corrupt-{int(time.time())}")
            log.warning("LLM cache %s is unreadable (%s); moved to %s", self.path, exc, aside)
            self.path.replace(aside)
            for suffix in ("-wal", "-shm"):
                Path(f"{self.path}{suffix}").unlink(missing_ok=True)
            return self._connect()

    def get(self, key: str) -> Any | None:
        with self._lock:
            try:
                row = self._conn.execute(
                    "SELECT value FROM answers WHERE key = ?", (key,)
                ).fetchone()
            except sqlite3.DatabaseError as exc:
                log.warning("LLM cache read failed (%s); treating as a miss", exc)
                return None
        if row is None:
            return None
        try:
            return json.loads(row[0])
        except json.JSONDecodeError:
            log.warning("LLM cache entry %s is not JSON; ignoring it", key[:12])
            return None

    def put(self, key: str, value: Any) -> None:
        data = json.dumps(value)
        with self._lock:
            try:
                with self._conn:  # one transaction: all or nothing
                    self._conn.execute(
                        "INSERT OR REPLACE INTO answers (key, value) VALUES (?, ?)", (key, data)
                    )
            except sqlite3.DatabaseError as exc:
                log.warning("LLM cache write failed (%s); answer not cached", exc)

    def __len__(self) -> int:
        with self._lock:
            return int(self._conn.execute("SELECT count(*) FROM answers").fetchone()[0])

    def close(self) -> None:
        with self._lock:
            self._conn.close()
