"""The diagnosis report: plots (matplotlib, PNG) and one self-contained HTML page.

Everything is drawn from the diagnosis JSON alone, so ``recfunnel diagnose --render-only``
can redraw a report without rerunning anything. Plots are embedded as base64 data URIs and
also written to ``plots/`` for READMEs and slides.
"""

from __future__ import annotations

import base64
import io
from importlib import resources
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import jinja2
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure

from recfunnel.evaluate.diagnostics import pareto_front

PLOTS = ("headline", "lorenz", "scores", "pareto", "pool_sweep")


def final_stage(pipe: dict[str, Any]) -> str:
    """The stage whose order the user sees (the last one)."""
    return list(pipe["stages"])[-1]


def pool_stage(pipe: dict[str, Any]) -> str:
    """The deepest candidate pool: the last stage deep enough for recall@200."""
    deep = [s for s, v in pipe["stages"].items() if v["recall@200"] is not None]
    return deep[-1] if deep else final_stage(pipe)


def _metric(pipe: dict[str, Any], name: str) -> tuple[float, float]:
    m = pipe["metrics"].get(name) or {"mean": None, "std": None}
    return (m["mean"] or 0.0), (m["std"] or 0.0)


def _nan(x: float | None) -> float:
    return float("nan") if x is None else float(x)


def _png(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def plot_headline(d: dict[str, Any]) -> bytes:
    """Quality and the three failure modes, one bar per pipeline."""
    pipes = d["pipelines"]
    names = [p["name"] for p in pipes]
    y = np.arange(len(names))
    fig, axes = plt.subplots(1, 4, figsize=(14, 0.45 * len(names) + 1.6), sharey=True)
    ndcg = [_metric(p, "ndcg@10") for p in pipes]
    axes[0].barh(y, [m for m, _ in ndcg], xerr=[s for _, s in ndcg], color="#4c72b0")
    axes[0].set_title("NDCG@10 (± sd over seeds)")
    rec = [_nan(p["stages"][pool_stage(p)]["recall@200"]) for p in pipes]
    axes[1].barh(y, rec, color="#55a868")
    axes[1].set_title("coverage: pool recall@200")
    uniq = [_nan(p["stages"][final_stage(p)]["unique@1"]) for p in pipes]
    axes[2].barh(y, uniq, color="#c44e52")
    axes[2].set_title(f"exposure: unique top-1 items\n(of {max(d['n_users'])} users)")
    ds = [p["stages"][final_stage(p)] for p in pipes]
    dv = np.array([_nan(s["cohen_d"]) for s in ds])
    lo = np.array([_nan(s["cohen_d_ci"][0]) for s in ds])
    hi = np.array([_nan(s["cohen_d_ci"][1]) for s in ds])
    err = np.nan_to_num(np.vstack([dv - lo, hi - dv]))
    axes[3].barh(y, np.nan_to_num(dv), xerr=err, color="#8172b2")
    axes[3].set_title("discrimination: Cohen's d (95% CI)\nfinal stage, top 50")
    axes[0].set_yticks(y, names)
    axes[0].invert_yaxis()
    for ax in axes:
        ax.grid(axis="x", alpha=0.3)
    fig.suptitle(f"{d['dataset']} · {d['protocol']} · {len(d['seeds'])} seeds", y=1.02)
    return _png(fig)


def plot_lorenz(d: dict[str, Any]) -> bytes:
    """The catalog Lorenz curve, and the same counts read from the top: how many items
    take the top-10 slots (where a collapsed reranker shows up)."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5))
    axes[0].plot([0, 1], [0, 1], color="grey", lw=0.8, ls="--", label="equal exposure")
    for p in d["pipelines"]:
        st = p["stages"][final_stage(p)]
        label = f"{p['name']} (Gini {_nan(st['gini@10']):.3f})"
        axes[0].plot(st["lorenz"]["x"], st["lorenz"]["y"], label=label)
        conc = st.get("concentration")
        if conc:
            axes[1].plot(conc["k"], conc["share"], label=p["name"])
    axes[0].set_xlabel("share of catalog items (least shown first)")
    axes[0].set_ylabel("share of top-10 slots")
    axes[0].set_title("Lorenz curve of top-10 exposure")
    axes[0].legend(fontsize=7)
    axes[1].set_xscale("log")
    axes[1].set_xlabel("k most-shown items (log)")
    axes[1].set_ylabel("their share of top-10 slots")
    axes[1].set_title("Concentration: slots taken by the k most-shown items")
    axes[1].grid(alpha=0.3)
    axes[1].legend(fontsize=7)
    return _png(fig)


def plot_scores(d: dict[str, Any]) -> bytes:
    """Score histograms of relevant vs irrelevant candidates, each pipeline's last stage."""
    pipes = d["pipelines"]
    cols = min(4, len(pipes))
    rows = -(-len(pipes) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols, 2.6 * rows), squeeze=False)
    for ax, p in zip(axes.flat, pipes, strict=False):
        stage = final_stage(p)
        h = p["stages"][stage]["discrimination"]["hist"]
        if h["edges"]:
            edges = np.asarray(h["edges"])
            for key, colour in (("irrelevant", "#999999"), ("relevant", "#dd8452")):
                if h[key]:
                    ax.stairs(h[key], edges, label=key, color=colour, fill=key == "irrelevant",
                              alpha=0.6 if key == "irrelevant" else 1.0, lw=1.5)  # fmt: skip
        d_val = _nan(p["stages"][stage]["cohen_d"])
        ax.set_title(f"{p['name']}\n{stage}: d = {d_val:.2f}", fontsize=8)
        ax.tick_params(labelsize=7)
    for ax in list(axes.flat)[len(pipes) :]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=7)
    fig.supxlabel("score, centred per user", fontsize=9)
    fig.tight_layout()
    return _png(fig)


def plot_pareto(d: dict[str, Any]) -> bytes:
    """NDCG@10 against cost per 1,000 requests and against p50 latency, fronts marked."""
    pipes = d["pipelines"]
    q = np.array([_metric(p, "ndcg@10")[0] for p in pipes])
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, key, label in (
        (axes[0], "cost_per_1000", "LLM cost per 1,000 requests ($)"),
        (axes[1], "latency_ms_p50", "latency per user, p50 (ms, log)"),
    ):
        c = np.array([_nan(p["cost"][key]) for p in pipes])
        shown = np.flatnonzero(np.isfinite(c))  # latency is left out for replayed answers
        c, qs = c[shown], q[shown]
        front = pareto_front(c, qs)
        ax.scatter(c, qs, color="#4c72b0", zorder=3)
        for j, i in enumerate(shown):
            ax.annotate(pipes[i]["name"], (c[j], qs[j]), fontsize=7, xytext=(4, 3),
                        textcoords="offset points")  # fmt: skip
        ax.plot(c[front], qs[front], color="#c44e52", lw=1.2, marker="o", mfc="none", ms=11,
                label="Pareto frontier")  # fmt: skip
        if key == "latency_ms_p50":
            ax.set_xscale("log")
        ax.set_xlabel(label)
        ax.set_ylabel("NDCG@10")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle("Cost vs quality (one point per pipeline)")
    return _png(fig)


def plot_pool_sweep(d: dict[str, Any]) -> bytes | None:
    sweep = d["mitigations"]["pool_sweep"]
    if not sweep:
        return None
    rows = sweep["rows"]
    pools = [r["pool"] for r in rows]
    metric = d["test_metrics"][0]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    ms = [_nan(r["llm_ms_per_user_mean"]) for r in rows]
    axes[0].plot(ms, [r[metric] for r in rows], marker="o")
    for r, x in zip(rows, ms, strict=True):
        axes[0].annotate(f"{r['pool']}", (x, r[metric]), xytext=(4, 3),
                         textcoords="offset points", fontsize=8)  # fmt: skip
    axes[0].set_xlabel("LLM time per user (ms)")
    axes[0].set_ylabel(metric)
    axes[0].set_title("quality vs latency (label: candidates reranked)")
    axes[1].plot(pools, [_nan(r["pool_recall"]) for r in rows], marker="o", color="#55a868")
    axes[1].set_xlabel("candidates handed to the reranker")
    axes[1].set_ylabel("recall of those candidates")
    axes[1].set_title("coverage grows with the pool")
    for ax in axes:
        ax.grid(alpha=0.3)
    fig.suptitle(f"Pool-size sweep: {sweep['pipeline']}, {sweep['n_users']} users, "
                 f"seed {sweep['seed']}")  # fmt: skip
    return _png(fig)


def plot_buckets(by_history: dict[str, Any], metric: str = "ndcg@10") -> bytes:
    """``metric`` per history-length bucket, one bar group per bucket, one bar per pipeline."""
    table = by_history["buckets"]
    pipes = list(table)
    buckets = [b for b in next(iter(table.values())) if table[pipes[0]][b]["n"] > 0]
    x = np.arange(len(buckets))
    width = 0.8 / max(len(pipes), 1)
    fig, ax = plt.subplots(figsize=(1.6 * len(buckets) + 3, 3.8))
    for i, p in enumerate(pipes):
        ax.bar(x + i * width, [_nan(table[p][b][metric]) for b in buckets], width, label=p)
    ax.set_xticks(x + width * (len(pipes) - 1) / 2,
                  [f"{b}\n(n={int(table[pipes[0]][b]['n'])})" for b in buckets])  # fmt: skip
    ax.set_xlabel("history length (items)")
    ax.set_ylabel(metric)
    ax.set_title(f"{metric} by history length")
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    return _png(fig)


def _fmt(x: Any, digits: int = 3) -> str:
    if x is None:
        return "–"
    if isinstance(x, float):
        if abs(x) >= 100:
            return f"{x:,.0f}"
        if x != 0 and abs(x) < 1e-3 and digits >= 3:
            return f"{x:.1e}"
        return f"{x:.{digits}f}"
    return str(x)


def _pval(x: float | None) -> str:
    if x is None:
        return "–"
    return f"{x:.1e}" if x < 1e-3 else f"{x:.3f}"


def render_html(d: dict[str, Any], images: dict[str, str]) -> str:
    template = resources.files("recfunnel.evaluate").joinpath("report.html.j2").read_text()
    env = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined)
    env.filters["f"] = _fmt
    env.filters["p"] = _pval
    env.filters["sf"] = lambda x: "–" if x is None else f"{x:+.3f}"
    by_name = {p["name"]: p for p in d["pipelines"]}
    base_tests = {
        (c["pipeline"], c["metric"]): c
        for c in d["comparisons"]
        if c["family"] == "baseline" and c["over"] == "users"
    }
    return env.from_string(template).render(
        d=d,
        images=images,
        by_name=by_name,
        base_tests=base_tests,
        final_stage=final_stage,
        pool_stage=pool_stage,
    )


def write_report(d: dict[str, Any], out: Path) -> Path:
    """Write ``plots/*.png`` and ``index.html`` (plots embedded) into ``out``."""
    out = Path(out)
    (out / "plots").mkdir(parents=True, exist_ok=True)
    drawers = {
        "headline": plot_headline,
        "lorenz": plot_lorenz,
        "scores": plot_scores,
        "pareto": plot_pareto,
        "pool_sweep": plot_pool_sweep,
    }
    images: dict[str, str] = {}
    for name, draw in drawers.items():
        png = draw(d)
        if png is None:
            continue
        (out / "plots" / f"{name}.png").write_bytes(png)
        images[name] = "data:image/png;base64," + base64.b64encode(png).decode()
    index = out / "index.html"
    index.write_text(render_html(d, images))
    return index
