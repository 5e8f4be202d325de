"""Post-training run configs: the trainer's TOML plus a few sections of its own.

    [base]     the checkpoint to start from (its architecture replaces [model]) and tokenizer
    [lora]     adapters over a frozen base (rank 0 = full fine-tuning); base_quantization = QLoRA
    [sft] / [dpo] / [reward] / [distill] / [ppo]   the method's data and hyper-parameters

Every other section ([train], [optim], [schedule], [checkpoint], [data], ...) is
``herd.train.config`` unchanged, so a post-training run has the pre-training loop's
checkpointing, resume, fault handling and metrics. Overrides are ``section.key=value``
for either kind of section.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from herd.train.config import Config, ConfigError, build_section, from_dict, read_toml


@dataclass
class BaseConfig:
    model: str | None = None  # HF or Meta checkpoint directory to start from (None: [model] preset, random init)
    tokenizer: str | None = None  # tokenizer.model / model dir (default: the base model's)


@dataclass
class LoRAConfig:
    rank: int = 0  # 0: no adapters, every weight trains
    alpha: float = 16.0
    dropout: float = 0.0
    targets: list[str] = field(default_factory=lambda: ["q_proj", "v_proj"])  # projection names (HF's)
    init_seed: int = 0
    base_quantization: str | None = None  # QLoRA: "int8" / "int4-g32|64|128" base (herd.quant), frozen, dequantized


@dataclass
class SFTConfig:
    data: list[str] = field(default_factory=list)  # chat JSON Lines files
    held_out: str | None = None  # chat JSON Lines scored (masked loss) after training


@dataclass
class DPOConfig:
    data: str = ""  # preference JSON Lines (TRL's conversational form, or "ranked")
    held_out: str | None = None
    beta: float = 0.1
    nll_coef: float = 0.2  # weight of the chosen response's length-normalised NLL (Llama 3); 0: plain DPO
    max_len: int = 0  # drop pairs longer than this many tokens (0: data.seq_len)


@dataclass
class RewardConfig:
    data: str = ""  # preference JSON Lines; "ranked" lists expand to every ordered pair
    held_out: str | None = None
    max_len: int = 0


@dataclass
class DistillConfig:
    teacher: str = ""  # checkpoint directory of the teacher (same tokenizer)
    temperature: float = 2.0
    kl_weight: float = 0.5  # loss = kl_weight * T^2 * KL(teacher_T || student_T) + (1 - kl_weight) * CE
    held_out: list[str] = field(default_factory=list)  # token shards scored after training


@dataclass
class PPOConfig:
    prompts: str = ""  # JSON Lines of {"prompt": ...} or {"messages": [...]}
    reward_model: str = ""  # a LlamaForSequenceClassification directory (herd reward)
    kl_coef: float = 0.05
    gamma: float = 1.0
    lam: float = 0.95
    clip: float = 0.2
    clip_value: float = 0.2
    vf_coef: float = 0.1
    ppo_epochs: int = 2  # optimizer steps per rollout
    max_new_tokens: int = 16
    temperature: float = 1.0


METHODS: dict[str, type] = {"sft": SFTConfig, "dpo": DPOConfig, "reward": RewardConfig, "distill": DistillConfig,
                            "ppo": PPOConfig}


@dataclass
class PosttrainConfig:
    train: Config
    base: BaseConfig
    lora: LoRAConfig
    method: Any  # one of METHODS' dataclasses
    path: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"base": dataclasses.asdict(self.base), "lora": dataclasses.asdict(self.lora),
                "method": dataclasses.asdict(self.method), "train": self.train.to_dict()}


def load_posttrain_config(method: str, path: str | Path | None = None,
                          overrides: list[str] | tuple[str, ...] = ()) -> PosttrainConfig:
    """A validated post-training config for ``method`` (a key of ``METHODS``)."""
    if method not in METHODS:
        raise ConfigError(f"unknown post-training method {method!r}; known: {', '.join(METHODS)}")
    raw = read_toml(path, overrides)
    where = str(path) if path is not None else "config"
    for other in METHODS:
        if other != method and other in raw:
            raise ConfigError(f"{where}: section [{other}] does not belong in a {method} config")
    base = build_section(BaseConfig, raw.pop("base", {}), prefix="base.", where=where)
    lora = build_section(LoRAConfig, raw.pop("lora", {}), prefix="lora.", where=where)
    section = build_section(METHODS[method], raw.pop(method, {}), prefix=f"{method}.", where=where)
    if method in ("dpo", "reward", "ppo"):
        # pairs come from the method's own loader; [data] only gives seq_len (the longest pair)
        raw.setdefault("data", {}).setdefault("kind", "synthetic")
    train = from_dict(raw, where=where)
    cfg = PosttrainConfig(train, base, lora, section, where)
    _validate(cfg, method, where)
    return cfg


def _validate(cfg: PosttrainConfig, method: str, where: str) -> None:
    if cfg.lora.rank < 0:
        raise ConfigError(f"{where}: lora.rank must be >= 0, got {cfg.lora.rank}")
    if cfg.lora.rank and cfg.lora.alpha <= 0:
        raise ConfigError(f"{where}: lora.alpha must be positive, got {cfg.lora.alpha}")
    if cfg.lora.base_quantization is not None:
        from herd.posttrain.qlora import check_base_scheme

        if not cfg.lora.rank:
            raise ConfigError(f"{where}: lora.base_quantization needs lora.rank > 0 (a quantized base cannot train)")
        try:
            cfg.lora.base_quantization = check_base_scheme(cfg.lora.base_quantization)
        except ValueError as e:
            raise ConfigError(f"{where}: {e}") from None
    if not 0 <= cfg.lora.dropout < 1:
        raise ConfigError(f"{where}: lora.dropout must be in [0, 1), got {cfg.lora.dropout}")
    m = cfg.method
    if method == "sft" and not m.data:
        raise ConfigError(f"{where}: sft.data is empty: name at least one chat JSON Lines file")
    if method in ("dpo", "reward") and not m.data:
        raise ConfigError(f"{where}: {method}.data is empty: name a preference JSON Lines file")
    if method == "dpo" and m.beta <= 0:
        raise ConfigError(f"{where}: dpo.beta must be positive, got {m.beta}")
    if method == "dpo" and m.nll_coef < 0:
        raise ConfigError(f"{where}: dpo.nll_coef must be >= 0, got {m.nll_coef}")
    if method == "distill":
        if not m.teacher:
            raise ConfigError(f"{where}: distill.teacher is empty: name the teacher's checkpoint directory")
        if m.temperature <= 0:
            raise ConfigError(f"{where}: distill.temperature must be positive, got {m.temperature}")
        if not 0 <= m.kl_weight <= 1:
            raise ConfigError(f"{where}: distill.kl_weight must be in [0, 1], got {m.kl_weight}")
    if method == "ppo":
        if not m.prompts or not m.reward_model:
            raise ConfigError(f"{where}: ppo.prompts and ppo.reward_model must both be set")
        if m.ppo_epochs < 1 or m.max_new_tokens < 1 or m.clip <= 0:
            raise ConfigError(f"{where}: ppo.ppo_epochs and ppo.max_new_tokens must be >= 1 and ppo.clip > 0")
    if cfg.base.model is None and cfg.base.tokenizer is None and method != "distill":
        raise ConfigError(f"{where}: set base.model (a checkpoint to start from) or base.tokenizer")
