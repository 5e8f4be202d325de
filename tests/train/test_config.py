from __future__ import annotations

import pytest

from herd.train.config import ConfigError, load_config, parse_override

from .helpers import REPO


def test_tiny_config_loads_with_overrides():
    cfg = load_config(REPO / "configs/pretrain-tiny.toml",
                      ["optim.lr=1e-3", "train.batch_ramp=[[5, 16]]", "run_dir=/tmp/x", "faults.action=rollback"])
    assert cfg.optim.lr == 1e-3
    assert cfg.train.batch_ramp == [[5, 16]]
    assert cfg.run_dir == "/tmp/x"
    assert cfg.faults.action == "rollback"
    assert cfg.model.preset == "tiny-nope"


def test_override_values_are_parsed_as_toml():
    assert parse_override("optim.betas=[0.9, 0.99]") == ("optim.betas", [0.9, 0.99])
    assert parse_override("train.compile=true") == ("train.compile", True)
    assert parse_override("--data.tokenizer=path/to/tok.model") == ("data.tokenizer", "path/to/tok.model")
    with pytest.raises(ConfigError, match="section.key=value"):
        parse_override("optim.lr")


def test_unknown_key_is_named_with_a_suggestion():
    with pytest.raises(ConfigError, match=r"unknown key 'optim.lrr' \(did you mean 'optim.lr'\?\)"):
        load_config(REPO / "configs/pretrain-tiny.toml", ["optim.lrr=1"])
    with pytest.raises(ConfigError, match="unknown key 'trian'"):
        load_config(None, ["trian.steps=3"])


def test_bad_values_are_named(tmp_path):
    with pytest.raises(ConfigError, match="train.steps = 'many' is not a valid int"):
        load_config(None, ["train.steps=many"])
    with pytest.raises(ConfigError, match="schedule.kind = 'linear' must be one of"):
        load_config(None, ["schedule.kind=linear"])
    with pytest.raises(ConfigError, match="train.micro_batch_rows must be positive"):
        load_config(None, ["train.micro_batch_rows=0", "data.kind=synthetic"])
    with pytest.raises(ConfigError, match="data.sources is empty"):
        load_config(None, [])
    bad = tmp_path / "bad.toml"
    bad.write_text("[optim\nlr = 1")
    with pytest.raises(ConfigError, match="bad.toml: invalid TOML"):
        load_config(bad)
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.toml")


def test_sources_are_parsed(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text('[data]\nkind = "shards"\n[[data.sources]]\nname = "web"\npaths = ["a", "b"]\nweight = 0.7\n'
                    '[[data.sources]]\nname = "code"\npaths = ["c"]\n')
    cfg = load_config(path)
    assert [(s.name, s.paths, s.weight) for s in cfg.data.sources] == [("web", ["a", "b"], 0.7), ("code", ["c"], 1.0)]
