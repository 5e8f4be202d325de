"""Training: packed data loading, the loop and its parts."""

from herd.train.config import Config, ConfigError, load_config
from herd.train.faults import TrainingFault
from herd.train.loader import Batch, PackedLoader, Source
from herd.train.loop import TrainResult, pretrain
from herd.train.objective import CausalLM, Objective

__all__ = [
    "Batch",
    "CausalLM",
    "Config",
    "ConfigError",
    "Objective",
    "PackedLoader",
    "Source",
    "TrainResult",
    "TrainingFault",
    "load_config",
    "pretrain",
]
