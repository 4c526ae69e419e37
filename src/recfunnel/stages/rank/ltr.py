"""A learned ranker: LightGBM LambdaRank over features the funnel already has.

Features of each (request, candidate): every retrieval pool's score and rank (a miss gets
NaN and the pool's depth), the fused score and rank, log-popularity, release year, genre
overlap with the history, embedding similarity to the history profile, history length.
It is trained on **validation** targets only (:meth:`LTRRanker.fit`), with the retrievers
fitted on the training split, and refuses training labels that are test targets.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal, Self

import numpy as np
from pydantic import Field

from recfunnel.core.candidates import PAD, CandidateBatch
from recfunnel.core.errors import ConfigError, RecfunnelError
from recfunnel.core.metrics import hit_matrix
from recfunnel.core.types import EvalSet, Request
from recfunnel.stages.base import FitContext, Stage, StageConfig, Trace, TuneContext
from recfunnel.stages.retrieve.content import ContentRetriever


class LeakageError(RecfunnelError):
    """A ranker was asked to learn from test targets."""


class LTRConfig(StageConfig):
    """A LambdaRank stage over the top ``top_n`` of the list so far."""

    kind: Literal["ltr"] = "ltr"
    top_n: int = Field(100, ge=2, description="candidates of the previous stage ranked")
    n_estimators: int = Field(500, ge=1, description="most trees; early stopping picks fewer")
    learning_rate: float = Field(0.05, gt=0)
    num_leaves: int = Field(15, ge=2)
    min_child_samples: int = Field(50, ge=1)
    holdout: float = Field(
        0.0, ge=0, lt=1,
        description="share of validation users held out to early-stop on NDCG@10, the "
        "final model refit on all (0: train all n_estimators; with a few hundred "
        "one-positive users the held-out NDCG is too noisy to stop on)",
    )  # fmt: skip
    patience: int = Field(30, ge=1, description="rounds without improvement before stopping")
    train_users: int | None = Field(None, ge=1, description="validation users used (None: all)")
    threads: int = Field(2, ge=1)
    seed: int = 0


class LTRRanker(Stage[LTRConfig]):
    """Reorders the top ``top_n`` of the list so far by a LambdaRank model."""

    family = "rank"
    mode = "head"
    config_class = LTRConfig

    # ---- features -------------------------------------------------------------------
    def fit(self, ctx: FitContext) -> Self:
        """Item-side features from the training split (no request needed); the content
        similarity comes from the pipeline's own content retriever when it has one."""
        catalog = ctx.catalog
        self.catalog_ = catalog
        self.popularity_ = np.log1p(ctx.train.item_counts().astype(np.float64))
        self.year_ = catalog.years
        self.genres_ = catalog.genre_matrix.astype(np.float32)
        content = next((s for s in ctx.earlier if isinstance(s, ContentRetriever)), None)
        self.content_ = content if content is not None else ContentRetriever().fit(ctx)
        return self

    @property
    def tune_users(self) -> int | None:
        return self.config.train_users

    def feature_names(self, pools: Sequence[str]) -> list[str]:
        per_pool = [f"{p}:{x}" for p in pools for x in ("score", "rank")]
        return [*per_pool, "fused:score", "fused:rank", "log_popularity", "year",
                "genre_overlap", "genre_share", "embedding_sim", "history_len"]  # fmt: skip

    def features(
        self,
        requests: Sequence[Request],
        head: CandidateBatch,
        pools: dict[str, CandidateBatch],
    ) -> np.ndarray:
        """[users, top_n, features]; PAD candidates get NaN rows."""
        items = head.items
        n, depth = items.shape
        safe = np.where(items == PAD, 0, items)
        cols: list[np.ndarray] = []
        for pool in pools.values():
            where = locate(items, pool.items)
            found = where >= 0
            score = np.where(found, np.take_along_axis(pool.scores, np.maximum(where, 0), 1),
                             np.nan)  # fmt: skip
            rank = np.where(found, where, pool.depth).astype(np.float64)
            cols += [score, rank]
        cols += [head.scores, np.broadcast_to(np.arange(depth, dtype=np.float64), (n, depth))]
        cols += [self.popularity_[safe], self.year_[safe]]
        hist_genres = np.zeros((n, self.genres_.shape[1]), dtype=np.float32)
        for r, req in enumerate(requests):
            if len(req.history):
                hist_genres[r] = self.genres_[req.history].mean(axis=0)
        cand_genres = self.genres_[safe]  # [n, depth, g]
        overlap = (cand_genres * (hist_genres[:, None, :] > 0)).sum(-1)
        union = np.maximum(((cand_genres + (hist_genres[:, None, :] > 0)) > 0).sum(-1), 1)
        cols += [overlap / union, (cand_genres * hist_genres[:, None, :]).sum(-1)]
        prof, _ = self.content_.profiles(requests)
        emb = self.content_.item_embeddings_[safe]  # [n, depth, d]
        cols += [np.einsum("ijd,id->ij", emb, prof).astype(np.float64)]
        lengths = np.array([len(r.history) for r in requests], dtype=np.float64)
        cols += [np.broadcast_to(lengths[:, None], (n, depth))]
        x = np.stack([np.asarray(c, dtype=np.float64) for c in cols], axis=-1)
        x[items == PAD] = np.nan
        return x

    # ---- learning on validation users -------------------------------------------------
    def tune(self, valid: EvalSet, ctx: TuneContext) -> dict[str, Any]:
        """Train on validation requests' candidates (the stages before this one, fitted on
        the training split) labelled by validation truth; the split's test set guards
        against leakage."""
        if len(valid) == 0:
            raise ConfigError("the ranker needs validation users (set protocol.n_valid)")
        before = ctx.before(valid.requests, 0)  # the pipeline's own pool depth
        self.fit_lists(valid, before.head(self.config.top_n), before.pools, ctx.split.test)
        return self.info()

    # ---- training -------------------------------------------------------------------
    def fit_lists(
        self,
        valid: EvalSet,
        head: CandidateBatch,
        pools: dict[str, CandidateBatch],
        forbidden: EvalSet | None = None,
    ) -> Self:
        """Learn from validation requests' candidates labelled by validation truth.

        ``forbidden`` (the test set) guards against leakage: a training label that is a
        test target of the same user raises :class:`LeakageError`.
        """

        labels = hit_matrix(head.items, valid.truth, self.catalog_.n_items)
        if forbidden is not None:
            test_pairs = {
                (req.user, int(i))
                for req, t in zip(forbidden.requests, forbidden.truth, strict=True)
                for i in t
            }
            for req, row, lab in zip(valid.requests, head.items, labels, strict=True):
                leaked = [int(i) for i in row[lab] if (req.user, int(i)) in test_pairs]
                if leaked:
                    raise LeakageError(
                        f"ranker training label(s) {leaked} of user {req.user} are test targets"
                    )
        x = self.features(valid.requests, head, pools)
        keep_users = labels.any(axis=1)  # a list with no positive teaches LambdaRank nothing
        if not keep_users.any():
            raise RecfunnelError("no validation user has a relevant item among the candidates")
        real = head.items != PAD
        xs, ys, groups = [], [], []
        for r in np.flatnonzero(keep_users):
            xs.append(x[r][real[r]])
            ys.append(labels[r][real[r]].astype(int))
            groups.append(int(real[r].sum()))
        self.names_ = self.feature_names(list(pools))
        self.n_estimators_ = self._rounds(xs, ys, groups)
        self.model_ = self._model(self.n_estimators_)
        self.model_.fit(np.concatenate(xs), np.concatenate(ys), group=groups)
        self.n_train_users_ = len(groups)
        return self

    def _model(self, n_estimators: int) -> Any:
        import lightgbm as lgb

        c = self.config
        return lgb.LGBMRanker(
            objective="lambdarank", n_estimators=n_estimators, learning_rate=c.learning_rate,
            num_leaves=c.num_leaves, min_child_samples=c.min_child_samples, random_state=c.seed,
            deterministic=True, force_row_wise=True, n_jobs=c.threads, verbose=-1,
            importance_type="gain",
        )  # fmt: skip

    def _rounds(self, xs: list[np.ndarray], ys: list[np.ndarray], groups: list[int]) -> int:
        """Trees to train: early-stopped on NDCG@10 of a seeded held-out share of the
        validation users. A few hundred one-positive queries overfit a full forest fast."""
        import lightgbm as lgb

        c = self.config
        n_out = round(c.holdout * len(groups))
        if n_out < 10 or len(groups) - n_out < 10:
            return c.n_estimators
        perm = np.random.default_rng(c.seed).permutation(len(groups))
        out, inn = np.sort(perm[:n_out]), np.sort(perm[n_out:])

        def part(idx: np.ndarray) -> tuple[np.ndarray, np.ndarray, list[int]]:
            return (np.concatenate([xs[i] for i in idx]), np.concatenate([ys[i] for i in idx]),
                    [groups[i] for i in idx])  # fmt: skip

        (xi, yi, gi), (xo, yo, go) = part(inn), part(out)
        probe = self._model(c.n_estimators)
        probe.fit(xi, yi, group=gi, eval_X=(xo,), eval_y=(yo,), eval_group=[go], eval_at=[10],
                  callbacks=[lgb.early_stopping(c.patience, verbose=False)])  # fmt: skip
        return max(int(probe.best_iteration_ or c.n_estimators), 1)

    def importances(self) -> dict[str, float]:
        """Share of total split gain per feature, largest first."""
        gain = np.asarray(self.model_.feature_importances_, dtype=np.float64)
        share = gain / gain.sum() if gain.sum() > 0 else gain
        pairs = sorted(zip(self.names_, share.tolist(), strict=True), key=lambda p: -p[1])
        return dict(pairs)

    def __call__(self, requests: Sequence[Request], trace: Trace) -> CandidateBatch:
        if not hasattr(self, "model_"):
            raise RuntimeError(f"{self.name} is not trained: tune it on validation users first")
        return self.rank(requests, trace.head(self.config.top_n), trace.pools)

    def rank(
        self, requests: Sequence[Request], head: CandidateBatch, pools: dict[str, CandidateBatch]
    ) -> CandidateBatch:
        x = self.features(requests, head, pools)
        n, depth = head.items.shape
        pred = np.asarray(self.model_.predict(x.reshape(n * depth, -1))).reshape(n, depth)
        pred = np.where(head.items == PAD, -np.inf, pred)
        order = np.argsort(-pred, axis=1, kind="stable")
        items = np.take_along_axis(head.items, order, axis=1)
        return CandidateBatch(
            items,
            np.take_along_axis(pred, order, axis=1),
            self.name,
            fallback=head.fallback,
            extras={"input_pos": np.where(items != PAD, order, -1)},
        )

    def info(self) -> dict[str, Any]:
        return {"train_users": self.n_train_users_, "trees": self.n_estimators_,
                "importance": self.importances()}  # fmt: skip


def locate(items: np.ndarray, pool: np.ndarray) -> np.ndarray:
    """``out[r, j]`` = where ``items[r, j]`` sits in row r of ``pool`` (-1: absent, or PAD).

    One sorted-key lookup over every row (pool rows hold each item at most once)."""
    n, width = pool.shape
    big = int(max(pool.max(initial=0), items.max(initial=0))) + 2
    valid = pool != PAD
    keys = np.where(valid, np.arange(n)[:, None] * big + pool, -1).ravel()
    order = np.argsort(keys, kind="stable")
    sorted_keys = keys[order]
    want = (np.arange(n)[:, None] * big + items).ravel()
    at = np.clip(np.searchsorted(sorted_keys, want), 0, len(sorted_keys) - 1)
    hit = (sorted_keys[at] == want) & (items.ravel() != PAD)
    out = np.where(hit, order[at] % max(width, 1), -1)
    return out.reshape(items.shape)
