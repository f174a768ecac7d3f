"""A model-selection leaderboard shown to people: a text table, one-line parameters, a plot of score against latency."""

from __future__ import annotations

import os
import sys
from pathlib import Path


def table(leaderboard: list[dict], limit: int | None = 15) -> str:
    """Return the leaderboard as a text table: rank, the halving rung scored at, parameters, CV mean ± std, fit time,
    deployed figures; a line under the header says the ranks order by rung first, so a lower rank's score may be higher."""
    lines = [f"{'rank':>4}  {'rung (epochs)':13s} {'candidate':44s} {'CV mean ± std':>19s} {'fit s':>7s}  "
             "deployed (program, bytes, µs/row b1, b16)",
             "      (ranked by the halving rung reached, deepest first, then CV mean: a candidate cut at an earlier rung "
             "ranks below every one scored at a later rung)"]  # fmt: skip
    for e in leaderboard[:limit]:
        p = params_text(e["params"])
        rung = f"{e['rung'] + 1} ({e['epochs']})" if e.get("rung") is not None and "epochs" in e else "-"
        if e["status"] == "ok":
            cv = f"{e['mean']:.4f} ± {e['std']:.4f}"
            fit = f"{e['fit_seconds']:.3f}"
        else:
            cv, fit = e["status"], ""
        d = e.get("deployed")
        dep = f"{d['program_b1']}, {d['weight_bytes']} B, {d['us_per_row_b1']:g}, {d['us_per_row_b16']:g}" if d else ""
        if e.get("ruled_out"):
            dep += f"  [ruled out: {e['ruled_out']}]"
        lines.append(f"{e['rank']:>4}  {rung:13s} {p:44s} {cv:>19s} {fit:>7s}  {dep}")
    if limit is not None and len(leaderboard) > limit:
        lines.append(f"      … {len(leaderboard) - limit} more (see --json or the card's selection.leaderboard)")
    return "\n".join(lines)


def params_text(p: dict) -> str:
    """Return a candidate's parameters as one short line."""
    parts = [p["model"]]
    if "hidden" in p:
        parts.append("x".join(map(str, p["hidden"])))
    for k, label in (("lr", "lr"), ("weight_decay", "l2")):
        if k in p:
            parts.append(f"{label}={p[k]:g}")
    if p.get("rotate"):
        parts.append("rotate")
    if p.get("scale") is False:
        parts.append("unscaled")
    return " ".join(parts)


def plot(leaderboard: list[dict], path: str | os.PathLike, metric: str) -> Path | None:
    """Draw the finalists' CV score against latency per row at batch 1 into `path`; returns it, or None without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("aiaas: matplotlib is not installed (pip install 'aiaas-torch[plots]'); no plot written", file=sys.stderr)
        return None
    rows = [e for e in leaderboard if e.get("deployed")]
    fig, ax = plt.subplots(figsize=(6, 4))
    for e in rows:
        d = e["deployed"]
        ax.errorbar(d["us_per_row_b1"], e["mean"], yerr=e["std"], fmt="x" if e.get("ruled_out") else "o", capsize=3)
        ax.annotate(f"#{e['rank']} {params_text(e['params'])}", (d["us_per_row_b1"], e["mean"]), fontsize=7)
    ax.set_xlabel("µs per row at batch 1 (served program)")
    ax.set_ylabel(f"CV {metric} (higher is better)")
    ax.set_title("model selection: finalists (x: ruled out by the budget)")
    path = Path(path)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
