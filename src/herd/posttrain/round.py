"""One round of Llama 3 post-training, end to end, with a lineage manifest.

Llama 3's chat models came from six rounds of: a reward model trained on the round's
preference data; rejection sampling (K replies per prompt from the current policy, the
best by reward kept) as SFT data; SFT on that plus the human-written data; DPO on the
preferences, starting from the SFT model; and an average of models from several runs.
``run_round`` runs those stages in order through the same ``run_*`` entry points as
``herd sft / reward / dpo`` and ``herd rejection-sample``:

1. ``reward``: ``[reward] config`` with base.model = the policy, reward.data = ``preferences``;
2. ``rejection``: ``[rejection]`` K samples per prompt of ``prompts`` from the policy, scored
   by that reward model -> ``rejection.jsonl``;
3. ``sft``: ``[sft] config`` from the policy on ``sft_data`` + ``rejection.jsonl``;
4. ``dpo``: ``[dpo] config`` from the SFT model on ``preferences``, once per entry of
   ``[dpo] variants`` (override lists: other seeds, betas, learning rates);
5. ``average``: the DPO models averaged (uniform) into ``final/`` — with one variant, its
   model is copied there.

``round.json`` in the round's directory records, for every stage, the model it started
from, each input file with its SHA-256 and size, the config file and overrides, its
output directory and its result (final loss, held-out figures, rejection report). It is
rewritten (temp name, then rename) after each stage, so an interrupted round restarts
where it stopped: a stage whose record is complete, whose output still exists and whose
inputs hash the same is not run again. The next round starts from this one's ``final/``
(``policy=runs/round-1/final``).

    herd round --config configs/round-tiny.toml
    herd round --config configs/round-tiny.toml run_dir=runs/round-2 policy=runs/round-1/final
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from herd.train.config import ConfigError, build_section, read_toml

MANIFEST = "round.json"


@dataclass
class StageConfig:
    config: str = ""  # the method's TOML (e.g. configs/sft-tiny.toml)
    overrides: list[str] = field(default_factory=list)


@dataclass
class RejectionConfig:
    k: int = 4
    threshold: float | None = None
    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: int = 256
    seed: int = 0


@dataclass
class DPOStageConfig(StageConfig):
    variants: list[list[str]] = field(default_factory=lambda: [[]])  # one DPO run (and model) per entry


@dataclass
class RoundConfig:
    run_dir: str
    policy: str  # the model the round starts from: the base/SFT model, or the last round's final/
    preferences: str  # preference JSON Lines: the reward model's and DPO's data
    prompts: str  # prompts for rejection sampling
    sft_data: list[str] = field(default_factory=list)  # human-written SFT data, joined by the rejection samples
    reward: StageConfig = field(default_factory=StageConfig)
    rejection: RejectionConfig = field(default_factory=RejectionConfig)
    sft: StageConfig = field(default_factory=StageConfig)
    dpo: DPOStageConfig = field(default_factory=DPOStageConfig)


def load_round_config(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> RoundConfig:
    """A validated round config from TOML plus ``key=value`` overrides."""
    raw = read_toml(path, overrides)
    where = str(path)
    for key in ("run_dir", "policy", "preferences", "prompts"):
        if not raw.get(key):
            raise ConfigError(f"{where}: {key} is required")
    cfg = build_section(RoundConfig, raw, prefix="", where=where)
    for name in ("reward", "sft", "dpo"):
        if not getattr(cfg, name).config:
            raise ConfigError(f"{where}: [{name}] config is required (the method's TOML, "
                              f"e.g. configs/{name}-tiny.toml)")
    if not cfg.dpo.variants:
        raise ConfigError(f"{where}: dpo.variants is empty (use [[]] for one run with no extra overrides)")
    if cfg.rejection.k < 1:
        raise ConfigError(f"{where}: rejection.k must be >= 1, got {cfg.rejection.k}")
    return cfg


def file_record(path: str | Path) -> dict[str, Any]:
    """Path, size and SHA-256 of an input file (the lineage's fingerprint of the data)."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"round input {p} does not exist")
    digest = hashlib.sha256()
    with p.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return {"path": str(p), "bytes": p.stat().st_size, "sha256": digest.hexdigest()}


class Manifest:
    """``round.json``: the stages done so far, rewritten atomically after each one."""

    def __init__(self, run_dir: Path, config: RoundConfig, config_path: str | None) -> None:
        self.path = run_dir / MANIFEST
        old = json.loads(self.path.read_text()) if self.path.exists() else {}
        self.data: dict[str, Any] = {
            "round": str(run_dir), "config": config_path, "settings": dataclasses.asdict(config),
            "started": old.get("started", time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())),
            "stages": old.get("stages", {}), "final": old.get("final"),
        }

    def done(self, name: str, inputs: dict[str, Any]) -> dict[str, Any] | None:
        """The stage's record if it finished with these very inputs and its output is still there."""
        rec = self.data["stages"].get(name)
        if rec and rec.get("inputs") == inputs and Path(rec["output"]).exists():
            return rec
        return None

    def record(self, name: str, inputs: dict[str, Any], output: Path, result: dict[str, Any],
               started: float) -> dict[str, Any]:
        rec = {"inputs": inputs, "output": str(output), "result": result,
               "seconds": round(time.time() - started, 1),
               "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        self.data["stages"][name] = rec
        self.save()
        return rec

    def save(self) -> None:
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(self.data, indent=1) + "\n")
        tmp.replace(self.path)


def _fresh_or_resumable(stamp: Path, output: Path, inputs: dict[str, Any]) -> None:
    """Before a stage runs: if its output holds an interrupted run of the same inputs, leave it
    (the trainer resumes from its checkpoints); if it holds anything else, remove it, so a
    changed input never resumes from a run that used the old one."""
    same = stamp.exists() and json.loads(stamp.read_text()) == inputs
    if not same:
        if output.is_dir():
            shutil.rmtree(output)
        elif output.exists():
            output.unlink()
        stamp.write_text(json.dumps(inputs, indent=1) + "\n")


def _train(method: str, stage: StageConfig, extra: list[str], run_dir: Path) -> dict[str, Any]:
    from herd.posttrain.config import load_posttrain_config

    cfg = load_posttrain_config(method, stage.config, [*stage.overrides, *extra, f"run_dir={run_dir}",
                                                       "checkpoint.export=true"])
    if method == "sft":
        from herd.posttrain.sft import run_sft as runner
    elif method == "reward":
        from herd.posttrain.reward import run_reward as runner
    else:
        from herd.posttrain.dpo import run_dpo as runner
    result = runner(cfg)
    if result.export_dir is None:
        raise RuntimeError(f"{method} stage in {run_dir} exported no model")
    held_out = run_dir / "held_out.json"
    return {"model": str(result.export_dir), "steps": result.step, "final_loss": result.final_loss,
            "held_out": json.loads(held_out.read_text()) if held_out.exists() else None}


def run_round(cfg: RoundConfig, config_path: str | None = None) -> dict[str, Any]:
    """Run (or finish) one round; returns the manifest's contents."""
    run_dir = Path(cfg.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    manifest = Manifest(run_dir, cfg, config_path)
    policy = str(cfg.policy)
    preferences = file_record(cfg.preferences)

    def stage(name: str, inputs: dict[str, Any], output: Path, work) -> dict[str, Any]:
        rec = manifest.done(name, inputs)
        if rec is not None:
            return rec
        _fresh_or_resumable(run_dir / f"{name}.inputs.json", output, inputs)
        started = time.time()
        return manifest.record(name, inputs, output, work(), started)

    # 1. reward model on the round's preferences, from the policy
    rm_inputs = {"model": policy, "data": [preferences], "config": file_record(cfg.reward.config),
                 "overrides": cfg.reward.overrides}
    rm = stage("reward", rm_inputs, run_dir / "reward",
               lambda: _train("reward", cfg.reward, [f"base.model={policy}", f"reward.data={cfg.preferences}"],
                              run_dir / "reward"))
    reward_model = rm["result"]["model"]

    # 2. rejection sampling from the policy, scored by that reward model
    samples = run_dir / "rejection.jsonl"

    def rejection() -> dict[str, Any]:
        from herd.checkpoint import load_any
        from herd.posttrain.rejection import read_prompts, rejection_sample
        from herd.posttrain.reward import load_reward_model
        from herd.tokenizer import Tokenizer

        r = cfg.rejection
        return rejection_sample(load_any(policy), load_reward_model(reward_model), Tokenizer.from_dir(policy),
                                read_prompts(cfg.prompts), samples, k=r.k, threshold=r.threshold,
                                temperature=r.temperature, top_p=r.top_p, max_new_tokens=r.max_new_tokens,
                                seed=r.seed)

    rs_inputs = {"model": policy, "reward_model": rm["output"], "reward_finished": rm["finished"],
                 "data": [file_record(cfg.prompts)], "settings": dataclasses.asdict(cfg.rejection)}
    stage("rejection", rs_inputs, samples, rejection)

    # 3. SFT from the policy on the human data plus the best samples
    sft_files = [*cfg.sft_data, str(samples)]
    sft_inputs = {"model": policy, "data": [file_record(f) for f in sft_files],
                  "config": file_record(cfg.sft.config), "overrides": cfg.sft.overrides}
    sft = stage("sft", sft_inputs, run_dir / "sft",
                lambda: _train("sft", cfg.sft, [f"base.model={policy}", f"sft.data={json.dumps(sft_files)}"],
                               run_dir / "sft"))
    sft_model = sft["result"]["model"]

    # 4. DPO from the SFT model, once per variant
    dpo_models = []
    for i, variant in enumerate(cfg.dpo.variants):
        out = run_dir / f"dpo-{i}"
        inputs = {"model": sft_model, "sft_finished": sft["finished"], "data": [preferences],
                  "config": file_record(cfg.dpo.config), "overrides": [*cfg.dpo.overrides, *variant]}
        stage_cfg = StageConfig(cfg.dpo.config, [*cfg.dpo.overrides, *variant])
        rec = stage(f"dpo-{i}", inputs, out,
                    lambda stage_cfg=stage_cfg, out=out: _train(
                        "dpo", stage_cfg, [f"base.model={sft_model}", f"dpo.data={cfg.preferences}"], out))
        dpo_models.append(rec)

    # 5. the round's model: the average of the DPO models
    final = run_dir / "final"

    def average() -> dict[str, Any]:
        from herd.posttrain.average import average_checkpoints

        models = [r["result"]["model"] for r in dpo_models]
        tmp = run_dir / f".final.{os.getpid()}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        if len(models) == 1:
            shutil.copytree(models[0], tmp)
        else:
            average_checkpoints(models, tmp)
        shutil.rmtree(final, ignore_errors=True)
        tmp.replace(final)
        return {"model": str(final), "averaged": models}

    avg_inputs = {"models": [r["output"] for r in dpo_models], "finished": [r["finished"] for r in dpo_models]}
    stage("average", avg_inputs, final, average)
    manifest.data["final"] = str(final)
    manifest.save()
    return manifest.data
