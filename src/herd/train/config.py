"""Run configuration: small dataclasses, read from TOML, overridden by ``section.key=value``.

    cfg = load_config("configs/pretrain-tiny.toml", ["optim.lr=3e-4", "train.steps=20"])

Every section is a dataclass; an unknown section or key, or a value of the wrong type,
is an error that names it (``unknown key 'optim.lrr' (did you mean 'optim.lr'?)``).
Values in overrides are parsed as TOML (``3e-4``, ``true``, ``[1, 2]``, ``"text"``),
and fall back to a plain string.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib


class ConfigError(ValueError):
    """A bad config file, key or value; the message names it."""


@dataclass
class ModelConfig:
    preset: str = "tiny"  # a herd.model preset name
    overrides: dict[str, Any] = field(default_factory=dict)  # ModelArgs fields, e.g. {n_layers = 4}
    init_std: float = 0.02
    # start from these weights instead of a random init (a model directory, native or Meta
    # layout, e.g. an earlier run's final/): long-context and annealing stages, post-training
    init_from: str | None = None


@dataclass
class SourceConfig:
    name: str = "main"
    paths: list[str] = field(default_factory=list)  # token shard files or directories
    weight: float = 1.0


@dataclass
class DataConfig:
    # "shards": token shards through herd.train.loader.PackedLoader;
    # "synthetic": deterministic learnable sequences (smoke tests, benchmarks).
    kind: Literal["shards", "synthetic"] = "shards"
    sources: list[SourceConfig] = field(default_factory=list)
    seq_len: int = 512
    document_masking: bool = True
    tokenizer: str | None = None  # tokenizer.model path or model dir, checked against the shards' hash


@dataclass
class TrainConfig:
    steps: int = 100
    global_batch_rows: int = 8  # rows of seq_len tokens per optimizer step, over all ranks
    micro_batch_rows: int = 8  # rows per forward/backward on one rank (gradient accumulation)
    # batch-size ramp: [[step, global_batch_rows], ...], each stage from its step on (Llama 3 doubles it)
    batch_ramp: list[list[int]] = field(default_factory=list)
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda
    dtype: Literal["auto", "float32", "bfloat16"] = "auto"  # autocast dtype; weights stay fp32 (master)
    loss_chunk_size: int = 1024  # tokens per lm_head + cross-entropy chunk
    loss_mode: Literal["recompute", "fused"] = "recompute"  # see herd.train.loss
    compile: bool = False  # torch.compile each block
    activation_checkpointing: bool = False  # recompute each block in the backward
    threads: int = 0  # torch CPU threads (0: torch's default)
    tensor_parallel: int = 1  # TP degree under torchrun: blocks split over this many ranks, FSDP2 over the rest


@dataclass
class OptimConfig:
    lr: float = 3e-4
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])
    eps: float = 1e-8
    weight_decay: float = 0.1
    decay_embeddings: bool = True  # decay the embedding / output tables too (Llama, torchtitan); norms never
    grad_clip: float = 1.0  # max total grad norm (0: off)
    implementation: Literal["auto", "fused", "foreach", "for-loop"] = "auto"


@dataclass
class ScheduleConfig:
    kind: Literal["cosine", "wsd", "constant"] = "cosine"
    warmup_steps: int = 0
    min_lr_ratio: float = 0.1  # final lr = lr * min_lr_ratio
    decay_steps: int | None = None  # cosine: steps after warmup to decay over (default: the rest)
    decay_fraction: float = 0.2  # wsd: the final fraction of steps that decays
    wsd_decay_shape: Literal["linear", "cosine", "sqrt"] = "linear"


@dataclass
class CheckpointConfig:
    every: int = 0  # save every N steps (0: only at the end and on a signal)
    keep_last: int = 3
    async_save: Literal["auto", "on", "off"] = "auto"  # auto: async on CUDA, sync on CPU
    resume: bool = True  # resume from run_dir/checkpoints/latest when present
    export: bool = True  # write the final model in the native (HF) layout to run_dir/final
    save_on_signal: bool = True  # SIGTERM / SIGINT: save at the next step boundary and exit


@dataclass
class FaultConfig:
    action: Literal["skip", "rollback", "raise", "ignore"] = "skip"
    spike_zscore: float = 6.0  # a loss this many std above the window mean is a spike (0: NaN/inf only)
    window: int = 50  # accepted losses the z-score is computed over
    min_window: int = 10  # no spike detection until this many losses were accepted
    max_consecutive: int = 5  # give up (raise) after this many faulty steps in a row
    inject_nan_at: list[int] = field(default_factory=list)  # test hook: steps whose loss becomes NaN


@dataclass
class MetricsConfig:
    log_every: int = 1  # JSON Lines record every N steps
    progress: Literal["auto", "on", "off"] = "auto"  # rich live display (auto: on a terminal)
    peak_flops: float | None = None  # per-device peak FLOP/s override for MFU


@dataclass
class Config:
    run_dir: str = "runs/default"
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    faults: FaultConfig = field(default_factory=FaultConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)

    def validate(self) -> Config:
        """Cross-field checks; returns self. Raises ConfigError naming the field."""
        t = self.train
        _positive("train.steps", t.steps)
        _positive("train.micro_batch_rows", t.micro_batch_rows)
        _positive("train.loss_chunk_size", t.loss_chunk_size)
        _positive("train.tensor_parallel", t.tensor_parallel)
        _positive("data.seq_len", self.data.seq_len)
        for rows in [t.global_batch_rows] + [stage[1] for stage in t.batch_ramp if len(stage) == 2]:
            _positive("train.global_batch_rows", rows)
        for stage in t.batch_ramp:
            if len(stage) != 2:
                raise ConfigError(f"train.batch_ramp entries must be [step, global_batch_rows], got {stage}")
        if self.optim.lr <= 0:
            raise ConfigError(f"optim.lr must be positive, got {self.optim.lr}")
        if len(self.optim.betas) != 2:
            raise ConfigError(f"optim.betas must be two numbers, got {self.optim.betas}")
        if not 0 <= self.schedule.min_lr_ratio <= 1:
            raise ConfigError(f"schedule.min_lr_ratio must be in [0, 1], got {self.schedule.min_lr_ratio}")
        if not 0 < self.schedule.decay_fraction <= 1:
            raise ConfigError(f"schedule.decay_fraction must be in (0, 1], got {self.schedule.decay_fraction}")
        if self.schedule.warmup_steps < 0:
            raise ConfigError("schedule.warmup_steps must be >= 0")
        if self.checkpoint.keep_last < 1:
            raise ConfigError(f"checkpoint.keep_last must be >= 1, got {self.checkpoint.keep_last}")
        if self.data.kind == "shards" and not self.data.sources:
            raise ConfigError("data.sources is empty: name at least one [[data.sources]] with paths")
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _positive(name: str, value: int) -> None:
    if value <= 0:
        raise ConfigError(f"{name} must be positive, got {value}")


def read_toml(path: str | Path | None, overrides: list[str] | tuple[str, ...] = ()) -> dict[str, Any]:
    """A run config's raw tables: the TOML file (none: empty) with ``section.key=value``
    overrides applied; a missing file or invalid TOML is a ``ConfigError`` naming the file.
    Every herd command's config (pretrain, post-training, synth, round) is read here."""
    raw: dict[str, Any] = {}
    if path is not None:
        try:
            raw = tomllib.loads(Path(path).read_text())
        except FileNotFoundError:
            raise ConfigError(f"config file {path} does not exist") from None
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"{path}: invalid TOML: {e}") from None
    for item in overrides:
        key, value = parse_override(item)
        set_dotted(raw, key, value)
    return raw


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """A validated ``Config`` from a TOML file (or the defaults) and ``section.key=value`` overrides."""
    raw = read_toml(path, overrides)
    where = str(path) if path is not None else "config"
    return from_dict(raw, where=where).validate()


def parse_override(item: str) -> tuple[str, Any]:
    """``"optim.lr=3e-4"`` -> ``("optim.lr", 3e-4)``; the value is read as TOML, else a string."""
    key, sep, text = item.partition("=")
    key = key.strip().removeprefix("--")
    if not sep or not key:
        raise ConfigError(f"override {item!r} is not of the form section.key=value")
    try:
        value = tomllib.loads(f"v = {text.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        value = text.strip()
    return key, value


def set_dotted(raw: dict[str, Any], key: str, value: Any) -> None:
    """``raw["a"]["b"] = value`` for ``key = "a.b"`` (an override), creating sections."""
    node = raw
    parts = key.split(".")
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"override {key!r}: {part!r} is not a section")
        node = child
    node[parts[-1]] = value


def from_dict(raw: dict[str, Any], *, where: str = "config") -> Config:
    """A ``Config`` from nested dicts; unknown keys and wrong types raise ConfigError."""
    return build_section(Config, raw, prefix="", where=where)


def build_section(cls: type, raw: Any, *, prefix: str, where: str) -> Any:
    """The dataclass ``cls`` from a TOML table, recursively; errors name ``prefix`` + key."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: {prefix.rstrip('.') or 'config'} must be a table, got {raw!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for key, value in raw.items():
        if key not in fields:
            hint = difflib.get_close_matches(key, list(fields), n=1)
            suggestion = f" (did you mean {prefix + hint[0]!r}?)" if hint else ""
            raise ConfigError(f"{where}: unknown key {prefix + key!r}{suggestion}; known: {', '.join(fields)}")
        kwargs[key] = _convert(hints[key], value, name=prefix + key, where=where)
    return cls(**kwargs)


def _convert(tp: Any, value: Any, *, name: str, where: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    bad = ConfigError(f"{where}: {name} = {value!r} is not a valid {_type_name(tp)}")
    if dataclasses.is_dataclass(tp):
        return build_section(tp, value, prefix=name + ".", where=where)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(arg, value, name=name, where=where)
            except ConfigError:
                continue
        raise bad
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{where}: {name} = {value!r} must be one of {', '.join(map(repr, args))}")
        return value
    if origin is list:
        if not isinstance(value, list):
            raise bad
        return [_convert(args[0], v, name=f"{name}[{i}]", where=where) for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise bad
        return dict(value)
    if tp is Any:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
        raise bad
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise bad
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise bad
    if tp is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise bad
    raise bad


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")
