"""Tests for rnnchar.config: defaults, YAML and overrides, validation, lookup, lr schedule."""

import dataclasses
import math
from pathlib import Path

import pytest
import yaml

from rnnchar import bundled as B
from rnnchar.config import (
    Config,
    ConfigError,
    config_from_dict,
    config_to_dict,
    config_to_yaml,
    describe_keys,
    load_config,
    lr_at,
    resolve_config_path,
)

DEFAULTS = {
    "model": {"cell": "lstm", "hidden_sizes": [128, 128], "embed_size": 32, "activation": "tanh",
              "gate": "scalar", "forget_bias": 0.0, "dtype": "float32", "init_scale": 0.0,
              "candidate_gain": 2.0, "dropout": 0.0, "decoder_bias": "auto"},
    "data": {"corpus": None, "mode": "sentences", "val_fraction": 0.05, "min_count": 1, "batch_size": 32,
             "seq_len": 64, "max_line_len": 500, "stream_order": "sequential",
             "max_batch_tokens": "auto"},
    "train": {"steps": 3000, "optimizer": "rmsprop", "lr": 0.002, "regc": 1.0e-6, "clip": 5.0,
              "clip_norm": 0.0, "lr_schedule": "constant", "lr_decay": 0.5, "lr_decay_every": 1000,
              "lr_decay_steps": 0,
              "warmup_steps": 0, "eval_every": 250, "sample_every": 500, "checkpoint_every": 250,
              "eval_max_chars": 100000, "seed": 1, "workers": "auto"},
    "sample": {"temp": 1.0, "length": 300, "n": 5, "top_k": 0},
}


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture
def bundled(tmp_path, monkeypatch):
    """A fake bundled-config folder holding lstm.yaml and gru.yaml."""
    folder = tmp_path / "bundled"
    folder.mkdir()
    write(folder / "lstm.yaml", "model: {cell: lstm, hidden_sizes: [16]}\n")
    write(folder / "gru.yaml", "model: {cell: gru}\n")
    monkeypatch.setattr(B, "bundled_config_dir", lambda: folder)
    return folder


# -- defaults, YAML, overrides --------------------------------------------------------------

def test_defaults_match_the_contract():
    assert config_to_dict(load_config(None)) == DEFAULTS
    assert config_to_dict(Config()) == DEFAULTS


def test_empty_file_gives_defaults(tmp_path):
    assert config_to_dict(load_config(write(tmp_path / "empty.yaml", ""))) == DEFAULTS


def test_yaml_overrides_defaults(tmp_path):
    cfg = load_config(write(tmp_path / "c.yaml", "model:\n  cell: gru\n  hidden_sizes: [64, 48]\n"
                                                  "train:\n  lr: 0.01\n"))
    assert cfg.model.cell == "gru" and cfg.model.hidden_sizes == [64, 48] and cfg.train.lr == 0.01
    assert cfg.model.embed_size == 32 and cfg.train.steps == 3000  # untouched keys keep defaults


def test_set_overrides_win_over_yaml(tmp_path):
    path = write(tmp_path / "c.yaml", "train: {steps: 100, lr: 0.01}\n")
    cfg = load_config(path, ["train.steps=5000", "train.steps=7"])
    assert cfg.train.steps == 7  # last one wins
    assert cfg.train.lr == 0.01


def test_override_values_are_parsed_as_yaml():
    cfg = load_config(None, ["model.hidden_sizes=[64, 48]", "train.lr=0.01", "train.clip=3",
                             "model.cell=gf-gru", "train.regc=1e-5"])
    assert cfg.model.hidden_sizes == [64, 48]
    assert cfg.train.lr == 0.01
    assert cfg.train.clip == 3.0 and isinstance(cfg.train.clip, float)  # int -> float
    assert cfg.model.cell == "gf-gru"
    assert cfg.train.regc == 1e-5  # PyYAML reads "1e-5" as a string; still a number


def test_int_is_coerced_to_float_from_yaml(tmp_path):
    cfg = load_config(write(tmp_path / "c.yaml", "sample: {temp: 2}\nmodel: {forget_bias: 0}\n"))
    assert cfg.sample.temp == 2.0 and isinstance(cfg.sample.temp, float)
    assert isinstance(cfg.model.forget_bias, float)


@pytest.mark.parametrize("item", ["train.steps=yes", "train.steps=true", "train.lr=on", "train.seed=no"])
def test_bool_is_rejected_for_numbers(item):
    with pytest.raises(ConfigError, match=item.split("=")[0].replace(".", r"\.")):
        load_config(None, [item])


@pytest.mark.parametrize("item", ["foo", "train.steps", "steps=5", "=5", "train.=5", "a.b.c=1"])
def test_malformed_override(item):
    with pytest.raises(ConfigError, match="section.key=value"):
        load_config(None, [item])


def test_malformed_override_suggests_section():
    with pytest.raises(ConfigError, match=r"did you mean 'train\.steps'"):
        load_config(None, ["steps=5"])


# -- validation: every rule --------------------------------------------------------------------

BAD_VALUES = [
    ("model.cell", "lstmx"), ("model.cell", "LSTM"), ("model.activation", "sigmoid"),
    ("model.gate", "matrix"), ("model.dtype", "float16"), ("data.mode", "words"),
    ("train.optimizer", "adagrad"), ("train.lr_schedule", "linear"),
    ("model.hidden_sizes", [128, -1]), ("model.hidden_sizes", []), ("model.hidden_sizes", 128),
    ("model.hidden_sizes", [128, 1.5]), ("model.hidden_sizes", [True]),
    ("model.embed_size", 0), ("model.embed_size", 3.5), ("model.embed_size", "32"),
    ("data.batch_size", 0), ("data.seq_len", -1), ("data.max_line_len", 0), ("data.stream_order", "shuffled"),
    ("train.eval_every", -1), ("train.sample_every", -5), ("train.checkpoint_every", -1),
    ("train.steps", -1), ("train.steps", 10.0), ("data.min_count", 0),
    ("train.lr", 0), ("train.lr", -0.1), ("train.lr", float("inf")), ("train.lr", float("nan")),
    ("train.lr", "fast"), ("train.regc", -1e-6), ("train.clip", -1), ("train.clip_norm", -0.5),
    ("data.val_fraction", 1), ("data.val_fraction", -0.01), ("train.lr_decay", 0),
    ("train.lr_decay", 1.5), ("train.lr_decay_every", 0), ("train.warmup_steps", -1),
    ("sample.temp", 0), ("sample.length", -1), ("sample.n", 0), ("sample.top_k", -1),
    ("model.init_scale", -0.1), ("train.eval_max_chars", -1), ("train.seed", -1), ("train.seed", 1.5),
    ("model.forget_bias", "big"), ("data.corpus", 5), ("data.corpus", ""), ("data.corpus", ["a"]),
]


@pytest.mark.parametrize("key,value", BAD_VALUES)
def test_every_validation_rule(key, value):
    section, name = key.split(".")
    with pytest.raises(ConfigError) as err:  # through a dict (as from YAML) ...
        config_from_dict({section: {name: value}})
    assert key in str(err.value) and "expected" in str(err.value)
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):  # ... and through dataclasses.replace
        dataclasses.replace(getattr(Config(), section), **{name: value})


@pytest.mark.parametrize("key,value", [
    ("train.eval_every", 0), ("train.sample_every", 0), ("train.checkpoint_every", 0), ("train.steps", 0),
    ("train.regc", 0), ("train.clip", 0), ("data.val_fraction", 0), ("train.lr_decay", 1),
    ("train.warmup_steps", 0), ("sample.length", 0), ("train.eval_max_chars", 0), ("train.seed", 0),
    ("model.forget_bias", -2), ("data.corpus", None), ("data.corpus", "x.txt"),
])
def test_boundary_values_are_accepted(key, value):
    section, name = key.split(".")
    assert getattr(getattr(config_from_dict({section: {name: value}}), section), name) == value


def test_message_names_key_and_value():
    with pytest.raises(ConfigError) as err:
        load_config(None, ["model.hidden_sizes=[128, -1]"])
    expected = "model.hidden_sizes: expected a non-empty list of positive integers, got [128, -1]"
    assert str(err.value) == expected


def test_unknown_key_suggests_closest(tmp_path):
    wanted = r"unknown key 'model\.hiden_sizes' \(did you mean 'model\.hidden_sizes'\?\)"
    with pytest.raises(ConfigError, match=wanted):
        load_config(write(tmp_path / "c.yaml", "model: {hiden_sizes: [8]}\n"))
    with pytest.raises(ConfigError, match=r"did you mean 'model\.hidden_sizes'"):
        load_config(None, ["model.hiden_sizes=[8]"])


def test_key_in_wrong_section_suggests_right_section():
    with pytest.raises(ConfigError, match=r"unknown key 'model\.lr' \(did you mean 'train\.lr'"):
        load_config(None, ["model.lr=0.1"])


def test_unknown_section_suggests(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown section 'modle' \(did you mean 'model'"):
        load_config(write(tmp_path / "c.yaml", "modle: {cell: gru}\n"))
    with pytest.raises(ConfigError, match=r"unknown section 'trian'.*'train'"):
        config_from_dict({"trian": {}})


# -- files -------------------------------------------------------------------------------------

@pytest.mark.parametrize("text", ["model: [unclosed\n", "just some words\n", "- a\n- b\n", "42\n"])
def test_non_yaml_or_non_mapping_file(tmp_path, text):
    path = write(tmp_path / "bad.yaml", text)
    with pytest.raises(ConfigError, match="bad.yaml"):
        load_config(path)


def test_section_must_be_a_mapping(tmp_path):
    with pytest.raises(ConfigError, match="section 'model' must be a mapping"):
        load_config(write(tmp_path / "c.yaml", "model: 5\n"))


def test_binary_file_is_a_config_error(tmp_path):
    path = tmp_path / "bin.yaml"
    path.write_bytes(b"\xff\xfe\x00\x81garbage")
    with pytest.raises(ConfigError, match="bin.yaml"):
        load_config(path)


def test_python_tags_are_never_executed(tmp_path):
    marker = tmp_path / "HACKED"
    text = f'model: !!python/object/apply:os.system ["echo hacked > {marker}"]\n'
    with pytest.raises(ConfigError, match="evil.yaml"):
        load_config(write(tmp_path / "evil.yaml", text))
    assert not marker.exists()
    yaml.unsafe_load(text)  # control: the payload is live, so the check above can fail
    assert marker.exists()


def test_corpus_is_relative_to_the_config_file(tmp_path, monkeypatch):
    (tmp_path / "conf").mkdir()
    path = write(tmp_path / "conf" / "c.yaml", "data: {corpus: ../texts/a.txt}\n")
    monkeypatch.chdir("/")  # the cwd must not matter
    assert load_config(path).data.corpus == str(tmp_path / "texts" / "a.txt")


def test_corpus_override_is_relative_to_cwd(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = write(tmp_path / "c.yaml", "data: {corpus: other.txt}\n")
    assert load_config(path, ["data.corpus=sub/my.txt"]).data.corpus == str(tmp_path / "sub" / "my.txt")
    assert load_config(None, ["data.corpus=null"]).data.corpus is None
    assert load_config(None).data.corpus is None  # null = bundled corpus, resolved by callers


def test_bundled_dirs_are_found():
    """Source checkout / editable install: top-level configs/ and corpora/; wheel: rnnchar/configs."""
    assert B.bundled_config_dir().is_dir() and B.bundled_config_dir().name == "configs"
    corpus = B.bundled_corpus_path()
    assert corpus.name == "sentences.txt" and corpus.parent.is_dir() and corpus.parent.name == "corpora"


def test_resolve_explicit_path_first(tmp_path, monkeypatch, bundled):
    monkeypatch.chdir(tmp_path)
    write(tmp_path / "lstm.yaml", "model: {cell: rnn}\n")  # shadows the bundled one
    assert resolve_config_path("lstm.yaml") == tmp_path / "lstm.yaml"
    assert load_config("lstm.yaml").model.cell == "rnn"


@pytest.mark.parametrize("name", ["lstm.yaml", "lstm"])
def test_resolve_bundled_from_any_cwd(tmp_path, monkeypatch, bundled, name):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert resolve_config_path(name) == bundled / "lstm.yaml"
    assert load_config(name).model.hidden_sizes == [16]


def test_unknown_config_name_lists_bundled(tmp_path, monkeypatch, bundled):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError) as err:
        resolve_config_path("lstn.yaml")
    assert "gru.yaml" in str(err.value) and "lstm.yaml" in str(err.value) and "lstn.yaml" in str(err.value)


def test_directory_is_not_a_config(tmp_path):
    with pytest.raises(ConfigError, match="directory"):
        resolve_config_path(str(tmp_path))


# -- round trips -------------------------------------------------------------------------------

def test_dict_round_trip():
    cfg = load_config(None, ["model.cell=gf-lstm", "model.hidden_sizes=[8, 4, 2]", "data.corpus=/x/y.txt",
                             "train.lr_schedule=cosine", "sample.top_k=3"])
    d = config_to_dict(cfg)
    assert config_from_dict(d) == cfg
    assert config_from_dict({}) == Config()  # missing keys take defaults


def test_from_dict_is_strict():
    with pytest.raises(ConfigError, match=r"unknown key 'train\.stepz'"):
        config_from_dict({"train": {"stepz": 1}})
    with pytest.raises(ConfigError, match="mapping"):
        config_from_dict(["model"])


def test_yaml_round_trip(tmp_path):
    cfg = load_config(None, ["model.hidden_sizes=[64, 48]", "data.corpus=/abs/c.txt", "train.regc=1e-7"])
    text = config_to_yaml(cfg)
    assert "hidden_sizes: [64, 48]" in text
    assert load_config(write(tmp_path / "resolved.yaml", text)) == cfg


def test_describe_keys_covers_every_key_once():
    rows = describe_keys()
    keys = [k for k, _, _ in rows]
    expected = [f"{s}.{k}" for s, section in DEFAULTS.items() for k in section]
    assert sorted(keys) == sorted(expected) and len(keys) == len(set(keys))
    assert all(help_text and "\n" not in help_text for _, _, help_text in rows)
    shown = {k: default for k, default, _ in rows}
    assert shown["model.hidden_sizes"] == "[128, 128]" and shown["data.corpus"] == "null"
    assert shown["train.clip"] == "5.0"


# -- learning-rate schedule --------------------------------------------------------------------

def train_cfg(**kw):
    return dataclasses.replace(Config().train, lr=0.1, steps=100, **kw)


@pytest.mark.parametrize("step", [0, 1, 50, 99, 100, 10_000])
def test_lr_constant(step):
    assert lr_at(train_cfg(), step) == pytest.approx(0.1)


@pytest.mark.parametrize("step,expected", [(0, 0.1), (9, 0.1), (10, 0.05), (25, 0.025), (30, 0.0125)])
def test_lr_step(step, expected):
    cfg = train_cfg(lr_schedule="step", lr_decay=0.5, lr_decay_every=10)
    assert lr_at(cfg, step) == pytest.approx(expected)


@pytest.mark.parametrize("step,expected", [(0, 0.1), (50, 0.055), (100, 0.01), (200, 0.01),
                                           (25, 0.1 * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi / 4))))])
def test_lr_cosine(step, expected):
    assert lr_at(train_cfg(lr_schedule="cosine"), step) == pytest.approx(expected)


@pytest.mark.parametrize("step,expected", [(0, 0.1), (20, 0.055), (40, 0.01), (100, 0.01)])
def test_lr_cosine_has_its_own_horizon(step, expected):
    assert lr_at(train_cfg(lr_schedule="cosine", lr_decay_steps=40), step) == pytest.approx(expected)


@pytest.mark.parametrize("schedule,step,expected", [
    ("constant", 0, 0.025), ("constant", 1, 0.05), ("constant", 3, 0.1), ("constant", 4, 0.1),
    ("step", 1, 0.05), ("step", 2, 0.5 * 0.75 * 0.1),  # warmup multiplies the decayed rate
])
def test_lr_warmup_multiplies_schedule(schedule, step, expected):
    cfg = train_cfg(lr_schedule=schedule, warmup_steps=4, lr_decay=0.5, lr_decay_every=2)
    assert lr_at(cfg, step) == pytest.approx(expected)


def test_lr_negative_step():
    with pytest.raises(ValueError):
        lr_at(train_cfg(), -1)


@pytest.mark.parametrize("path", sorted(B.bundled_config_dir().glob("*.yaml")), ids=lambda p: p.name)
def test_every_bundled_config_loads(path):
    cfg = load_config(path.name)
    assert cfg.model.cell in ("rnn", "lstm", "gru", "gf-rnn", "gf-gru", "gf-lstm")
    assert cfg.train.steps > 0
