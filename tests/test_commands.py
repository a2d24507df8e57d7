"""`rnnchar runs` and `rnnchar plot` on run directories, real (trained here) and hand-written."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from rnnchar.cli import main

SENTENCES = ["The cat sat on the mat.", "A dog ran down the road.", "We ate bread at noon.",
             "The rain fell all night.", "She sang to the sea.", "He read the old map."] * 3
TINY = ["--set", "model.hidden_sizes=[8]", "--set", "model.embed_size=4", "--set", "data.batch_size=2",
        "--set", "train.eval_every=2", "--set", "train.sample_every=0", "--quiet"]


def run(*args, input=None):
    return CliRunner().invoke(main, [str(a) for a in args], input=input)


def write_run(run_dir: Path, vals, trains, cell="gru", sizes="[16, 8]", steps=100, mtime=None):
    """A run directory written by hand: config.yaml and metrics.jsonl with the given curves."""
    run_dir.mkdir(parents=True)
    (run_dir / "config.yaml").write_text(f"model:\n  cell: {cell}\n  hidden_sizes: {sizes}\n"
                                         f"train:\n  steps: {steps}\n", encoding="utf-8")
    with open(run_dir / "metrics.jsonl", "w", encoding="utf-8") as f:
        for i, (v, t) in enumerate(zip(vals, trains)):
            f.write(json.dumps({"step": 10 * (i + 1), "train_loss": t, "val_bpc": v, "chars_per_sec": 1234.5,
                                "elapsed_s": 2.0 * (i + 1)}) + "\n")
    if mtime is not None:
        for p in run_dir.iterdir():
            os.utime(p, (mtime, mtime))


@pytest.fixture
def two_runs(tmp_path, monkeypatch):
    """runs/old (hand-written, older) and runs/new (a real tiny training, 6 of 8 planned steps)."""
    monkeypatch.chdir(tmp_path)
    write_run(tmp_path / "runs" / "old", vals=[3.0, 2.5, 2.0], trains=[2.5, 2.0, 1.5], mtime=1_000_000_000)
    corpus = tmp_path / "tiny.txt"
    corpus.write_text("\n".join(SENTENCES) + "\n", encoding="utf-8")
    r = run("train", "--corpus", corpus, *TINY, "--set", "train.steps=6", "--run-dir", "runs/new")
    assert r.exit_code == 0, r.output
    config = tmp_path / "runs" / "new" / "config.yaml"
    config.write_text(config.read_text().replace("steps: 6\n", "steps: 8\n"), encoding="utf-8")
    return tmp_path / "runs"


def test_runs_lists_newest_first_with_model_steps_and_scores(two_runs):
    r = run("runs")
    assert r.exit_code == 0, r.output
    header, new, old = r.stdout.splitlines()
    assert header.split()[:3] == ["run", "model", "steps"]
    assert new.split()[:3] == ["new", "lstm[8]", "6/8"]
    assert old.split()[:5] == ["old", "gru[16,8]", "30/100", "2.0000", "1,234"]
    assert "2001-09-09" in old  # mtime 1e9, local time of day aside


def test_runs_json_for_scripts(two_runs):
    r = run("runs", two_runs, "--json")
    assert r.exit_code == 0, r.output
    new, old = (json.loads(line) for line in r.stdout.splitlines())
    best = min(json.loads(line)["val_bpc"] for line in (two_runs / "new" / "metrics.jsonl").open())
    assert (new["name"], new["cell"], new["hidden_sizes"], new["steps_done"], new["steps_planned"]) == (
        "new", "lstm", [8], 6, 8)
    assert new["best_val_bpc"] == best and new["chars_per_sec"] > 0
    assert (old["steps_done"], old["best_val_bpc"], old["updated"][:4]) == (30, 2.0, "2001")


def test_runs_survives_a_damaged_run_and_an_empty_root(tmp_path):
    (tmp_path / "empty").mkdir()
    r = run("runs", tmp_path / "empty")
    assert r.exit_code == 0 and r.stdout == "" and "no runs" in r.stderr
    bad = tmp_path / "root" / "bad"
    bad.mkdir(parents=True)
    (bad / "metrics.jsonl").write_text("not json\n{\"step\": 4, \"val_bpc\": null}\n")
    (bad / "last.npz").write_bytes(b"PK garbage")
    (bad / "config.yaml").write_text("model: [unclosed\n")
    r = run("runs", tmp_path / "root")
    assert r.exit_code == 0, r.output
    assert r.stdout.splitlines()[1].split()[:4] == ["bad", "-", "4/-", "-"]
    assert run("runs", tmp_path / "nowhere").exit_code == 2


def test_plot_in_the_terminal_draws_each_run_with_its_letters(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_run(tmp_path / "runs" / "a", vals=[3.0, 2.5, 2.0], trains=[2.0794, 1.7329, 1.3863])  # 3, 2.5, 2 b
    write_run(tmp_path / "runs" / "b", vals=[4.0, 3.5, 3.25], trains=[2.7726, 2.4, 2.2])
    r = run("plot", "--width", 40)
    assert r.exit_code == 0, r.output
    lines = r.stdout.splitlines()
    assert lines[0] == "bits/char" and lines[1].startswith("4.00 |") and lines[16].startswith("2.00 |")
    plot = [line.split("|", 1)[1] for line in lines[1:17]]
    rows = {m: [r for r, row in enumerate(plot) if m in row] for m in "AaBb"}
    assert all(rows.values()), rows
    first_col = {m: next(r for r, row in enumerate(plot) if row[0] == m) for m in "AB"}
    assert first_col["B"] == 0 and first_col["A"] in (7, 8)  # 4.0 at the top; 3.0 halfway (row 7.5)
    assert plot[15].rstrip().endswith("A")  # a ends at 2.0 bits too: validation wins the shared cell
    assert "10" in lines[18] and "30  step" in lines[18]
    assert "A validation, a training: runs/a" in r.stdout and "best validation 2.0000" in r.stdout


def test_plot_to_png_and_svg(tmp_path):
    write_run(tmp_path / "a", vals=[3.0, 2.5, 2.0], trains=[2.0, 1.7, 1.4])
    r = run("plot", tmp_path / "a", "-o", tmp_path / "c.png")
    assert r.exit_code == 0, r.output
    assert (tmp_path / "c.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    r = run("plot", tmp_path / "a", "--time", "-o", tmp_path / "c.svg")
    assert r.exit_code == 0, r.output
    svg = (tmp_path / "c.svg").read_text()
    assert "bits per character" in svg and "training time (minutes)" in svg


def test_plot_without_matplotlib_says_how_to_get_it(tmp_path, monkeypatch):
    write_run(tmp_path / "a", vals=[3.0], trains=[2.0])
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    r = run("plot", tmp_path / "a", "-o", tmp_path / "c.png")
    assert r.exit_code == 1, r.output
    assert "pip install 'rnnchar[plot]'" in r.output and len(r.output.strip().splitlines()) == 1
    assert not (tmp_path / "c.png").exists()
    r = run("plot", tmp_path / "a")  # the terminal chart needs nothing
    assert r.exit_code == 0, r.output


@pytest.mark.parametrize("args, message", [
    (["-o", "c.jpg"], "must end in .png"),
    (["--width", "5"], "5"),
])
def test_plot_bad_invocations_exit_2(tmp_path, args, message):
    write_run(tmp_path / "a", vals=[3.0], trains=[2.0])
    r = run("plot", tmp_path / "a", *args)
    assert r.exit_code == 2 and message in r.output, r.output
    r = run("plot", tmp_path)  # a folder that is not a run
    assert r.exit_code == 2 and "not a run directory" in r.output, r.output


def test_every_command_has_examples_in_its_help_and_a_readme_section():
    readme = (Path(__file__).parent.parent / "README.md").read_text(encoding="utf-8")
    for name in main.commands:
        r = run(name, "--help")
        assert r.exit_code == 0 and f"rnnchar {name} " in r.output, name
        assert f"### `rnnchar {name}`" in readme, name


def test_runs_without_a_runs_folder_lists_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    r = run("runs", "--json")
    assert r.exit_code == 0 and r.stdout == "" and "no runs under runs" in r.stderr, r.output
