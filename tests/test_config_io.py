"""Tests for training.config_io: typed nested-dataclass config loading, merging, overrides and saving."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Optional

import pytest

from training.config_io import (
    ConfigError,
    apply_overrides,
    config_hash,
    from_dict,
    load_yaml,
    merge,
    resolve_config,
    save_json,
    save_yaml,
    to_dict,
)

# Example configs live at module level: with `from __future__ import annotations` the annotations are strings that
# typing.get_type_hints must resolve from the module's globals.


@dataclass
class EncoderCfg:
    channels: tuple[int, ...] = (32, 64, 128)
    width: int = 64
    norm: Literal["group", "layer"] = "group"
    dropout: float = 0.0


@dataclass
class ModelCfg:
    encoder: EncoderCfg = field(default_factory=EncoderCfg)
    latent_dim: Optional[int] = None
    use_ema: bool = True
    window: tuple[float, float] = (0.0, 1.0)


@dataclass
class OptimCfg:
    lr: float = 3e-4
    betas: list[float] = field(default_factory=lambda: [0.9, 0.99])
    schedule: Literal["cosine", "constant"] = "cosine"


@dataclass
class TrainCfg:
    model: ModelCfg = field(default_factory=ModelCfg)
    optim: OptimCfg = field(default_factory=OptimCfg)
    name: str = "run"
    steps: int = 1000
    tag: Optional[str] = None

    def validate(self) -> None:
        if self.steps <= 0:
            raise ValueError(f"steps must be > 0, got {self.steps}")


@dataclass
class CheckedEncoder:
    width: int = 64
    heads: int = 4

    def validate(self) -> None:
        if self.width % self.heads:
            raise ValueError(f"width={self.width} must be divisible by heads={self.heads}")


@dataclass
class CheckedCfg:
    encoder: CheckedEncoder = field(default_factory=CheckedEncoder)


def preset() -> TrainCfg:
    """A 'preset' that differs from the class defaults, to check merges apply on top of it."""
    return TrainCfg(model=ModelCfg(encoder=EncoderCfg(width=32), latent_dim=16), optim=OptimCfg(lr=1e-3), steps=50)


# --- round trips ---------------------------------------------------------------------------------------------------


def test_to_dict_is_plain_and_round_trips():
    cfg = preset()
    data = to_dict(cfg)
    assert data["model"]["encoder"]["channels"] == [32, 64, 128]  # tuples become lists
    assert data["model"]["window"] == [0.0, 1.0]
    json.dumps(data)  # plain JSON-serialisable structures only
    back = from_dict(TrainCfg, data)
    assert back == cfg
    assert isinstance(back.model.encoder.channels, tuple)
    assert isinstance(back.optim.betas, list)


def test_yaml_and_json_round_trip(tmp_path: Path):
    cfg = apply_overrides(preset(), ["optim.lr=1e-5", "tag=hello", "model.window=0.25,0.5"])
    yaml_path = tmp_path / "sub" / "config.yaml"
    save_yaml(cfg, yaml_path)
    assert from_dict(TrainCfg, load_yaml(yaml_path)) == cfg
    # Field order is kept, so saved files read like the dataclass definitions.
    assert list(load_yaml(yaml_path)) == ["model", "optim", "name", "steps", "tag"]
    json_path = tmp_path / "config.json"
    save_json(cfg, json_path)
    assert from_dict(TrainCfg, json.loads(json_path.read_text())) == cfg
    assert not [p for p in tmp_path.rglob("*.tmp")]  # atomic writes leave no temp files behind


def test_atomic_write_text_keeps_the_old_file_whole_when_a_write_fails(tmp_path: Path):
    from worldmodel.config_io import atomic_write_text

    path = tmp_path / "deep" / "refit.json"
    atomic_write_text(path, '{"steps": 1}\n')
    assert path.read_text() == '{"steps": 1}\n'
    with pytest.raises(UnicodeEncodeError):  # a lone surrogate cannot be written as UTF-8: the write fails midway
        atomic_write_text(path, '{"steps": 2, "name": "\ud800"}\n')
    assert path.read_text() == '{"steps": 1}\n'
    assert [p.name for p in path.parent.iterdir()] == ["refit.json"]  # no temp file left behind


def test_absent_fields_keep_defaults_including_nested():
    cfg = from_dict(TrainCfg, {"model": {"encoder": {"width": 8}}})
    assert cfg.model.encoder.width == 8
    assert cfg.model.encoder.channels == (32, 64, 128)
    assert cfg.model.use_ema is True
    assert cfg.optim == OptimCfg()


# --- error messages ------------------------------------------------------------------------------------------------


def test_unknown_key_names_dotted_path_and_suggests():
    with pytest.raises(ConfigError) as info:
        from_dict(TrainCfg, {"model": {"encoder": {"widht": 3}}})
    message = str(info.value)
    assert "model.encoder.widht" in message
    assert "model.encoder.width" in message  # suggestion
    assert "channels" in message and "norm" in message  # valid keys at that level


def test_unknown_top_level_key():
    with pytest.raises(ConfigError, match="optimm.*Did you mean 'optim'"):
        from_dict(TrainCfg, {"optimm": {}})


@pytest.mark.parametrize(
    ("data", "path", "fragment"),
    [
        ({"steps": 2.5}, "steps", "int"),
        ({"steps": True}, "steps", "int"),
        ({"steps": "many"}, "steps", "'many'"),
        ({"optim": {"lr": "fast"}}, "optim.lr", "float"),
        ({"model": {"use_ema": 2}}, "model.use_ema", "bool"),
        ({"model": {"use_ema": "maybe"}}, "model.use_ema", "'maybe'"),
        ({"name": 123}, "name", "str"),
        ({"model": {"encoder": {"channels": [32, "x"]}}}, "model.encoder.channels[1]", "int"),
        ({"model": {"window": [1.0, 2.0, 3.0]}}, "model.window", "2 items"),
        ({"model": {"encoder": 5}}, "model.encoder", "mapping"),
        ({"model": {"latent_dim": "big"}}, "model.latent_dim", "int"),
    ],
)
def test_type_errors_name_path(data, path, fragment):
    with pytest.raises(ConfigError) as info:
        from_dict(TrainCfg, data)
    message = str(info.value)
    assert path in message
    assert fragment in message


def test_coercions_from_yaml_values():
    cfg = from_dict(
        TrainCfg,
        {
            "steps": 3.0,  # int-valued float
            "optim": {"lr": "1e-3", "betas": "0.8, 0.9"},  # PyYAML reads 1e-3 as a string
            "model": {"use_ema": "false", "latent_dim": "null", "encoder": {"channels": "8,16", "dropout": 1}},
        },
    )
    assert cfg.steps == 3 and isinstance(cfg.steps, int)
    assert cfg.optim.lr == pytest.approx(1e-3)
    assert cfg.optim.betas == [0.8, 0.9]
    assert cfg.model.use_ema is False
    assert cfg.model.latent_dim is None
    assert cfg.model.encoder.channels == (8, 16)
    assert cfg.model.encoder.dropout == 1.0 and isinstance(cfg.model.encoder.dropout, float)


# --- overrides -----------------------------------------------------------------------------------------------------


def test_overrides_nested_and_typed():
    cfg = apply_overrides(
        preset(),
        [
            "model.encoder.width=96",
            "optim.lr=1e-3",
            "model.use_ema=false",
            "model.encoder.channels=1,2,3",
            "optim.betas=[0.5, 0.6]",
            "model.latent_dim=none",
            "name=123",
            "model.encoder.norm=layer",
        ],
    )
    assert cfg.model.encoder.width == 96
    assert cfg.optim.lr == pytest.approx(1e-3) and isinstance(cfg.optim.lr, float)
    assert cfg.model.use_ema is False
    assert cfg.model.encoder.channels == (1, 2, 3)
    assert cfg.optim.betas == [0.5, 0.6]
    assert cfg.model.latent_dim is None
    assert cfg.name == "123" and isinstance(cfg.name, str)
    assert cfg.model.encoder.norm == "layer"
    # Untouched values come from the preset, not the class defaults.
    assert cfg.steps == 50


@pytest.mark.parametrize("text", ["1,2,3", "[1,2,3]", "[1, 2, 3]", "(1,2,3)"])
def test_override_tuple_forms(text):
    cfg = apply_overrides(TrainCfg(), [f"model.encoder.channels={text}"])
    assert cfg.model.encoder.channels == (1, 2, 3)


def test_override_bool_forms():
    assert apply_overrides(TrainCfg(), ["model.use_ema=false"]).model.use_ema is False
    assert apply_overrides(TrainCfg(model=ModelCfg(use_ema=False)), ["model.use_ema=true"]).model.use_ema is True
    assert apply_overrides(TrainCfg(), ["model.use_ema=0"]).model.use_ema is False
    with pytest.raises(ConfigError, match="model.use_ema"):
        apply_overrides(TrainCfg(), ["model.use_ema=2"])


def test_override_literal_invalid_lists_options():
    with pytest.raises(ConfigError) as info:
        apply_overrides(TrainCfg(), ["model.encoder.norm=batch"])
    message = str(info.value)
    assert "model.encoder.norm" in message
    assert "'group'" in message and "'layer'" in message


def test_override_errors():
    with pytest.raises(ConfigError, match="optim.lr3"):
        apply_overrides(TrainCfg(), ["optim.lr3"])  # no '=': the offending text is quoted
    with pytest.raises(ConfigError, match=r"model\.encoder\.widht.*model\.encoder\.width"):
        apply_overrides(TrainCfg(), ["model.encoder.widht=3"])
    with pytest.raises(ConfigError, match=r"modle.*Did you mean 'model'"):
        apply_overrides(TrainCfg(), ["modle.encoder.width=3"])
    with pytest.raises(ConfigError, match="not a config section"):
        apply_overrides(TrainCfg(), ["optim.lr.x=3"])
    with pytest.raises(ConfigError, match="optim.lr"):
        apply_overrides(TrainCfg(), ["optim.lr=fast"])


def test_override_section_mapping_and_later_wins():
    cfg = apply_overrides(preset(), ["model.encoder={width: 7}", "steps=5", "steps=6"])
    assert cfg.model.encoder.width == 7
    assert cfg.model.encoder.channels == (32, 64, 128)
    assert cfg.steps == 6


def test_overrides_do_not_mutate_input():
    base = preset()
    snapshot = to_dict(base)
    apply_overrides(base, ["optim.betas=[0.1,0.2]", "model.encoder.width=1"])
    merge(base, {"model": {"encoder": {"width": 2}}})
    assert to_dict(base) == snapshot


# --- merge and validate --------------------------------------------------------------------------------------------


def test_merge_keeps_base_values_not_defaults():
    base = preset()
    merged = merge(base, {"model": {"encoder": {"channels": [8, 16]}}, "optim": {"schedule": "constant"}})
    assert merged.model.encoder.channels == (8, 16)
    assert merged.model.encoder.width == 32  # preset value, class default is 64
    assert merged.model.latent_dim == 16
    assert merged.optim.lr == pytest.approx(1e-3)
    assert merged.optim.schedule == "constant"
    assert merged.steps == 50
    assert merged is not base and merged.model is not base.model


def test_merge_validates_types():
    with pytest.raises(ConfigError, match="optim.schedule"):
        merge(preset(), {"optim": {"schedule": "linear"}})


def test_validate_is_called_and_error_propagates():
    with pytest.raises(ValueError, match="steps must be > 0"):
        from_dict(TrainCfg, {"steps": 0})
    with pytest.raises(ValueError, match="steps must be > 0"):
        merge(TrainCfg(), {"steps": -1})
    with pytest.raises(ValueError, match="steps must be > 0"):
        apply_overrides(TrainCfg(), ["steps=0"])


def test_nested_validate_runs_once_at_end():
    with pytest.raises(ValueError, match="divisible"):
        from_dict(CheckedCfg, {"encoder": {"width": 10}})
    # Intermediate states may be invalid; only the final config is validated.
    cfg = apply_overrides(CheckedCfg(), ["encoder.heads=3", "encoder.width=9"])
    assert (cfg.encoder.width, cfg.encoder.heads) == (9, 3)


# --- files and hashing ---------------------------------------------------------------------------------------------


def test_load_yaml_errors_name_the_file(tmp_path: Path):
    with pytest.raises(ConfigError, match="not found.*missing.yaml"):
        load_yaml(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  encoder: [1, 2\nsteps: 3\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml.*line \d+"):
        load_yaml(bad)
    listing = tmp_path / "list.yaml"
    listing.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match=r"list\.yaml.*mapping"):
        load_yaml(listing)
    dup = tmp_path / "dup.yaml"
    dup.write_text("steps: 1\nsteps: 2\n")
    with pytest.raises(ConfigError, match=r"dup\.yaml.*line 2.*duplicate key 'steps'"):
        load_yaml(dup)
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    assert load_yaml(empty) == {}


def test_resolve_config_layers(tmp_path: Path):
    path = tmp_path / "exp.yaml"
    path.write_text("optim:\n  lr: 1e-4\nmodel:\n  encoder:\n    norm: layer\n")
    cfg = resolve_config(preset(), yaml_path=path, overrides=["steps=7"])
    assert cfg.optim.lr == pytest.approx(1e-4)
    assert cfg.model.encoder.norm == "layer"
    assert cfg.model.encoder.width == 32  # from the preset
    assert cfg.steps == 7


def test_config_hash_stable_and_sensitive():
    a, b = preset(), preset()
    assert config_hash(a) == config_hash(b)
    assert config_hash(a) == config_hash(from_dict(TrainCfg, to_dict(a)))
    assert len(config_hash(a)) == 12 and int(config_hash(a), 16) >= 0
    changed = apply_overrides(a, ["model.encoder.dropout=0.1"])
    assert config_hash(changed) != config_hash(a)
    # Coerced values hash like their canonical form: steps=50.0 is the int 50.
    assert config_hash(merge(a, {"steps": 50.0})) == config_hash(a)


def test_overrides_that_only_agree_together_apply_in_any_order():
    from envs.physics import BallsConfig
    from training.config import debug

    # The debug preset has max_balls=2; BallsConfig checks max_balls >= min_balls as it is built.
    for overrides in (["data.balls.min_balls=4", "data.balls.max_balls=6"],
                      ["data.balls.max_balls=6", "data.balls.min_balls=4"]):
        balls = apply_overrides(debug(), overrides).data.balls
        assert isinstance(balls, BallsConfig) and (balls.min_balls, balls.max_balls) == (4, 6)
    # A section set whole, then one of its fields: applied in order, the later one wins.
    cfg = apply_overrides(preset(), ["model.encoder={width: 7}", "model.encoder.width=8", "steps=6", "steps=7"])
    assert cfg.model.encoder.width == 8 and cfg.steps == 7
    cfg = apply_overrides(preset(), ["model.encoder.width=8", "model.encoder={width: 7}"])
    assert cfg.model.encoder.width == 7
    # A final state that is invalid still names the field.
    with pytest.raises(ConfigError, match="max_balls must be an int >= min_balls"):
        apply_overrides(debug(), ["data.balls.min_balls=4"])
