"""A learned ranker: LightGBM LambdaRank over features the funnel already has.

Features of each (request, candidate): every retrieval pool's score and rank (a miss gets
NaN and the pool's depth), the fused score and rank, log-popularity, release year, genre
overlap with the history, embedding similarity to the history profile, history length.
It is trained on **validation** targets only (:meth:`LTRRanker.fit`), with the retrievers
fitted on the training split, and refuses training labels that are test targets.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from recfunnel.errors import RecfunnelError
from recfunnel.evaluate.metrics import hit_matrix
from recfunnel.retrieve.content import ContentConfig, ContentRetriever
from recfunnel.types import PAD, CandidateBatch, Catalog, EvalSet, Interactions, Request


class LeakageError(RecfunnelError):
    """A ranker was asked to learn from test targets."""


class LTRConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
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


class LTRRanker:
    """Reorders the top ``top_n`` of the fused pool by a LambdaRank model."""

    stage = "rank:ltr"

    def __init__(self, config: LTRConfig | None = None) -> None:
        self.config = config or LTRConfig()

    # ---- features -------------------------------------------------------------------
    def prepare(
        self, train: Interactions, catalog: Catalog, content: ContentRetriever | None
    ) -> LTRRanker:
        """Item-side features from the training split (no request needed)."""
        self.catalog_ = catalog
        self.popularity_ = np.log1p(train.item_counts().astype(np.float64))
        self.year_ = catalog.years
        self.genres_ = catalog.genre_matrix.astype(np.float32)
        self.content_ = content if content is not None else ContentRetriever(ContentConfig())
        if not hasattr(self.content_, "item_embeddings_"):
            self.content_.fit(train, catalog)
        return self

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
            score = np.full((n, depth), np.nan)
            rank = np.full((n, depth), float(pool.depth))
            for r in range(n):
                pos = {int(it): j for j, it in enumerate(pool.items[r]) if it != PAD}
                for j, it in enumerate(items[r]):
                    if int(it) in pos:
                        score[r, j] = pool.scores[r, pos[int(it)]]
                        rank[r, j] = pos[int(it)]
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

    # ---- training -------------------------------------------------------------------
    def fit(
        self,
        valid: EvalSet,
        head: CandidateBatch,
        pools: dict[str, CandidateBatch],
        forbidden: EvalSet | None = None,
    ) -> LTRRanker:
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
            self.stage,
            fallback=head.fallback,
            extras={"input_pos": np.where(items != PAD, order, -1)},
        )

    def info(self) -> dict[str, Any]:
        return {"train_users": self.n_train_users_, "trees": self.n_estimators_,
                "importance": self.importances()}  # fmt: skip
