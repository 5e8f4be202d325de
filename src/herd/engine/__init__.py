"""The inference engine: continuous batching over a paged, prefix-cached KV cache."""

from herd.engine.block_manager import BlockManager, block_hashes
from herd.engine.engine import Engine, EngineStats, RequestOutput, StepRecord
from herd.engine.memory import ServingMemory, estimate_serving_memory, kv_bytes_per_token
from herd.engine.paged_cache import PackedSeq, PagedKVCache
from herd.engine.scheduler import Request, Scheduled, Scheduler

__all__ = [
    "BlockManager",
    "Engine",
    "EngineStats",
    "PackedSeq",
    "PagedKVCache",
    "Request",
    "RequestOutput",
    "Scheduled",
    "Scheduler",
    "ServingMemory",
    "StepRecord",
    "block_hashes",
    "estimate_serving_memory",
    "kv_bytes_per_token",
]
