"""A learned ranker: LightGBM LambdaRank over features the trace already has.

Its features come in groups (``features``; see :mod:`recfunnel.stages.rank.features`).

It learns either from **validation** users' lists (the default) or, with ``lists``, from
cold-start lists simulated on training users without leakage
(:mod:`recfunnel.stages.rank.lists`), validation users then choosing the hyper-parameters
(``search``) and the number of trees (early stopping on their NDCG@10). Training labels
that are test targets are refused.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any, Literal, Self

import numpy as np
from pydantic import Field

from recfunnel.core.candidates import PAD, CandidateBatch
from recfunnel.core.errors import LeakageError, NotFittedError, RecfunnelError
from recfunnel.core.metrics import evaluate, hit_matrix
from recfunnel.core.types import EvalSet, Request
from recfunnel.stages.base import FitContext, Stage, StageConfig, Trace, TuneContext
from recfunnel.stages.rank.features import BASIC, Group, feature_matrix, feature_names
from recfunnel.stages.rank.lgbm import SEARCHABLE, fit_model, grid_points, stack
from recfunnel.stages.rank.lists import ListsConfig, held_users, simulate
from recfunnel.stages.retrieve.content import ContentRetriever

log = logging.getLogger(__name__)


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
        return feature_names(self.config.features, trace)

    def features(self, requests: Sequence[Request], trace: Trace) -> np.ndarray:
        """[users, top_n, features] for the head of ``trace``; PAD candidates get NaN rows."""
        return feature_matrix(self, self.config.features, requests, trace, self.config.top_n)

    # ---- learning -------------------------------------------------------------------
    def tune(self, valid: EvalSet, ctx: TuneContext) -> dict[str, Any]:
        """Learn on validation users' lists or, with ``lists``, on simulated training lists
        (validation users then pick the hyper-parameters and the number of trees); the
        split's test set guards against leakage."""
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
        self.model_ = fit_model(self._model(self.n_estimators_), stack(xs, ys, bs))
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
        train, stop_on = stack(xs, ys, bs), stack(vx, vy, vb)
        tried = []
        for point in grid_points(c.search):
            model = fit_model(self._model(c.n_estimators, **point), train, stop_on, c.patience)
            best = int(model.best_iteration_ or c.n_estimators)
            score = float(model.best_score_["valid_0"]["ndcg@10"])
            tried.append({**point, "trees": best, "valid_ndcg@10": score})
        choice = max(tried, key=lambda t: t["valid_ndcg@10"])  # first of equals: grid order
        params = {k: choice[k] for k in choice if k in SEARCHABLE}
        self.n_estimators_ = max(int(choice["trees"]), 1)
        self.model_ = fit_model(self._model(self.n_estimators_, **params), train)
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
        probe = fit_model(self._model(c.n_estimators), stack(xs, ys, bs, inn),
                     stack(xs, ys, bs, out), c.patience)  # fmt: skip
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
            probe = fit_model(self._model(c.n_estimators), stack(xs, ys, bs, inn),
                         stack(xs, ys, bs, out))  # fmt: skip
            curves.append(probe.evals_result_["valid_0"]["ndcg@10"])
        if not curves:
            return c.n_estimators
        mean = np.mean(np.asarray(curves, dtype=np.float64), axis=0)
        self.cv_curve_ = mean.tolist()
        return int(np.argmax(mean)) + 1  # the first of equal peaks: the fewest trees

    # ---- ranking and reporting ------------------------------------------------------
    def __call__(self, requests: Sequence[Request], trace: Trace) -> CandidateBatch:
        if not hasattr(self, "model_"):
            raise NotFittedError(f"{self.name} is not trained: tune it on validation users first")
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
        return CandidateBatch(items, np.take_along_axis(pred, order, axis=1), self.name,
                              fallback=head.fallback)  # fmt: skip

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
