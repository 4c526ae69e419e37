"""Chat sessions: made by the server only, owned by one client, bounded in number, size and
idle time — the same rules in memory and in a real Redis."""

from __future__ import annotations

import time

import pytest
from fastapi.testclient import TestClient

from recfunnel.serve.app import create_app
from recfunnel.serve.chat import KEEP, ChatAgent
from recfunnel.serve.config import ChatConfig
from recfunnel.serve.sessions import ChatFull, MemorySessions, RedisSessions, sessions_from


@pytest.fixture(params=["memory", "redis"])
def store_of(request):
    """A factory of empty stores of each kind (Redis: the test's own database)."""
    if request.param == "memory":
        return lambda cfg: MemorySessions(cfg)
    url = request.getfixturevalue("redis_url")
    return lambda cfg: RedisSessions(cfg, url)


def test_ids_are_unguessable_and_only_the_owner_gets_the_state(store_of):
    store = store_of(ChatConfig(sessions_per_client=50))
    ids = {store.create("addr:10.0.0.1") for _ in range(50)}
    assert len(ids) == 50 and all(len(i) == 32 for i in ids)  # 192 random bits each
    sid = next(iter(ids))
    store.save(sid, "addr:10.0.0.1", {"notes": ["secret plans"]})
    assert store.load(sid, "addr:10.0.0.1") == {"notes": ["secret plans"]}
    assert store.load(sid, "addr:10.0.0.2") is None  # foreign: looks absent
    assert store.load("1", "addr:10.0.0.1") is None  # never made by the server
    store.save(sid, "addr:10.0.0.2", {"notes": ["overwritten"]})  # a stranger's save: ignored
    assert store.load(sid, "addr:10.0.0.1") == {"notes": ["secret plans"]}
    assert not store.delete(sid, "addr:10.0.0.2") and store.delete(sid, "addr:10.0.0.1")
    assert store.load(sid, "addr:10.0.0.1") is None


def test_a_client_evicts_only_its_own_oldest_and_the_total_is_capped(store_of):
    store = store_of(ChatConfig(sessions=30, sessions_per_client=5))
    victim = store.create("addr:victim")
    store.save(victim, "addr:victim", {"turn": 3})
    flood = [store.create("addr:flood") for _ in range(1000)]
    assert store.load(victim, "addr:victim") == {"turn": 3}  # untouched by 1000 new sessions
    live = [s for s in flood if store.load(s, "addr:flood") is not None]
    assert live == flood[-5:] and len(store) == 6
    for n in range(24):  # 6 live + 24 clients' sessions: every slot taken
        store.create(f"addr:client-{n}")
    late = store.create("addr:late")  # the flood's idlest goes, nobody else's
    assert [s for s in flood if store.load(s, "addr:flood") is not None] == flood[-4:]
    assert store.load(victim, "addr:victim") == {"turn": 3} and len(store) == 30
    assert store.load(late, "addr:late") is not None


def test_a_few_dozen_clients_cannot_fill_the_store(store_of):
    """Issue 34, item 2: 49 clients with 20 sessions each filled all 1000 slots and every
    new client got 503. Now a full store evicts the idlest session of the clients holding
    the most, so each newcomer gets a slot and a client keeps at most its share."""
    store = store_of(ChatConfig(sessions=100, sessions_per_client=20))
    for c in range(5):
        for _ in range(20):
            store.create(f"addr:flood-{c}")
    newcomers = [store.create(f"addr:new-{n}") for n in range(40)]
    assert all(store.load(s, f"addr:new-{n}") is not None for n, s in enumerate(newcomers))
    assert len(store) == 100  # the five flooders keep 12 each: 60 + 40


def test_a_store_full_of_single_sessions_refuses_with_its_own_retry_after(store_of):
    store = store_of(ChatConfig(sessions=3, sessions_per_client=5, ttl_s=100, ttl_first_s=40))
    for n in range(3):
        store.create(f"addr:{n}")
    with pytest.raises(ChatFull) as full:
        store.create("addr:late")  # each client holds one: nobody's only chat is pushed out
    assert 39 <= full.value.retry_after <= 40  # the first one-turn session's expiry


def test_one_turn_sessions_expire_sooner(store_of):
    store = store_of(ChatConfig(ttl_s=30, ttl_first_s=1.0))
    once = store.create("addr:a")
    twice = store.create("addr:a")
    assert store.load(twice, "addr:a") is not None  # a second turn: the long timeout
    time.sleep(1.3)
    assert store.load(once, "addr:a") is None and store.load(twice, "addr:a") is not None
    assert len(store) == 1


def test_idle_sessions_expire(store_of):
    store = store_of(ChatConfig(ttl_s=1.0))
    sid = store.create("addr:a")
    kept = store.create("addr:a")
    time.sleep(0.6)
    assert store.load(kept, "addr:a") is not None  # used: its idle time restarts
    time.sleep(0.6)
    assert store.load(kept, "addr:a") is not None
    assert store.load(sid, "addr:a") is None and len(store) == 1


def test_redis_sessions_are_shared_between_processes_stores(redis_url):
    """Two stores on one Redis (as two workers have): one continues the other's session."""
    a, b = RedisSessions(ChatConfig(), redis_url), RedisSessions(ChatConfig(), redis_url)
    sid = a.create("key:abc")
    a.save(sid, "key:abc", {"turn": 1})
    assert b.load(sid, "key:abc") == {"turn": 1}
    assert isinstance(sessions_from(redis_url, ChatConfig()), RedisSessions)
    assert isinstance(sessions_from("memory://", ChatConfig()), MemorySessions)


def test_a_chat_over_redis_goes_on_in_another_agent(service, redis_url):
    one = ChatAgent(service, decide="rules", sessions=RedisSessions(service.config.chat, redis_url))
    two = ChatAgent(service, decide="rules", sessions=RedisSessions(service.config.chat, redis_url))
    t1 = one.turn("I like comedy and I loved Toy Story")
    t2 = two.turn("no horror", t1.session_id)
    assert t2.turn == 2 and t2.state["avoid_genres"] == ["Horror"]
    assert t2.state["liked"] == ["Toy Story (1995)"] and t2.state["genres"] == ["Comedy"]


def test_state_and_answer_stay_bounded_over_a_long_chat(service):
    """Every list of the state keeps its most recent entries; the answer stops growing
    (this chat's grew to 30 KB by turn 60; now about 4.5 KB from turn 5 on)."""
    c = TestClient(create_app(service))
    genres = ["comedy", "horror", "western", "musical", "documentary", "romance", "sci-fi"]
    titles = ["Toy Story", "Heat", "Alien", "Titanic", "Fargo", "Casino", "Jumanji", "Babe"]
    sid, sizes = None, []
    for n in range(60):  # loves then hates each title and genre: every list gets entries
        g, t = genres[n // 2 % len(genres)], titles[n // 2 % len(titles)]
        said = f"I hated {t}, no {g}" if n % 2 else f"I loved {t}, I like {g}"
        message = f"{said}, a slow moody story about lighthouses, take {n} " + "z" * 400
        body = {"message": message[:500], **({"session_id": sid} if sid else {})}
        r = c.post("/chat", json=body)
        assert r.status_code == 200, r.text
        sid = r.json()["session_id"]
        sizes.append(len(r.content))
    state = r.json()["state"]
    for name in ("liked", "disliked", "genres", "avoid_genres", "notes", "dropped"):
        assert len(state[name]) <= KEEP[name], name
    assert len(state["notes"]) == KEEP["notes"] and len(state["dropped"]) == KEEP["dropped"]
    assert state["shown"] <= KEEP["shown"]
    assert max(sizes) < 8_000 and max(sizes[30:]) <= max(sizes[:30]) + 500, sizes


def test_when_every_slot_is_taken_a_new_chat_is_refused_not_someone_elses(movielens):
    from serving import make_service

    svc = make_service(movielens, warmup=False, chat={"sessions": 2, "sessions_per_client": 1})
    app = create_app(svc)
    live = []
    for n in (1, 2):
        c = TestClient(app, client=(f"10.0.0.{n}", 5000))
        live.append((c, c.post("/chat", json={"message": "hi"}).json()["session_id"]))
    late = TestClient(app, client=("10.0.0.3", 5000)).post("/chat", json={"message": "hi"})
    assert late.status_code == 503  # the first one-turn session expires in ttl_first_s
    assert 290 <= int(late.headers["retry-after"]) <= 300
    assert "every chat session slot is in use" in late.json()["detail"]
    for c, sid in live:  # both conversations go on
        assert c.post("/chat", json={"message": "comedy", "session_id": sid}).status_code == 200
    again = live[0][0].post("/chat", json={"message": "hi"})  # a client replaces its own
    assert again.status_code == 200
    stale = {"message": "comedy", "session_id": live[0][1]}
    assert live[0][0].post("/chat", json=stale).status_code == 404
