"""fetch() against a real HTTP server on the loopback interface, serving archives built here."""

from __future__ import annotations

import dataclasses
import hashlib
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from recfunnel.core.errors import (
    ChecksumMismatch,
    ConfigError,
    DatasetFormatError,
    DatasetNotFound,
    DownloadError,
)
from recfunnel.data import load_dataset
from recfunnel.data.fetch import archive_url, fetch, parse_md5
from recfunnel.data.registry import DATASETS, Archive
from servers import FileServer as Server


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    """httpx honours proxy variables; a proxy cannot reach our loopback server. Downloads
    are allowed here (the suite forbids them elsewhere)."""
    for var in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.delenv("RECFUNNEL_OFFLINE", raising=False)
    monkeypatch.delenv("RECFUNNEL_DATA_URL", raising=False)


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
    (server.folder / "movielens").mkdir()
    archive = server.folder / "movielens" / "ml-100k.zip"
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
    assert server.requests == ["/movielens/ml-100k.zip"]
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
    _, md5 = ml100k_zip
    line = f"MD5 (ml-100k.zip) = {md5}\n" if style == "bsd" else f"{md5}  ml-100k.zip\n"
    (server.folder / "movielens" / "ml-100k.zip.md5").write_text(line)
    folder = fetch("ml-100k", tmp_path / "data", url=server.url + "/")
    assert (folder / "u.item").read_bytes() == (
        tmp_path / "src" / "ml-100k" / "u.item"
    ).read_bytes()
    assert server.requests == ["/movielens/ml-100k.zip.md5", "/movielens/ml-100k.zip"]


def test_second_fetch_is_a_no_op(
    tmp_path: Path, server: Server, ml100k_zip: tuple[Path, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    _pin(monkeypatch, "ml-100k", ml100k_zip[1])
    root = tmp_path / "data"
    first = fetch("ml-100k", root, url=server.url)
    stamp = (first / "u.data").stat().st_mtime_ns
    assert fetch("ml-100k", root, url=server.url) == first
    assert server.requests == ["/movielens/ml-100k.zip"]  # not downloaded again
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
    (server.folder / "movielens" / "ml-100k.zip.md5").write_text(
        f"MD5 (ml-100k.zip) = {'f' * 32}\n"
    )
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
    (server.folder / "movielens").mkdir()
    archive = server.folder / "movielens" / "ml-100k.zip"
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
    (server.folder / "movielens").mkdir()
    archive = server.folder / "movielens" / "ml-100k.zip"
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


def test_archive_url_and_parse_md5(monkeypatch: pytest.MonkeyPatch) -> None:
    a = Archive("https://files.grouplens.org/datasets", "movielens/ml-1m.zip", None, "ml-1m")
    monkeypatch.delenv("RECFUNNEL_DATA_URL", raising=False)
    assert (
        archive_url(a, None) == a.url == "https://files.grouplens.org/datasets/movielens/ml-1m.zip"
    )
    assert archive_url(a, "http://mirror/x/") == "http://mirror/x/movielens/ml-1m.zip"
    assert archive_url(a, "http://mirror/y/ml-1m.zip") == "http://mirror/y/ml-1m.zip"
    monkeypatch.setenv("RECFUNNEL_DATA_URL", "http://air-gapped:8080/data")
    assert archive_url(a) == "http://air-gapped:8080/data/movielens/ml-1m.zip"
    digest = "c4d9eecfca2ab87c1945afe126590906"
    assert parse_md5(f"MD5 (ml-1m.zip) = {digest}\n") == digest
    assert parse_md5(f"{digest.upper()}  ml-1m.zip") == digest
    with pytest.raises(ChecksumMismatch):
        parse_md5("<html>not found</html>")


# ---- data on first use ---------------------------------------------------------------
RATINGS = (
    "userId,movieId,rating,timestamp\n1,1,4.0,964982703\n1,3,4.0,964981247\n2,1,5.0,964982224\n"
)
MOVIES = "movieId,title,genres\n1,Toy Story (1995),Adventure|Animation\n3,Heat (1995),Action\n"


@pytest.fixture
def mirror(server: Server) -> Server:
    """A mirror with GroupLens' layout: movielens/ml-latest-small.zip and its .md5."""
    (server.folder / "movielens").mkdir(exist_ok=True)
    archive = server.folder / "movielens" / "ml-latest-small.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("ml-latest-small/ratings.csv", RATINGS)
        zf.writestr("ml-latest-small/movies.csv", MOVIES)
        zf.writestr("ml-latest-small/README.txt", "test copy\n")
    digest = hashlib.md5(archive.read_bytes()).hexdigest()
    (server.folder / "movielens" / "ml-latest-small.zip.md5").write_text(
        f"MD5 (ml-latest-small.zip) = {digest}\n"
    )
    return server


def test_first_use_downloads_once_from_the_mirror(
    tmp_path: Path, mirror: Server, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    monkeypatch.setenv("RECFUNNEL_DATA_URL", mirror.url)
    monkeypatch.delenv("RECFUNNEL_DATA", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))  # the user's cache folder
    ds = load_dataset("ml-latest-small")
    assert len(ds.interactions) == 3 and ds.catalog.n_items == 2
    where = tmp_path / "cache" / "recfunnel" / "data" / "ml-latest-small"
    assert (where / "ratings.csv").read_text() == RATINGS
    assert mirror.requests == ["/movielens/ml-latest-small.zip.md5",
                               "/movielens/ml-latest-small.zip"]  # fmt: skip
    assert f"into {where}" in capsys.readouterr().err  # one line says where it went
    load_dataset("ml-latest-small")  # the second use downloads nothing
    assert len(mirror.requests) == 2


def test_offline_never_downloads(
    tmp_path: Path, mirror: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RECFUNNEL_DATA_URL", mirror.url)
    monkeypatch.setenv("RECFUNNEL_OFFLINE", "1")
    with pytest.raises(DatasetNotFound, match=r"ratings\.csv.*Downloads are off"):
        load_dataset("ml-latest-small", tmp_path / "data")
    assert mirror.requests == [] and not (tmp_path / "data").exists()


def test_a_download_cut_halfway_leaves_nothing(
    tmp_path: Path, mirror: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RECFUNNEL_DATA_URL", mirror.url)
    mirror.cut.add("/movielens/ml-latest-small.zip")
    root = tmp_path / "data"
    with pytest.raises(DownloadError, match="downloading it failed"):
        load_dataset("ml-latest-small", root)
    assert not root.exists()  # no half-written folder, no temporary leftovers


def test_a_corrupt_archive_leaves_nothing(
    tmp_path: Path, mirror: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Bytes that match their published checksum but are not a zip (a broken upload)."""
    archive = mirror.folder / "movielens" / "ml-latest-small.zip"
    archive.write_bytes(b"PK\x03\x04 this is not really a zip file" * 10)
    digest = hashlib.md5(archive.read_bytes()).hexdigest()
    (archive.parent / "ml-latest-small.zip.md5").write_text(f"{digest}  ml-latest-small.zip\n")
    monkeypatch.setenv("RECFUNNEL_DATA_URL", mirror.url)
    root = tmp_path / "data"
    with pytest.raises(DatasetFormatError, match="not a zip archive"):
        load_dataset("ml-latest-small", root)
    assert not root.exists()


def test_a_wrong_checksum_on_first_use_leaves_nothing(
    tmp_path: Path, mirror: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    (mirror.folder / "movielens" / "ml-latest-small.zip.md5").write_text("0" * 32 + "\n")
    monkeypatch.setenv("RECFUNNEL_DATA_URL", mirror.url)
    root = tmp_path / "data"
    with pytest.raises(ChecksumMismatch, match=r"downloading it failed.*expected 0{32}"):
        load_dataset("ml-latest-small", root)
    assert not root.exists()
