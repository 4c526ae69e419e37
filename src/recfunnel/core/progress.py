"""The one progress-bar system: tqdm, quiet when stderr is not a terminal or when asked.

Long work (evaluation steps, LLM batches, embedding a catalog, downloads, training) shows
a bar on a terminal and nothing in a log file or CI; ``recfunnel --quiet`` (or
:func:`set_quiet`) silences every bar, third-party ones included where recfunnel drives
them (the embedder's own "Batches" bar follows :func:`enabled`).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Iterator, Sized
from typing import Any, TypeVar

from tqdm.auto import tqdm

T = TypeVar("T")
QUIET_ENV = "RECFUNNEL_QUIET"


def set_quiet(quiet: bool) -> None:
    """Silence (or allow) every progress bar of this process and its workers."""
    if quiet:
        os.environ[QUIET_ENV] = "1"
    else:
        os.environ.pop(QUIET_ENV, None)


def enabled(min_steps: int = 0, total: int | None = None) -> bool:
    """Whether a bar should show: not quiet, stderr is a terminal, and the work is long
    enough (``total`` >= ``min_steps``) that a bar says something."""
    if os.environ.get(QUIET_ENV) == "1" or not sys.stderr.isatty():
        return False
    return total is None or total >= min_steps


def bar(total: int | None = None, desc: str = "", unit: str = "it", min_steps: int = 0,
        **kw: Any) -> tqdm:  # fmt: skip
    """A progress bar (``with bar(n, "evaluating") as b: b.update()``)."""
    return tqdm(total=total, desc=desc, unit=unit, disable=not enabled(min_steps, total),
                dynamic_ncols=True, **kw)  # fmt: skip


def track(items: Iterable[T], desc: str = "", total: int | None = None, min_steps: int = 0,
          unit: str = "it") -> Iterator[T]:  # fmt: skip
    """Iterate ``items`` with a bar."""
    n = total if total is not None else (len(items) if isinstance(items, Sized) else None)
    with bar(n, desc, unit, min_steps) as b:
        for x in items:
            yield x
            b.update()


def third_party_bars() -> None:
    """Let transformers' and huggingface_hub's own bars ("Loading weights", downloads)
    follow :func:`enabled`: call before loading a model with them."""
    show = enabled()
    try:
        from transformers.utils import logging as tf_logging

        tf_logging.enable_progress_bar() if show else tf_logging.disable_progress_bar()
    except ImportError:
        pass
    try:
        import huggingface_hub.utils as hub

        hub.enable_progress_bars() if show else hub.disable_progress_bars()
    except ImportError:
        pass


def notice(message: str) -> None:
    """One line on stderr about something the user should know happened (a download),
    unless quiet."""
    if os.environ.get(QUIET_ENV) != "1":
        print(f"recfunnel: {message}", file=sys.stderr, flush=True)
