"""The SQLite answer cache: hits, corrupt files, and a crash mid-write."""

import subprocess
import sys
import textwrap

from recfunnel.llm.cache import AnswerCache, answer_key


def test_hit_and_miss(tmp_path):
    c = AnswerCache(tmp_path / "a.sqlite")
    k = answer_key("m", "complete", "p", {"t": 0})
    assert c.get(k) is None
    c.put(k, {"text": "hi"})
    assert c.get(k) == {"text": "hi"}
    assert len(c) == 1
    # every input of the key matters
    assert k != answer_key("m2", "complete", "p", {"t": 0})
    assert k != answer_key("m", "complete", "p", {"t": 1})
    assert AnswerCache(tmp_path / "a.sqlite").get(k) == {"text": "hi"}  # persisted


def test_corrupt_file_is_moved_aside(tmp_path, caplog):
    path = tmp_path / "a.sqlite"
    path.write_bytes(b"this is not a database" * 100)
    c = AnswerCache(path)
    c.put("k", 1)
    assert c.get("k") == 1
    assert list(tmp_path.glob("a.sqlite.corrupt-*")), "the bad file is kept for inspection"
    assert "unreadable" in caplog.text


def test_crash_mid_write_keeps_committed_answers(tmp_path):
    path = tmp_path / "a.sqlite"
    c = AnswerCache(path)
    c.put("before", {"v": 1})
    c.close()
    # a process that dies (os._exit) inside an open write transaction
    code = textwrap.dedent(
        f"""
        import os, sqlite3
        conn = sqlite3.connect({str(path)!r})
        conn.execute("BEGIN")
        for i in range(1000):
            conn.execute("INSERT INTO answers VALUES (?, ?)", (f"k{{i}}", "x" * 1000))
        os._exit(1)
        """
    )
    assert subprocess.run([sys.executable, "-c", code]).returncode == 1
    c = AnswerCache(path)
    assert c.get("before") == {"v": 1}
    assert c.get("k5") is None and len(c) == 1


def test_sequential_backend_times_each_prompt_not_the_batch_mean():
    """p95 latency needs per-prompt compute time: a slow prompt must not be averaged away."""
    import time

    import numpy as np

    from scripted import ScriptedLLM

    def slow_if_long(prompt, options):
        time.sleep(0.25 if "slow" in prompt else 0.0)
        return np.zeros(len(options))

    llm = ScriptedLLM(logprobs=slow_if_long)
    batch = [[{"role": "user", "content": w}] for w in ("fast", "slow", "fast")]
    got = llm.option_logprobs_many(batch, ["A", "B"])
    secs = [g.compute_s for g in got]
    assert secs[1] >= 0.25 > 0.1 > max(secs[0], secs[2])
