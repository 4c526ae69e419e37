"""fetch() against a real HTTP server on the loopback interface, serving archives built here."""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import threading
import zipfile
from collections.abc import Callable, Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from recfunnel.data import load_dataset
from recfunnel.data.fetch import archive_url, fetch, parse_md5
from recfunnel.data.registry import DATASETS, Archive
from recfunnel.errors import (
    ChecksumMismatch,
    ConfigError,
    DatasetFormatError,
    DownloadError,
)


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    """httpx honours proxy variables; a proxy cannot reach our loopback server."""
    for var in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(var, raising=False)


class Server:
    """A static file server in a thread; remembers the paths it was asked for."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.requests: list[str] = []
        requests = self.requests

        class Handler(SimpleHTTPRequestHandler):
            def do_GET(self) -> None:
                requests.append(self.path)
                super().do_GET()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        handler = functools.partial(Handler, directory=str(folder))
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join()


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    folder = tmp_path / "www"
    folder.mkdir()
    srv = Server(folder)
    yield srv
    srv.close()


@pytest.fixture
def ml100k_zip(
    tmp_path: Path, server: Server, write_ml100k: Callable[[Path], Path]
) -> tuple[Path, str]:
    """ml-100k.zip as GroupLens lays it out (files under ml-100k/), served; returns its md5."""
    src = write_ml100k(tmp_path / "src" / "ml-100k")
    (src / "README").write_text("MovieLens 100K (test copy)\n")
    archive = server.folder / "ml-100k.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("ml-100k/", "")
        for f in sorted(src.iterdir()):
            zf.write(f, f"ml-100k/{f.name}")
        zf.writestr("__MACOSX/ml-100k/._u.data", b"\x00junk")  # outside the inner folder
    return archive, hashlib.md5(archive.read_bytes()).hexdigest()


def _pin(monkeypatch: pytest.MonkeyPatch, name: str, md5: str | None) -> None:
    spec = DATASETS[name]
    assert spec.archive is not None
    archive = dataclasses.replace(spec.archive, md5=md5)
    monkeypatch.setitem(DATASETS, name, dataclasses.replace(spec, archive=archive))


def test_fetch_pinned_md5_then_load(
    tmp_path: Path, server: Server, ml100k_zip: tuple[Path, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    _pin(monkeypatch, "ml-100k", ml100k_zip[1])
    root = tmp_path / "data"
    folder = fetch("ml-100k", root, url=server.url)
    assert folder == root / "ml-100k"
    assert sorted(p.name for p in folder.iterdir()) == ["README", "u.data", "u.item"]
    assert sorted(p.name for p in root.iterdir()) == ["ml-100k"]  # no temp leftovers
    assert server.requests == ["/ml-100k.zip"]
    ds = load_dataset("ml-100k", data_dir=root)
    assert len(ds.interactions) == 5 and len(ds.catalog) == 4
    assert "Café Noir" in ds.catalog.titles.tolist()


@pytest.mark.parametrize("style", ["bsd", "gnu"])
def test_fetch_published_md5_file(
    tmp_path: Path,
    server: Server,
    ml100k_zip: tuple[Path, str],
    monkeypatch: pytest.MonkeyPatch,
    style: str,
) -> None:
    _pin(monkeypatch, "ml-100k", None)
    archive, md5 = ml100k_zip
    line = f"MD5 (ml-100k.zip) = {md5}\n" if style == "bsd" else f"{md5}  ml-100k.zip\n"
    (server.folder / "ml-100k.zip.md5").write_text(line)
    folder = fetch("ml-100k", tmp_path / "data", url=server.url + "/")
    assert (folder / "u.item").read_bytes() == (
        archive.parent.parent / "src" / "ml-100k" / "u.item"
    ).read_bytes()
    assert server.requests == ["/ml-100k.zip.md5", "/ml-100k.zip"]


def test_second_fetch_is_a_no_op(
    tmp_path: Path, server: Server, ml100k_zip: tuple[Path, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    _pin(monkeypatch, "ml-100k", ml100k_zip[1])
    root = tmp_path / "data"
    first = fetch("ml-100k", root, url=server.url)
    stamp = (first / "u.data").stat().st_mtime_ns
    assert fetch("ml-100k", root, url=server.url) == first
    assert server.requests == ["/ml-100k.zip"]  # not downloaded again
    assert (first / "u.data").stat().st_mtime_ns == stamp
    (first / "u.data").write_text("1\t242\t5\t1\n")
    fetch("ml-100k", root, url=server.url, force=True)  # force replaces the folder
    assert len(server.requests) == 2
    assert len(load_dataset("ml-100k", data_dir=root).interactions) == 5


def test_wrong_pinned_checksum_leaves_nothing(
    tmp_path: Path, server: Server, ml100k_zip: tuple[Path, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    _pin(monkeypatch, "ml-100k", "0" * 32)
    root = tmp_path / "data"
    with pytest.raises(ChecksumMismatch, match=r"expected 0{32}"):
        fetch("ml-100k", root, url=server.url)
    assert not root.exists()


def test_wrong_published_checksum_leaves_nothing(
    tmp_path: Path, server: Server, ml100k_zip: tuple[Path, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    _pin(monkeypatch, "ml-100k", None)
    (server.folder / "ml-100k.zip.md5").write_text(f"MD5 (ml-100k.zip) = {'f' * 32}\n")
    root = tmp_path / "data"
    root.mkdir()
    with pytest.raises(ChecksumMismatch):
        fetch("ml-100k", root, url=server.url)
    assert list(root.iterdir()) == []


def test_missing_archive_or_checksum(
    tmp_path: Path, server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    _pin(monkeypatch, "ml-100k", None)
    with pytest.raises(DownloadError, match=r"ml-100k\.zip\.md5"):
        fetch("ml-100k", tmp_path / "data", url=server.url)
    _pin(monkeypatch, "ml-100k", "0" * 32)
    with pytest.raises(DownloadError, match="404"):
        fetch("ml-100k", tmp_path / "data", url=server.url)
    assert not (tmp_path / "data").exists()


def test_refuses_entries_that_escape(
    tmp_path: Path, server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    archive = server.folder / "ml-100k.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("ml-100k/u.data", "1\t1\t5\t1\n")
        zf.writestr("ml-100k/u.item", "1|A|||" + "|0" * 19 + "\n")
        zf.writestr("ml-100k/../../evil.txt", "gotcha")
    _pin(monkeypatch, "ml-100k", hashlib.md5(archive.read_bytes()).hexdigest())
    root = tmp_path / "data"
    with pytest.raises(DatasetFormatError, match="escapes"):
        fetch("ml-100k", root, url=server.url)
    assert not root.exists()
    assert not list(tmp_path.rglob("evil.txt"))


def test_archive_without_the_files(
    tmp_path: Path, server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    archive = server.folder / "ml-100k.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("other/u.data", "1\t1\t5\t1\n")
    _pin(monkeypatch, "ml-100k", hashlib.md5(archive.read_bytes()).hexdigest())
    with pytest.raises(DatasetFormatError, match=r"u\.data, u\.item"):
        fetch("ml-100k", tmp_path / "data", url=server.url)
    assert not (tmp_path / "data").exists()


@pytest.mark.parametrize("name", ["lastfm-2k", "amazon-games"])
def test_datasets_without_archive(tmp_path: Path, name: str) -> None:
    with pytest.raises(ConfigError, match="ship in the data folder"):
        fetch(name, tmp_path)


def test_unknown_dataset_and_incomplete_folder(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unknown dataset"):
        fetch("ml-10t", tmp_path)
    (tmp_path / "ml-100k").mkdir()
    (tmp_path / "ml-100k" / "u.data").write_text("")
    with pytest.raises(ConfigError, match="force"):
        fetch("ml-100k", tmp_path, url="http://127.0.0.1:9")  # refused before any download


def test_archive_url_and_parse_md5() -> None:
    a = Archive("https://files.grouplens.org/datasets/movielens/ml-1m.zip", None, "ml-1m")
    assert archive_url(a, None) == a.url
    assert archive_url(a, "http://mirror/x/") == "http://mirror/x/ml-1m.zip"
    assert archive_url(a, "http://mirror/y/ml-1m.zip") == "http://mirror/y/ml-1m.zip"
    digest = "c4d9eecfca2ab87c1945afe126590906"
    assert parse_md5(f"MD5 (ml-1m.zip) = {digest}\n") == digest
    assert parse_md5(f"{digest.upper()}  ml-1m.zip") == digest
    with pytest.raises(ChecksumMismatch):
        parse_md5("<html>not found</html>")
