"""SASRec: self-attention over a user's item sequence predicts the next item.

Kang & McAuley (2018), trained with a full softmax over the catalog (cross-entropy on
every position), which on small catalogs converges faster and ranks better than the
original sampled binary loss. Scoring is batched over requests; history is masked; a
request with no history gets the popularity list and is marked as a fallback.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Literal, Self

import numpy as np
from pydantic import Field

from recfunnel.core import progress
from recfunnel.core.candidates import PAD, CandidateBatch
from recfunnel.core.errors import require
from recfunnel.core.types import Interactions, Request, history_matrix
from recfunnel.stages.base import FitContext, StageConfig
from recfunnel.stages.retrieve.base import Retriever, keep_top
from recfunnel.stages.retrieve.popularity import PopularityRetriever


class SASRecConfig(StageConfig):
    kind: Literal["sasrec"] = "sasrec"
    max_len: int = Field(200, ge=2, description="most recent items the model reads")
    hidden: int = Field(64, ge=8)
    blocks: int = Field(2, ge=1)
    heads: int = Field(1, ge=1)
    dropout: float = Field(0.2, ge=0, lt=1)
    epochs: int = Field(40, ge=1)
    batch_size: int = Field(64, ge=1)
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    negatives: int | None = Field(
        None,
        ge=1,
        description="sampled softmax: shared uniform negatives per batch "
        "(None or >= catalog: full softmax)",
    )
    threads: int = Field(2, ge=1, description="torch CPU threads")
    seed: int = 0


def _torch():  # type: ignore[no-untyped-def]
    return require("torch", "embed")


def build_model(n_items: int, c: SASRecConfig):  # type: ignore[no-untyped-def]
    """The network: item + position embeddings, causal pre-norm transformer blocks."""
    torch = _torch()
    nn = torch.nn

    class SASRec(nn.Module):  # type: ignore[name-defined]
        def __init__(self) -> None:
            super().__init__()
            self.items = nn.Embedding(n_items + 1, c.hidden, padding_idx=0)  # token = item + 1
            self.positions = nn.Embedding(c.max_len, c.hidden)
            self.drop = nn.Dropout(c.dropout)
            layer = nn.TransformerEncoderLayer(
                c.hidden, c.heads, dim_feedforward=c.hidden, dropout=c.dropout,
                batch_first=True, norm_first=True,
            )  # fmt: skip
            self.encoder = nn.TransformerEncoder(layer, c.blocks, enable_nested_tensor=False)
            self.norm = nn.LayerNorm(c.hidden)
            for emb in (self.items, self.positions):  # small init: logits start near 0
                nn.init.normal_(emb.weight, std=c.hidden**-0.5)
            with torch.no_grad():
                self.items.weight[0].zero_()

        def forward(self, seq):  # type: ignore[no-untyped-def]
            """Hidden state at every position of left-padded token sequences [B, L]."""
            b, length = seq.shape
            pos = torch.arange(length, device=seq.device)
            x = self.items(seq) * math.sqrt(c.hidden) + self.positions(pos)[None]
            x = self.drop(x) * (seq != 0).unsqueeze(-1)
            # a position sees itself and earlier real items; padding sees only itself
            causal = torch.ones(length, length, dtype=torch.bool).tril()
            real = (seq != 0)[:, None, :] | torch.eye(length, dtype=torch.bool)[None]
            allowed = causal[None] & real
            mask = torch.zeros(b, length, length).masked_fill(~allowed, float("-inf"))
            mask = mask.repeat_interleave(c.heads, dim=0)
            return self.norm(self.encoder(x, mask=mask))

        def scores(self, hidden):  # type: ignore[no-untyped-def]
            return hidden @ self.items.weight[1:].T

    return SASRec()


def _sequences(train: Interactions) -> list[np.ndarray]:
    """Each user's training items in time order (ties by item index), as item indices."""
    f = train.frame
    order = np.lexsort((f["item"].to_numpy(), np.nan_to_num(f["timestamp"].to_numpy()),
                        f["user"].to_numpy()))  # fmt: skip
    users = f["user"].to_numpy()[order]
    items = f["item"].to_numpy()[order]
    cuts = np.flatnonzero(np.diff(users)) + 1
    return [s for s in np.split(items, cuts) if len(s) >= 2]


def _windows(seqs: list[np.ndarray], max_len: int) -> np.ndarray:
    """Training rows of ``max_len + 1`` tokens, cut from the end of each sequence
    (left-padded with 0), so long histories give several examples."""
    rows = []
    for s in seqs:
        tokens = s + 1
        for end in range(len(tokens), 1, -max_len):
            chunk = tokens[max(0, end - max_len - 1) : end]
            rows.append(np.r_[np.zeros(max_len + 1 - len(chunk), np.int64), chunk])
    return np.array(rows, dtype=np.int64).reshape(-1, max_len + 1)


def left_pad(histories: Sequence[np.ndarray], max_len: int) -> np.ndarray:
    out = np.zeros((len(histories), max_len), dtype=np.int64)
    for r, h in enumerate(histories):
        tail = np.asarray(h[-max_len:], dtype=np.int64) + 1
        if len(tail):
            out[r, -len(tail) :] = tail
    return out


class SASRecRetriever(Retriever[SASRecConfig]):
    config_class = SASRecConfig

    def fit(self, ctx: FitContext) -> Self:
        torch = _torch()
        c, train, catalog = self.config, ctx.train, ctx.catalog
        self.n_items_ = catalog.n_items
        self.popularity_ = PopularityRetriever().fit(ctx)
        # the vocabulary: items seen in training (nothing else can be predicted); an item's
        # position in it is its token - 1
        self.vocab_ = np.unique(train.frame["item"].to_numpy())
        self.token_ = np.zeros(catalog.n_items, dtype=np.int64)
        self.token_[self.vocab_] = np.arange(1, len(self.vocab_) + 1)
        threads = torch.get_num_threads()
        deterministic = torch.are_deterministic_algorithms_enabled()
        torch.set_num_threads(c.threads)
        # multi-threaded CPU kernels (embedding backward) otherwise add in varying order
        torch.use_deterministic_algorithms(True, warn_only=True)
        try:
            torch.manual_seed(c.seed)
            self.model_ = build_model(len(self.vocab_), c)
            seqs = [self.token_[s] - 1 for s in _sequences(train)]
            rows = torch.from_numpy(_windows(seqs, c.max_len))
            self.losses_ = self._train(rows) if len(rows) else []
        finally:
            torch.set_num_threads(threads)
            torch.use_deterministic_algorithms(deterministic)
        return self

    def __getstate__(self) -> dict[str, Any]:
        """The network travels as its weights (its class is built where torch is imported)."""
        state = dict(self.__dict__)
        if "model_" in state:
            state["model_"] = {k: v.detach().cpu() for k, v in self.model_.state_dict().items()}
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        weights = state.get("model_")
        self.__dict__.update(state)
        if isinstance(weights, dict):
            self.model_ = build_model(len(self.vocab_), self.config)
            self.model_.load_state_dict(weights)
            self.model_.eval()

    def _train(self, rows) -> list[float]:  # type: ignore[no-untyped-def]
        torch = _torch()
        c = self.config
        model = self.model_
        opt = torch.optim.Adam(model.parameters(), lr=c.lr, weight_decay=c.weight_decay)
        gen = torch.Generator().manual_seed(c.seed)
        losses = []
        model.train()
        for _ in progress.track(range(c.epochs), "sasrec", min_steps=6, unit="epoch"):
            total, count = 0.0, 0
            for idx in torch.randperm(len(rows), generator=gen).split(c.batch_size):
                batch = rows[idx]
                inp, target = batch[:, :-1], batch[:, 1:]
                keep = (target != 0) & (inp != 0)
                if not keep.any():
                    continue
                hidden = model(inp)[keep]
                loss = self._loss(hidden, target[keep] - 1, gen)
                opt.zero_grad()
                loss.backward()
                opt.step()
                total += loss.item() * int(keep.sum())
                count += int(keep.sum())
            losses.append(total / max(count, 1))
        model.eval()
        return losses

    def _loss(self, hidden, target, gen):  # type: ignore[no-untyped-def]
        """Cross-entropy over the whole vocabulary, or over the true item plus shared
        uniform negatives (a sampled softmax: the output layer dominates CPU time)."""
        torch = _torch()
        emb = self.model_.items.weight[1:]
        n_vocab = emb.shape[0]
        neg = self.config.negatives
        if neg is None or neg >= n_vocab:
            return torch.nn.functional.cross_entropy(hidden @ emb.T, target)
        negs = torch.randint(n_vocab, (neg,), generator=gen)
        pos = (hidden * emb[target]).sum(-1, keepdim=True)
        other = hidden @ emb[negs].T
        other = other.masked_fill(negs[None, :] == target[:, None], float("-inf"))
        logits = torch.cat([pos, other], dim=1)
        return torch.nn.functional.cross_entropy(logits, torch.zeros_like(target))

    def item_scores(self, requests: Sequence[Request], batch: int = 256) -> np.ndarray:
        """[requests, items] next-item scores from each request's latest history."""
        torch = _torch()
        known = [self.token_[r.history][self.token_[r.history] > 0] - 1 for r in requests]
        seqs = torch.from_numpy(left_pad(known, self.config.max_len))
        out = np.full((len(requests), self.n_items_), -np.inf, dtype=np.float32)
        threads = torch.get_num_threads()
        torch.set_num_threads(self.config.threads)
        try:
            with torch.no_grad():
                for lo in range(0, len(requests), batch):
                    hidden = self.model_(seqs[lo : lo + batch])[:, -1]
                    out[lo : lo + batch, self.vocab_] = self.model_.scores(hidden).numpy()
        finally:
            torch.set_num_threads(threads)
        return out

    def retrieve(self, requests: Sequence[Request], k: int) -> CandidateBatch:
        has = np.array([(self.token_[r.history] > 0).any() for r in requests], dtype=bool)
        items = np.full((len(requests), k), PAD, dtype=np.int64)
        scores = np.full((len(requests), k), -np.inf)
        rows = np.flatnonzero(has)
        if len(rows):
            warm = [requests[int(i)] for i in rows]
            s = self.item_scores(warm)
            hist = history_matrix(warm, self.n_items_)
            n = min(k + int(np.diff(hist.indptr).max()), self.n_items_)
            top = np.argpartition(-s, n - 1, axis=1)[:, :n] if n < s.shape[1] else np.tile(
                np.arange(s.shape[1]), (len(warm), 1))  # fmt: skip
            top_s = np.take_along_axis(s, top, axis=1)
            order = np.argsort(-top_s, axis=1, kind="stable")
            ranked = np.take_along_axis(top, order, axis=1)
            ranked_s = np.take_along_axis(top_s, order, axis=1).astype(np.float64)
            ranked = np.where(np.isfinite(ranked_s), ranked, PAD)  # never-trained items
            items[rows], scores[rows] = keep_top(ranked, ranked_s, hist, k)
        if (~has).any():
            pop = self.popularity_.retrieve([requests[int(i)] for i in np.flatnonzero(~has)], k)
            items[~has], scores[~has] = pop.items, pop.scores
        return CandidateBatch(items, scores, self.stage, fallback=~has)
