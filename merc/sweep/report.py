"""Study tables and plots from a sweep's child runs.

Only full-budget trials (``merc.status == completed``: every epoch run, or fit's own early
stopping) enter tables, importance and contour plots; pruned (Optuna pruner / ASHA) and errored
trials are excluded and counted. Seeds are paired across grid points, so each point's difference
to the study's reference configuration is tested with a paired test over the shared seeds
(``scipy.stats.ttest_rel``; Wilcoxon signed-rank is given too when there are >= 6 pairs) and
flagged ``within noise`` when p >= 0.05 - a reader sees whether a sensitivity exceeds seed variance.
"""
from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Any, Optional

import numpy as np
import pandas as pd

ALPHA = 0.05


def runs_frame(runs: list) -> pd.DataFrame:
    """MLflow child runs -> one row per trial (params as ``p.``, metrics, tags)."""
    rows = []
    for r in runs:
        t, m, p = r.data.tags, r.data.metrics, r.data.params
        row = {"run_id": r.info.run_id, "run_name": r.info.run_name,
               "mlflow_status": r.info.status, "status": t.get("merc.status", ""),
               "fit_status": t.get("merc.fit_status", ""), "reason": t.get("merc.reason", ""),
               "stage": t.get("merc.stage", ""), "point": t.get("merc.point"),
               "seed": int(t["merc.seed"]) if t.get("merc.seed", "None") != "None" else None,
               "config_hash": t.get("merc.config_hash", ""),
               "trial_id": t.get("ray.trial_id", ""),
               "optuna_number": t.get("optuna.trial_number")}
        row.update({k: v for k, v in m.items()})
        row.update({f"p.{k}": v for k, v in p.items()})
        rows.append(row)
    return pd.DataFrame(rows)


def _ms(x: pd.Series) -> tuple[float, float]:
    x = x.dropna().astype(float)
    if len(x) == 0:
        return math.nan, math.nan
    return float(x.mean()), float(x.std(ddof=1)) if len(x) > 1 else 0.0


def _pm(mean: float, std: float) -> str:
    if math.isnan(mean):
        return "-"
    return f"{mean:.2f} ± {std:.2f}"


def paired_test(a: pd.Series, b: pd.Series) -> tuple[float, float, int, Optional[float]]:
    """Mean difference a - b over shared seeds, ttest_rel p, pairs, wilcoxon p (>= 6 pairs)."""
    from scipy import stats
    j = pd.concat([a.rename("a"), b.rename("b")], axis=1).dropna()
    n = len(j)
    if n == 0:
        return math.nan, math.nan, 0, None
    d = float((j.a - j.b).mean())
    if n < 2:
        return d, math.nan, n, None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if np.allclose(j.a.values, j.b.values):
            p = 1.0
        else:
            p = float(stats.ttest_rel(j.a, j.b).pvalue)
        w = None
        if n >= 6 and not np.allclose(j.a.values, j.b.values):
            w = float(stats.wilcoxon(j.a, j.b).pvalue)
    return d, p, n, w


def study_table(df: pd.DataFrame, study, family: str, metric: str = "wf1") -> pd.DataFrame:
    """One row per grid point, in the study's order: n, val and test mean ± std over seeds, the
    paper's value, the paired difference to the reference point and its p-value."""
    full = df[df.status == "completed"] if len(df) else df
    sel_val, sel_test = f"sel_val_{metric}", f"sel_test_{metric}"
    paper = (study.paper.get(family) or {}) if study.paper else {}
    per_seed = {}
    for p in study.points:
        sub = full[full.point == p.label] if len(full) else full
        per_seed[p.label] = (sub.set_index("seed")[sel_test] if len(sub) and sel_test in sub
                             else pd.Series(dtype=float))
    refs = study.reference_labels if hasattr(study, "reference_labels") else \
        ({study.reference} - {None})
    rows = []
    for p in study.points:
        ref = study.reference_of(p.label) if hasattr(study, "reference_of") else study.reference
        sub = full[full.point == p.label] if len(full) else full
        allp = df[df.point == p.label] if len(df) else df
        vm, vs = _ms(sub[sel_val]) if sel_val in sub else (math.nan, math.nan)
        tm, ts = _ms(sub[sel_test]) if sel_test in sub else (math.nan, math.nan)
        row = {"point": p.label, **{k: v for k, v in p.values.items()}, "n": len(sub),
               "excluded": int(len(allp) - len(sub)),
               "val_mean": vm, "val_std": vs, "test_mean": tm, "test_std": ts,
               "paper": paper.get(p.label, math.nan), "is_reference": p.label in refs,
               "reference": ref}
        if ref is not None and p.label != ref and ref in per_seed:
            d, pv, npairs, wp = paired_test(per_seed[p.label], per_seed[ref])
            row.update({"delta_vs_ref": d, "p_paired_t": pv, "p_wilcoxon": wp, "pairs": npairs,
                        "verdict": ("n/a (<2 seeds)" if npairs < 2 else
                                    "within noise" if (math.isnan(pv) or pv >= ALPHA) else
                                    "beyond noise")})
        else:
            row.update({"delta_vs_ref": math.nan, "p_paired_t": math.nan, "p_wilcoxon": None,
                        "pairs": 0, "verdict": "reference" if p.label in refs else ""})
        rows.append(row)
    return pd.DataFrame(rows)


def majority_baseline(data_root) -> dict[str, Any]:
    """w-F1 of always predicting the train split's most frequent class, on valid and test: the
    floor a study's cells must clear to mean anything."""
    from merc.data.format import read_manifest, read_split
    from merc.metrics import majority_wf1
    man = read_manifest(data_root)
    tr = read_split(data_root, "train", man).labels
    out: dict[str, Any] = {"label": man.label_names[int(np.bincount(tr[tr >= 0]).argmax())]}
    for split, key in (("valid", "val"), ("test", "test")):
        if split in man.splits:
            out[key] = majority_wf1(tr, read_split(data_root, split, man).labels)
    return out


def data_description(manifest, dataset: str = "") -> str:
    """How a table / plot names its data: synthetic data say so (never mistaken for the paper's)."""
    prov = manifest.provenance or {}
    if prov.get("generator") == "merc.data.synthetic":
        return (f"synthetic {manifest.family.upper().replace('IEMOCAP', 'IEMOCAP-')}-shaped data "
                f"(preset {prov.get('preset', '?')}, seed {prov.get('seed', 0)}; shape only, not "
                f"the paper's data)")
    return f"{manifest.name} ({dataset or manifest.family})"


def md_cell(v: Any) -> str:
    """A value made safe for one Markdown table cell (``|`` and newlines would shift columns)."""
    return fmt_value(v).replace("|", "\\|").replace("\n", " ")


def table_markdown(tab: pd.DataFrame, study, family: str, counts: dict[str, int],
                   metric: str = "w-F1", baseline: Optional[dict] = None,
                   data: str = "") -> str:
    lines = [f"### {study.title}" + (f" — on {data}" if data else ""), "",
             f"Dataset family `{family}`; test {metric} at the validation-selected epoch, mean ± "
             f"std over seeds {study.seeds} (paired across points); Δ = paired difference to the "
             + (f"reference `{study.reference or '-'}`" if not getattr(study, "ref_of", None)
                else f"reference of the point's group (bold; `{study.reference}`, ...)")
             + f", p = paired t-test over seeds (α = {ALPHA}).", ""]
    lines.append("| point | n | val | test | paper | Δ test vs ref | p | verdict |")
    lines.append("|---|---|---|---|---|---|---|---|")
    for _, r in tab.iterrows():
        paper = "-" if math.isnan(r.paper) else f"{r.paper:.2f}"
        d = "-" if math.isnan(r.delta_vs_ref) else f"{r.delta_vs_ref:+.2f}"
        p = "-" if (r.p_paired_t is None or math.isnan(r.p_paired_t)) else f"{r.p_paired_t:.3f}"
        name = f"**{r.point}**" if r.is_reference else str(r.point)
        lines.append(f"| {md_cell(name)} | {r.n} | {_pm(r.val_mean, r.val_std)} | "
                     f"{_pm(r.test_mean, r.test_std)} | {paper} | {d} | {p} | {r.verdict} |")
    if baseline:
        v, t = baseline.get("val", math.nan), baseline.get("test", math.nan)
        lines.append(f"| *majority class ({md_cell(baseline.get('label', '?'))})* | - | "
                     f"{v:.2f} | {t:.2f} | - | - | - | floor |")
    lines.append("")
    lines.append(f"Trials: {counts.get('completed', 0)} full-budget, {counts.get('pruned', 0)} "
                 f"pruned (excluded), {counts.get('errored', 0)} errored (excluded).")
    if study.paper_note:
        lines.append(f"Paper: {study.paper_note}")
    return "\n".join(lines) + "\n"


def plot_study(tab: pd.DataFrame, study, out_dir: Path, data: str = "",
               baseline: Optional[dict] = None) -> list[Path]:
    """Heatmap for 2-D studies (rows = first axis, cols = second: P x F like Fig. 4); lines with
    error bars for 1-D axes; error bars over named points. ``data`` (what the data are) goes
    under the title; ``baseline`` (majority w-F1) is a dashed line / a colourbar mark."""
    import textwrap
    title = "\n".join(textwrap.wrap(study.title, 60) + textwrap.wrap(data, 60))
    floor = (baseline or {}).get("test")
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    if study.axes and len(study.axes) == 2:
        (ka, va), (kb, vb) = list(study.axes.items())
        grid = np.full((len(va), len(vb)), np.nan)
        for _, r in tab.iterrows():
            i, j = va.index(r[ka]), vb.index(r[kb])
            grid[i, j] = r.test_mean
        fig, ax = plt.subplots(figsize=(max(5.5, 1.0 + 0.55 * len(vb) + 2),
                                        1.0 + 0.45 * len(va) + 1.6))
        im = ax.imshow(grid, cmap="viridis", origin="lower", aspect="auto")
        ax.set_xticks(range(len(vb)), [str(v) for v in vb])
        ax.set_yticks(range(len(va)), [str(v) for v in va])
        ax.set_xlabel(kb)
        ax.set_ylabel(ka)
        for i in range(len(va)):
            for j in range(len(vb)):
                if not np.isnan(grid[i, j]):
                    ax.text(j, i, f"{grid[i, j]:.1f}", ha="center", va="center", fontsize=7,
                            color="w")
        cb = fig.colorbar(im, ax=ax, label="test w-F1 (mean over seeds)")
        if floor is not None and np.nanmin(grid) <= floor <= np.nanmax(grid):
            cb.ax.axhline(floor, color="r", lw=1.5)
        if floor is not None:
            ax.set_xlabel(f"{kb}    (majority-class test w-F1: {floor:.1f})")
        ax.set_title(title, fontsize=8)
        fig.tight_layout()
        p = out_dir / f"{study.name}_heatmap.png"
        fig.savefig(p, dpi=120)
        plt.close(fig)
        paths.append(p)
    else:
        fig, ax = plt.subplots(figsize=(max(4, 0.9 * len(tab) + 2), 3.5))
        x = np.arange(len(tab))
        ax.errorbar(x, tab.test_mean, yerr=tab.test_std.fillna(0), fmt="o-", capsize=4,
                    label="test (mean ± std)")
        ax.errorbar(x + 0.08, tab.val_mean, yerr=tab.val_std.fillna(0), fmt="s--", capsize=4,
                    alpha=0.6, label="val (mean ± std)")
        if tab.paper.notna().any():
            ax.plot(x, tab.paper, "k*", markersize=10, label="paper")
        if floor is not None:
            ax.axhline(floor, color="r", ls=":", lw=1, label="majority class (test)")
        ax.set_xticks(x, [str(v) for v in tab.point], rotation=20, ha="right")
        ax.set_ylabel("w-F1 (%)")
        ax.set_xlabel(next(iter(study.axes)) if study.axes else "configuration")
        ax.set_title(title, fontsize=8)
        ax.legend(fontsize=7)
        fig.tight_layout()
        p = out_dir / f"{study.name}_errorbars.png"
        fig.savefig(p, dpi=120)
        plt.close(fig)
        paths.append(p)
    return paths


def expand_curves(entries: list[str], metric_names) -> dict[str, list[str]]:
    """Each ``curves`` entry -> the per-epoch metrics it names: itself, or for an entry ending in
    ``_`` or ``*`` every metric with that prefix (sorted; final ``sel_*`` values excluded)."""
    names = sorted({str(m) for m in metric_names})
    out: dict[str, list[str]] = {}
    for e in entries:
        if e.endswith(("_", "*")):
            pre = e.rstrip("*")
            out[e] = [m for m in names if m.startswith(pre) and m != pre and
                      (pre.startswith("sel_") or not m.startswith("sel_"))]
        else:
            out[e] = [e] if e in names else []
    return out


def curve_table(rows: list[dict]) -> pd.DataFrame:
    """``rows`` of (point, seed, metric, epoch, value) -> mean, std and n over seeds per (point,
    metric, epoch)."""
    if not rows:
        return pd.DataFrame(columns=["point", "metric", "epoch", "mean", "std", "n"])
    d = pd.DataFrame(rows)
    g = d.groupby(["point", "metric", "epoch"], sort=False)["value"]
    out = g.agg(["mean", "std", "count"]).reset_index().rename(columns={"count": "n"})
    out["std"] = out["std"].fillna(0.0)
    return out.sort_values(["metric", "point", "epoch"], kind="stable").reset_index(drop=True)


def curve_file_stem(study_name: str, entry: str) -> str:
    safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in entry.rstrip("*_"))
    return f"{study_name}_curve_{safe}"


def plot_curves(ctab: pd.DataFrame, study, expanded: dict[str, list[str]],
                out_dir: Path) -> list[Path]:
    """One PNG per ``curves`` entry: a panel per metric it names, a line per grid point (mean over
    seeds, band = ± std), x = epoch; reference points drawn thicker."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    order = [p.label for p in study.points]
    refs = study.reference_labels if hasattr(study, "reference_labels") else {study.reference}
    for entry, metrics in expanded.items():
        metrics = [m for m in metrics if len(ctab) and (ctab.metric == m).any()]
        if not metrics:
            continue
        n = len(metrics)
        ncols = min(n, 3)
        nrows = math.ceil(n / ncols)
        present = [lb for lb in order if (ctab.point == lb).any()]
        lcols = min(3, max(1, len(present)))
        leg_h = 0.3 + 0.17 * math.ceil(len(present) / lcols)     # inches
        fig_h = 3.0 * nrows + leg_h + 0.3
        fig, axes = plt.subplots(nrows, ncols, figsize=(max(4.4 * ncols + 0.4, 8.5), fig_h),
                                 squeeze=False)
        cmap = plt.get_cmap("tab20" if len(order) > 10 else "tab10")
        for i, m in enumerate(metrics):
            ax = axes[i // ncols][i % ncols]
            sub = ctab[ctab.metric == m]
            for j, label in enumerate(order):
                c = sub[sub.point == label].sort_values("epoch")
                if not len(c):
                    continue
                lw = 2.4 if label in refs else 1.2
                color = cmap(j % cmap.N)
                ax.plot(c.epoch, c["mean"], "-o", ms=2.5, lw=lw, color=color, label=label)
                if (c.n > 1).any():
                    ax.fill_between(c.epoch, c["mean"] - c["std"], c["mean"] + c["std"],
                                    color=color, alpha=0.12, lw=0)
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.set_xlabel("epoch")
            ax.set_ylabel(m)
            ax.set_title(m, fontsize=9)
            ax.grid(alpha=0.3)
        for k in range(n, nrows * ncols):
            axes[k // ncols][k % ncols].axis("off")
        handles, labels = axes[0][0].get_legend_handles_labels()
        fig.legend(handles, labels, loc="lower center", ncol=lcols, fontsize=6.5, frameon=False,
                   title="grid point (mean over seeds; band ± std; thick = reference)",
                   title_fontsize=6.5)
        fig.suptitle(f"{study.title}: {entry}", fontsize=9)
        fig.tight_layout(rect=(0, leg_h / fig_h, 1, 1))
        p = out_dir / f"{curve_file_stem(study.name, entry)}.png"
        fig.savefig(p, dpi=110)
        plt.close(fig)
        paths.append(p)
    return paths


def search_table(df: pd.DataFrame, varied: list[str], metric: str = "val_wf1",
                 top: int = 20) -> pd.DataFrame:
    full = df[df.status == "completed"] if len(df) else df
    sel = f"sel_{metric}"
    if not len(full) or sel not in full:
        return pd.DataFrame()
    cols = ["run_name", "optuna_number", "seed", sel, f"sel_{metric.replace('val_', 'test_')}"]
    cols += [f"p.{k}" for k in varied if f"p.{k}" in full]
    return full.sort_values(sel, ascending=False)[[c for c in cols if c in full]].head(top)


def plot_search(storage_url: str, study_name: str, out_dir: Path,
                direction: str = "maximize") -> tuple[list[Path], dict[str, float], str]:
    """Optuna parameter importance + contour of the two most important parameters (matplotlib),
    over COMPLETE (full-budget) trials only - PRUNED and FAIL trials are excluded by Optuna."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import optuna
    from optuna.trial import TrialState
    out_dir.mkdir(parents=True, exist_ok=True)
    study = optuna.load_study(study_name=study_name, storage=storage_url)
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    paths: list[Path] = []
    imp: dict[str, float] = {}
    evaluator = optuna.importance.PedAnovaImportanceEvaluator()
    ev_name = type(evaluator).__name__
    varying = [k for k in (complete[0].params if complete else {})
               if len({str(t.params.get(k)) for t in complete}) > 1]
    if len(complete) >= 2 and varying:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                imp = optuna.importance.get_param_importances(study, evaluator=evaluator)
            except Exception:
                evaluator = optuna.importance.MeanDecreaseImpurityImportanceEvaluator(seed=0)
                ev_name = type(evaluator).__name__
                try:
                    imp = optuna.importance.get_param_importances(study, evaluator=evaluator)
                except Exception:
                    imp = {}
            if imp:
                ax = optuna.visualization.matplotlib.plot_param_importances(
                    study, evaluator=evaluator)
                ax.set_title(f"importance ({ev_name}, {len(complete)} complete trials)",
                             fontsize=9)
                p = out_dir / "importance.png"
                ax.figure.tight_layout()
                ax.figure.savefig(p, dpi=110)
                plt.close(ax.figure)
                paths.append(p)
            top = [k for k in (list(imp) or varying) if k in varying][:2]
            if len(top) == 2:
                try:
                    ax = optuna.visualization.matplotlib.plot_contour(study, params=top)
                    fig = ax.figure if hasattr(ax, "figure") else np.ravel(ax)[0].figure
                    p = out_dir / "contour.png"
                    fig.savefig(p, dpi=110)
                    plt.close(fig)
                    paths.append(p)
                except Exception:
                    pass
            try:
                ax = optuna.visualization.matplotlib.plot_intermediate_values(study)
                p = out_dir / "intermediate_values.png"
                ax.figure.savefig(p, dpi=110)
                plt.close(ax.figure)
                paths.append(p)
            except Exception:
                pass
    return paths, imp, ev_name


def to_markdown(df: pd.DataFrame) -> str:
    """A GitHub table without the optional ``tabulate`` dependency."""
    cols = [str(c) for c in df.columns]
    out = ["| " + " | ".join(md_cell(c) for c in cols) + " |", "|" + "---|" * len(cols)]
    for _, r in df.iterrows():
        out.append("| " + " | ".join(md_cell(v) for v in r.values) + " |")
    return "\n".join(out)


def state_counts(df: pd.DataFrame) -> dict[str, int]:
    if not len(df):
        return {}
    return {k: int(v) for k, v in df.status.value_counts().items()}


def fmt_value(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)
