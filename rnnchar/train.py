"""The training loop: corpus -> batches -> model -> optimizer -> metrics and checkpoints.

    cfg = load_config("lstm.yaml", ["train.steps=100"])
    trainer = open_trainer(cfg, Path("runs/lstm"), resume=False)  # resume=True: go on from last.npz
    summary = train(trainer, should_stop=lambda: False, quiet=True)  # to train.steps or should_stop()

Writes into the run directory: last.npz (every checkpoint_every steps and at the end),
best.npz (lowest validation loss), metrics.jsonl (one JSON object per
evaluation) and config.yaml. Resuming restores parameters, optimizer slots,
step, carried state and the data RNG, so a resumed run is bit-identical to an
uninterrupted one. Logs go through the "rnnchar" logger, progress through tqdm
(stderr); nothing is printed to stdout.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from .checkpoint import Checkpoint, CheckpointError, load_checkpoint, save_checkpoint
from .comm import SingleComm
from .config import LN2, Config, build_model, config_from_dict, config_to_dict, config_to_yaml, lr_at
from .corpus import Corpus, load_corpus
from .data import Vocab
from .datapar import GradBuffer, broadcast_params, gather_rows, reduce_scalars, reduce_step, share, take_rows
from .evaluate import batch_nats
from .finetune import FineTune
from .heap import keep_freed_memory
from .model import AUTO_BATCH_BYTES, ShapeError, starts_at_unigram
from .optim import OPTIMIZERS, clip_global_norm
from .progress import PlainProgress, evaluate_log_and_keep_best, rewrite_metrics
from .runs import (
    check_run_files,
    checkpoint_shapes,
    fix_schedule_horizon,
    nothing_to_resume,
    pin_dropout,
    resume_diffs,
    write_atomic,
)
from .sample import sample_sentences, sample_stream

log = logging.getLogger("rnnchar")


class TrainingDiverged(RuntimeError):
    """The loss or the parameters became NaN or infinite."""


@dataclass
class Summary:
    step: int
    interrupted: bool = False
    best_val_bpc: float = math.inf
    history: list = field(default_factory=list)


class Trainer:
    """Holds one run's model, optimizer, data and RNG; `run` advances it to `train.steps`."""

    def __init__(self, cfg: Config, run_dir: Path, corpus: Corpus, ckpt: Checkpoint | None = None):
        self.cfg, self.run_dir, self.corpus = cfg, run_dir, corpus
        keep_freed_memory()  # a step's temporaries reuse the last step's pages (heap.py: ~25% on the LSTM)
        self.model = build_model(cfg, len(corpus.vocab))
        if cfg.model.dropout == "auto":  # a number from here on: config.yaml and checkpoints hold what ran
            self.model.dropout = cfg.model.dropout = pin_dropout(cfg, ckpt, self.model, corpus)
        self.opt = OPTIMIZERS[cfg.train.optimizer]()
        self.token_cap = _token_cap(cfg, self.model)
        self.rng = np.random.default_rng(cfg.train.seed + 1)  # batches; never the model's init RNG
        # dropout masks: a stream of its own, so turning dropout on does not change the batch order
        self.dropout_rng = np.random.default_rng([cfg.train.seed, 0xD80])
        self.step, self.history = 0, []
        self.best_val_nats = math.inf  # lowest validation loss so far, nats per character
        self.carry = None  # hidden state carried between stream windows (this worker's rows)
        self.comm, self.rows, self.stop_agreed = SingleComm(), slice(None), False
        self.reduce_s = 0.0  # seconds spent in the gradient reduction (waiting for the others included)
        if ckpt is not None:
            self._restore(ckpt)
        elif starts_at_unigram(cfg.model.decoder_bias, cfg.model.cell):  # a new run; each worker counts alike
            self.model.start_at_unigram(corpus.target_counts(len(corpus.vocab)))

    def attach(self, comm) -> None:
        """Train as one of comm.size data-parallel workers: this one computes its rows of each batch."""
        self.comm, self.rows = comm, share(self.cfg.data.batch_size, comm.rank, comm.size)
        self.carry = self.carry and [tuple(a[self.rows] for a in s) for s in self.carry]
        self._grads = GradBuffer(self.model.params, 3)  # + nats, chars, stop flag
        broadcast_params(comm, self.model.params)

    def stopping(self, should_stop: Callable[[], bool]) -> bool:
        """One process stops when asked; workers when any of them was asked (seen in the last step)."""
        return should_stop() if self.comm.size == 1 else self.stop_agreed

    def _restore(self, ckpt: Checkpoint) -> None:
        """Take over a checkpoint's state; ValueError (ShapeError) names what does not fit this model."""
        self.model.load_params(ckpt.params)
        for key, arr in ckpt.opt_state.items():
            p = self.model.params.get(key.partition("/")[2])
            if (p.shape if p is not None else ()) != arr.shape:
                raise ShapeError(f"optimizer slot {key} has shape {arr.shape}, expected "
                                 f"{p.shape if p is not None else 'a scalar'}")
        self.opt.load_state(ckpt.opt_state)
        if ckpt.carry:
            zero = self.model.zero_state(self.cfg.data.batch_size)
            want = {f"{j}/{k}": a.shape for j, s in enumerate(zero) for k, a in enumerate(s)}
            got = {k: v.shape for k, v in ckpt.carry.items()}
            if got != want:
                raise ShapeError(f"the carried stream state has shapes {got}, the model needs {want}")
            self.carry = [tuple(ckpt.carry[f"{j}/{k}"] for k in range(len(s))) for j, s in enumerate(zero)]
        if ckpt.step < 0:
            raise ValueError(f"the step counter is negative ({ckpt.step})")
        try:
            self.rng.bit_generator.state = ckpt.rng_state
            if "dropout_rng_state" in ckpt.meta:  # absent from checkpoints written before dropout
                self.dropout_rng.bit_generator.state = ckpt.meta["dropout_rng_state"]
            self.best_val_nats = float(ckpt.meta.get("best_val_loss", math.inf))
        except (TypeError, ValueError, KeyError, OverflowError) as err:  # OverflowError: a state of 2**200
            raise ValueError(f"the stored RNG state or best validation loss is invalid: {err}") from None
        self.step, self.history = ckpt.step, list(ckpt.history)

    def checkpoint(self) -> Checkpoint:
        """The run's state; with several workers every one must call it (the streams are gathered)."""
        streams = gather_rows(self.comm, self.carry, self.rows, self.cfg.data.batch_size)
        carry = {f"{j}/{k}": a for j, s in enumerate(streams or []) for k, a in enumerate(s)}
        params = {k: p.w for k, p in self.model.params.items()}
        return Checkpoint(config=config_to_dict(self.cfg), vocab=self.corpus.vocab.to_array(),
                          params=params, opt_state=dict(self.opt.state), step=self.step,
                          rng_state=self.rng.bit_generator.state, history=self.history,
                          meta={"best_val_loss": self.best_val_nats,
                                "dropout_rng_state": self.dropout_rng.bit_generator.state}, carry=carry)

    def save(self, name: str = "last.npz") -> None:
        ckpt = self.checkpoint()
        if self.comm.is_writer:
            save_checkpoint(self.run_dir / name, ckpt)

    def train_step(self, should_stop: Callable[[], bool] = lambda: False) -> tuple[float, int]:
        """One optimizer step on the next batch; returns (loss per char, chars)."""
        cfg, model = self.cfg.train, self.model
        batch = self.corpus.train_batch(self.step, self.rng)
        mine = take_rows(batch, self.rows) if self.comm.size > 1 else batch
        masks = model.dropout_masks(self.dropout_rng, *batch.inputs.shape)  # None when off; drawn for
        if masks and self.comm.size > 1:  # the whole batch, so workers together use one process's masks
            masks = [m[:len(mine.inputs), self.rows] for m in masks]
        nats, n_chars, state = self._accumulate_gradients(mine, None if batch.reset else self.carry, masks)
        if self.comm.size > 1:  # the one reduction of the step: gradients, loss, chars, stop flag
            share_of_rows = mine.mask.shape[1] / batch.mask.shape[1]
            tic = time.perf_counter()
            nats, n_chars, stop = reduce_step(self.comm, self._grads, share_of_rows,
                                              (nats, n_chars, float(should_stop())))
            self.reduce_s += time.perf_counter() - tic
            n_chars, self.stop_agreed = int(round(n_chars)), stop > 0
        if not math.isfinite(nats):  # after the reduction, so that every worker stops together
            raise TrainingDiverged(f"the training loss became {nats / batch.mask.shape[1]} at step "
                                   f"{self.step + 1}")
        if cfg.clip_norm > 0:  # on the per-character mean loss (PyTorch's convention), which is
            # the loss we differentiate (summed over steps) divided by the characters per row
            clip_global_norm(model.params, cfg.clip_norm * max(n_chars, 1) / batch.inputs.shape[1])
        self.opt.step(model.params, lr_at(cfg, self.step), cfg.regc, cfg.clip)
        # one pass over the flat parameters: NaN or inf anywhere makes the sum of squares non-finite,
        # and so does any |w| > 1e19 in float32, which is divergence by then too
        if not math.isfinite(float(np.vdot(model.params.w, model.params.w))):
            raise TrainingDiverged(f"the parameters became non-finite at step {self.step + 1}")
        self.carry = state if self.corpus.carries_state else None
        self.step += 1
        return nats / max(n_chars, 1), n_chars

    def _accumulate_gradients(self, batch, state, masks=None) -> tuple[float, int, list]:
        """Gradients of the batch loss (summed over steps, averaged over its B rows) into the params.

        A batch of more than data.max_batch_tokens (B x T) characters runs as groups of rows, each
        trimmed to its longest row; a group's mask is scaled by b/B so that its loss, which the model
        averages over its own b rows, is its share of the whole batch's: the summed gradients are the
        batch's, while the graph holds only one group's activations. Returns (nats, chars, state);
        the caller checks that nats is finite (a NaN gradient is never applied). `masks`: the
        batch's (T, B, H) dropout masks, or None.
        """
        T, B = batch.inputs.shape
        cap = self.token_cap
        rows = B if cap <= 0 or B * T <= cap else max(1, cap // T)
        loss, states = 0.0, []
        for r0 in range(0, B, rows):
            cols = slice(r0, r0 + rows)
            mask = batch.mask[:, cols]  # (T, b)
            t_end = T if state is not None or rows == B else int(np.flatnonzero(mask.any(axis=1))[-1]) + 1
            part = None if state is None else [tuple(a[cols] for a in s) for s in state]
            res = self.model.loss(batch.inputs[:t_end, cols], batch.targets[:t_end, cols],
                                  mask[:t_end] * (mask.shape[1] / B), part,
                                  dropout_masks=masks and [m[:t_end, cols] for m in masks])
            res.graph.backward()  # adds into each parameter's gradient
            loss += res.loss
            states.append(res.state)
        if len(states) > 1:
            states = [[tuple(np.concatenate(block) for block in zip(*layer)) for layer in zip(*states)]]
        return loss * B, int(np.count_nonzero(batch.mask)), states[0]

    def validate(self, should_stop: Callable[[], bool]) -> tuple[float, int]:
        """Loss per char of the validation split; NaN if there is none or Ctrl-C cut it short.

        Workers score their share of each batch's rows and sum; they never stop part-way."""
        if self.comm.size > 1:
            c = self.comm
            mine = (b for b in (take_rows(b, share(b.mask.shape[1], c.rank, c.size))
                                for b in self.corpus.val_batches()) if b is not None)
            nats, n = reduce_scalars(c, *batch_nats(self.model, mine))
            return (nats / n if n else math.nan), int(n)
        nats, n = batch_nats(self.model, self.corpus.val_batches(), should_stop)
        return (nats / n if n and not should_stop() else math.nan), n

    def log_samples(self) -> None:
        rng = np.random.default_rng([self.cfg.train.seed, self.step])  # never perturbs training
        s = self.cfg.sample
        if self.corpus.mode == "sentences":
            texts = list(sample_sentences(self.model, self.corpus.vocab, rng, n=3, temp=s.temp, top_k=s.top_k,
                                          max_len=200))
        else:
            texts = ["".join(sample_stream(self.model, self.corpus.vocab, rng, length=200, temp=s.temp,
                                           top_k=s.top_k))]
        log.info("samples at step %d:\n%s", self.step, "\n".join("  | " + t for t in texts))


def _token_cap(cfg: Config, model) -> int:
    """Characters per forward/backward pass (0 = no cap). auto: in sentences mode, where a batch of long
    lines could take any memory, what fits in the default model's 2,048 characters (a [20, 20] model
    gets ~10,000, so a batch of 32 sentences runs in one pass); in stream mode none, as B x seq_len is
    the config's own fixed choice (a [512, 512] model's 64 x 64 batch runs in one pass, 3% faster)."""
    cap = cfg.data.max_batch_tokens
    if cap != "auto":
        return cap
    return 0 if cfg.data.mode == "stream" else model.tokens_within(AUTO_BATCH_BYTES)


def open_trainer(cfg: Config, run_dir: Path, resume: bool, cache: bool = True,
                 more: int | None = None, init_from: Path | None = None, writer: bool = True) -> Trainer:
    """A new or resumed Trainer. Resuming refuses a config whose model differs from the checkpoint's;
    `more` sets train.steps to the checkpoint's step plus `more`; `init_from` starts a new run from
    another checkpoint's weights (finetune.py). Only the writer (not a data-parallel worker) writes
    config.yaml and metrics.jsonl."""
    run_dir.mkdir(parents=True, exist_ok=True)
    check_run_files(run_dir)
    ckpt = vocab = old = None
    if resume:
        path = run_dir / "last.npz"
        if not path.exists():
            raise nothing_to_resume(run_dir)
        ckpt = load_checkpoint(path, checkpoint_shapes)  # shapes checked before anything is built
        try:
            old = config_from_dict(ckpt.config)
            vocab = Vocab.from_array(ckpt.vocab)
        except ValueError as err:  # ConfigError, DataError
            raise CheckpointError(f"{path}: the stored config or vocabulary is invalid: {err}") from None
        diffs = resume_diffs(old, cfg)
        if diffs:
            raise CheckpointError("cannot resume with a different model or optimizer: " + "; ".join(diffs)
                                  + " (use --overwrite or another --run-dir to start afresh)")
        if more is not None:
            cfg.train.steps = ckpt.step + more
        if ckpt.step >= cfg.train.steps:
            log.warning("nothing to train: %s is at step %d and train.steps is %d; pass --more N (or --set "
                        "train.steps=M) to train further", path, ckpt.step, cfg.train.steps)
    fix_schedule_horizon(cfg, old, ckpt.step if ckpt else 0)
    cache_dir = run_dir / "cache" if cache else None
    start = FineTune.open(cfg, init_from, cache_dir) if init_from is not None else None
    corpus = start.corpus if start else load_corpus(cfg, vocab=vocab, cache_dir=cache_dir)
    try:
        trainer = Trainer(cfg, run_dir, corpus, ckpt)
        if start:
            start.load_into(trainer.model)
    except ValueError as err:  # ShapeError, a bad slot, RNG state or step: the file does not fit
        if ckpt is None:
            raise
        raise CheckpointError(f"{run_dir / 'last.npz'}: cannot resume from it: {err}") from None
    if writer:
        write_atomic(run_dir / "config.yaml", config_to_yaml(cfg))  # only once accepted
        rewrite_metrics(trainer)
    return trainer


def train(trainer: Trainer, should_stop: Callable[[], bool] = lambda: False, quiet: bool = False) -> Summary:
    """Train to `train.steps`. Stops early and saves last.npz when `should_stop()` turns true."""
    cfg, t = trainer.cfg.train, trainer
    start, losses, chars, busy, reduced = t.step, [], 0, 0.0, t.reduce_s
    before = (t.history[-1].get("elapsed_s") or 0.0) if t.history else 0.0  # a resumed run's clock goes on
    t0 = time.perf_counter() - before
    bar = tqdm(total=cfg.steps, initial=start, disable=True if quiet else None, unit="step",
               dynamic_ncols=True, leave=False)
    plain = PlainProgress(bool(bar.disable) and not quiet, start, cfg.steps)
    try:
        while t.step < cfg.steps and not t.stopping(should_stop):
            tic = time.perf_counter()
            loss, n = t.train_step(should_stop)
            busy += time.perf_counter() - tic
            losses.append(loss)
            chars += n
            bar.update(1)
            bar.set_postfix(bpc=f"{loss / LN2:.3f}", chars_s=f"{chars / busy:.0f}", refresh=False)
            plain.tick(t.step, float(np.mean(losses)), chars / busy)
            last = t.step == cfg.steps
            if (cfg.eval_every and t.step % cfg.eval_every == 0) or last:
                timing = {"train_s": busy, "reduce_s": t.reduce_s - reduced}
                rec = evaluate_log_and_keep_best(t, float(np.mean(losses)), chars / busy,
                                                  time.perf_counter() - t0, should_stop, timing)
                bar.set_postfix(bpc=f"{loss / LN2:.3f}", val_bpc=rec["val_bpc"],
                                chars_s=f"{chars / busy:.0f}")
                losses, chars, busy, reduced = [], 0, 0.0, t.reduce_s
            if cfg.sample_every and t.step % cfg.sample_every == 0 and t.comm.is_writer:
                t.log_samples()
            if (cfg.checkpoint_every and t.step % cfg.checkpoint_every == 0) or last:
                t.save()
    finally:
        bar.close()
    interrupted = t.step < cfg.steps
    if interrupted or start == t.step:
        t.save()  # Ctrl-C (or nothing to do): the state as of the last finished step
    return Summary(t.step, interrupted, t.best_val_nats / LN2, t.history)
