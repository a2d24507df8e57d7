"""The everyday commands beside train/sample/eval: prep, runs, plot. Registered on `main` by cli.py.

    rnnchar prep book.txt -o sentences.txt
    rnnchar runs --json
    rnnchar plot -o curves.png

Like cli.py, these only parse, call and print; domain errors are mapped to exit
codes by the `main` group.
"""

from __future__ import annotations

import json
import math
import os
import sys
from datetime import datetime
from pathlib import Path

import click

from .config import DataConfig
from .data import DataError, read_text


@click.command("prep")
@click.argument("book", type=click.Path(dir_okay=False, allow_dash=True))
@click.option("--output", "-o", type=click.File("w", encoding="utf-8", lazy=True), default="-",
              help="Where the sentences go [default: stdout].")
@click.option("--max-line-len", type=click.IntRange(min=1), default=DataConfig.max_line_len,
              show_default=True, help="Report sentences longer than this (training splits them into pieces).")
def prep_cmd(book, output, max_line_len):
    """Turn a hard-wrapped book into one sentence per line (for sentence-mode training).

    Paragraphs (blank-line separated) are unwrapped; sentences end after . ! or ?
    (plus closing quotes) before a capital letter or digit, but not after "Mr.",
    "Dr.", "No.", initials and similar; paragraphs without a lower-case letter
    (headings, chapter numbers) are dropped. A summary goes to stderr.

    \b
    rnnchar prep book.txt > sentences.txt
    rnnchar prep book.txt -o sentences.txt && rnnchar train -c lstm --corpus sentences.txt
    """
    from .text import book_sentences

    text = read_text(book)
    sentences, report = book_sentences(text, max_len=max_line_len)
    if not sentences:
        raise DataError(f"no sentences found in {'stdin' if book == '-' else book}")
    output.write("".join(s + "\n" for s in sentences))
    output.flush()
    click.echo(f"rnnchar prep: {report.sentences:,} sentences, {report.too_long:,} longer than "
               f"{max_line_len} characters; {report.paragraphs_dropped:,} paragraphs without lower-case "
               "letters dropped (headings)", err=True)


def finite_float(ctx, param, value):
    """FloatRange lets nan and inf through; a temperature must be a real number."""
    if value is not None and not math.isfinite(value):
        raise click.BadParameter(f"{value} is not a finite number")
    return value


def run_dir_option(ctx, param, value: Path | None) -> Path | None:
    """--run-dir must be (or become) a directory: naming a file, or a path through one, is a bad value."""
    if value is None:
        return value
    for part in (value, *value.parents):  # the nearest part that exists must be a directory
        if os.path.lexists(part):
            if not part.is_dir():
                what = "is a file" if part == value else f"goes through {part}, which is a file"
                raise click.BadParameter(f"{value} {what}, not a directory; choose another run directory")
            break
    return value


def echo_stream(pieces) -> None:
    """Write pieces to stdout as they come (a sample streams as it is generated)."""
    out = sys.stdout
    for piece in pieces:
        out.write(piece)
        out.flush()


def check_beam_options(beam: int | None, sampling_options: bool, as_json: bool) -> None:
    if beam and sampling_options:
        raise click.UsageError("--beam ranks by the model's own probabilities: drop --argmax/--temp/--top-k")
    if as_json and not beam:
        raise click.UsageError("--json goes with --beam (samples are plain text, one per line)")


def checkpoint_or_newest(checkpoint: Path | None) -> Path:
    """--checkpoint, or the newest run's checkpoint, named on stderr so the user knows which."""
    if checkpoint is not None:
        return checkpoint
    from .report import checkpoint_summary
    from .runs import find_checkpoint

    path = find_checkpoint(Path("runs"))
    click.echo(f"rnnchar: using {path} ({checkpoint_summary(path)})", err=True)
    return path


def write_beams(beams, sentences: bool, as_json: bool) -> None:
    """Beam-search results on stdout: JSON lines, or one per line (stream texts: a blank line apart)."""
    for k, b in enumerate(beams):
        if as_json:
            click.echo(json.dumps(b.as_dict()))
        else:
            click.echo(("" if sentences or k == 0 else "\n") + b.text)


def _when(ts: float) -> str:
    return datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M")


def _or(value, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def _run_rows(infos) -> list[list[str]]:
    rows = [["run", "model", "steps", "best val bits/char", "chars/s", "updated"]]
    for r in infos:
        model = f"{r.cell} {r.hidden_sizes}".replace(" ", "") if r.cell else "-"
        steps = f"{_or(r.steps_done, ',')}/{_or(r.steps_planned, ',')}"
        rows.append([r.name, model, steps, _or(r.best_val_bpc, ".4f"), _or(r.chars_per_sec, ",.0f"),
                     _when(r.updated)])
    return rows


@click.command("runs")
@click.argument("root", required=False, type=click.Path(file_okay=False, exists=True, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line, for scripts.")
def runs_cmd(root, as_json):
    """List the runs under ROOT [default: ./runs], newest first.

    One line each: name, cell and sizes, steps done/planned, best validation
    bits/char, training speed (chars/s at the last evaluation), last update.

    \b
    rnnchar runs
    rnnchar runs experiments/ --json | jq -r 'select(.best_val_bpc < 2.4) | .path'
    """
    from .report import list_runs

    root = root or Path("runs")
    infos = list_runs(root) if root.is_dir() else []
    if not infos:
        click.echo(f"rnnchar: no runs under {root}", err=True)
        return
    if as_json:
        for r in infos:
            click.echo(json.dumps(r.as_dict()))
        return
    rows = _run_rows(infos)
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    right = {2, 3, 4}
    for row in rows:
        cells = [c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths))]
        click.echo("  ".join(cells).rstrip())


@click.command("plot")
@click.argument("run_dirs", nargs=-1, type=click.Path(file_okay=False, exists=True, path_type=Path))
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path),
              help="Write a PNG or SVG (needs matplotlib: pip install 'rnnchar[plot]').")
@click.option("--time", "by_time", is_flag=True, help="Against training time instead of steps.")
@click.option("--width", type=click.IntRange(min=20, max=400), default=64, show_default=True,
              help="Terminal chart: columns of the plot area.")
def plot_cmd(run_dirs, output, by_time, width):
    """Learning curves (training and validation bits/char) of runs [default: every run under ./runs].

    Without -o, draws a chart in the terminal (no extra packages): run 1 is
    "A"/"a" (validation/training), run 2 "B"/"b", and so on.

    \b
    rnnchar plot                                   # every run under ./runs, in the terminal
    rnnchar plot runs/lstm runs/gru -o curves.png  # one colour per run, solid validation
    rnnchar plot runs/lstm --time -o curves.svg    # against minutes of training
    """
    from .plot import PlotUnavailable, save_figure, text_chart
    from .report import is_run, read_curve

    if not run_dirs:
        root = Path("runs")
        run_dirs = tuple(sorted(d for d in root.iterdir() if is_run(d))) if root.is_dir() else ()
        if not run_dirs:
            raise click.UsageError("no runs under ./runs: name RUN_DIR(s) to plot")
    not_runs = [str(d) for d in run_dirs if not is_run(d)]
    if not_runs:
        raise click.BadParameter("not a run directory (no metrics.jsonl or checkpoint): "
                                 + ", ".join(not_runs), param_hint="RUN_DIR")
    curves = [read_curve(d) for d in run_dirs]
    x = "time" if by_time else "step"
    if output is None:
        click.echo(text_chart(curves, x=x, width=width))
        return
    if output.suffix.lower() not in (".png", ".svg", ".pdf"):
        raise click.BadParameter(f"{output}: the file name must end in .png, .svg or .pdf", param_hint="-o")
    try:
        save_figure(curves, output, x=x)
    except PlotUnavailable as err:
        raise click.ClickException(str(err)) from None
    click.echo(f"rnnchar plot: wrote {output}", err=True)


COMMANDS = (prep_cmd, runs_cmd, plot_cmd)


def reopen_closed_std_fds() -> None:
    """Started with stdin/stdout/stderr closed (`2>&-`): put /dev/null on those descriptors.

    Otherwise the next file opened (a checkpoint being written) would take descriptor 2 and receive
    whatever is written to stderr. sys.stdin/sys.stdout stay None so commands can refuse to read or
    write them; a closed stderr becomes a sink, so training goes on without its log.
    """
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
        except OSError:
            null = os.open(os.devnull, os.O_RDWR)
            if null != fd:
                os.dup2(null, fd)
                os.close(null)
    if sys.stderr is None:
        sys.stderr = open(os.devnull, "w", encoding="utf-8")  # noqa: SIM115 (lives as long as the process)


def need_stdout(what: str) -> None:
    """sample and eval started with stdout closed (`>&-`): an error, not a result thrown away."""
    if sys.stdout is None:
        raise click.ClickException(f"stdout is closed: nowhere to write {what}")
