"""Input, output and the id cache under attack: full disks, signals, closed streams, endless files.

Each test drives the real CLI in a subprocess (exit codes, signals and file descriptors exactly
as a shell user sees them) and fails on the code before the fix it guards.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
from cli_procs import CLI, CORPUS_TEXT, STREAM, TINY, assert_fails, assert_ok, cli, start

from rnnchar import idcache
from rnnchar.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from rnnchar.config import build_model, config_to_dict, load_config
from rnnchar.data import DataError, Vocab, sentence_batches, stream_batches
from rnnchar.evaluate import batch_nats
from rnnchar.model import CharModel

AS_LIMIT = 1536 << 20  # an endless read must end in a clear error well before this


@pytest.fixture
def work(tmp_path):
    (tmp_path / "c.txt").write_text(CORPUS_TEXT, encoding="utf-8")
    return tmp_path


def _limited(*args, cwd, stdin=None, timeout=60, close_fd=None):
    """`rnnchar ARGS` with address space capped at AS_LIMIT (and fd `close_fd` closed)."""
    def pre():
        resource.setrlimit(resource.RLIMIT_AS, (AS_LIMIT, AS_LIMIT))
        if close_fd is not None:
            os.close(close_fd)
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1"}
    return subprocess.run([*CLI, *map(str, args)], cwd=cwd, stdin=stdin, capture_output=True, text=True,
                          timeout=timeout, preexec_fn=pre, env=env)


def _big_corpus(path, mib: int) -> None:
    line = "the quick brown fox jumps over the lazy dog, again and again.\n"
    path.write_text(line * (mib * (1 << 20) // len(line)), encoding="utf-8")


# --- the id cache -------------------------------------------------------------------------------

NO_MOUNT = os.geteuid() != 0 or shutil.which("unshare") is None


@pytest.mark.skipif(NO_MOUNT, reason="needs root to mount a tmpfs")
def test_full_disk_while_writing_the_id_cache_is_exit_1_and_leaves_no_temp_file(work):
    _big_corpus(work / "big.txt", 2)  # 2 MiB of ids into a 1 MiB file system
    train = " ".join([*CLI, "train", "--corpus", "big.txt", *TINY, *STREAM, "--run-dir", "run"])
    script = (f"mkdir -p run/cache && mount -t tmpfs -o size=1m none run/cache || exit 77; {train}; "
              "rc=$?; ls -a run/cache; exit $rc")
    r = subprocess.run(["unshare", "-m", "sh", "-c", script], cwd=work, capture_output=True, text=True,
                       timeout=120)
    if r.returncode == 77:
        pytest.skip("cannot mount a tmpfs here")
    assert r.returncode == 1, (r.returncode, r.stderr)  # was 135 (SIGBUS)
    assert "cannot write the id cache" in r.stderr and "No space left" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr
    assert ".tmp.npy" not in r.stdout, r.stdout  # `ls -a run/cache` inside the mount


def test_full_disk_simulated_in_process_is_a_data_error(tmp_path, monkeypatch):
    """Where no tmpfs can be mounted: ENOSPC from the ordinary writes of the cache file."""
    path = tmp_path / "c.txt"
    path.write_text(CORPUS_TEXT, encoding="utf-8")

    def full(tmp, chunks, n, dtype):
        tmp.write_bytes(b"partial")
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(idcache, "_write_ids", full)
    with pytest.raises(DataError, match="No space left"):
        idcache.encode_file_to_ids(path, None, 1, tmp_path / "cache")
    assert not list((tmp_path / "cache").glob(".*"))


def test_sigterm_while_encoding_the_corpus_exits_130_and_cleans_up(work):
    _big_corpus(work / "big.txt", 150)
    proc = start("train", "--corpus", "big.txt", *TINY, *STREAM, "--run-dir", "run", cwd=work)
    deadline = time.monotonic() + 60
    while not list((work / "run/cache").glob(".*.tmp.npy")):
        assert proc.poll() is None, proc.stderr.read()
        assert time.monotonic() < deadline, "the cache was never written"
        time.sleep(0.005)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, (proc.returncode, err)  # was 143, temporary file left
    assert "interrupted" in err and "Traceback" not in err, err
    assert not list((work / "run/cache").glob(".*"))


def test_rewritten_corpus_with_same_size_and_mtime_is_encoded_again(work):
    corpus = work / "c.txt"
    first = cli("train", "--corpus", "c.txt", *TINY, *STREAM, "--run-dir", "run", cwd=work)
    assert_ok(first)
    st = corpus.stat()
    corpus.write_text(CORPUS_TEXT.replace("cat", "bat"), encoding="utf-8")  # same size
    os.utime(corpus, ns=(st.st_atime_ns, st.st_mtime_ns))
    again = cli("train", "--corpus", "c.txt", *TINY, *STREAM, "--run-dir", "run", "--overwrite", cwd=work)
    assert_ok(again)
    caches = list((work / "run/cache").glob("ids-*.npy"))
    assert len(caches) == 1  # the old corpus's cache was removed
    vocab = load_checkpoint(work / "run/last.npz").vocab.tolist()
    b_id = vocab.index(ord("b")) + 2
    ids = np.load(caches[0])  # the new text's ids, not the stale ones
    assert np.count_nonzero(ids == b_id) == CORPUS_TEXT.count("b") + CORPUS_TEXT.count("cat")


def test_first_resume_of_a_stream_run_reuses_the_cache(work):
    assert_ok(cli("train", "--corpus", "c.txt", *TINY, *STREAM, "--run-dir", "run", cwd=work))
    cached = sorted((work / "run/cache").iterdir())
    mtimes = [p.stat().st_mtime_ns for p in cached]
    assert_ok(cli("train", "--corpus", "c.txt", *TINY, *STREAM, "--set", "train.steps=5", "--resume",
                  "--run-dir", "run", cwd=work))
    assert sorted((work / "run/cache").iterdir()) == cached  # no second full-size cache
    assert [p.stat().st_mtime_ns for p in cached] == mtimes


@pytest.mark.parametrize("tamper", ["id beyond the vocabulary", "float array"])
def test_tampered_id_cache_is_rebuilt(work, tamper):
    assert_ok(cli("train", "--corpus", "c.txt", *TINY, *STREAM, "--run-dir", "run", cwd=work))
    [ids_path] = (work / "run/cache").glob("ids-*.npy")
    good = np.load(ids_path)
    bad = good.copy()
    bad[3] = 250
    np.save(ids_path, bad if tamper == "id beyond the vocabulary" else good.astype(np.float64))
    r = cli("train", "--corpus", "c.txt", *TINY, *STREAM, "--overwrite", "--run-dir", "run", cwd=work)
    assert_ok(r)  # was IndexError / ValueError
    assert np.array_equal(np.load(ids_path), good)


# --- standard streams ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny sentence model: (work dir, checkpoint path)."""
    work = tmp_path_factory.mktemp("io")
    (work / "c.txt").write_text(CORPUS_TEXT, encoding="utf-8")
    assert_ok(cli("train", "--corpus", "c.txt", *TINY, "--run-dir", "run", cwd=work))
    return work, work / "run/last.npz"


def test_training_with_stderr_closed_goes_on_and_keeps_stdout_clean(work):
    r = _limited("train", "--corpus", "c.txt", *TINY[:-1], "--run-dir", "run", cwd=work, close_fd=2)
    assert r.returncode == 0 and r.stdout == "", (r.returncode, r.stdout)  # was exit 1, log on stdout
    assert load_checkpoint(work / "run/last.npz").step == 3


@pytest.mark.parametrize("args, closed, message", [
    (["eval", "-"], 0, "stdin: it is closed"),
    (["sample"], 1, "stdout is closed"),
    (["eval", "c.txt"], 1, "stdout is closed"),  # was exit 0 with the result thrown away
], ids=["eval - <&-", "sample >&-", "eval FILE >&-"])
def test_closed_standard_streams_are_exit_1(trained, args, closed, message):
    work, ckpt = trained
    r = _limited(*args, "--checkpoint", ckpt, cwd=work, close_fd=closed)
    assert r.returncode == 1 and message in r.stderr and "Traceback" not in r.stderr, (r.returncode, r.stderr)


def test_eval_with_stdin_closed_scores_the_validation_split(trained):
    work, ckpt = trained
    r = _limited("eval", "--checkpoint", ckpt, "--json", cwd=work, close_fd=0)
    assert r.returncode == 0, r.stderr  # was AttributeError
    assert json.loads(r.stdout)["chars"] > 0


def test_train_from_closed_stdin_is_exit_1(work):
    r = _limited("train", "--corpus", "-", *TINY, "--run-dir", "run", cwd=work, close_fd=0)
    assert_fails(r, 1, "stdin: it is closed")


# --- endless files and FIFOs --------------------------------------------------------------------

def test_endless_inputs_end_in_a_clear_error(trained):
    work, ckpt = trained
    with open("/dev/zero", "rb") as zero:
        from_stdin = _limited("train", "--corpus", "-", *TINY, "--run-dir", "z1", cwd=work, stdin=zero)
    assert_fails(from_stdin, 1, "more than 256 MiB")  # was MemoryError
    assert_fails(_limited("eval", "--checkpoint", ckpt, "/dev/zero", cwd=work), 1, "more than 256 MiB")
    for mode in ([], STREAM):  # sentences: MemoryError; stream: ran forever
        r = _limited("train", "--set", "data.corpus=/dev/zero", *TINY, *mode, "--run-dir", "z2", cwd=work,
                     timeout=30)
        assert_fails(r, 1, "/dev/zero", "not a regular file")


def test_fifos_are_refused_where_a_file_is_seeked_or_read_twice(trained):
    work, ckpt = trained
    os.mkfifo(work / "f")
    assert_fails(cli("sample", "--checkpoint", "f", cwd=work, timeout=20), 1, "FIFO")
    r = cli("train", "--set", "data.corpus=f", *TINY, *STREAM, "--run-dir", "zf", cwd=work, timeout=20)
    assert_fails(r, 1, "FIFO")
    (work / "fr").mkdir()
    os.mkfifo(work / "fr/last.npz")
    r = cli("train", "--corpus", "c.txt", *TINY, "--resume", "--run-dir", "fr", cwd=work, timeout=20)
    assert_fails(r, 1, "FIFO")


# --- eval: big vocabularies, overconfident models -------------------------------------------------

def _checkpoint_for(path, chars: str, sets: list[str], decoder_scale: float = 1.0) -> None:
    """A freshly initialised model over `chars`, saved as a checkpoint (no training needed)."""
    cfg = load_config(None, sets)
    vocab = Vocab(chars)
    model = build_model(cfg, len(vocab))
    params = {k: p.w * (decoder_scale if k == "decoder.W" else 1.0) for k, p in model.params.items()}
    rng_state = np.random.default_rng(0).bit_generator.state
    save_checkpoint(path, Checkpoint(config=config_to_dict(cfg), vocab=vocab.to_array(), params=params,
                                     opt_state={}, step=0, rng_state=rng_state, history=[], meta={}))


def test_eval_memory_does_not_grow_with_vocabulary_times_window(tmp_path):
    chars = "".join(chr(0x4E00 + i) for i in range(30_000))  # 30,002 ids: old logits were 8192 x 30002
    _checkpoint_for(tmp_path / "big.npz", chars, ["model.hidden_sizes=[8]", "model.embed_size=4",
                                                  "data.mode=stream"])
    text = "".join(np.random.default_rng(0).choice(list(chars[:500]), size=8_800))
    (tmp_path / "t.txt").write_text(text, encoding="utf-8")
    r = _limited("eval", "--checkpoint", "big.npz", "t.txt", "--json", cwd=tmp_path)
    assert r.returncode == 0, r.stderr  # was "out of memory" (exit 1) under the 1.5 GB cap
    assert json.loads(r.stdout)["chars"] == 32 * ((8_800 - 1) // 32)  # 32 streams of 274 predictions


@pytest.mark.parametrize("mode", ["sentences", "stream"])
def test_chunked_scoring_equals_whole_batches(mode):
    rng = np.random.default_rng(3)
    model = CharModel(40, "lstm", [12, 9], embed_size=5, dtype="float64", rng=rng)
    if mode == "stream":
        batches = list(stream_batches(rng.integers(2, 40, size=3000).astype(np.int32)))
    else:
        seqs = [np.concatenate([[0], rng.integers(1, 40, size=n), [0]]).astype(np.int32)
                for n in rng.integers(1, 60, size=50)]
        batches = list(sentence_batches(seqs))
    whole = batch_nats(model, batches, budget=10**12)
    chunked = batch_nats(model, batches, budget=32 * 40 * 3)  # 3 steps at a time
    assert chunked[1] == whole[1] > 0
    assert chunked[0] == pytest.approx(whole[0], rel=1e-12)


def test_overconfident_model_reports_infinite_perplexity_as_null(tmp_path):
    (tmp_path / "c.txt").write_text(CORPUS_TEXT, encoding="utf-8")
    _checkpoint_for(tmp_path / "hot.npz", sorted(set(CORPUS_TEXT) - {"\n"}),
                    ["model.hidden_sizes=[8]", "model.embed_size=4"], decoder_scale=1e6)
    r = cli("eval", "--checkpoint", "hot.npz", "c.txt", "--json", cwd=tmp_path)
    assert r.returncode == 0, r.stderr  # was OverflowError in math.exp

    def no_constants(token):
        raise AssertionError(f"{token} is not JSON")
    result = json.loads(r.stdout, parse_constant=no_constants)
    assert result["perplexity"] is None and result["bits_per_char"] > 709 / np.log(2)
    plain = cli("eval", "--checkpoint", "hot.npz", "c.txt", cwd=tmp_path)
    assert plain.returncode == 0 and "perplexity inf" in plain.stdout, plain.stderr


def test_training_with_a_huge_validation_loss_records_null_perplexity(work):
    r = cli("train", "--corpus", "c.txt", *TINY, "--set", "train.lr=16", "--run-dir", "run", cwd=work)
    assert_ok(r)  # was OverflowError in math.exp
    rec = json.loads((work / "run/metrics.jsonl").read_text().splitlines()[-1])
    assert rec["val_bpc"] > 709 / np.log(2) and rec["val_perplexity"] is None


# --- sample arguments ---------------------------------------------------------------------------

@pytest.mark.parametrize("args, fragment", [
    (["--seed", "-1"], "--seed"),  # was ValueError
    (["-n", "1000000000000000000000000000000"], "-n"),  # was OverflowError
], ids=["negative seed", "huge n"])
def test_sample_refuses_impossible_numbers_with_exit_2(trained, args, fragment):
    work, ckpt = trained
    r = cli("sample", "--checkpoint", ckpt, *args, cwd=work)
    assert_fails(r, 2, fragment)


def test_a_tiny_temperature_samples_like_argmax(trained):
    work, ckpt = trained
    tiny = cli("sample", "--checkpoint", ckpt, "--temp", "1e-320", "-n", "3", "--seed", "1", cwd=work)
    greedy = cli("sample", "--checkpoint", ckpt, "--argmax", "-n", "3", cwd=work)
    assert_ok(tiny)
    assert "Warning" not in tiny.stderr, tiny.stderr  # was a RuntimeWarning and empty samples
    assert tiny.stdout == greedy.stdout and tiny.stdout.strip(), (tiny.stdout, greedy.stdout)


# --- sentence-mode memory -------------------------------------------------------------------------

def _one_long_step(max_batch_tokens: int):
    """(params after one step, loss, peak traced bytes) on a batch of 16 lines of ~200 characters."""
    import tracemalloc

    from rnnchar.corpus import Corpus
    from rnnchar.data import SentenceBatcher, encode_sentences, pad_batch
    from rnnchar.train import Trainer

    rng = np.random.default_rng(5)
    lines = ["".join(rng.choice(list("abcdefgh "), size=n)) for n in rng.integers(150, 200, size=16)]
    vocab = Vocab("abcdefgh ")
    seqs = encode_sentences(lines, vocab)
    cfg = load_config(None, ["model.hidden_sizes=[24, 16]", "model.embed_size=6", "model.dtype=float64",
                             "data.batch_size=16", f"data.max_batch_tokens={max_batch_tokens}"])
    corpus = Corpus("sentences", vocab, SentenceBatcher(seqs, 16), [], "test")
    corpus.train_batch = lambda step, rng: pad_batch(seqs)
    trainer = Trainer(cfg, Path("unused"), corpus)
    tracemalloc.start()
    loss, n = trainer.train_step()
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return {k: p.w.copy() for k, p in trainer.model.params.items()}, loss, n, peak


def test_long_sentence_batches_run_in_row_groups_with_the_same_step():
    whole, loss, n, peak_whole = _one_long_step(0)
    split, loss_split, n_split, peak_split = _one_long_step(600)  # 3 rows (~600 characters) at a time
    assert n_split == n and loss_split == pytest.approx(loss, rel=1e-12)
    for k in whole:
        np.testing.assert_allclose(split[k], whole[k], rtol=1e-9, atol=1e-12, err_msg=k)
    assert peak_split < 0.4 * peak_whole, (peak_split, peak_whole)


def test_per_line_json_writes_null_for_a_line_with_nothing_to_score(trained):
    work, ckpt = trained
    r = cli("eval", "--checkpoint", ckpt, "--per-line", "--json", "-", cwd=work, input="The cat.\n\nA dog.\n")
    assert_ok(r)

    def no_constants(token):
        raise AssertionError(f"{token} is not JSON")
    scores = [json.loads(out, parse_constant=no_constants)["bits_per_char"] for out in r.stdout.splitlines()]
    assert scores[1] is None and scores[0] > 0 and scores[2] > 0  # was NaN, which is not JSON


def test_stream_row_groups_carry_the_state_like_whole_batches(tmp_path):
    from rnnchar.corpus import load_corpus
    from rnnchar.train import Trainer

    rng = np.random.default_rng(2)
    (tmp_path / "s.txt").write_text("".join(rng.choice(list("abcde \n"), size=4000)), encoding="utf-8")
    runs = []
    for cap in (0, 40):  # 8 streams x 16 steps = 128 characters: groups of 2 streams
        cfg = load_config(None, [f"data.corpus={tmp_path / 's.txt'}", "data.mode=stream", "data.seq_len=16",
                                 "data.batch_size=8", "model.hidden_sizes=[10]", "model.embed_size=4",
                                 "model.dtype=float64", f"data.max_batch_tokens={cap}"])
        trainer = Trainer(cfg, tmp_path, load_corpus(cfg))
        losses = [trainer.train_step()[0] for _ in range(3)]  # the carried state feeds steps 2 and 3
        runs.append((losses, trainer.carry, {k: p.w.copy() for k, p in trainer.model.params.items()}))
    (loss_a, carry_a, params_a), (loss_b, carry_b, params_b) = runs
    np.testing.assert_allclose(loss_b, loss_a, rtol=1e-10)
    for layer_a, layer_b in zip(carry_a, carry_b, strict=True):
        for a, b in zip(layer_a, layer_b, strict=True):
            np.testing.assert_allclose(b, a, rtol=1e-8, atol=1e-12)
    for k in params_a:
        np.testing.assert_allclose(params_b[k], params_a[k], rtol=1e-8, atol=1e-12, err_msg=k)
