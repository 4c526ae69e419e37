"""`recfunnel reproduce`: the documentation's page is current, every entry's config exists,
and speed entries refuse a busy machine."""

from __future__ import annotations

import re
import shlex
import tomllib
from pathlib import Path

import pytest
from typer.testing import CliRunner

from recfunnel.cli import app
from recfunnel.cli import reproduce as rp
from recfunnel.core import machine

ROOT = Path(__file__).resolve().parents[2]


def test_reproducing_page_is_current() -> None:
    page = (ROOT / "docs" / "reproducing.md").read_text()
    assert page == rp.markdown(), "run: recfunnel reproduce --markdown > docs/reproducing.md"


def test_every_results_table_names_an_entry() -> None:
    names = {e.name for e in rp.ENTRIES}
    cited = set()
    for doc in ("docs/results.md", "README.md"):
        text = (ROOT / doc).read_text()
        for name in re.findall(r"recfunnel reproduce ([a-z][a-z0-9-]*)", text):
            assert name in names, f"{doc} cites `recfunnel reproduce {name}`, no such entry"
            cited.add(name)
    assert {"cold-start", "stacked", "lastfm", "amazon", "routing", "soak"} <= cited


@pytest.mark.parametrize("entry", rp.ENTRIES, ids=lambda e: e.name)
def test_entry_commands_name_files_that_exist(entry: rp.Entry) -> None:
    for command in entry.commands:
        words = shlex.split(command)
        assert words[0] in ("recfunnel", "python"), command
        for i, w in enumerate(words):
            if words[i - 1] == "--config" or w.startswith("benchmarks/"):
                assert (ROOT / w).is_file(), f"{entry.name}: {w} does not exist"
    assert entry.output.startswith("out/")


def adapters(node: object) -> list[str]:
    """Every `adapter = "..."` value anywhere in a parsed config."""
    if isinstance(node, dict):
        found = [v for k, v in node.items() if k == "adapter" and isinstance(v, str)]
        return found + [a for v in node.values() for a in adapters(v)]
    if isinstance(node, list):
        return [a for v in node for a in adapters(v)]
    return []


@pytest.mark.parametrize("entry", rp.ENTRIES, ids=lambda e: e.name)
def test_entry_trains_every_adapter_it_reads(entry: rp.Entry) -> None:
    """An entry must run on a clean clone: each adapter its configs load is trained by an
    earlier command of the same entry, not left over from another entry's run."""
    trained: set[str] = set()
    for command in entry.commands:
        words = shlex.split(command)
        if "--config" not in words:
            continue
        doc = tomllib.loads((ROOT / words[words.index("--config") + 1]).read_text())
        if words[1] == "train":
            trained.add(doc["out"])
            continue
        for adapter in adapters(doc):
            run = str(Path(adapter).parent)
            assert run in trained, f"{entry.name}: reads {adapter}, no earlier command trains {run}"


def test_speed_entry_refuses_a_busy_machine(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(machine.os, "getloadavg", lambda: (9.0, 9.0, 9.0))
    monkeypatch.setattr(rp.subprocess, "run", pytest.fail)  # nothing may start
    speed = next(e for e in rp.ENTRIES if e.speed)
    res = CliRunner().invoke(app, ["reproduce", speed.name])
    assert res.exit_code != 0
    assert "busy" in res.output and "--busy-ok" in res.output


def test_benchmark_refuses_a_busy_machine(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(machine.os, "getloadavg", lambda: (9.0, 9.0, 9.0))
    with pytest.raises(SystemExit, match="busy"):
        machine.require_quiet(busy_ok=False)
    m = machine.require_quiet(busy_ok=True)
    assert not m["quiet"] and "BUSY" in machine.describe(m)


def test_quiet_machine_runs_a_quality_entry(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A quality entry runs on a busy machine too (its numbers do not depend on load), runs
    its commands with this interpreter, and prints the table from what they wrote."""
    monkeypatch.setattr(machine.os, "getloadavg", lambda: (9.0, 9.0, 9.0))
    monkeypatch.chdir(tmp_path)
    ran: list[list[str]] = []

    def fake_run(argv: list[str], check: bool) -> object:
        ran.append(argv)
        (tmp_path / "out" / "cold-start.json").write_text(
            '{"dataset": "d", "protocol": "p", "seeds": [0], "results": [{"pipeline": "pop",'
            ' "metrics": {"hr@10": 0.5, "ndcg@10": 0.25, "recall@200": 0.4,'
            ' "unique@10": 15, "gini@10": 0.99}}]}'
        )
        return type("Done", (), {"returncode": 0})()

    monkeypatch.setattr(rp.subprocess, "run", fake_run)
    res = CliRunner().invoke(app, ["reproduce", "cold-start"])
    assert res.exit_code == 0, res.output
    assert ran and ran[0][1:3] == ["-m", "recfunnel"]
    assert "0.250" in res.output and "pop" in res.output


def test_unknown_entry_is_named() -> None:
    res = CliRunner().invoke(app, ["reproduce", "nope"])
    assert res.exit_code != 0 and "nope" in res.output
