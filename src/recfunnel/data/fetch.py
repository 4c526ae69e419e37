"""Download a registered dataset's archive, verify it, and install its folder atomically.

A dataset folder either holds the complete, verified files or does not exist: the archive
is checked against its MD5 (pinned in the registry, else the ``<url>.md5`` file GroupLens
publishes beside each zip) before anything is extracted, extraction goes to a temporary
folder beside the destination, and only a finished folder is renamed into place.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
import stat
import tempfile
import zipfile
from pathlib import Path, PurePosixPath

import httpx

from recfunnel.core import progress
from recfunnel.core.errors import (
    ChecksumMismatch,
    ConfigError,
    DatasetFormatError,
    DownloadError,
)
from recfunnel.core.paths import DATA_URL_ENV, data_root
from recfunnel.data.registry import DATASETS, Archive, DatasetSpec

log = logging.getLogger(__name__)

_MD5 = re.compile(r"\b([0-9a-fA-F]{32})\b")
TIMEOUT = httpx.Timeout(30.0, read=120.0)
CHUNK = 1 << 16


def archive_url(archive: Archive, url: str | None = None) -> str:
    """Where to download ``archive`` from: under ``url`` (a mirror's base URL), else under
    ``$RECFUNNEL_DATA_URL``, else the publisher's; a ``url`` that already names a .zip is
    taken as the archive's full address. A mirror keeps the publisher's layout:
    ``<base>/movielens/ml-latest-small.zip``, with its ``.md5`` beside it."""
    base = url or os.environ.get(DATA_URL_ENV) or None
    if base is None:
        return archive.url
    if base.lower().endswith(".zip"):
        return base
    return f"{base.rstrip('/')}/{archive.path}"


def parse_md5(text: str) -> str:
    """The hex digest from an .md5 file: 'MD5 (file.zip) = <hex>' or '<hex>  file.zip'."""
    m = _MD5.search(text)
    if m is None:
        raise ChecksumMismatch(f"no MD5 digest in checksum file: {text[:200]!r}")
    return m.group(1).lower()


def _published_md5(client: httpx.Client, url: str) -> str:
    md5_url = url + ".md5"
    try:
        resp = client.get(md5_url)
        resp.raise_for_status()
    except httpx.HTTPError as exc:
        raise DownloadError(
            f"cannot get the published checksum {md5_url} ({exc}); refusing to install an "
            "unverified archive"
        ) from exc
    return parse_md5(resp.text)


def _download(client: httpx.Client, url: str, dest: Path) -> str:
    """Stream ``url`` into ``dest`` with a progress bar; returns the file's MD5."""
    digest = hashlib.md5(usedforsecurity=False)
    try:
        with client.stream("GET", url) as resp:
            resp.raise_for_status()
            total = int(resp.headers.get("content-length", 0)) or None
            with (
                dest.open("wb") as out,
                progress.bar(total, url.rsplit("/", 1)[-1], unit="B", unit_scale=True) as bar,
            ):
                for chunk in resp.iter_bytes(CHUNK):
                    out.write(chunk)
                    digest.update(chunk)
                    bar.update(len(chunk))
    except httpx.HTTPError as exc:
        raise DownloadError(f"cannot download {url} ({exc})") from exc
    return digest.hexdigest()


def _member_path(info: zipfile.ZipInfo, inner: str) -> PurePosixPath | None:
    """Where an entry goes relative to the inner folder; None for entries outside it
    (e.g. __MACOSX/); raises for entries that would escape the destination."""
    name = info.filename.replace("\\", "/")
    parts = PurePosixPath(name).parts
    is_link = stat.S_ISLNK(info.external_attr >> 16)
    if name.startswith("/") or ".." in parts or (parts and ":" in parts[0]) or is_link:
        raise DatasetFormatError(f"archive entry {info.filename!r} escapes the dataset folder")
    if not parts or parts[0] != inner:
        return None
    return PurePosixPath(*parts[1:]) if len(parts) > 1 else PurePosixPath()


def _extract(zip_path: Path, inner: str, target: Path) -> None:
    """Extract only the archive's ``inner`` folder's contents into ``target``."""
    try:
        zf = zipfile.ZipFile(zip_path)
    except zipfile.BadZipFile as exc:
        raise DatasetFormatError(f"{zip_path.name} is not a zip archive ({exc})") from exc
    with zf:
        plan = [(info, _member_path(info, inner)) for info in zf.infolist()]  # check all first
        root = target.resolve()
        for info, rel in plan:
            if rel is None or rel == PurePosixPath():
                continue
            out = (target / rel).resolve()
            if not out.is_relative_to(root):
                raise DatasetFormatError(f"archive entry {info.filename!r} escapes the folder")
            if info.is_dir():
                out.mkdir(parents=True, exist_ok=True)
                continue
            out.parent.mkdir(parents=True, exist_ok=True)
            with zf.open(info) as src, out.open("wb") as dst:
                shutil.copyfileobj(src, dst, CHUNK)


def _has_files(folder: Path, spec: DatasetSpec) -> bool:
    return all((folder / f).is_file() for f in spec.files)


def fetch(
    name: str,
    data_dir: str | os.PathLike[str] | None = None,
    *,
    url: str | None = None,
    force: bool = False,
) -> Path:
    """Download, verify and install dataset ``name``; returns its folder.

    ``url`` replaces the base URL (a mirror, or a local server in tests). Does nothing when
    the dataset's files are already there, unless ``force``. Raises :class:`ChecksumMismatch`
    (leaving nothing behind) when the archive does not match its MD5, and
    :class:`ConfigError` for datasets that cannot be downloaded.
    """
    spec = DATASETS.get(name)
    if spec is None:
        raise ConfigError(f"unknown dataset {name!r}; known: {', '.join(sorted(DATASETS))}")
    root = data_root(data_dir)
    dest = root / spec.folder
    if spec.archive is None:
        raise ConfigError(
            f"dataset {name!r} has no download: its files ship in the data folder; put "
            f"{', '.join(spec.files)} in {dest.resolve()}"
        )
    if _has_files(dest, spec) and not force:
        log.info("%s is already in %s; not downloading (force=True to replace)", name, dest)
        return dest
    if dest.exists() and not force:
        raise ConfigError(
            f"{dest.resolve()} exists but lacks some of {', '.join(spec.files)}; remove it "
            "or fetch with force=True to replace it"
        )

    src = archive_url(spec.archive, url)
    made_root = not root.exists()
    root.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{spec.folder}.fetch-", dir=root))
    try:
        with httpx.Client(timeout=TIMEOUT, follow_redirects=True) as client:
            expected = spec.archive.md5 or _published_md5(client, src)
            zip_path = work / "archive.zip"
            log.info("downloading %s", src)
            got = _download(client, src, zip_path)
        if got != expected.lower():
            raise ChecksumMismatch(
                f"{src} has MD5 {got}, expected {expected}; the download is corrupt or the "
                "archive changed upstream. Nothing was installed."
            )
        staged = work / "staged"
        staged.mkdir()
        _extract(zip_path, spec.archive.inner, staged)
        if not _has_files(staged, spec):
            missing = [f for f in spec.files if not (staged / f).is_file()]
            raise DatasetFormatError(
                f"{src} has no {', '.join(missing)} under {spec.archive.inner}/"
            )
        previous = work / "previous"
        if dest.exists():  # force: swap the old folder out only once the new one is ready
            dest.rename(previous)
        try:
            staged.rename(dest)
        except OSError:
            if previous.exists():
                previous.rename(dest)
            elif _has_files(dest, spec):  # another process installed it meanwhile
                return dest
            raise
        progress.notice(f"fetched {name} from {src} into {dest}")
        return dest
    finally:
        shutil.rmtree(work, ignore_errors=True)
        if made_root and not any(root.iterdir()):
            root.rmdir()
