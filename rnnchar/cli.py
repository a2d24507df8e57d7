"""The `rnnchar` command: train, sample and eval character-level recurrent language models.

    rnnchar train --config lstm.yaml
    rnnchar sample --temp 0.7 -n 20 | sort | uniq -c
    cat held_out.txt | rnnchar eval - --json

stdout carries results only; logs, progress and warnings go to stderr. Exit
codes: 0 success, 1 a failure of data or state, 2 a bad invocation, 130 after
Ctrl-C (training saves last.npz first).
"""

from __future__ import annotations

import json
import logging
import math
import os
import signal
import sys
from contextlib import ExitStack
from pathlib import Path

import click
import numpy as np

from . import __version__
from .checkpoint import CheckpointError
from .comm import WorkerLost
from .commands import COMMANDS, echo_stream, finite_float, need_stdout, reopen_closed_std_fds, run_dir_option
from .config import ConfigError, load_config, resolve_config_path
from .data import DataError
from .finetune import base_config
from .model import ShapeError
from .runs import RunLock, load_model
from .train import TrainingDiverged
from .traincmd import best_note, corpus_option, open_run, setup_logging, train_until_done_or_stopped
from .workers import join_mpi_job, open_as_worker, writer_setup

log = logging.getLogger("rnnchar")
MAX_SAMPLES = 100_000  # sample -n: the sentences are generated together, one row each


class _Cli(click.Group):
    """Turns domain errors into exit codes at the edge, the same for every command."""

    def invoke(self, ctx):
        reopen_closed_std_fds()
        try:
            return super().invoke(ctx)
        except ConfigError as e:
            raise click.UsageError(str(e), ctx) from None
        except (DataError, CheckpointError, ShapeError, TrainingDiverged, WorkerLost) as e:
            raise click.ClickException(str(e)) from None
        except MemoryError:
            raise click.ClickException("out of memory: try a smaller model, batch or sample count") from None
        except KeyboardInterrupt:
            click.echo("rnnchar: interrupted", err=True)
            raise click.exceptions.Exit(130) from None
        except BrokenPipeError:  # `rnnchar sample | head -1`: the reader left; end quietly
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            raise click.exceptions.Exit(0) from None
        except OSError as e:
            raise click.ClickException(f"{e.strerror or e}: {e.filename or ''}".rstrip(": ")) from None


@click.group(cls=_Cli, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="rnnchar")
def main():
    """Character-level recurrent language models (RNN, LSTM, GRU, gated feedback) on a NumPy autodiff core.

    \b
    rnnchar train --config lstm.yaml            # bundled config and corpus
    rnnchar sample --temp 0.7 -n 10             # sentences from the newest run
    rnnchar eval notes.txt --json               # bits per char of a text
    """


@main.command("train")
@click.option("--config", "-c", "config_name", metavar="YAML",
              help="Config file, or a bundled name: rnn, lstm, gru, gf-rnn, gf-gru, gf-lstm, demo.")
@click.option("--corpus", metavar="FILE|-", help="Training text (overrides data.corpus); - reads stdin.")
@click.option("--set", "sets", multiple=True, metavar="SECTION.KEY=VALUE",
              help="Override a config key (repeatable; the value is read as YAML).")
@click.option("--run-dir", type=click.Path(path_type=Path), callback=run_dir_option,
              help="Where checkpoints and metrics go [default: runs/<config name>].")
@click.option("--resume", is_flag=True, help="Continue exactly from <run-dir>/last.npz.")
@click.option("--more", type=click.IntRange(min=0), metavar="N",
              help="With --resume: train N steps beyond the checkpoint's step (sets train.steps).")
@click.option("--init-from", type=click.Path(dir_okay=False, exists=True, path_type=Path), metavar="CKPT",
              help="Fine-tune: a new run from CKPT's weights (its config unless --config; fresh optimizer).")
@click.option("--overwrite", is_flag=True, help="Start afresh even if the run directory holds a checkpoint.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar or log lines.")
@click.option("--workers", metavar="N|auto", help="Worker processes sharing each batch (sets train.workers); "
              "under mpiexec every rank is one.")
def train_cmd(config_name, corpus, sets, run_dir, resume, more, init_from, overwrite, quiet, workers):
    """Train a model; checkpoints go to runs/<config name>/ (last.npz, best.npz, metrics.jsonl).

    \b
    rnnchar train --config lstm.yaml
    rnnchar train --config gru.yaml --corpus my.txt --set train.steps=5000
    rnnchar train --config lstm.yaml --resume --more 2000
    rnnchar train -c demo --set model.hidden_sizes=[64,64] --run-dir runs/wide
    rnnchar train --init-from runs/lstm/best.npz --corpus poems.txt --set train.steps=500
    rnnchar train --config lstm.yaml --workers 2        # mpiexec -n 8 rnnchar train ...: 8 ranks
    """
    setup_logging(quiet)
    old_term = signal.signal(signal.SIGTERM, _interrupt)  # while encoding the corpus: clean up, exit 130
    try:
        _train_cmd(config_name, corpus, sets, run_dir, resume, more, init_from, overwrite, quiet, workers)
    finally:
        signal.signal(signal.SIGTERM, old_term)


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def _train_cmd(config_name, corpus, sets, run_dir, resume, more, init_from, overwrite, quiet, workers):
    if resume and overwrite:
        raise click.UsageError("--resume and --overwrite contradict each other: pick one")
    if more is not None and (not resume or any(s.strip().startswith("train.steps=") for s in sets)):
        raise click.UsageError("--more N goes with --resume and without --set train.steps=...")
    if init_from is not None and resume:
        raise click.UsageError("--init-from starts a new run; --resume continues one: pick one")
    path = resolve_config_path(config_name) if config_name else None
    sets = sets + ((f"train.workers={workers}",) if workers is not None else ())
    cfg = load_config(path, sets, base=base_config(init_from) if init_from and not path else None)
    if corpus is not None:
        cfg.data.corpus = corpus_option(corpus)
    default = f"{init_from.parent.name}-finetune" if init_from else path.stem if path else "default"
    run_dir = run_dir or Path("runs") / default
    job = join_mpi_job(cfg)  # None unless under mpiexec with more than one rank
    if job is not None and job.rank > 0:  # a quiet worker; rank 0 writes and reports
        log.setLevel(logging.ERROR)
        trainer = open_as_worker(job, cfg, run_dir, resume, more=more, init_from=init_from)
        if train_until_done_or_stopped(trainer, run_dir, True, job).interrupted:
            raise click.exceptions.Exit(130)
        return
    with ExitStack() as lock:
        with writer_setup(job):  # the other MPI ranks wait for this to succeed or fail
            lock.enter_context(RunLock(run_dir))  # first: "another training" says more than "already
            trainer = open_run(cfg, run_dir, resume, overwrite, more, init_from)  # holds a run"
        log.info("%s; model %s %s with %s parameters; run directory %s", trainer.corpus.describe(),
                 cfg.model.cell, cfg.model.hidden_sizes, f"{trainer.model.n_params():,}", run_dir)
        if trainer.corpus.lines_split:
            log.warning("%d lines longer than data.max_line_len=%d were split into pieces",
                        trainer.corpus.lines_split, cfg.data.max_line_len)
        summary = train_until_done_or_stopped(trainer, run_dir, quiet, job, resume=resume and not overwrite,
                                               init_from=init_from)
    if summary.interrupted:
        click.echo(f"rnnchar: interrupted at step {summary.step}; saved {run_dir / 'last.npz'} "
                   "(continue with --resume)", err=True)
        raise click.exceptions.Exit(130)
    log.info("done: step %d, checkpoint %s%s", summary.step, run_dir / "last.npz", best_note(summary, cfg))


@main.command("sample")
@click.option("--checkpoint", type=click.Path(dir_okay=False, path_type=Path),
              help="A .npz checkpoint [default: the newest run under ./runs, best.npz else last.npz].")
@click.option("--temp", type=click.FloatRange(min=0, min_open=True), callback=finite_float,
              help="Temperature (> 0); lower is safer.")
@click.option("-n", "n", type=click.IntRange(min=1, max=MAX_SAMPLES), help="Sentences to write (sentence "
              f"models; at most {MAX_SAMPLES:,}, made as one batch; with --beam: the best N of the beam).")
@click.option("--length", type=click.IntRange(min=0), help="Characters after the prime: at most (sentence "
              "models), exactly (stream models) [default: sample.length].")
@click.option("--prime", default="", help="Text to start from (characters the model knows).")
@click.option("--argmax", is_flag=True, help="Greedy: always the most likely character (one sentence).")
@click.option("--top-k", type=click.IntRange(min=1), help="Sample only among the K likeliest characters.")
@click.option("--beam", type=click.IntRange(min=1), metavar="K", help="Beam search: the K most likely "
              "completions of the prime, best first.")
@click.option("--length-penalty", "alpha", type=click.FloatRange(0, 2), default=1.0, show_default=True,
              help="With --beam: rank sentences by logprob / chars**ALPHA (1 per char, 0 the total).")
@click.option("--json", "as_json", is_flag=True, help="With --beam: one JSON object per completion (text, "
              "logprob, logprob_per_char, bits_per_char, chars, finished).")
@click.option("--seed", type=click.IntRange(min=0), help="Make the output reproducible (an integer >= 0).")
def sample_cmd(checkpoint, temp, n, length, prime, argmax, top_k, beam, alpha, as_json, seed):
    """Write generated text to stdout as it is made.

    \b
    rnnchar sample --temp 0.7 -n 20 | sort | uniq -c
    rnnchar sample --checkpoint runs/lstm/best.npz --prime "The " --seed 1
    rnnchar sample --argmax
    rnnchar sample --beam 8 --prime "The old " --json   # the 8 most likely sentences
    """
    from .commands import check_beam_options, checkpoint_or_newest, write_beams
    from .sample import beam_search, sample_sentences, sample_stream, unknown_chars

    need_stdout("the samples")
    check_beam_options(beam, argmax or temp is not None or top_k is not None, as_json)
    model, vocab, cfg = load_model(checkpoint_or_newest(checkpoint))
    bad = unknown_chars(vocab, prime)
    if bad:
        raise click.BadParameter(f"characters the model never saw: {' '.join(map(repr, bad))}",
                                 param_hint="--prime")
    s, sentences = cfg.sample, cfg.data.mode == "sentences"
    temp, top_k = temp or s.temp, top_k if top_k is not None else s.top_k
    length = s.length if length is None else length
    if beam:
        beams = beam_search(model, vocab, beam, prime, length, sentences, alpha)
        return write_beams(beams[:n or beam], sentences, as_json)
    rng = np.random.default_rng(seed)
    if sentences:
        if argmax and (n or 1) > 1:
            click.echo(f"rnnchar: --argmax always writes the same sentence: writing 1, not {n}", err=True)
        lines = sample_sentences(model, vocab, rng, 1 if argmax else n or s.n, temp, top_k, argmax, prime,
                                 max_len=length)
        echo_stream(line + "\n" for line in lines)
    else:
        echo_stream(sample_stream(model, vocab, rng, length, temp, top_k, argmax, prime))
        sys.stdout.write("\n")


@main.command("eval")
@click.argument("file", required=False, type=click.Path(dir_okay=False, allow_dash=True))
@click.option("--val", "validation", is_flag=True, help="Score the run's own validation split.")
@click.option("--checkpoint", type=click.Path(dir_okay=False, path_type=Path),
              help="A .npz checkpoint [default: the newest run under ./runs].")
@click.option("--json", "as_json", is_flag=True, help="One JSON object: bits_per_char, perplexity, chars, "
              "unknown_chars.")
@click.option("--per-line", is_flag=True, help="Print 'bits-per-char<TAB>line' for every line.")
def eval_cmd(file, validation, checkpoint, as_json, per_line):
    """Score text: bits per character and perplexity (FILE, - for stdin, or --val).

    --val scores the run's own validation split (so does no FILE with stdin a terminal or closed).

    \b
    rnnchar eval --val
    rnnchar eval held_out.txt
    cat notes.txt | rnnchar eval - --json
    rnnchar eval --per-line notes.txt | sort -rn | head   # most surprising lines
    """
    from .commands import checkpoint_or_newest
    from .data import read_text
    from .evaluate import score_lines, score_text, validation_score

    need_stdout("the scores")
    if validation and file is not None:
        raise click.UsageError(f"--val scores the validation split: drop it, or drop {file}")
    model, vocab, cfg = load_model(checkpoint_or_newest(checkpoint))
    if validation or (file is None and (sys.stdin is None or sys.stdin.isatty())):
        if per_line:
            raise click.UsageError("--per-line needs a FILE or - for stdin")
        result = validation_score(model, vocab, cfg)
    else:
        text = read_text(file or "-")
        if not text.strip():
            raise DataError(f"nothing to score: {'stdin' if file in (None, '-') else file} is empty")
        if per_line:
            lines = text.split("\n")[:-1] if text.endswith("\n") else text.split("\n")
            for line, score in zip(lines, score_lines(model, vocab, lines, cfg.data.mode)):
                bpc = score if math.isfinite(score) else None  # JSON has no NaN: null
                click.echo(json.dumps({"bits_per_char": bpc, "line": line}, allow_nan=False) if as_json
                           else f"{score:.4f}\t{line}")
            return
        result = score_text(model, vocab, text, cfg.data.mode, cfg.data.max_line_len)
    if as_json:
        click.echo(json.dumps(result.as_dict(), allow_nan=False))
    else:
        click.echo(f"bits/char {result.bits_per_char:.4f}  perplexity {result.perplexity:.3f}  "
                   f"chars {result.chars:,}  unknown {result.unknown_chars:,}")


for _command in COMMANDS:  # prep, runs, plot: their own module, the same error handling
    main.add_command(_command)

if __name__ == "__main__":
    main()
