"""A newcomer's first contact, as the README gives it: the Python example runs as written,
and the run command, from an empty folder with an empty cache and no ``RECFUNNEL_DATA``,
downloads ml-latest-small once (from a loopback mirror) and prints the table."""

from __future__ import annotations

import hashlib
import os
import re
import shlex
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from servers import FileServer

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def readme_python() -> str:
    blocks = re.findall(r"```python\n(.*?)```", (REPO / "README.md").read_text(), flags=re.S)
    assert len(blocks) == 1, "the README has one Python example"
    return blocks[0]


def test_the_readme_example_is_short_uses_top_level_names_and_runs(shared_data, tmp_path):
    code = readme_python()
    lines = [ln for ln in code.splitlines() if ln.strip()]
    assert len(lines) <= 10
    assert [ln for ln in lines if ln.startswith(("import", "from"))] == ["import recfunnel as rf"]
    env = {**os.environ, "RECFUNNEL_DATA": str(shared_data)}
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=600)  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    last = out.stdout.strip().splitlines()[-1]  # {'ndcg@10': 0.3…, 'recall@200': 0.4…}
    means = {k: float(v) for k, v in re.findall(r"'([^']+)': (?:np\.float64\()?([0-9.]+)", last)}
    assert set(means) == {"ndcg@10", "recall@200"}
    assert 0.2 < means["ndcg@10"] < 0.5 and 0.3 < means["recall@200"] < 0.6


def readme_run_command() -> list[str]:
    """The command `make run` runs (the README's run command), as the Makefile says it."""
    make = (REPO / "Makefile").read_text()
    recipe = re.search(r"^run:.*\n\t(.+)$", make, flags=re.M)
    assert recipe is not None, "the Makefile has a run target"
    args = shlex.split(recipe.group(1).replace("$(BIN)/", f"{BIN}/"))
    return [str(REPO / a) if a.startswith("configs/") else a for a in args]


@pytest.fixture
def mirror(shared_data, tmp_path):
    """ml-latest-small.zip (the real files) and its .md5, laid out as GroupLens does."""
    www = tmp_path / "www" / "movielens"
    www.mkdir(parents=True)
    archive = www / "ml-latest-small.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
        for f in sorted((shared_data / "ml-latest-small").glob("*.csv")):
            zf.write(f, f"ml-latest-small/{f.name}")
    digest = hashlib.md5(archive.read_bytes()).hexdigest()
    (www / "ml-latest-small.zip.md5").write_text(f"MD5 (ml-latest-small.zip) = {digest}\n")
    srv = FileServer(tmp_path / "www")
    yield srv
    srv.close()


@pytest.mark.slow
def test_the_run_command_fetches_on_first_use_then_never_again(mirror, tmp_path):
    cmd = readme_run_command()
    assert cmd[1] == "eval" and "--config" in cmd
    # the README's command, cut to one seed and two cheap pipelines to keep the test short
    cmd += ["--seeds", "1", "--users", "30", "--pipelines", "popularity,cf"]
    home = tmp_path / "home"
    env = {k: v for k, v in os.environ.items()
           if k not in ("RECFUNNEL_DATA", "RECFUNNEL_OFFLINE", "RECFUNNEL_CACHE")}  # fmt: skip
    env.update(HOME=str(home), XDG_CACHE_HOME=str(home / ".cache"),
               RECFUNNEL_DATA_URL=mirror.url, COLUMNS="200")  # fmt: skip
    empty = tmp_path / "empty"
    empty.mkdir()
    first = subprocess.run(cmd, cwd=empty, env=env, capture_output=True, text=True,
                           timeout=900)  # fmt: skip
    assert first.returncode == 0, first.stderr[-3000:]
    assert mirror.requests == ["/movielens/ml-latest-small.zip.md5",
                               "/movielens/ml-latest-small.zip"]  # fmt: skip
    cached = home / ".cache" / "recfunnel" / "data" / "ml-latest-small"
    assert (cached / "ratings.csv").is_file()
    assert str(cached) in first.stderr.replace("\n", "")  # the one-line notice says where
    assert "popularity" in first.stdout and "ndcg@10" in first.stdout
    assert (empty / "out" / "cold-start.json").is_file()
    second = subprocess.run(cmd, cwd=empty, env=env, capture_output=True, text=True,
                            timeout=900)  # fmt: skip
    assert second.returncode == 0, second.stderr[-3000:]
    assert len(mirror.requests) == 2  # nothing downloaded again
    assert "popularity" in second.stdout


def test_an_interrupted_setup_is_not_taken_for_a_finished_one(tmp_path):
    """pip writes bin/recfunnel before every dependency is in; `make setup` must go on
    installing until its own last step has run, whatever bin/ already holds."""
    shutil.copy(REPO / "Makefile", tmp_path / "Makefile")
    (tmp_path / "pyproject.toml").write_text("")
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "recfunnel").write_text("")  # newer than pyproject.toml, as pip left it

    def planned() -> str:
        # Under `make test` the child make would inherit MAKEFLAGS/MAKELEVEL and print
        # "Entering/Leaving directory" lines around the plan: start it clean.
        env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL")}
        out = subprocess.run(["make", "-n", "setup", f"VENV={venv}"], cwd=tmp_path, env=env,
                             capture_output=True, text=True, timeout=60)  # fmt: skip
        assert out.returncode == 0, out.stderr
        return out.stdout

    assert "pip install" in planned()  # interrupted: the install runs again
    steps = planned().strip().splitlines()
    assert steps[-1].startswith("touch ") and steps[-1].endswith(".installed")
    (venv / ".installed").write_text("")  # what the last step leaves
    assert "pip install" not in planned()
