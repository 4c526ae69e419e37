"""A learned ranker: LightGBM LambdaRank over features the trace already has.

Features of each (request, candidate), by group (``features``):

- ``pools``: every retrieval pool's score and rank (a miss gets NaN and the pool's depth);
- ``input``: the score and position in the list this stage is given;
- ``item``: log-popularity and release year;
- ``history``: genre overlap with the history (Jaccard, share), embedding similarity to the
  history profile, history length;
- ``liked``: how many training ratings of the item are high (log);
- ``stages``: every earlier head stage's score and named features (e.g. an earlier ranker's
  score, an LLM feature stage's scores and ranks), looked up by item.

It learns either from **validation** users' lists (the default) or, with ``lists``, from
cold-start lists simulated on training users without leakage
(:mod:`recfunnel.stages.rank.lists`), validation users then choosing the hyper-parameters
(``search``) and the number of trees (early stopping on their NDCG@10). Training labels
that are test targets are refused.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Sequence
from typing import Any, Literal, Self

import numpy as np
from pydantic import Field

from recfunnel.core.candidates import PAD, CandidateBatch
from recfunnel.core.errors import ConfigError, LeakageError, RecfunnelError
from recfunnel.core.metrics import evaluate, hit_matrix
from recfunnel.core.types import EvalSet, Request
from recfunnel.stages.base import FitContext, Stage, StageConfig, Trace, TuneContext
from recfunnel.stages.rank.lists import ListsConfig, held_users, simulate
from recfunnel.stages.retrieve.content import ContentRetriever

log = logging.getLogger(__name__)

Group = Literal["pools", "input", "item", "history", "liked", "stages"]
BASIC: tuple[Group, ...] = ("pools", "input", "item", "history")
BOOKKEEPING = ("input_pos", "prev_rank", "llm_score")
"""Extras that describe where an item was, not what it is: never features."""
SEARCHABLE = ("num_leaves", "min_child_samples", "learning_rate")


class LTRConfig(StageConfig):
    """A LambdaRank stage over the top ``top_n`` of the list so far."""

    kind: Literal["ltr"] = "ltr"
    top_n: int = Field(100, ge=2, description="candidates of the previous stage ranked")
    features: list[Group] = Field(
        default_factory=lambda: list(BASIC), min_length=1,
        description="feature groups (see the module's docstring)",
    )  # fmt: skip
    liked_rating: float = Field(4.0, description="`liked` counts ratings at least this")
    lists: ListsConfig | None = Field(
        None, description="train on simulated cold-start lists of training users (None: on "
        "validation users)",
    )  # fmt: skip
    search: dict[str, list[float]] = Field(
        default_factory=dict,
        description=f"with `lists`: values tried for {', '.join(SEARCHABLE)} (best NDCG@10 "
        "on validation users wins)",
    )  # fmt: skip
    n_estimators: int = Field(500, ge=1, description="most trees; early stopping picks fewer")
    learning_rate: float = Field(0.05, gt=0)
    num_leaves: int = Field(15, ge=2)
    min_child_samples: int = Field(50, ge=1)
    holdout: float = Field(
        0.0, ge=0, lt=1,
        description="validation training: share of validation users held out to early-stop "
        "on NDCG@10, the final model refit on all (0: train all n_estimators)",
    )  # fmt: skip
    cv_folds: int = Field(
        0, ge=0,
        description="validation training: pick the number of trees by k-fold cross-validation "
        "over the validation users (best mean NDCG@10 curve; 0: use holdout)",
    )  # fmt: skip
    patience: int = Field(30, ge=1, description="rounds without improvement before stopping")
    boost_from_input: bool = Field(
        False,
        description="start from the input list's scores (LightGBM init_score): the trees "
        "learn corrections to the previous ranker, so features with no signal leave its order",
    )
    train_users: int | None = Field(None, ge=1, description="validation users used (None: all)")
    threads: int = Field(2, ge=1)
    seed: int = 0


class LTRRanker(Stage[LTRConfig]):
    """Reorders the top ``top_n`` of the list so far by a LambdaRank model."""

    family = "rank"
    mode = "head"
    config_class = LTRConfig

    # ---- item-side features ---------------------------------------------------------
    def fit(self, ctx: FitContext) -> Self:
        """Item-side features from the training split (no request needed); the content
        similarity comes from the pipeline's own content retriever when it has one."""
        catalog, train = ctx.catalog, ctx.train
        self.catalog_ = catalog
        self.popularity_ = np.log1p(train.item_counts().astype(np.float64))
        f = train.frame
        if train.has_ratings:
            f = f[f["rating"] >= self.config.liked_rating]
        counts = np.bincount(f["item"].to_numpy(), minlength=catalog.n_items)
        self.liked_ = np.log1p(counts.astype(np.float64))
        self.year_ = catalog.years
        self.genres_ = catalog.genre_matrix.astype(np.float32)
        if "history" in self.config.features:  # the embedding similarity needs a content model
            content = next((s for s in ctx.earlier if isinstance(s, ContentRetriever)), None)
            self.content_ = content if content is not None else ContentRetriever().fit(ctx)
        return self

    @property
    def tune_users(self) -> int | None:
        return self.config.train_users

    # ---- features -------------------------------------------------------------------
    def feature_names(self, trace: Trace) -> list[str]:
        names: list[str] = []
        for group in self.config.features:
            if group == "pools":
                names += [f"{p}:{x}" for p in trace.pools for x in ("score", "rank")]
            elif group == "input":
                names += ["input:score", "input:rank"]
            elif group == "item":
                names += ["log_popularity", "year"]
            elif group == "history":
                names += ["genre_overlap", "genre_share", "embedding_sim", "history_len"]
            elif group == "liked":
                names += ["log_liked"]
            else:
                for stage, batch in _head_stages(trace):
                    own = [f"{stage}:score"] if batch.reorders else []
                    names += [*own, *(f"{stage}:{k}" for k in _feature_keys(batch))]
        return names

    def features(self, requests: Sequence[Request], trace: Trace) -> np.ndarray:
        """[users, top_n, features] for the head of ``trace``; PAD candidates get NaN rows."""
        head = trace.head(self.config.top_n)
        items = head.items
        n, depth = items.shape
        safe = np.where(items == PAD, 0, items)
        cols: list[np.ndarray] = []
        for group in self.config.features:
            if group == "pools":
                for pool in trace.pools.values():
                    cols += _looked_up(items, pool, pool.scores, float(pool.depth))
            elif group == "input":
                pos = np.arange(depth, dtype=np.float64)
                cols += [head.scores, np.broadcast_to(pos, (n, depth))]
            elif group == "item":
                cols += [self.popularity_[safe], self.year_[safe]]
            elif group == "history":
                cols += self._history_features(requests, safe)
            elif group == "liked":
                cols += [self.liked_[safe]]
            else:
                for _, batch in _head_stages(trace):
                    if batch.reorders:  # a kept order's scores are its input's
                        cols += _looked_up(items, batch, batch.scores, None)
                    for key in _feature_keys(batch):
                        cols += _looked_up(items, batch, batch.extras[key], None)
        x = np.stack([np.asarray(c, dtype=np.float64) for c in cols], axis=-1)
        x[items == PAD] = np.nan
        return x

    def _history_features(self, requests: Sequence[Request], safe: np.ndarray) -> list[Any]:
        n, depth = safe.shape
        hist_genres = np.zeros((n, self.genres_.shape[1]), dtype=np.float32)
        for r, req in enumerate(requests):
            if len(req.history):
                hist_genres[r] = self.genres_[req.history].mean(axis=0)
        cand_genres = self.genres_[safe]  # [n, depth, g]
        overlap = (cand_genres * (hist_genres[:, None, :] > 0)).sum(-1)
        union = np.maximum(((cand_genres + (hist_genres[:, None, :] > 0)) > 0).sum(-1), 1)
        prof, _ = self.content_.profiles(requests)
        emb = self.content_.item_embeddings_[safe]  # [n, depth, d]
        lengths = np.array([len(r.history) for r in requests], dtype=np.float64)
        return [overlap / union, (cand_genres * hist_genres[:, None, :]).sum(-1),
                np.einsum("ijd,id->ij", emb, prof).astype(np.float64),
                np.broadcast_to(lengths[:, None], (n, depth))]  # fmt: skip

    # ---- learning -------------------------------------------------------------------
    def tune(self, valid: EvalSet, ctx: TuneContext) -> dict[str, Any]:
        """Learn on validation users' lists or, with ``lists``, on simulated training lists
        (validation users then pick the hyper-parameters and the number of trees); the
        split's test set guards against leakage."""
        if len(valid) == 0:
            raise ConfigError("the ranker needs validation users (set protocol.n_valid)")
        before = ctx.before(valid.requests, 0)  # the pipeline's own pool depth
        if self.config.lists is None:
            return self.fit_lists(valid, before, ctx.split.test).info()
        return self._fit_simulated(valid, before, ctx)

    def _lists(self, requests: Sequence[Request], truth: Sequence[np.ndarray],
               trace: Trace) -> tuple[list[np.ndarray], ...]:  # fmt: skip
        """Per list with a positive among its candidates: (features, labels, starting
        scores), real rows only."""
        head = trace.head(self.config.top_n)
        labels = hit_matrix(head.items, truth, self.catalog_.n_items)
        x = self.features(requests, trace)
        base = self.base(head)
        real = head.items != PAD
        keep = np.flatnonzero(labels.any(axis=1))  # a list with no positive teaches nothing
        return ([x[r][real[r]] for r in keep], [labels[r][real[r]].astype(int) for r in keep],
                [base[r][real[r]] for r in keep])  # fmt: skip

    def base(self, head: CandidateBatch) -> np.ndarray:
        """The score each candidate starts from: the input's with ``boost_from_input``."""
        if not self.config.boost_from_input:
            return np.zeros(head.items.shape)
        return np.where(head.items == PAD, 0.0, np.asarray(head.scores, dtype=np.float64))

    def fit_lists(self, valid: EvalSet, trace: Trace, forbidden: EvalSet | None = None) -> Self:
        """Learn from validation requests' candidates labelled by validation truth.

        ``forbidden`` (the test set) guards against leakage: a training label that is a
        test target of the same user raises :class:`LeakageError`.
        """
        head = trace.head(self.config.top_n)
        if forbidden is not None:
            _refuse_test_labels(valid, head, forbidden, self.catalog_.n_items)
        xs, ys, bs = self._lists(valid.requests, valid.truth, trace)
        if not xs:
            raise RecfunnelError("no validation user has a relevant item among the candidates")
        self.names_ = self.feature_names(trace)
        self.n_estimators_ = self._rounds(xs, ys, bs)
        self.model_ = _fit(self._model(self.n_estimators_), _stack(xs, ys, bs))
        self.n_train_users_ = len(ys)
        self.trained_on_ = {"source": "validation users", "lists": len(ys)}
        return self

    def _fit_simulated(self, valid: EvalSet, before: Trace, ctx: TuneContext) -> dict[str, Any]:
        c = self.config
        assert c.lists is not None
        held = held_users(ctx.split)
        xs: list[np.ndarray] = []
        ys: list[np.ndarray] = []
        bs: list[np.ndarray] = []
        users: set[int] = set()
        for group in simulate(ctx.split, c.lists, c.seed):
            group_users = {r.user for r in group.requests if r.user is not None}
            if leaked := sorted(group_users & held):
                raise LeakageError(f"simulated lists of held-out users {leaked[:5]}")
            trace = ctx.refit_before(group.train)(group.requests, 0)
            gx, gy, gb = self._lists(group.requests, group.truth, trace)
            xs += gx
            ys += gy
            bs += gb
            users |= group_users
        if not xs:
            raise RecfunnelError("no simulated list has a relevant item among its candidates")
        vx, vy, vb = self._lists(valid.requests, valid.truth, before)
        if not vx:
            raise RecfunnelError("no validation user has a relevant item among the candidates")
        train, stop_on = _stack(xs, ys, bs), _stack(vx, vy, vb)
        tried = []
        for point in _grid(c.search):
            model = _fit(self._model(c.n_estimators, **point), train, stop_on, c.patience)
            best = int(model.best_iteration_ or c.n_estimators)
            score = float(model.best_score_["valid_0"]["ndcg@10"])
            tried.append({**point, "trees": best, "valid_ndcg@10": score})
        choice = max(tried, key=lambda t: t["valid_ndcg@10"])  # first of equals: grid order
        params = {k: choice[k] for k in choice if k in SEARCHABLE}
        self.n_estimators_ = max(int(choice["trees"]), 1)
        self.model_ = _fit(self._model(self.n_estimators_, **params), train)
        self.names_ = self.feature_names(before)
        self.n_train_users_ = len(users)
        self.trained_on_ = {"source": "simulated training lists", "lists": len(ys),
                            "valid_lists": len(vy), "params": params, "search": tried}  # fmt: skip
        log.info("%s: %d lists of %d users, %s, %d trees", self.name, len(ys), len(users),
                 params, self.n_estimators_)  # fmt: skip
        return self.info()

    def _model(self, n_estimators: int, **params: Any) -> Any:
        import lightgbm as lgb

        c = self.config
        chosen = {"learning_rate": c.learning_rate, "num_leaves": c.num_leaves,
                  "min_child_samples": c.min_child_samples, **params}  # fmt: skip
        chosen["num_leaves"] = int(chosen["num_leaves"])
        chosen["min_child_samples"] = int(chosen["min_child_samples"])
        return lgb.LGBMRanker(
            objective="lambdarank", n_estimators=n_estimators, random_state=c.seed,
            deterministic=True, force_row_wise=True, n_jobs=c.threads, verbose=-1,
            importance_type="gain", **chosen,
        )  # fmt: skip

    def _rounds(self, xs: list[np.ndarray], ys: list[np.ndarray], bs: list[np.ndarray]) -> int:
        """Trees to train: early-stopped on NDCG@10 of a seeded held-out share of the
        validation users. A few hundred one-positive queries overfit a full forest fast."""
        c = self.config
        if c.cv_folds >= 2:
            return self._cv_rounds(xs, ys, bs)
        n_out = round(c.holdout * len(ys))
        if n_out < 10 or len(ys) - n_out < 10:
            return c.n_estimators
        perm = np.random.default_rng(c.seed).permutation(len(ys))
        out, inn = np.sort(perm[:n_out]), np.sort(perm[n_out:])
        probe = _fit(self._model(c.n_estimators), _stack(xs, ys, bs, inn),
                     _stack(xs, ys, bs, out), c.patience)  # fmt: skip
        return max(int(probe.best_iteration_ or c.n_estimators), 1)

    def _cv_rounds(self, xs: list[np.ndarray], ys: list[np.ndarray], bs: list[np.ndarray]) -> int:
        """Trees to train: the peak of the validation NDCG@10 curve averaged over
        ``cv_folds`` seeded folds of the validation users (each fold's curve from a model
        trained on the others). Steadier than one hold-out share on a few hundred users."""
        c = self.config
        fold = np.random.default_rng(c.seed).permutation(len(ys)) % c.cv_folds
        curves = []
        for k in range(c.cv_folds):
            inn, out = np.flatnonzero(fold != k), np.flatnonzero(fold == k)
            if len(out) == 0 or len(inn) == 0:
                continue
            probe = _fit(self._model(c.n_estimators), _stack(xs, ys, bs, inn),
                         _stack(xs, ys, bs, out))  # fmt: skip
            curves.append(probe.evals_result_["valid_0"]["ndcg@10"])
        if not curves:
            return c.n_estimators
        mean = np.mean(np.asarray(curves, dtype=np.float64), axis=0)
        self.cv_curve_ = mean.tolist()
        return int(np.argmax(mean)) + 1  # the first of equal peaks: the fewest trees

    # ---- ranking and reporting ------------------------------------------------------
    def __call__(self, requests: Sequence[Request], trace: Trace) -> CandidateBatch:
        if not hasattr(self, "model_"):
            raise RuntimeError(f"{self.name} is not trained: tune it on validation users first")
        head = trace.head(self.config.top_n)
        return self.order(head, self.predict(self.features(requests, trace), self.base(head)))

    def predict(self, x: np.ndarray, base: np.ndarray | None = None) -> np.ndarray:
        """Each candidate's score: the trees' sum, plus its starting score (``base``)."""
        n, depth, _ = x.shape
        pred = np.asarray(self.model_.predict(x.reshape(n * depth, -1))).reshape(n, depth)
        return pred if base is None else pred + base

    def order(self, head: CandidateBatch, pred: np.ndarray) -> CandidateBatch:
        """``head`` sorted by ``pred`` (ties keep the input order)."""
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

    def importances(self) -> dict[str, float]:
        """Share of total split gain per feature, largest first."""
        gain = np.asarray(self.model_.feature_importances_, dtype=np.float64)
        share = gain / gain.sum() if gain.sum() > 0 else gain
        pairs = sorted(zip(self.names_, share.tolist(), strict=True), key=lambda p: -p[1])
        return dict(pairs)

    def permutation_importance(self, requests: Sequence[Request], trace: Trace,
                               truth: Sequence[np.ndarray], repeats: int = 5,
                               seed: int = 0) -> dict[str, dict[str, float]]:  # fmt: skip
        """How much NDCG@10 on ``requests`` falls when one feature's values are shuffled
        over all real candidates of ``trace``'s head (mean and std over ``repeats``)."""
        head = trace.head(self.config.top_n)
        x = self.features(requests, trace)
        real = head.items != PAD
        n_items = self.catalog_.n_items

        start = self.base(head)

        def ndcg(features: np.ndarray) -> float:
            ranked = self.order(head, self.predict(features, start)).items
            return float(evaluate(ranked, truth, ["ndcg@10"], n_items).means["ndcg@10"])

        base = ndcg(x)
        rng = np.random.default_rng(seed)
        out: dict[str, dict[str, float]] = {}
        for j, name in enumerate(self.names_):
            drops = []
            for _ in range(repeats):
                shuffled = x.copy()
                col = shuffled[..., j][real]
                shuffled[..., j][real] = col[rng.permutation(len(col))]
                drops.append(base - ndcg(shuffled))
            out[name] = {"ndcg@10_drop": float(np.mean(drops)), "std": float(np.std(drops))}
        return dict(sorted(out.items(), key=lambda kv: -kv[1]["ndcg@10_drop"]))

    def info(self) -> dict[str, Any]:
        return {"train_users": self.n_train_users_, "trees": self.n_estimators_,
                **self.trained_on_, "importance": self.importances()}  # fmt: skip


def _refuse_test_labels(valid: EvalSet, head: CandidateBatch, forbidden: EvalSet,
                        n_items: int) -> None:  # fmt: skip
    labels = hit_matrix(head.items, valid.truth, n_items)
    test_pairs = {(req.user, int(i)) for req, t in
                  zip(forbidden.requests, forbidden.truth, strict=True) for i in t}  # fmt: skip
    for req, row, lab in zip(valid.requests, head.items, labels, strict=True):
        leaked = [int(i) for i in row[lab] if (req.user, int(i)) in test_pairs]
        if leaked:
            raise LeakageError(
                f"ranker training label(s) {leaked} of user {req.user} are test targets"
            )


def _grid(search: dict[str, list[float]]) -> list[dict[str, float]]:
    bad = sorted(set(search) - set(SEARCHABLE))
    if bad:
        raise ConfigError(f"search: {bad} cannot be searched (only {', '.join(SEARCHABLE)})")
    keys = list(search)
    return [dict(zip(keys, values, strict=True)) for values in
            itertools.product(*(search[k] for k in keys))] or [{}]  # fmt: skip


def _head_stages(trace: Trace) -> list[tuple[str, CandidateBatch]]:
    """The earlier head stages' outputs (rankers, rerankers, LLM feature stages)."""
    return [(n, b) for n, b in trace.batches.items() if trace.modes.get(n) == "head"]


Lists = tuple[np.ndarray, np.ndarray, list[int], np.ndarray]
"""Lists as LightGBM takes them: feature rows, labels, group sizes, starting scores."""


def _stack(xs: list[np.ndarray], ys: list[np.ndarray], bs: list[np.ndarray],
           idx: Sequence[int] | np.ndarray | None = None) -> Lists:  # fmt: skip
    """Per-list features, labels and starting scores (those at ``idx``) stacked."""
    pick = range(len(ys)) if idx is None else idx
    return (np.concatenate([xs[i] for i in pick]), np.concatenate([ys[i] for i in pick]),
            [len(ys[i]) for i in pick], np.concatenate([bs[i] for i in pick]))  # fmt: skip


def _fit(model: Any, train: Lists, held: Lists | None = None, patience: int | None = None) -> Any:
    """``model`` fitted on ``train``; with ``held``, its NDCG@10 curve recorded on them
    (and, with ``patience``, training stopped when that stops improving)."""
    import lightgbm as lgb

    x, y, g, b = train
    evals: dict[str, Any] = {}
    if held is not None:
        ex, ey, eg, eb = held
        evals = {"eval_X": (ex,), "eval_y": (ey,), "eval_group": [eg],
                 "eval_init_score": [eb], "eval_at": [10]}  # fmt: skip
        if patience is not None:
            evals["callbacks"] = [lgb.early_stopping(patience, verbose=False)]
    return model.fit(x, y, group=g, init_score=b, **evals)


def _feature_keys(batch: CandidateBatch) -> list[str]:
    return [k for k, v in batch.extras.items()
            if k not in BOOKKEEPING and np.asarray(v).dtype.kind == "f"]  # fmt: skip


def _looked_up(items: np.ndarray, batch: CandidateBatch, values: np.ndarray,
               miss_rank: float | None) -> list[np.ndarray]:  # fmt: skip
    """``values`` of each candidate where ``batch`` lists it (NaN where it does not), and,
    with ``miss_rank``, its position there (``miss_rank`` where absent)."""
    where = locate(items, batch.items)
    found = where >= 0
    got = np.take_along_axis(np.asarray(values, np.float64), np.maximum(where, 0), 1)
    out = [np.where(found, got, np.nan)]
    if miss_rank is not None:
        out.append(np.where(found, where, miss_rank).astype(np.float64))
    return out


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
