"""Where chat sessions live: in this process (``memory://``), or in Redis so that several
workers or replicas continue each other's sessions (``redis://host:port/db``).

Both stores keep the same rules. Only the server creates a session, under an unguessable
id, for one client (its key, else its address); that client alone can load it — an
unknown, expired or foreign id looks the same: absent. A session idle for ``ttl_s`` is
gone, one that had a single turn already after ``ttl_first_s`` (a flood of one-message
chats frees itself quickly). A client holds at most ``sessions_per_client``: a new one
evicts that client's own oldest. When ``sessions`` are live in all, a new one evicts the
idlest session of the clients holding the most (so a few dozen clients cannot fill the
store: each keeps at most its share), or the client's own oldest when it holds as many
as anyone; only when every client holds a single session is a new one refused
(:class:`ChatFull`), with the seconds until the next one expires. States are JSON, saved
after each turn (two turns at once on one session: the later save wins).
"""

from __future__ import annotations

import hmac
import json
import math
import secrets
import threading
import time
from collections import Counter, OrderedDict
from dataclasses import dataclass
from typing import Any, Protocol

from recfunnel.core.errors import RecfunnelError
from recfunnel.serve.config import ChatConfig
from recfunnel.serve.storage import REDIS_OPTIONS, StorageGuard


class ChatFull(RecfunnelError):
    """Every session slot is taken, one per client (the app answers 503 with
    ``Retry-After``: the seconds until the next session expires)."""

    def __init__(self, retry_after: float) -> None:
        super().__init__("every chat session slot is in use; try again later")
        self.retry_after = max(1, math.ceil(retry_after))


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
    turns: int = 1


class MemorySessions:
    """One process's sessions: an LRU over all of them plus one per owner."""

    def __init__(self, config: ChatConfig, clock: Any = time.monotonic) -> None:
        self.config = config
        self._clock = clock
        self._all: OrderedDict[str, _Entry] = OrderedDict()
        self._by_owner: dict[str, OrderedDict[str, None]] = {}
        self._lock = threading.Lock()

    def _ttl(self, entry: _Entry) -> float:
        c = self.config
        return c.ttl_s if entry.turns > 1 else min(c.ttl_first_s, c.ttl_s)

    def _drop(self, sid: str) -> None:
        entry = self._all.pop(sid)
        mine = self._by_owner[entry.owner]
        del mine[sid]
        if not mine:
            del self._by_owner[entry.owner]

    def _expire(self, now: float) -> None:
        shortest = min(self.config.ttl_first_s, self.config.ttl_s)
        for sid, entry in list(self._all.items()):  # least recently used first
            if now - entry.used <= shortest:
                break  # this one and every later one are fresher than any timeout
            if now - entry.used > self._ttl(entry):
                self._drop(sid)

    def _victim(self, owner: str) -> str | None:
        """The session a new one of ``owner`` replaces in a full store (module docstring)."""
        counts = Counter({o: len(s) for o, s in self._by_owner.items()})
        top, mine = max(counts.values()), counts[owner]
        if top >= 2 and top > mine:
            return next(sid for sid, e in self._all.items() if counts[e.owner] == top)
        return next(iter(self._by_owner[owner])) if mine else None

    def create(self, owner: str) -> str:
        with self._lock:
            now = self._clock()
            self._expire(now)
            mine = list(self._by_owner.get(owner, ()))  # least recently used first
            for old in mine[: max(0, len(mine) + 1 - self.config.sessions_per_client)]:
                self._drop(old)
            if len(self._all) >= self.config.sessions:
                victim = self._victim(owner)
                if victim is None:
                    raise ChatFull(min(e.used + self._ttl(e) for e in self._all.values()) - now)
                self._drop(victim)
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
            entry.turns += 1
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


# Atomic on the Redis server, so concurrent workers keep every cap. Time is Redis' own
# clock (replicas on several hosts agree). Every script: KEYS all sessions (zset by last
# use), one-turn sessions (same), session → owner (hash); ARGV session key prefix, owner
# key prefix, ttl_s, ttl_first_s, then its own.
_LIB = """
local now = 0
do local t = redis.call('TIME') now = tonumber(t[1]) + tonumber(t[2]) / 1e6 end
local ttl, ttl_first = tonumber(ARGV[3]), tonumber(ARGV[4])
local function drop(sid)
  local owner = redis.call('HGET', KEYS[3], sid)
  redis.call('ZREM', KEYS[1], sid)
  redis.call('ZREM', KEYS[2], sid)
  redis.call('HDEL', KEYS[3], sid)
  redis.call('DEL', ARGV[1] .. sid)
  if owner then redis.call('ZREM', ARGV[2] .. owner, sid) end
end
for _, sid in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now - ttl)) do drop(sid) end
for _, sid in ipairs(redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now - ttl_first)) do
  drop(sid)
end
"""
# ARGV 5..: per-owner cap, global cap, new id, owner. Returns {1} or {0, seconds to wait}.
_CREATE = (
    _LIB
    + """
local mine = ARGV[2] .. ARGV[8]
while redis.call('ZCARD', mine) >= tonumber(ARGV[5]) do
  drop(redis.call('ZRANGE', mine, 0, 0)[1])
end
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[6]) then
  local sids = redis.call('ZRANGE', KEYS[1], 0, -1)
  local owner_of, counts, top = {}, {}, 0
  for i, sid in ipairs(sids) do
    local o = redis.call('HGET', KEYS[3], sid) or ''
    owner_of[i] = o
    counts[o] = (counts[o] or 0) + 1
    if counts[o] > top then top = counts[o] end
  end
  local own, victim = counts[ARGV[8]] or 0, nil
  if top >= 2 and top > own then
    for i, sid in ipairs(sids) do
      if counts[owner_of[i]] == top then victim = sid break end
    end
  elseif own >= 1 then
    victim = redis.call('ZRANGE', mine, 0, 0)[1]
  end
  if not victim then
    local wait = math.huge
    local a = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
    local f = redis.call('ZRANGE', KEYS[2], 0, 0, 'WITHSCORES')
    if a[2] then wait = tonumber(a[2]) + ttl - now end
    if f[2] then wait = math.min(wait, tonumber(f[2]) + ttl_first - now) end
    return {0, tostring(wait)}
  end
  drop(victim)
end
redis.call('HSET', ARGV[1] .. ARGV[7], 'owner', ARGV[8], 'state', '{}')
redis.call('EXPIRE', ARGV[1] .. ARGV[7], math.ceil(ttl))
redis.call('ZADD', KEYS[1], now, ARGV[7])
redis.call('ZADD', KEYS[2], now, ARGV[7])
redis.call('HSET', KEYS[3], ARGV[7], ARGV[8])
redis.call('ZADD', mine, now, ARGV[7])
redis.call('EXPIRE', mine, math.ceil(ttl))
return {1}
"""
)
# ARGV 5..: the session's id, its owner, the state ('' to keep it), '1' for a new turn.
_TOUCH = (
    _LIB
    + """
local key, mine = ARGV[1] .. ARGV[5], ARGV[2] .. ARGV[6]
if redis.call('HGET', key, 'owner') ~= ARGV[6] then return false end
if ARGV[7] ~= '' then redis.call('HSET', key, 'state', ARGV[7]) end
redis.call('EXPIRE', key, math.ceil(ttl))
redis.call('EXPIRE', mine, math.ceil(ttl))
redis.call('ZADD', KEYS[1], now, ARGV[5])
redis.call('ZADD', mine, now, ARGV[5])
if ARGV[8] == '1' then
  redis.call('ZREM', KEYS[2], ARGV[5])
else
  redis.call('ZADD', KEYS[2], 'XX', now, ARGV[5])
end
return redis.call('HGET', key, 'state')
"""
)
# ARGV 5..: the session's id, its owner ('' : only count the live sessions).
_DROP = (
    _LIB
    + """
if ARGV[6] ~= '' then
  if redis.call('HGET', ARGV[1] .. ARGV[5], 'owner') ~= ARGV[6] then return 0 end
  drop(ARGV[5])
  return 1
end
return redis.call('ZCARD', KEYS[1])
"""
)


class RedisSessions:
    """Sessions in Redis: a hash per session (owner, state) that expires when idle, sorted
    sets by last use (all sessions, the one-turn ones, each owner's) and a hash of owners,
    for the caps. Every call goes through the storage guard (503 while Redis is down)."""

    def __init__(self, config: ChatConfig, url: str, prefix: str = "recfunnel:chat",
                 guard: StorageGuard | None = None) -> None:  # fmt: skip
        import redis

        self.config = config
        self.guard = guard or StorageGuard(url)
        self._redis = redis.Redis.from_url(url, decode_responses=True, **REDIS_OPTIONS)
        self._prefix = prefix
        self._keys = [f"{prefix}:all", f"{prefix}:first", f"{prefix}:owners"]
        self._create = self._redis.register_script(_CREATE)
        self._touch = self._redis.register_script(_TOUCH)
        self._drop = self._redis.register_script(_DROP)

    def _args(self, *more: str | float) -> list[str | float]:
        c = self.config
        return [f"{self._prefix}:s:", f"{self._prefix}:o:", c.ttl_s, c.ttl_first_s, *more]

    def _call(self, script: Any, *more: str | float) -> Any:
        return self.guard.call(lambda: script(keys=self._keys, args=self._args(*more)))

    def create(self, owner: str) -> str:
        sid = new_id()
        cfg = self.config
        out = self._call(self._create, cfg.sessions_per_client, cfg.sessions, sid, owner)
        if not int(out[0]):
            raise ChatFull(float(out[1]))
        return sid

    def load(self, sid: str, owner: str) -> dict[str, Any] | None:
        state = self._call(self._touch, sid, owner, "", "1")
        return None if state is None else dict(json.loads(state))

    def save(self, sid: str, owner: str, state: dict[str, Any]) -> None:
        self._call(self._touch, sid, owner, json.dumps(state), "0")

    def delete(self, sid: str, owner: str) -> bool:
        return bool(self._call(self._drop, sid, owner))

    def __len__(self) -> int:
        return int(self._call(self._drop, "", ""))


def sessions_from(
    storage: str, config: ChatConfig, guard: StorageGuard | None = None
) -> SessionStore:
    """The store a storage URI names (``memory://`` or ``redis://…``)."""
    if storage.startswith("memory://"):
        return MemorySessions(config)
    return RedisSessions(config, storage, guard=guard)
