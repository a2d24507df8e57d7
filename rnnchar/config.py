"""YAML -> typed, validated config: defaults <- YAML file <- ``section.key=value`` overrides.

Defaults, validation rules and help text live in one place, the dataclasses below.
PyYAML is used through its SafeLoader only (safeyaml.py), so a config can never run code::

    cfg = load_config("lstm.yaml", ["train.steps=5000", "model.hidden_sizes=[64, 48]"])
"""

from __future__ import annotations

import copy
import difflib
import math
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import yaml

from .bundled import NoSuchConfig, find_config
from .cells import ACTIVATIONS, CELLS, GATES
from .model import CharModel
from .optim import OPTIMIZERS
from .safeyaml import YamlRefused, clipped, load_yaml, shown
from .valuerules import (
    ANY_FLOAT,
    BATCH_TOKENS,
    DROPOUT,
    NONNEG_FLOAT,
    NONNEG_INT,
    OFF_INT,
    PATH,
    POS_FLOAT,
    POS_INT,
    SIZES,
    WORKERS,
    Bad,
    choice,
    float_rule,
)

LN2 = math.log(2)  # bits = nats / LN2: losses are in nats, bits per character are reported


class ConfigError(ValueError):
    """A bad config: unknown key, bad value, unreadable file. The message names the culprit."""


def _key(default: Any, check, help: str):
    """One config key as a dataclass field: its default, value check and one-line help, together."""
    meta = {"check": check, "help": help}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=meta)
    return field(default=default, metadata=meta)


class _Section:
    """Validates and coerces every field on construction (also via dataclasses.replace)."""

    SECTION: ClassVar[str]

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            try:
                setattr(self, f.name, f.metadata["check"](value))
            except Bad as bad:
                raise ConfigError(f"{self.SECTION}.{f.name}: expected {bad}, got {shown(value)}") from None


@dataclass
class ModelConfig(_Section):
    """Network shape and initialisation."""

    SECTION: ClassVar[str] = "model"
    cell: str = _key("lstm", choice(*CELLS), "recurrent cell: " + ", ".join(CELLS))
    hidden_sizes: list[int] = _key([128, 128], SIZES,
                                   "hidden units per layer, bottom first; sizes may differ")
    embed_size: int = _key(32, POS_INT, "size of the character embedding")
    activation: str = _key("tanh", choice(*ACTIVATIONS), "rnn/gf-rnn nonlinearity (relu = RecurrentJS)")
    gate: str = _key("scalar", choice(*GATES), "gated feedback: scalar (paper) or vector gates")
    forget_bias: float = _key(0.0, ANY_FLOAT, "initial LSTM forget-gate bias (torch: 0; char-rnn: 1)")
    dtype: str = _key("float32", choice("float32", "float64"), "floating-point precision of training")
    init_scale: float = _key(0.0, NONNEG_FLOAT,
                           "0 = U(+-1/sqrt(H)) as PyTorch; > 0 = N(0, init_scale) as RecurrentJS (0.08)")
    candidate_gain: float = _key(2.0, POS_FLOAT, "LSTM/GRU: cell-candidate weights drawn at this multiple "
                                 "of the gates' scale")
    dropout: float | str = _key(0.0, DROPOUT, "training only: drop this fraction of each layer's outputs "
                                "(between layers and before the decoder); 0 = off; auto = from the "
                                "parameters per training character and the planned passes")
    decoder_bias: str = _key("auto", choice("auto", "unigram", "zero"), "initial decoder bias: unigram = "
                             "log frequencies of the training characters, zero = all 0, auto = unigram "
                             "for LSTM cells, zero for the others")


@dataclass
class DataConfig(_Section):
    """Corpus and batching."""

    SECTION: ClassVar[str] = "data"
    corpus: str | None = _key(None, PATH, "training text file; null = the bundled sentence corpus")
    mode: str = _key("sentences", choice("sentences", "stream"), "sentences (one per line) or stream (BPTT)")
    val_fraction: float = _key(0.05, float_rule(lambda x: 0 <= x < 1, "a number in [0, 1)"),
                               "held-out fraction")
    min_count: int = _key(1, POS_INT, "rarer characters map to the unknown token")
    batch_size: int = _key(32, POS_INT, "sequences per batch (B)")
    seq_len: int = _key(64, POS_INT, "stream mode: characters per BPTT window (T)")
    max_line_len: int = _key(500, POS_INT, "sentences mode: maximum line length in characters")
    stream_order: str = _key("sequential", choice("sequential", "random"),
                           "stream mode: sequential windows, state carried; or random windows, zero state")
    max_batch_tokens: int | str = _key(
        "auto", BATCH_TOKENS, "characters (B x T) per forward/backward pass; bigger batches run as row "
        "groups adding up to the same gradient; auto = in sentences mode the memory of 2,048 characters "
        "of the default model, off in stream mode; 0 = off")


@dataclass
class TrainConfig(_Section):
    """Optimisation, schedule and bookkeeping."""

    SECTION: ClassVar[str] = "train"
    steps: int = _key(3000, NONNEG_INT, "number of optimizer updates")
    optimizer: str = _key("rmsprop", choice(*OPTIMIZERS), "rmsprop (RecurrentJS), adam or sgd")
    lr: float = _key(0.002, POS_FLOAT, "base learning rate")
    regc: float = _key(1e-6, NONNEG_FLOAT, "L2 weight decay, not scaled by lr (RecurrentJS)")
    clip: float = _key(5.0, NONNEG_FLOAT, "elementwise gradient clip (RecurrentJS), 0 = off")
    clip_norm: float = _key(0.0, NONNEG_FLOAT, "global-norm clip of the per-character loss gradient, 0 = off")
    lr_schedule: str = _key("constant", choice("constant", "step", "cosine"), "constant, step or cosine")
    lr_decay: float = _key(0.5, float_rule(lambda x: 0 < x <= 1, "a number in (0, 1]"),
                           "step schedule: lr factor")
    lr_decay_every: int = _key(1000, POS_INT, "step schedule: steps between decays")
    lr_decay_steps: int = _key(0, NONNEG_INT, "cosine schedule: steps from lr down to 0.1 lr, then flat; "
                               "0 = train.steps at the run's start (kept on resume)")
    warmup_steps: int = _key(0, OFF_INT, "linear learning-rate warmup in steps, 0 = off")
    eval_every: int = _key(250, OFF_INT, "validate every N steps, 0 = off")
    sample_every: int = _key(500, OFF_INT, "show samples every N steps, 0 = off")
    checkpoint_every: int = _key(250, OFF_INT, "save a checkpoint every N steps, 0 = off")
    eval_max_chars: int = _key(100000, NONNEG_INT, "validation characters per eval, 0 = whole split")
    seed: int = _key(1, NONNEG_INT, "seed for init, data split, batches and sampling")
    workers: int | str = _key("auto", WORKERS,
                              "data-parallel worker processes: auto, or N (1 = this process)")


@dataclass
class SampleConfig(_Section):
    """Sampling from a trained model."""

    SECTION: ClassVar[str] = "sample"
    temp: float = _key(1.0, POS_FLOAT, "softmax temperature; lower = more conservative")
    length: int = _key(300, NONNEG_INT, "maximum characters per sample")
    n: int = _key(5, POS_INT, "number of samples")
    top_k: int = _key(0, NONNEG_INT, "sample only from the k likeliest characters, 0 = all")


@dataclass
class Config:
    """The whole resolved config: one dataclass per YAML section."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)


SECTIONS: dict[str, type] = {cls.SECTION: cls for cls in (ModelConfig, DataConfig, TrainConfig, SampleConfig)}
ALL_KEYS: list[str] = [f"{s}.{f.name}" for s, cls in SECTIONS.items() for f in fields(cls)]


def _suggest(name: str) -> str:
    """' (did you mean 'x.y'?)' for the closest valid key or section, else ''."""
    if len(name) > 100:  # no key is that long; and difflib's cost grows with the length
        return ""
    bare = name.rsplit(".", 1)[-1]
    same_key = [k for k in ALL_KEYS if k.endswith("." + bare)]
    match = same_key or difflib.get_close_matches(name, ALL_KEYS + list(SECTIONS), n=1)
    return f" (did you mean '{match[0]}'?)" if match else ""


def _check_known(section: Any, key: Any = None) -> None:
    if section not in SECTIONS:
        hint = _suggest(str(section)) or f" (sections: {', '.join(SECTIONS)})"
        raise ConfigError(f"unknown section '{clipped(str(section))}'{hint}")
    if key is not None and f"{section}.{key}" not in ALL_KEYS:
        raise ConfigError(f"unknown key '{clipped(f'{section}.{key}')}'{_suggest(f'{section}.{key}')}")


def _build(raw: Any, where: str = "config") -> Config:
    """Validate a {section: {key: value}} mapping into a Config; missing keys take defaults."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: not a config: expected a mapping of sections "
                          f"({', '.join(SECTIONS)}), got {type(raw).__name__}")
    for section, values in raw.items():
        try:
            _check_known(section)
            if values is not None and not isinstance(values, dict):
                raise ConfigError(f"section '{clipped(str(section))}' must be a mapping of keys, got "
                                  f"{shown(values)}")
            for key in values or {}:
                _check_known(section, key)
        except ConfigError as err:
            raise ConfigError(f"{where}: {err}") from None
    return Config(**{section: SECTIONS[section](**(values or {})) for section, values in raw.items()})


def resolve_config_path(name: str) -> Path:
    """An existing file (relative to the cwd) first, then a bundled config, with or without .yaml."""
    try:
        return find_config(str(name))
    except NoSuchConfig as err:
        raise ConfigError(f"config {name}: {err}") from None


def _yaml(text: str, where: str) -> Any:
    try:
        return load_yaml(text, where)
    except YamlRefused as err:
        raise ConfigError(str(err)) from None


def _read_yaml(path: Path) -> Any:
    """Safely parse a config file into {section: {key: value}}; corpus made absolute."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"{path}: cannot read config: {err}") from None
    raw = _yaml(text, str(path))
    raw = {} if raw is None else raw
    data = raw.get("data") if isinstance(raw, dict) else None
    if isinstance(data, dict) and isinstance(data.get("corpus"), str) and data["corpus"] not in ("", "-"):
        data["corpus"] = os.path.abspath(path.parent / os.path.expanduser(data["corpus"]))
    return raw


def _corpus_from_text(text: str) -> str | None:
    """An override's corpus: null/empty -> None (bundled), '-' -> stdin, else an absolute path."""
    if text in ("", "null", "~"):
        return None
    return text if text == "-" else os.path.abspath(os.path.expanduser(text))


def _apply_override(raw: dict, item: str) -> None:
    """Apply one ``section.key=value`` (value parsed as YAML) onto the raw mapping."""
    dotted, eq, text = item.partition("=")
    section, dot, key = dotted.strip().partition(".")
    if not eq or not dot or not key or "." in key:
        raise ConfigError(f"override '{clipped(item)}': expected section.key=value (e.g. train.steps=5000)"
                          f"{_suggest(dotted.strip()) if dotted.strip() else ''}")
    _check_known(section, key)
    if (section, key) == ("data", "corpus"):  # a path, kept as text, relative to the cwd
        value = _corpus_from_text(text.strip())
    else:
        value = _yaml(text, f"override '{clipped(item)}': value")
    if raw.get(section) is None:
        raw[section] = {}
    if isinstance(raw[section], dict):  # else _build reports the broken section
        raw[section][key] = value


def load_config(path: str | os.PathLike | None, overrides: Sequence[str] = (),
                base: dict | None = None) -> Config:
    """Defaults <- YAML file (a path or a bundled name; else `base`, e.g. a checkpoint's) <- overrides."""
    file = resolve_config_path(str(path)) if path is not None else None
    raw = _read_yaml(file) if file is not None else copy.deepcopy(base) if base is not None else {}
    for item in overrides if isinstance(raw, dict) else ():
        _apply_override(raw, item)
    return _build(raw, str(file) if file is not None else "config")


def config_to_dict(cfg: Config) -> dict:
    """Plain, JSON-able nested dict."""
    return asdict(cfg)


def config_from_dict(d: dict) -> Config:
    """Strict inverse of config_to_dict (e.g. the config stored in a checkpoint)."""
    return _build(d)


class _Dumper(yaml.SafeDumper):
    """Block-style sections, flow-style lists: ``hidden_sizes: [128, 128]``."""


_Dumper.add_representer(list, lambda d, v: d.represent_sequence("tag:yaml.org,2002:seq", v, flow_style=True))


def config_to_yaml(cfg: Config) -> str:
    """The resolved config as readable YAML (loadable again by load_config)."""
    return yaml.dump(config_to_dict(cfg), Dumper=_Dumper, sort_keys=False, default_flow_style=False)


def lr_at(train: TrainConfig, step: int) -> float:
    """Learning rate for update number ``step`` (0-based): schedule x linear warmup.

    constant: lr; step: lr * lr_decay ** (step // lr_decay_every);
    cosine: from lr down to 0.1 * lr at step == lr_decay_steps (or train.steps if 0), then flat.
    Warmup multiplies by (step + 1) / warmup_steps for the first warmup_steps updates.
    """
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step}")
    lr = train.lr
    if train.lr_schedule == "step":
        lr *= train.lr_decay ** (step // train.lr_decay_every)
    elif train.lr_schedule == "cosine" and (train.lr_decay_steps or train.steps) > 0:
        horizon = train.lr_decay_steps or train.steps
        progress = min(step, horizon) / horizon
        lr *= 0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * progress))
    if step < train.warmup_steps:
        lr *= (step + 1) / train.warmup_steps
    return lr


def build_model(cfg: Config, vocab_size: int) -> CharModel:
    """The model a config describes, initialised from train.seed (weights random until trained); the
    decoder bias's start and dropout `auto` need the corpus, so the trainer applies them
    (CharModel.start_at_unigram, model.auto_dropout)."""
    shape = {k: v for k, v in asdict(cfg.model).items() if k != "decoder_bias"}
    shape["dropout"] = 0.0 if shape["dropout"] == "auto" else shape["dropout"]
    return CharModel(vocab_size, rng=np.random.default_rng(cfg.train.seed), **shape)


def describe_keys() -> list[tuple[str, str, str]]:
    """(dotted key, default as text, one-line help) for every config key."""
    defaults = config_to_dict(Config())
    return [(f"{s}.{f.name}", "null" if defaults[s][f.name] is None else str(defaults[s][f.name]),
             f.metadata["help"]) for s, cls in SECTIONS.items() for f in fields(cls)]
