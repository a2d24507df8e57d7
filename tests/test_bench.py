"""The benchmark harness on a tiny corpus for a few steps: JSON lines, fields, interleaving. No timings."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from rnnchar import bench, benchjob, benchpar
from rnnchar.config import load_config

WORDS = "the cat sat on a warm mat while rain fell on the old town and birds sang".split()
FIELDS = {"workload", "system", "cell", "threads", "batch", "seq", "hidden", "emb", "chars_per_sec",
          "peak_rss_mb", "steps"}

# Stands in for shared/bench/torch_ref.py: records its arguments, prints a "config" then a "result" line.
FAKE_TORCH_REF = """
import json, sys
args = dict(zip(sys.argv[1::2], sys.argv[2::2]))
print(json.dumps({"event": "config", "chars_per_sec": 1.0}))
result = {"event": "result", "chars_per_sec": 2000.0, "peak_rss_mb": 300.5, "args": sys.argv[1:]}
if "--no-eval" not in sys.argv:
    result["val_bpc"] = 4.25
print(json.dumps(result))
"""


@pytest.fixture
def corpora(tmp_path) -> Path:
    """A corpora folder with the two files the workloads read, small enough for seconds of work."""
    folder = tmp_path / "corpora"
    folder.mkdir()
    lines = [" ".join(WORDS[(i * 7 + k) % len(WORDS)] for k in range(4 + i % 5)).capitalize() + "."
             for i in range(80)]
    (folder / "sherlock-holmes-sentences.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    (folder / "tinyshakespeare.txt").write_text(" ".join(lines * 3), encoding="utf-8")
    return folder


def run_bench(*args: str) -> list[dict]:
    proc = subprocess.run([sys.executable, "-m", "rnnchar.bench", *args], capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr
    return [json.loads(line) for line in proc.stdout.splitlines()]


def test_tiny_job_runs_in_a_subprocess_and_reports_its_fields(corpora):
    spec = bench.job("tiny", "gru", 1, emb=4, hidden=8, batch=2, seq=8, steps=3, warmup=1, torch=False,
                     corpus_path=str(corpora / "tinyshakespeare.txt"), corpus="tinyshakespeare.txt",
                     torch_corpus="", torch_seq=8, quality=True)
    args = bench.parse_args(["--corpora-dir", str(corpora)])
    rec = bench.run_one(spec, "rnnchar", args)
    assert rec is not None
    assert FIELDS <= rec.keys()
    assert [rec[k] for k in ("system", "cell", "hidden", "steps", "warmup")] == ["rnnchar", "gru", 8, 3, 1]
    assert rec["chars_per_sec"] > 0 and rec["peak_rss_mb"] > 0
    assert 0 < rec["val_bpc"] < 10 and rec["val_chars"] > 0


def test_quick_run_interleaves_with_torch_and_prints_ratios(corpora, tmp_path):
    fake = tmp_path / "fake_torch_ref.py"
    fake.write_text(FAKE_TORCH_REF, encoding="utf-8")
    lines = run_bench("--quick", "--only", "demo,memory", "--repeats", "2", "--corpora-dir", str(corpora),
                      "--torch-python", sys.executable, "--torch-ref", str(fake), "--scale-mb", "0.1")
    runs = [r for r in lines if r["kind"] == "run"]
    assert all(FIELDS <= r.keys() for r in runs)
    demo1 = [r["system"] for r in runs if r["workload"] == "demo" and r["batch"] == 1]
    assert demo1 == ["rnnchar", "torch", "rnnchar", "torch"]  # interleaved, not grouped
    assert [r["repeat"] for r in runs if r["workload"] == "demo" and r["batch"] == 1] == [0, 0, 1, 1]
    torch_run = next(r for r in runs if r["system"] == "torch")
    assert (torch_run["seq"], torch_run["chars_per_sec"], torch_run["peak_rss_mb"]) == (64, 2000.0, 300.5)

    ratio = next(r for r in lines if r["kind"] == "ratio" and r["system"] == "rnnchar/torch")
    medians = {r["system"]: r["chars_per_sec"] for r in lines if r["kind"] == "median" and r["batch"] == 1}
    assert medians["torch"] == 2000.0
    assert ratio["ratio"] == pytest.approx(medians["rnnchar"] / 2000.0, rel=1e-2)
    assert any(r["system"] == "recurrentjs" and r["chars_per_sec"] == 5678 for r in lines)
    assert not any(r["system"] == "torch" and r["batch"] == 32 for r in runs)  # no torch run asked for

    memory = [r for r in runs if r["workload"] == "memory"]
    assert [r["system"] for r in memory] == ["rnnchar"] * 4  # rnnchar only: small, big, small, big
    assert all(r["ids_mmap"] and r["rss_after_load_mb"] <= r["peak_rss_mb"] for r in memory)
    assert memory[0]["corpus_mb"] < 0.1 <= memory[1]["corpus_mb"]
    assert memory[0]["ids_mb"] < memory[1]["ids_mb"]


def test_unknown_workload_is_a_usage_error():
    proc = subprocess.run([sys.executable, "-m", "rnnchar.bench", "--only", "smal"], capture_output=True,
                          text=True)
    assert proc.returncode == 2 and "smal" in proc.stderr


def test_quality_workload_measures_the_model_defaults():
    """Only the shape is set on the model: its initialisation (forget bias, gains) is the default one."""
    specs = [spec for group in bench.plan("quality", bench.parse_args([])) for spec in group]
    assert {s["cell"] for s in specs} == {"lstm", "gru", "rnn"}
    for spec in specs:
        ov = benchjob.overrides({**spec, "corpus_path": "x.txt"})
        model_keys = {o.partition("=")[0] for o in ov if o.startswith("model.")}
        assert model_keys == {"model.cell", "model.embed_size", "model.hidden_sizes"}, ov


def test_quality_workload_runs_lstm_yaml_at_its_sizes_solver_and_budget_with_its_own_schedule():
    """The clause: the shipped lstm.yaml, with the workload's sizes, optimizer and steps, keeps its schedule
    and regularisation (dropout auto); no torch run of its own, the plain LSTM's is beside it."""
    specs = [spec for group in bench.plan("quality", bench.parse_args([])) for spec in group]
    [spec] = [s for s in specs if s.get("config")]
    assert spec["config"] == "lstm" and not spec["torch"]
    cfg = load_config("lstm", benchjob.overrides({**spec, "corpus_path": "x.txt"}))
    own = load_config("lstm", [])
    assert (cfg.train.lr_schedule, cfg.train.warmup_steps, cfg.model.dropout) == \
        (own.train.lr_schedule, own.train.warmup_steps, own.model.dropout)
    assert (cfg.model.hidden_sizes, cfg.model.embed_size, cfg.data.seq_len, cfg.data.mode) == \
        ([128, 128], 64, 64, "stream")
    assert (cfg.train.optimizer, cfg.train.lr, cfg.train.steps, cfg.train.clip_norm) == \
        ("adam", 0.002, 2000, 5)


def test_quality_repeats_are_seeds_1_to_n_on_both_sides_and_speed_repeats_one_seed(monkeypatch):
    """A seed's quality run is deterministic, so its repeats are seeds: medians of seeds, side by side."""
    seen = []

    def fake_run_one(spec, system, args):
        seen.append((spec["workload"], system, spec.get("seed", 1)))
        if system == "torch":
            cmd = bench._torch_cmd(spec, args)
            assert cmd[cmd.index("--seed") + 1] == str(spec.get("seed", 1))
        else:
            assert f"train.seed={spec.get('seed', 1)}" in benchjob.overrides({**spec, "corpus_path": "x"})
        return {"kind": "run", "chars_per_sec": 1.0, "val_bpc": 2.0, "seed": spec.get("seed", 1)}

    monkeypatch.setattr(bench, "run_one", fake_run_one)
    args = bench.parse_args(["--repeats", "3", "--torch-python", sys.executable])
    args.failed = 0
    quality = bench.plan("quality", args)[0]
    for spec in quality:
        spec.update(corpus_path="x", torch_corpus="x", torch_seq=spec["seq"])
    bench.run_group(quality, args)
    assert seen == [("quality", s, seed) for seed in (1, 2, 3) for s in ("rnnchar", "torch")]
    seen.clear()
    small = bench.plan("small", args)[0]
    for spec in small:
        spec.update(corpus_path="x", torch_corpus="x", torch_seq=spec["seq"])
    bench.run_group(small, args)
    assert {seed for _, _, seed in seen} == {1} and len(seen) == 9  # rnnchar, torch, ceiling x 3


def test_ceiling_runs_beside_training_and_reports_a_ratio(corpora, monkeypatch):
    spec = bench.job("tiny", "lstm", 1, emb=4, hidden=8, batch=2, seq=8, steps=3, warmup=1, torch=False,
                     corpus_path=str(corpora / "tinyshakespeare.txt"), corpus="tinyshakespeare.txt",
                     torch_corpus="", torch_seq=8, ceiling=True)
    args = bench.parse_args(["--corpora-dir", str(corpora), "--repeats", "1"])
    printed = []
    monkeypatch.setattr(bench, "emit", printed.append)  # the group's lines, not stdout
    bench.run_group([spec], args)
    runs = [r for r in printed if r["kind"] == "run"]
    assert [r["system"] for r in runs] == ["rnnchar", "ceiling"]
    assert all(r["chars_per_sec"] > 0 for r in runs)
    ratio = next(r for r in printed if r["system"] == "rnnchar/ceiling")
    assert ratio["ratio"] == pytest.approx(runs[0]["chars_per_sec"] / runs[1]["chars_per_sec"], abs=1e-3)


def test_corpora_default_to_shared_only_when_it_exists(tmp_path, monkeypatch):
    monkeypatch.setattr(bench, "REPO", tmp_path / "repo")
    monkeypatch.chdir(tmp_path)
    assert bench.parse_args([]).corpora_dir == tmp_path / "corpora"  # no ../shared: a local folder
    (tmp_path / "shared" / "corpora").mkdir(parents=True)
    assert bench.parse_args([]).corpora_dir == tmp_path / "shared" / "corpora"
    assert bench.parse_args(["--corpora-dir", "mine"]).corpora_dir == tmp_path / "mine"


def test_parallel_job_runs_rnnchar_train_with_workers_and_reports_the_reduction(corpora):
    spec = bench.job("parallel", "rnn", 2, emb=4, hidden=8, batch=4, seq=8, steps=3, warmup=1, torch=False,
                     corpus_path=str(corpora / "tinyshakespeare.txt"), corpus="tinyshakespeare.txt",
                     torch_corpus="", torch_seq=8, workers=2)
    rec = bench.run_one(spec, "rnnchar", bench.parse_args(["--corpora-dir", str(corpora)]))
    assert rec is not None
    assert rec["workers"] == 2 and rec["chars_per_sec"] > 0 and rec["ms_per_step"] > 0
    assert 0 < rec["reduce_share"] < 1  # two workers sum gradients every step
    V = len(set((corpora / "tinyshakespeare.txt").read_text())) + 2  # + boundary and unknown tokens
    n_params = V * 4 + (4 + 8 + 1) * 8 + (8 + 8 + 1) * 8 + (8 + 1) * V  # embed, two tanh layers, decoder
    assert rec["grad_mb"] == pytest.approx(n_params * 4 / 1e6, abs=1e-3)  # float32


def test_ring_allreduce_cost_and_projection_by_hand():
    # 2 (4-1)/4 * 1e6 bytes / 1e9 bytes/s = 1.5 ms, plus 2 (4-1) latencies of 10 us
    assert benchpar.ring_allreduce_ms(1e6, 4, bandwidth_gb_s=1.0, latency_us=10.0) == pytest.approx(1.56)
    assert benchpar.ring_allreduce_ms(1e6, 1, bandwidth_gb_s=1.0, latency_us=10.0) == 0
    spec = dict(cell="lstm", hidden=128, layers=2, emb=64, batch=32, seq=64)
    lines = benchpar.projections({32: 100.0, 4: 14.0, 2: 8.0}, spec, grad_mb=1.0)
    cores, machines = lines
    # 16 cores, batch 2 each: 2*15/16 * 1e6 / 5e9 s = 0.375 ms + 30 * 10 us = 0.675 ms
    assert (cores["workers"], cores["per_worker_batch"], cores["allreduce_ms"]) == (16, 2, 0.675)
    assert cores["step_ms"] == pytest.approx(8.675, abs=0.01)
    assert cores["speedup"] == pytest.approx(100 / 8.675, abs=0.01)
    # 4 machines x 2 cores, batch 4 each: 0.2 + 0.02 ms inside a machine, 1.2 + 0.3 ms between them
    assert (machines["workers"], machines["machines"], machines["per_worker_batch"]) == (8, 4, 4)
    assert machines["allreduce_ms"] == pytest.approx(1.72)
    assert machines["chars_per_sec"] == pytest.approx(32 * 64 / 15.72e-3, rel=1e-3)
    assert machines["assumptions"]["ring1"] == {"parties": 4, "bandwidth_gb_s": 1.25, "latency_us": 50.0}


def test_quick_parallel_workload_interleaves_and_prints_ratio_and_projections(corpora, tmp_path,
                                                                             monkeypatch, capsys):
    fake = tmp_path / "fake_torch_ref.py"
    fake.write_text(FAKE_TORCH_REF, encoding="utf-8")
    monkeypatch.setattr(bench, "SMALL", dict(emb=4, hidden=8, batch=16, seq=8))  # seconds, not minutes
    monkeypatch.setattr(bench, "LARGE", dict(emb=4, hidden=12, batch=16, seq=8))
    assert bench.main(["--quick", "--only", "parallel", "--repeats", "1", "--corpora-dir", str(corpora),
                       "--torch-python", sys.executable, "--torch-ref", str(fake)]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    runs = [r for r in lines if r["kind"] == "run"]
    assert [(r["system"], r["cell"], r.get("workers")) for r in runs[:5]] == [
        ("rnnchar", "lstm", 1), ("rnnchar", "lstm", 2), ("torch", "lstm", None), ("rnnchar", "gru", 2),
        ("torch", "gru", None)]  # 1 vs 2 workers, then each 2-worker run beside torch
    assert [r["batch"] for r in runs if r.get("workers") == 1] == [16, 16, 2, 1, 16, 2, 1]  # + sweeps
    two = [r for r in runs if r.get("workers") == 2]
    assert len(two) == 4 and all(0 < r["reduce_share"] < 1 for r in two)
    torch_args = next(r for r in lines if r["kind"] == "run" and r["system"] == "torch")
    assert torch_args["threads"] == 2
    ratio = next(r for r in lines if r.get("workers") == "2/1")
    assert ratio["ratio"] == pytest.approx(runs[1]["chars_per_sec"] / runs[0]["chars_per_sec"], rel=1e-2)
    proj = [r for r in lines if r["kind"] == "projection"]
    assert [(p["hidden"], p["workers"], p["machines"], p["per_worker_batch"]) for p in proj] == \
        [(8, 16, 1, 1), (8, 8, 4, 2), (12, 16, 1, 1), (12, 8, 4, 2)]
    sweep = {r["batch"]: r["ms_per_step"] for r in runs if r.get("workers") == 1 and r["hidden"] == 8}
    assert proj[0]["compute_ms"] == sweep[1] and proj[0]["one_worker_ms"] == sweep[16]
