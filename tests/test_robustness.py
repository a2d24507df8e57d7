"""Bad input never crashes: corpora, configs, sampling and eval options, determinism.

Each case runs the real CLI and checks the exit code (0 ok, 1 data or state, 2 bad
invocation), a message that says what is wrong, and that no traceback reaches stderr. Cases
that read files, stdin or pipes run in subprocesses; pure argument checks (--set values,
config files, sample options) run in process through CliRunner.
Checkpoint corruption is in test_robustness_checkpoints.py, signals and faults in
test_robustness_faults.py.
"""

from __future__ import annotations

import json
import subprocess

import numpy as np
import pytest
import yaml
from cli_procs import CORPUS_TEXT, STREAM, TINY, assert_fails, assert_ok, cli, invoke, run_many, start

from rnnchar.checkpoint import load_checkpoint


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """A folder with the tiny corpus and one trained sentence model in runs/default."""
    d = tmp_path_factory.mktemp("robust")
    (d / "c.txt").write_text(CORPUS_TEXT, encoding="utf-8")
    assert_ok(cli("train", "--corpus", "c.txt", *TINY, cwd=d))
    return d


# -- corpora --------------------------------------------------------------------------------------

BAD_CORPORA = {  # name: (file content or None, extra args, stdin, exit code, message fragments)
    "missing": (None, [], None, 2, ["--corpus", "nope.txt does not exist"]),
    "missing-in-config": (None, ["--set", "data.corpus=nope.txt"], None, 1, ["nope.txt", "no such file"]),
    "empty": (b"", [], None, 1, ["empty"]),
    "directory": ("dir", [], None, 2, ["is a directory"]),
    "latin1": (b"caf\xe9 au lait\n" * 20, [], None, 1, ["not valid UTF-8 at byte offset 3", "0xe9"]),
    "latin1-stream": (CORPUS_TEXT.encode() * 3 + b"\xff\n", STREAM, None, 1,
                      [f"not valid UTF-8 at byte offset {3 * len(CORPUS_TEXT)}"]),
    "whitespace": (b"   \n\t\n \r\n\n", [], None, 1, ["no sentences", "whitespace"]),
    "empty-stdin": (None, [], "", 1, ["stdin", "no sentences"]),
    "empty-stdin-stream": (None, STREAM, "", 1, ["stdin", "empty"]),
    "batch-over-sentences": (CORPUS_TEXT.encode(), ["--set", "data.batch_size=50"], None, 1,
                             ["batch_size 50", "number of sentences (9)"]),
    "batch-over-chars": (CORPUS_TEXT.encode(), [*STREAM, "--set", "data.batch_size=50"], None, 1,
                         ["needs at least 401 characters", "has 284"]),
}


@pytest.fixture(scope="module")
def corpus_results(tmp_path_factory):
    d = tmp_path_factory.mktemp("corpora")
    cases = {}
    for name, (content, extra, stdin, _, _) in BAD_CORPORA.items():
        path = f"{name}.txt"
        if content == "dir":
            (d / path).mkdir()
        elif content is not None:
            (d / path).write_bytes(content)
        elif "missing" not in name:
            path = "-"
        corpus = [] if "config" in name else ["--corpus", "nope.txt" if "missing" in name else path]
        cases[name] = (["train", *corpus, *TINY, *extra, "--run-dir", name], stdin)
    return d, run_many(cases, d)


@pytest.mark.parametrize("name", BAD_CORPORA)
def test_bad_corpus_is_refused_clearly(corpus_results, name):
    d, results = corpus_results
    *_, code, fragments = BAD_CORPORA[name]
    assert_fails(results[name], code, *fragments)
    assert not (d / name / "last.npz").exists()


def test_huge_lines_crlf_and_astral_characters_train(tmp_path):
    huge = "".join("abcdefgh "[(i * 7) % 9] for i in range(3000))
    (tmp_path / "huge.txt").write_text(huge + "\n", encoding="utf-8")  # a corpus of one 3,000-char line
    (tmp_path / "crlf.txt").write_bytes(CORPUS_TEXT.replace("\n", "\r\n").encode())
    astral = "".join(f"{line} \U0001f600\U0001d11e\n" for line in CORPUS_TEXT.splitlines())  # 😀 𝄞
    (tmp_path / "astral.txt").write_text(astral, encoding="utf-8")
    verbose = [a for a in TINY if a != "--quiet"]
    r = run_many({
        "huge": ["train", "--corpus", "huge.txt", *verbose, "--set", "data.max_line_len=100",
                 "--run-dir", "huge"],
        "huge-stream": ["train", "--corpus", "huge.txt", *TINY, *STREAM, "--run-dir", "huge-stream"],
        "crlf": ["train", "--corpus", "crlf.txt", *TINY, "--run-dir", "crlf"],
        "crlf-stream": ["train", "--corpus", "crlf.txt", *TINY, *STREAM, "--run-dir", "crlf-stream"],
        "astral": ["train", "--corpus", "astral.txt", *TINY, "--run-dir", "astral"],
        "astral-stream": ["train", "--corpus", "astral.txt", *TINY, *STREAM, "--run-dir", "astral-stream"],
    }, tmp_path)
    for name, res in r.items():
        assert_ok(res)
        assert load_checkpoint(tmp_path / name / "last.npz").step == 3, name
    assert "1 lines longer than data.max_line_len=100 were split" in r["huge"].stderr
    for name in ("crlf", "crlf-stream"):
        assert 13 not in load_checkpoint(tmp_path / name / "last.npz").vocab.tolist()  # no "\r" char
    for name in ("astral", "astral-stream"):
        assert {0x1F600, 0x1D11E} <= set(load_checkpoint(tmp_path / name / "last.npz").vocab.tolist())
    ckpt, stream_ckpt, prime = "astral/last.npz", "astral-stream/last.npz", "\U0001f600\U0001d11e"
    r = run_many({
        "sample": ["sample", "--checkpoint", ckpt, "-n", "3", "--prime", prime, "--seed", "1"],
        "sample-stream": ["sample", "--checkpoint", stream_ckpt, "--length", "50", "--prime", "\U0001d11e"],
        "eval": ["eval", "--checkpoint", ckpt, "astral.txt", "--json"],
        "eval-stream": ["eval", "--checkpoint", stream_ckpt, "astral.txt", "--json"],
        "per-line": ["eval", "--checkpoint", ckpt, "--per-line", "astral.txt"],
        "eval-crlf": ["eval", "--checkpoint", "crlf/last.npz", "crlf.txt", "--json"],
    }, tmp_path)
    for res in r.values():
        assert_ok(res)
    assert all(line.startswith("\U0001f600\U0001d11e") for line in r["sample"].stdout.splitlines())
    assert len(r["sample"].stdout.splitlines()) == 3
    assert r["sample-stream"].stdout.startswith("\U0001d11e") and len(r["sample-stream"].stdout) == 1 + 50 + 1
    for name, run, text in (("eval", "astral", astral), ("eval-stream", "astral-stream", astral),
                            ("eval-crlf", "crlf", CORPUS_TEXT)):
        out = json.loads(r[name].stdout)
        known = {chr(c) for c in load_checkpoint(tmp_path / run / "last.npz").vocab} | {"\n"}
        assert out["unknown_chars"] == sum(c not in known for c in text), name  # held-out-only chars
        assert out["chars"] > 0 and np.isfinite(out["bits_per_char"]), name
    assert len(r["per-line"].stdout.splitlines()) == len(CORPUS_TEXT.splitlines())


# -- configs and options --------------------------------------------------------------------------

BAD_SETTINGS = {  # --set value: message fragments (all exit 2)
    "model.hiden_sizes=[8]": ["unknown key 'model.hiden_sizes'", "did you mean 'model.hidden_sizes'"],
    "trian.steps=3": ["unknown section 'trian'", "did you mean 'train'"],
    "train.step=3": ["did you mean 'train.steps'"],
    "train.steps=abc": ["train.steps", "integer", "'abc'"],
    "train.steps=1.5": ["train.steps", "integer"],
    "train.lr=fast": ["train.lr", "positive number"],
    "model.hidden_sizes=8": ["model.hidden_sizes", "list of positive integers"],
    "model.hidden_sizes=[-1]": ["model.hidden_sizes", "[-1]"],
    "model.hidden_sizes=[]": ["model.hidden_sizes", "non-empty"],
    "model.embed_size=-3": ["model.embed_size", "-3"],
    "data.batch_size=0": ["data.batch_size", "positive integer"],
    "train.lr=0": ["train.lr", "positive number"],
    "train.lr=-0.1": ["train.lr", "-0.1"],
    "train.lr=.nan": ["train.lr", "positive number"],
    "data.val_fraction=1": ["data.val_fraction", "[0, 1)"],
    "data.val_fraction=-0.5": ["data.val_fraction", "-0.5"],
    "model.cell=transformer": ["model.cell", "one of rnn, lstm, gru", "'transformer'"],
    "model.dtype=float16": ["model.dtype", "float32, float64"],
    "nodot=3": ["section.key=value"],
}

BAD_CONFIG_FILES = {  # file content: message fragments (all exit 2)
    "model:\n  hidden_size: [8]\n": ["unknown key 'model.hidden_size'", "did you mean 'model.hidden_sizes'"],
    "model: [1, 2\n  oops: : :\n": ["not valid YAML"],
    "just some words\n": ["not a config", "mapping"],
    "- model\n- train\n": ["not a config", "mapping"],
    "\x00\x01\xff binary": ["cannot read config"],
    "model: 5\n": ["section 'model' must be a mapping"],
}


@pytest.fixture(scope="module")
def train_args(tmp_path_factory):
    d = tmp_path_factory.mktemp("configs")
    (d / "c.txt").write_text(CORPUS_TEXT, encoding="utf-8")
    return d, ["train", "--corpus", d / "c.txt", *TINY, "--run-dir", d / "run"]


@pytest.mark.parametrize("setting", BAD_SETTINGS)
def test_bad_setting_exit_2_naming_the_key(train_args, setting):
    assert_fails(invoke(*train_args[1], "--set", setting), 2, *BAD_SETTINGS[setting])


@pytest.mark.parametrize("text", BAD_CONFIG_FILES)
def test_bad_config_file_exit_2(train_args, text):
    config = train_args[0] / f"bad{list(BAD_CONFIG_FILES).index(text)}.yaml"
    config.write_bytes(text.encode("latin-1"))
    assert_fails(invoke(*train_args[1], "--config", config), 2, *BAD_CONFIG_FILES[text])


def test_contradicting_options_and_unknown_config(train_args):
    d, args = train_args
    assert_fails(cli(*args, "--resume", "--overwrite", cwd=d), 2, "--resume and --overwrite contradict")
    assert_fails(invoke(*args, "--config", "lstn"), 2, "did you mean 'lstm'")
    assert not (d / "run" / "last.npz").exists()  # no bad invocation got as far as training


def test_yaml_never_builds_python_objects(tmp_path):
    payload = '!!python/object/apply:os.system ["touch {}"]'
    control = tmp_path / "control"
    yaml.unsafe_load(payload.format(control))
    assert control.exists()  # the payload is live: an unsafe loader would run it
    (tmp_path / "c.txt").write_text(CORPUS_TEXT, encoding="utf-8")
    (tmp_path / "evil.yaml").write_text(f"train:\n  steps: {payload.format(tmp_path / 'marker1')}\n")
    (tmp_path / "evil_top.yaml").write_text(payload.format(tmp_path / "marker2") + "\n")
    base = ["train", "--corpus", "c.txt", *TINY]
    r = run_many({
        "file": [*base, "--config", "evil.yaml"],
        "top": [*base, "--config", "evil_top.yaml"],
        "set": [*base, "--set", "train.steps=" + payload.format(tmp_path / "marker3")],
    }, tmp_path)
    for res in r.values():
        assert_fails(res, 2, "python/object/apply:os.system")
    assert not any((tmp_path / f"marker{i}").exists() for i in (1, 2, 3))


# -- sampling and eval ----------------------------------------------------------------------------

BAD_SAMPLE_OPTIONS = {  # args: message fragments (all exit 2)
    ("--prime", "Zebra \U0001f600"): ["--prime", "never saw", "'Z'", "'\U0001f600'"],
    ("--temp", "0"): ["--temp"], ("--temp", "-1"): ["--temp"], ("--temp", "nan"): ["--temp", "finite"],
    ("--temp", "inf"): ["--temp", "finite"], ("--top-k", "0"): ["--top-k"], ("--top-k", "-3"): ["--top-k"],
    ("--length", "-1"): ["--length"], ("-n", "0"): ["-n"],
}


@pytest.mark.parametrize("args", BAD_SAMPLE_OPTIONS, ids=" ".join)
def test_bad_sample_option_exit_2(work, args):
    r = invoke("sample", "--checkpoint", work / "runs/default/last.npz", *args)
    assert_fails(r, 2, *BAD_SAMPLE_OPTIONS[args])


def test_eval_counts_unseen_characters(work):
    text = "Zebras quiz \U0001f600 jolly.\nThe cat sat.\n"
    r = cli("eval", "-", "--json", cwd=work, input=text)
    assert_ok(r)
    known = {chr(c) for c in load_checkpoint(work / "runs/default/best.npz").vocab}
    out = json.loads(r.stdout)
    assert out["unknown_chars"] == sum(c not in known for c in text.replace("\n", "")) >= 5  # Z q z 😀 j y
    assert out["chars"] > 0 and np.isfinite(out["bits_per_char"])


def _into_closed_pipe(args, cwd):
    """`rnnchar ARGS | head -1`: rnnchar's exit status and stderr, and what head printed."""
    producer = start(*args, cwd=cwd)
    head = subprocess.run(["head", "-1"], stdin=producer.stdout, capture_output=True, text=True, timeout=20)
    producer.stdout.close()
    _, err = producer.communicate(timeout=20)  # scoring all 40,000 lines before printing takes minutes
    return producer.returncode, err, head.stdout


def test_output_into_a_closed_pipe_ends_quietly(work):
    big = work / "big.txt"
    big.write_text("The cat sat on the warm mat.\n" * 40000, encoding="utf-8")  # ~1.2 MB of output
    assert_ok(cli("train", "--corpus", "c.txt", *TINY, *STREAM, "--run-dir", "stream", cwd=work))
    for args in (["sample", "-n", "5000", "--seed", "1"],
                 ["eval", "--per-line", "big.txt"],
                 ["eval", "--per-line", "--json", "big.txt"],
                 ["sample", "--checkpoint", "stream/last.npz", "--length", "200000", "--seed", "1"]):
        code, err, out = _into_closed_pipe(args, work)
        err = "".join(line for line in err.splitlines(True) if not line.startswith("rnnchar: using "))
        assert (code, err) == (0, ""), (args, code, err)
        assert len(out.splitlines()) == 1


# -- determinism ----------------------------------------------------------------------------------

TIMINGS = ("chars_per_sec", "elapsed_s", "train_s", "reduce_s")  # clocks, not results


def test_same_seed_same_metrics_and_samples(tmp_path):
    (tmp_path / "c.txt").write_text(CORPUS_TEXT, encoding="utf-8")
    steps = ["--set", "train.steps=12", "--set", "train.eval_every=4"]
    r = run_many({k: ["train", "--corpus", "c.txt", *TINY, *steps, "--run-dir", k] for k in "ab"}, tmp_path)
    assert_ok(r["a"])
    assert_ok(r["b"])

    def metrics(run):
        lines = (tmp_path / run / "metrics.jsonl").read_text().splitlines()
        return [{k: v for k, v in json.loads(line).items() if k not in TIMINGS}
                for line in lines]
    assert metrics("a") == metrics("b") and [m["step"] for m in metrics("a")] == [4, 8, 12]
    s = run_many({(run, seed): ["sample", "--checkpoint", f"{run}/last.npz", "-n", "5", "--seed", seed]
                  for run, seed in (("a", "3"), ("b", "3"), ("a", "4"))}, tmp_path)
    assert s["a", "3"].stdout == s["b", "3"].stdout and len(s["a", "3"].stdout.splitlines()) == 5
    assert s["a", "4"].stdout != s["a", "3"].stdout  # the seed does matter
