"""Where chat sessions live: in this process (``memory://``), or in Redis so that several
workers or replicas continue each other's sessions (``redis://host:port/db``).

Both stores keep the same rules. Only the server creates a session, under an unguessable
id, for one client (its key, else its address); that client alone can load it — an
unknown, expired or foreign id looks the same: absent. A session idle for ``ttl_s`` is
gone. A client holds at most ``sessions_per_client``: a new one evicts that client's own
oldest, so no client can push out anyone else's conversation; when ``sessions`` are live
in all, a new one is refused (:class:`ChatFull`) rather than evicting a stranger's.
States are JSON, saved after each turn (two turns at once on one session: the later
save wins).
"""

from __future__ import annotations

import hmac
import json
import secrets
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Protocol

from recfunnel.core.errors import RecfunnelError
from recfunnel.serve.config import ChatConfig


class ChatFull(RecfunnelError):
    """Every session slot is taken by live conversations (the app answers 503)."""


class UnknownSession(RecfunnelError):
    """An id that is not a live session of this client (the app answers 404)."""


def new_id() -> str:
    """192 random bits, URL-safe: cannot be guessed, nor chosen by a client."""
    return secrets.token_urlsafe(24)


class SessionStore(Protocol):
    def create(self, owner: str) -> str:
        """A new session of ``owner``; raises :class:`ChatFull`."""
        ...

    def load(self, sid: str, owner: str) -> dict[str, Any] | None:
        """The state of ``owner``'s session ``sid`` (touched: its idle time restarts)."""
        ...

    def save(self, sid: str, owner: str, state: dict[str, Any]) -> None:
        """Store the state, if the session is still there and ``owner``'s."""
        ...

    def delete(self, sid: str, owner: str) -> bool: ...

    def __len__(self) -> int: ...


@dataclass
class _Entry:
    owner: str
    used: float
    state: str


class MemorySessions:
    """One process's sessions: an LRU over all of them plus one per owner."""

    def __init__(self, config: ChatConfig, clock: Any = time.monotonic) -> None:
        self.config = config
        self._clock = clock
        self._all: OrderedDict[str, _Entry] = OrderedDict()
        self._by_owner: dict[str, OrderedDict[str, None]] = {}
        self._lock = threading.Lock()

    def _drop(self, sid: str) -> None:
        entry = self._all.pop(sid)
        mine = self._by_owner[entry.owner]
        del mine[sid]
        if not mine:
            del self._by_owner[entry.owner]

    def _expire(self, now: float) -> None:
        while self._all and now - next(iter(self._all.values())).used > self.config.ttl_s:
            self._drop(next(iter(self._all)))

    def create(self, owner: str) -> str:
        with self._lock:
            now = self._clock()
            self._expire(now)
            mine = list(self._by_owner.get(owner, ()))  # least recently used first
            for old in mine[: max(0, len(mine) + 1 - self.config.sessions_per_client)]:
                self._drop(old)
            if len(self._all) >= self.config.sessions:
                raise ChatFull("every chat session slot is in use; try again later")
            sid = new_id()
            self._all[sid] = _Entry(owner, now, "{}")
            self._by_owner.setdefault(owner, OrderedDict())[sid] = None
            return sid

    def _mine(self, sid: str, owner: str) -> _Entry | None:
        entry = self._all.get(sid)
        if entry is None or not hmac.compare_digest(entry.owner.encode(), owner.encode()):
            return None
        return entry

    def load(self, sid: str, owner: str) -> dict[str, Any] | None:
        with self._lock:
            now = self._clock()
            self._expire(now)
            entry = self._mine(sid, owner)
            if entry is None:
                return None
            entry.used = now
            self._all.move_to_end(sid)
            self._by_owner[owner].move_to_end(sid)
            return dict(json.loads(entry.state))

    def save(self, sid: str, owner: str, state: dict[str, Any]) -> None:
        with self._lock:
            entry = self._mine(sid, owner)
            if entry is not None:
                entry.state = json.dumps(state)

    def delete(self, sid: str, owner: str) -> bool:
        with self._lock:
            if self._mine(sid, owner) is None:
                return False
            self._drop(sid)
            return True

    def __len__(self) -> int:
        with self._lock:
            self._expire(self._clock())
            return len(self._all)


# Atomic on the Redis server, so concurrent workers keep both caps. Time is Redis' own
# clock (replicas on several hosts agree). KEYS: all sessions (zset by last use), the
# owner's (same); ARGV: ttl_s, per-owner cap, global cap, new id, session key prefix, owner.
_CREATE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1e6
local ttl = tonumber(ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - ttl)
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now - ttl)
while redis.call('ZCARD', KEYS[2]) >= tonumber(ARGV[2]) do
  local old = redis.call('ZPOPMIN', KEYS[2])[1]
  redis.call('ZREM', KEYS[1], old)
  redis.call('DEL', ARGV[5] .. old)
end
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[3]) then return 0 end
redis.call('HSET', ARGV[5] .. ARGV[4], 'owner', ARGV[6], 'state', '{}')
redis.call('EXPIRE', ARGV[5] .. ARGV[4], math.ceil(ttl))
redis.call('ZADD', KEYS[1], now, ARGV[4])
redis.call('ZADD', KEYS[2], now, ARGV[4])
redis.call('EXPIRE', KEYS[2], math.ceil(ttl))
return 1
"""
# KEYS: the session, all sessions, the owner's; ARGV: owner, ttl_s, state ('' to keep it),
# the session's id.
_TOUCH = """
if redis.call('HGET', KEYS[1], 'owner') ~= ARGV[1] then return false end
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1e6
if ARGV[3] ~= '' then redis.call('HSET', KEYS[1], 'state', ARGV[3]) end
redis.call('EXPIRE', KEYS[1], math.ceil(tonumber(ARGV[2])))
redis.call('EXPIRE', KEYS[3], math.ceil(tonumber(ARGV[2])))
redis.call('ZADD', KEYS[2], now, ARGV[4])
redis.call('ZADD', KEYS[3], now, ARGV[4])
return redis.call('HGET', KEYS[1], 'state')
"""


class RedisSessions:
    """Sessions in Redis: a hash per session (owner, state) that expires when idle, and
    sorted sets by last use (all sessions, each owner's) for the caps."""

    def __init__(self, config: ChatConfig, url: str, prefix: str = "recfunnel:chat") -> None:
        import redis

        self.config = config
        self._redis = redis.Redis.from_url(url, decode_responses=True)
        self._prefix = prefix
        self._create = self._redis.register_script(_CREATE)
        self._touch = self._redis.register_script(_TOUCH)

    def _key(self, sid: str) -> str:
        return f"{self._prefix}:s:{sid}"

    def _owner_key(self, owner: str) -> str:
        return f"{self._prefix}:o:{owner}"

    @property
    def _all_key(self) -> str:
        return f"{self._prefix}:all"

    def create(self, owner: str) -> str:
        sid = new_id()
        cfg = self.config
        keys = [self._all_key, self._owner_key(owner)]
        args: list[str | float] = [cfg.ttl_s, cfg.sessions_per_client, cfg.sessions, sid,
                                   self._key(""), owner]  # fmt: skip
        if not self._create(keys=keys, args=args):
            raise ChatFull("every chat session slot is in use; try again later")
        return sid

    def _touched(self, sid: str, owner: str, state: str) -> str | None:
        keys = [self._key(sid), self._all_key, self._owner_key(owner)]
        out = self._touch(keys=keys, args=[owner, self.config.ttl_s, state, sid])
        return None if out is None else str(out)

    def load(self, sid: str, owner: str) -> dict[str, Any] | None:
        state = self._touched(sid, owner, "")
        return None if state is None else dict(json.loads(state))

    def save(self, sid: str, owner: str, state: dict[str, Any]) -> None:
        self._touched(sid, owner, json.dumps(state))

    def delete(self, sid: str, owner: str) -> bool:
        if self._redis.hget(self._key(sid), "owner") != owner:
            return False
        pipe = self._redis.pipeline()
        pipe.delete(self._key(sid))
        pipe.zrem(self._all_key, sid)
        pipe.zrem(self._owner_key(owner), sid)
        pipe.execute()
        return True

    def __len__(self) -> int:
        seconds, micros = self._redis.time()
        cutoff = seconds + micros / 1e6 - self.config.ttl_s
        self._redis.zremrangebyscore(self._all_key, "-inf", cutoff)
        return int(self._redis.zcard(self._all_key))


def sessions_from(storage: str, config: ChatConfig) -> SessionStore:
    """The store a storage URI names (``memory://`` or ``redis://…``)."""
    if storage.startswith("memory://"):
        return MemorySessions(config)
    return RedisSessions(config, storage)
