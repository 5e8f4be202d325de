"""Post-training: SFT, LoRA / QLoRA, reward model, DPO, PPO, distillation, model averaging, synthetic data.

Every method is an objective (and, where it needs one, a loader of its own batches)
plugged into the pre-training trainer, ``herd.train.pretrain``: one loop, with its
checkpointing, FSDP2 set-up, fault handling and metrics. Each has a ``run_*`` entry
point taking a ``load_posttrain_config(method, toml, overrides)`` and a ``herd <method>``
command.

    from herd.posttrain import load_posttrain_config, run_sft
    run_sft(load_posttrain_config("sft", "configs/sft-tiny.toml", ["base.model=path/to/base"]))
"""

from herd.posttrain.average import average_checkpoints
from herd.posttrain.chat_data import ChatDataError, encode_response, encode_sft, read_jsonl
from herd.posttrain.config import PosttrainConfig, load_posttrain_config
from herd.posttrain.distill import Distill, distill_loss, run_distill
from herd.posttrain.dpo import DPO, dpo_loss, run_dpo
from herd.posttrain.lora import add_lora, load_adapter, merge_lora, save_adapter
from herd.posttrain.pairs import Pair, PairBatch, PairLoader, load_pairs
from herd.posttrain.ppo import PPO, RolloutLoader, run_ppo
from herd.posttrain.qlora import QLoRALinear, dequantize_model
from herd.posttrain.reward import PairwiseRewardLoss, load_reward_model, run_reward, save_reward_model
from herd.posttrain.sandbox import SandboxLimits, SandboxResult, run_python
from herd.posttrain.sft import run_sft, write_sft_shard
from herd.posttrain.synth import SynthConfig, load_synth_config, run_synth
from herd.posttrain.synth_filters import Candidate, FilterConfig, filter_candidates

__all__ = [
    "DPO", "PPO", "Candidate", "ChatDataError", "Distill", "FilterConfig", "Pair", "PairBatch", "PairLoader",
    "PairwiseRewardLoss", "PosttrainConfig", "QLoRALinear", "RolloutLoader", "SandboxLimits", "SandboxResult",
    "SynthConfig", "add_lora", "average_checkpoints", "dequantize_model", "distill_loss", "dpo_loss",
    "encode_response", "encode_sft", "filter_candidates", "load_adapter", "load_pairs", "load_posttrain_config",
    "load_reward_model", "load_synth_config", "merge_lora", "read_jsonl", "run_distill", "run_dpo", "run_ppo",
    "run_python", "run_reward", "run_sft", "run_synth", "save_adapter", "save_reward_model", "write_sft_shard",
]
