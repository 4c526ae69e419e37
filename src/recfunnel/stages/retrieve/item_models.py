"""Item-to-item models scored as one sparse product per batch: EASE and RP3β.

Both learn an item × item matrix ``W`` from the binary user × item training matrix ``X``
and score a batch of requests as ``H @ W`` (``H``: the batch's history matrix), so serving
is one matrix product, never a loop over users.

- **EASE** (Steck, "Embarrassingly Shallow Autoencoders for Sparse Data", WWW 2019):
  ``P = (XᵀX + λI)⁻¹``, ``B = I − P·diag(1/diag P)``, i.e. ``B_ij = −P_ij / P_jj`` off the
  diagonal and 0 on it: the ridge regression of each item's column on every other item's.
  ``B`` is dense: items² floats to hold, and cubic time in the items to invert.
- **RP3β** (Paudel, Christoffel, Newell and Bernstein, "Updatable, accurate, diverse, and
  scalable recommendations for interactive applications", ACM TiiS 2016): a three-step
  random walk user → item → user → item with every transition probability raised to
  ``α``, the arrival item's score divided by its degree to the power ``β``; each item keeps
  its ``neighbors`` strongest successors, so ``W`` is sparse.

Both run over the items that have a training event only (an item nobody interacted with
has no column to learn from); columns are kept in popularity order, so ties between
scores go to the more popular item, then the lower index.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import scipy.linalg
import scipy.sparse as sp

from recfunnel.core.candidates import PAD
from recfunnel.core.errors import ConfigError
from recfunnel.core.types import Request, history_matrix

BLOCK = 1 << 24
"""Entries of a dense working block (128 MB of float64): bounds the scratch memory."""
ROWS = 1024
"""Requests scored per dense block."""


def human_bytes(n: float) -> str:
    """``n`` bytes as a short figure (``2.3 GB``)."""
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    raise AssertionError("unreachable")


def ease_bytes(n_items: int) -> int:
    """Memory of EASE's dense float64 item × item matrix: items² × 8 bytes."""
    return n_items * n_items * 8


def check_ease_size(n_items: int, max_items: int) -> None:
    """Refuse an EASE whose items² matrix exceeds what the config allows, saying what it
    would need and what to use instead."""
    if n_items <= max_items:
        return
    raise ConfigError(
        f"EASE over {n_items:,} items needs a dense {n_items:,} × {n_items:,} matrix: "
        f"{human_bytes(ease_bytes(n_items))} of float64 (items² × 8 bytes) and time cubic in "
        f'the items, above ease_max_items = {max_items:,}. Use model = "rp3beta" or '
        f'model = "itemknn" (sparse item graphs), or raise ease_max_items if the memory '
        "is there."
    )


def gram(x: sp.csr_matrix) -> np.ndarray:
    """``XᵀX`` in float64, upper triangle only (what a Cholesky factorisation reads), in
    Fortran order, summed over dense blocks of users (BLAS ``syrk``: scratch stays small)."""
    n_users, n = x.shape
    out = np.zeros((n, n), dtype=np.float64, order="F")
    step = max(1, BLOCK // max(n, 1))
    for start in range(0, n_users, step):
        xb = x[start : start + step].toarray().astype(np.float64)
        # C = A·Aᵀ with A = xbᵀ (items × block users, Fortran order): the block's XᵀX
        out = scipy.linalg.blas.dsyrk(1.0, xb.T, beta=1.0, c=out, trans=0, lower=0,
                                      overwrite_c=1)  # fmt: skip
    return out


def ease_weights(x: sp.csr_matrix, lam: float) -> np.ndarray:
    """EASE's ``B`` for the binary matrix ``x`` (users × items), zero diagonal, float32.

    ``XᵀX + λI`` is symmetric positive definite, so it is inverted through its Cholesky
    factor, in place (half the work of an LU inverse; peak: one items² float64 matrix and
    the float32 copy kept)."""
    g = gram(x)
    g[np.diag_indices_from(g)] += lam
    c, info = scipy.linalg.lapack.dpotrf(g, lower=False, overwrite_a=True, clean=False)
    if info == 0:
        c, info = scipy.linalg.lapack.dpotri(c, lower=False, overwrite_c=True)
    if info != 0:
        raise FloatingPointError(f"EASE: XᵀX + λI is not positive definite (LAPACK {info})")
    p = _symmetric_from_upper(c)
    del g, c
    d = np.diag(p).copy()
    p /= -d[None, :]
    np.fill_diagonal(p, 0.0)
    return np.ascontiguousarray(p, dtype=np.float32)


def _symmetric_from_upper(a: np.ndarray) -> np.ndarray:
    """``a`` with its lower triangle copied from its upper one, in place, by row blocks."""
    n = a.shape[0]
    step = max(1, BLOCK // max(n, 1))
    for s in range(0, n, step):
        e = min(n, s + step)
        a[s:e, :s] = a[:s, s:e].T
        block = a[s:e, s:e]
        a[s:e, s:e] = np.triu(block) + np.triu(block, 1).T
    return a


def rp3beta_weights(x: sp.csr_matrix, alpha: float, beta: float, neighbors: int) -> sp.csr_matrix:
    """RP3β's item graph: ``W_ij = (P_iu P_uj)^α summed over users / deg_j^β``, diagonal
    zero, the ``neighbors`` largest entries of each row kept (dense row blocks, bounded)."""
    x = x.tocsr().astype(np.float64)
    x.data[:] = 1.0
    deg_u = np.asarray(x.sum(axis=1)).ravel()
    deg_i = np.asarray(x.sum(axis=0)).ravel()
    p_ui = sp.diags(np.power(1.0 / np.maximum(deg_u, 1.0), alpha)) @ x  # user → item
    p_iu = (sp.diags(np.power(1.0 / np.maximum(deg_i, 1.0), alpha)) @ x.T).tocsr()
    arrive = np.power(np.maximum(deg_i, 1.0), -beta)
    n = x.shape[1]
    keep = min(neighbors, max(n - 1, 1))
    step = max(1, BLOCK // max(n, 1))
    rows: list[np.ndarray] = []
    cols: list[np.ndarray] = []
    vals: list[np.ndarray] = []
    for start in range(0, n, step):
        stop = min(n, start + step)
        block = (p_iu[start:stop] @ p_ui).toarray() * arrive[None, :]
        block[np.arange(stop - start), np.arange(start, stop)] = 0.0
        if keep < n:
            top = np.argpartition(-block, keep - 1, axis=1)[:, :keep]
        else:
            top = np.broadcast_to(np.arange(n), block.shape)
        v = np.take_along_axis(block, top, axis=1)
        nz = v > 0
        rows.append(np.repeat(np.arange(start, stop), nz.sum(axis=1)))
        cols.append(top[nz])
        vals.append(v[nz])
    w = sp.csr_matrix(
        (np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), shape=(n, n)
    )
    w.sort_indices()
    return w


def top_k(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Column indices and scores of each row's ``k`` best finite scores, best first; ties
    go to the lower column (here: the more popular item). Vectorised over rows."""
    n, m = scores.shape
    kk = min(k, m)
    cols_out = np.full((n, k), PAD, dtype=np.int64)
    sc_out = np.full((n, k), -np.inf)
    if kk == 0 or n == 0:
        return cols_out, sc_out
    thr = np.partition(scores, m - kk, axis=1)[:, m - kk][:, None]  # the kk-th largest
    above = scores > thr
    tied = scores == thr
    need = kk - above.sum(axis=1)
    take = (above | (tied & (np.cumsum(tied, axis=1) <= need[:, None]))) & np.isfinite(scores)
    r, c = np.nonzero(take)
    s = scores[r, c]
    order = np.lexsort((c, -s, r))
    r, c, s = r[order], c[order], s[order]
    starts = np.concatenate([[0], np.cumsum(take.sum(axis=1))[:-1]])
    slot = np.arange(len(r)) - starts[r]
    cols_out[r, slot] = c
    sc_out[r, slot] = s
    return cols_out, sc_out


@dataclass
class ItemModel:
    """A fitted item × item model over ``items`` (catalog indices, popularity order)."""

    items: np.ndarray
    weights: np.ndarray | sp.csr_matrix
    user_alpha: float = 0.0
    """RP3β's first step: a history's rows weigh ``(1/|history|)^α`` (EASE: 0, none)."""

    def recommend(
        self, requests: Sequence[Request], k: int, n_items: int
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(items, scores, known): each request's top ``k`` (history excluded, PAD where
        fewer items score), and whether any of its history items is known to the model
        (rows without one are left empty for the caller's fallback)."""
        col_of = np.full(n_items, -1, dtype=np.int64)
        col_of[self.items] = np.arange(len(self.items))
        hist = history_matrix(requests, n_items)
        cols = col_of[hist.indices]
        keep = cols >= 0
        row_of = np.repeat(np.arange(len(requests)), np.diff(hist.indptr))
        h = sp.csr_matrix(
            (np.ones(int(keep.sum())), (row_of[keep], cols[keep])),
            shape=(len(requests), len(self.items)),
        )
        known = np.diff(h.indptr) > 0
        if self.user_alpha:
            lengths = np.maximum(np.diff(h.indptr), 1).astype(np.float64)
            h = sp.diags(np.power(lengths, -self.user_alpha)) @ h
        items = np.full((len(requests), k), PAD, dtype=np.int64)
        scores = np.full((len(requests), k), -np.inf)
        for start in range(0, len(requests), ROWS):
            part = h[start : start + ROWS]
            s = part @ self.weights
            s = np.asarray(s.toarray() if sp.issparse(s) else s, dtype=np.float64)
            r, c = part.nonzero()
            s[r, c] = -np.inf  # history items never come back
            c_top, s_top = top_k(s, k)
            rows = slice(start, start + part.shape[0])
            items[rows] = np.where(c_top == PAD, PAD, self.items[np.maximum(c_top, 0)])
            scores[rows] = s_top
        items[~known], scores[~known] = PAD, -np.inf
        return items, scores, known
