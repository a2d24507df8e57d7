"""Learning curves of one or more runs: a text chart for the terminal, PNG/SVG through matplotlib.

    from rnnchar.report import read_curve
    curves = [read_curve(Path("runs/tiny")), read_curve(Path("runs/x"))]
    print(text_chart(curves))
    save_figure(curves, Path("curves.png"))      # needs the [plot] extra (matplotlib)

The text chart needs nothing but the standard library: run k is drawn with
letter k, upper case for validation, lower case for training bits per char
(where both fall in one cell, validation wins). matplotlib is imported only
by `save_figure`; without it, `PlotUnavailable` says how to install it.
"""

from __future__ import annotations

from pathlib import Path

from .report import Curve

MARKS = "ABCDEFGHJKLMNPQRSTUVWXYZ"


class PlotUnavailable(RuntimeError):
    """matplotlib is not installed."""


def _xs(curve: Curve, x: str) -> list[float]:
    return [float(s) for s in curve.steps] if x == "step" else [t / 60 for t in curve.elapsed_s]


def _series(curves: list[Curve], x: str):
    """(run index, is validation, [(x, y)]) for every non-empty series."""
    for k, c in enumerate(curves):
        for is_val, ys in ((False, c.train_bpc), (True, c.val_bpc)):
            pts = [(a, b) for a, b in zip(_xs(c, x), ys) if b is not None]
            if pts:
                yield k, is_val, pts


def _interpolate(pts: list[tuple[float, float]], at: float) -> float | None:
    """y on the polyline through `pts` at `at`; None outside its x range."""
    for (x0, y0), (x1, y1) in zip(pts, pts[1:]):
        if x0 <= at <= x1:
            return y0 if x1 == x0 else y0 + (y1 - y0) * (at - x0) / (x1 - x0)
    return pts[0][1] if len(pts) == 1 and pts[0][0] == at else None


def _fmt(v: float) -> str:
    return f"{v:,.0f}" if abs(v) >= 100 else f"{v:.2f}"


def text_chart(curves: list[Curve], x: str = "step", width: int = 64, height: int = 16) -> str:
    """The curves as lines of text: a y axis in bits/char, an x axis in steps (or minutes), a legend."""
    series = list(_series(curves, x))
    if not series:
        return "no evaluations recorded yet (metrics.jsonl is empty)"
    xs = [p[0] for _, _, pts in series for p in pts]
    ys = [p[1] for _, _, pts in series for p in pts]
    x0, x1 = min(xs), max(xs)
    y0, y1 = min(ys), max(ys)
    if y1 - y0 < 1e-9:
        y0, y1 = y0 - 0.5, y1 + 0.5
    grid = [[" "] * width for _ in range(height)]
    for k, is_val, pts in sorted(series, key=lambda s: s[1]):  # validation drawn last, on top
        mark = MARKS[k % len(MARKS)] if is_val else MARKS[k % len(MARKS)].lower()
        cols = [0] if x1 == x0 else range(width)
        for col in cols:
            at = x0 + (x1 - x0) * col / (width - 1) if x1 > x0 else x0
            y = _interpolate(pts, at)
            if y is not None:
                row = round((y1 - y) / (y1 - y0) * (height - 1))
                grid[row][col] = mark
    label_w = max(len(_fmt(y0)), len(_fmt(y1)))
    lines = ["bits/char"]
    for r, row in enumerate(grid):
        label = _fmt(y1) if r == 0 else _fmt(y0) if r == height - 1 else ""
        lines.append(f"{label:>{label_w}} |{''.join(row)}")
    unit = "step" if x == "step" else "minutes of training"
    lo, hi = (f"{x0:,.0f}", f"{x1:,.0f}") if x == "step" else (f"{x0:.1f}", f"{x1:.1f}")
    lines.append(" " * label_w + " +" + "-" * width)
    lines.append(" " * (label_w + 2) + lo + " " * max(width - len(lo) - len(hi), 1) + hi + f"  {unit}")
    for k, c in enumerate(curves):
        m = MARKS[k % len(MARKS)]
        lines.append(f"  {m} validation, {m.lower()} training: {c.name}{_last_val(c)}")
    return "\n".join(lines)


def _last_val(c: Curve) -> str:
    vals = [v for v in c.val_bpc if v is not None]
    return f"  (best validation {min(vals):.4f} bits/char)" if vals else ""


def save_figure(curves: list[Curve], out: Path, x: str = "step") -> None:
    """Write the curves to a PNG or SVG (by `out`'s suffix) with matplotlib."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise PlotUnavailable("plotting to a file needs matplotlib: pip install 'rnnchar[plot]' "
                              "(or leave out -o for a chart in the terminal)") from None
    fig, ax = plt.subplots(figsize=(8, 5), dpi=120)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for k, is_val, pts in _series(curves, x):
        label = f"{Path(curves[k].name).name} {'validation' if is_val else 'training'}"
        ax.plot([p[0] for p in pts], [p[1] for p in pts], color=colours[k % len(colours)],
                linestyle="-" if is_val else "--", marker="o" if is_val else None, markersize=3,
                linewidth=1.8 if is_val else 1.2, label=label)
    ax.set_xlabel("step (optimizer updates)" if x == "step" else "training time (minutes)")
    ax.set_ylabel("loss (bits per character)")
    ax.set_title("Learning curves: solid = validation, dashed = training")
    ax.grid(True, alpha=0.3)
    if ax.lines:
        ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)

