"""Fine-tuning: a new run that starts from another run's weights (`rnnchar train --init-from CKPT`).

    from rnnchar.config import build_model
    ckpt = Path("runs/tiny/last.npz")
    cfg = config_from_dict(base_config(ckpt))        # the checkpoint's config (the CLI adds --set)
    start = FineTune.open(cfg, ckpt, cache_dir=None)  # the corpus, with the vocabulary extended
    model = build_model(cfg, len(start.corpus.vocab))
    start.load_into(model)                           # old rows by character, new rows fresh

Only the weights are taken: the optimizer, step counter, RNG and history start
afresh (as char-rnn's -init_from). Characters of the new text the model has
never seen extend the vocabulary: the vocabulary stays sorted, so old ids may
move, and old rows of the embedding and the decoder are copied to their
characters' new ids; the rows of new characters keep the fresh model's
initialisation, exactly as at the start of a run.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .checkpoint import Checkpoint, CheckpointError, load_checkpoint
from .config import Config, ConfigError, config_from_dict
from .corpus import Corpus, load_corpus
from .data import DataError, Vocab
from .model import CharModel, ShapeError
from .runs import checkpoint_shapes

log = logging.getLogger("rnnchar")
SHAPE_KEYS = ("cell", "hidden_sizes", "embed_size", "activation", "gate")  # what the weights must agree on
ROWS_BY_ID = {"embed.W": 0}                          # parameters indexed by character id: axis
COLUMNS_BY_ID = {"decoder.W": 1, "decoder.b": 1}


def _read(path: Path) -> tuple[Checkpoint, Config, Vocab]:
    ckpt = load_checkpoint(path, checkpoint_shapes)  # shapes checked before any array is read
    try:
        return ckpt, config_from_dict(ckpt.config), Vocab.from_array(ckpt.vocab)
    except (ValueError, DataError) as err:
        raise CheckpointError(f"{path}: the stored config or vocabulary is invalid: {err}") from None


def base_config(path: Path) -> dict:
    """The checkpoint's config as a plain mapping, with the schedule horizon left to the new run."""
    raw = copy.deepcopy(load_checkpoint(path, checkpoint_shapes).config)
    if isinstance(raw.get("train"), dict):
        raw["train"].pop("lr_decay_steps", None)  # the new run's own train.steps decides it
    return raw


def _check_shape(cfg: Config, old: Config, path: Path) -> None:
    diffs = [f"model.{k}: {getattr(old.model, k)!r} in {path}, {getattr(cfg.model, k)!r} now"
             for k in SHAPE_KEYS if getattr(old.model, k) != getattr(cfg.model, k)]
    if diffs:
        raise ConfigError("--init-from keeps the model's shape: " + "; ".join(diffs)
                          + " (drop the --set or --config that changes it, or train a new model without "
                          "--init-from)")


def extend_vocab(old: Vocab, new_text_vocab: Vocab) -> Vocab:
    """The old characters plus those only the new text has, sorted (ids 0 and 1 stay special)."""
    return Vocab(old.chars + new_text_vocab.chars)


def move_rows(old_params: dict[str, np.ndarray], fresh: dict[str, np.ndarray], old: Vocab,
              new: Vocab) -> dict[str, np.ndarray]:
    """Old weights with their character-indexed rows/columns moved to the new ids; new ids from `fresh`."""
    index = {c: k for k, c in enumerate(new.chars)}
    old_to_new = np.array([0, 1] + [index[c] + 2 for c in old.chars])  # (V_old,) new id of each old id
    out = {}
    for name, arr in old_params.items():
        axis = ROWS_BY_ID.get(name, COLUMNS_BY_ID.get(name))
        if axis is None or name not in fresh:
            out[name] = arr
            continue
        moved = np.array(fresh[name], dtype=arr.dtype, copy=True)
        if moved.shape[1 - axis] != arr.shape[1 - axis] or arr.shape[axis] != len(old_to_new):
            raise ShapeError(f"parameter {name} has shape {arr.shape}, which does not fit a vocabulary of "
                             f"{len(old_to_new)} and the model's {moved.shape}")
        if axis == 0:
            moved[old_to_new] = arr
        else:
            moved[:, old_to_new] = arr
        out[name] = moved
    return out


@dataclass
class FineTune:
    path: Path
    ckpt: Checkpoint
    old_vocab: Vocab
    corpus: Corpus
    added: list[str]

    @classmethod
    def open(cls, cfg: Config, path: Path, cache_dir: Path | None) -> FineTune:
        ckpt, old_cfg, old_vocab = _read(path)
        _check_shape(cfg, old_cfg, path)
        corpus = load_corpus(cfg, cache_dir=cache_dir)  # vocabulary of the new text alone
        vocab = extend_vocab(old_vocab, corpus.vocab)
        if vocab != corpus.vocab:  # the model knows characters the new text lacks: encode with all of them
            corpus = load_corpus(cfg, vocab=vocab, cache_dir=cache_dir)
        added = sorted(set(vocab.chars) - set(old_vocab.chars))
        return cls(path, ckpt, old_vocab, corpus, added)

    def load_into(self, model: CharModel) -> None:
        """Copy the checkpoint's weights into `model` (built for self.corpus.vocab) and say what changed."""
        fresh = {k: p.w for k, p in model.params.items()}
        try:
            model.load_params(move_rows(self.ckpt.params, fresh, self.old_vocab, self.corpus.vocab))
        except ShapeError as err:
            raise CheckpointError(f"{self.path}: cannot start from its weights: {err}") from None
        shown = " ".join(repr(c) for c in self.added[:20]) + (" ..." if len(self.added) > 20 else "")
        log.info("fine-tuning from %s (its step %d): weights only, fresh optimizer, step 0; %d characters "
                 "added to the vocabulary%s", self.path, self.ckpt.step, len(self.added),
                 f": {shown}" if self.added else "")

