"""Tensor parallelism (parallelize_module over a ("dp", "tp") mesh, FSDP2 over "dp") trains like 1 process."""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from herd.model import ModelArgs, Transformer
from herd.train.config import ConfigError
from herd.train.distributed import init_distributed
from herd.train.loop import pretrain
from herd.train.metrics import read_metrics
from herd.train.tensor_parallel import TensorParallelError, block_plan, check_tensor_parallel

from .helpers import REPO, env, losses, tiny_config, tiny_raw, write_toml

# tiny-nope with grouped-query attention (6 query heads over 2 key/value heads): under TP=2
# each rank holds 3 query heads and the 1 key/value head they share
MODEL = {"preset": "tiny-nope", "overrides": {"n_kv_heads": 2}}
TRAIN = {"steps": 4, "global_batch_rows": 4, "micro_batch_rows": 2, "threads": 1}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torchrun(nproc: int, config, *overrides: str) -> None:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc), "--master_port",
           str(_free_port()), "-m", "herd.cli", "pretrain", str(config), "model.overrides={n_kv_heads = 2}",
           *overrides]
    proc = subprocess.run(cmd, env=env(), capture_output=True, text=True, timeout=300, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]


def _toml(tmp_path, name: str, tp: int):
    """The run's TOML; MODEL's overrides table goes on the command line (write_toml writes flat tables)."""
    raw = tiny_raw(tmp_path / name, train={**TRAIN, "tensor_parallel": tp}, checkpoint={"every": 2, "export": True})
    return write_toml(tmp_path / f"{name}.toml", raw)


def _grad_norms(run_dir) -> list[float]:
    return [r["grad_norm"] for r in read_metrics(run_dir / "metrics.jsonl") if "step" in r]


def _assert_same_weights(a_dir, b_dir) -> None:
    """Equal up to float reordering, tensor by tensor, in relative norm: Adam divides by the
    gradient's own scale, so a lone embedding entry whose gradient is nearly 0 (a cancelling
    sum, summed in another order under TP) can move by a few percent of one lr step."""
    a = load_file(str(a_dir / "final/model.safetensors"))
    b = load_file(str(b_dir / "final/model.safetensors"))
    assert sorted(a) == sorted(b)
    for name in a:
        assert a[name].shape == b[name].shape, name
        error = float((a[name] - b[name]).norm() / a[name].norm())
        assert error < 1e-4, (name, error)


def test_tensor_parallel_two_processes_match_one_process_and_resume(tmp_path):
    _torchrun(2, _toml(tmp_path, "tp", 2))
    # both TP ranks wrote their halves of the split weights
    assert sorted(p.name for p in (tmp_path / "tp/checkpoints/step-000004").glob("*.distcp")) == [
        "__0_0.distcp", "__1_0.distcp"]
    one = pretrain(tiny_config(tmp_path / "one", model=MODEL, train=TRAIN, checkpoint={"every": 2, "export": True}))
    tp = losses(tmp_path / "tp")
    assert sorted(tp) == [1, 2, 3, 4]
    for step, loss in one.losses.items():
        assert abs(tp[step] - loss) < 1e-5, (step, tp[step], loss)
    # the gradient itself, not only the loss (clipping and Adam would hide a wrong gradient scale)
    assert _grad_norms(tmp_path / "tp") == pytest.approx(_grad_norms(tmp_path / "one"), rel=1e-5)
    _assert_same_weights(tmp_path / "one", tmp_path / "tp")  # the export gathers the TP shards

    # the 1-process run goes on to step 6: the reference for both resumes
    more = {**TRAIN, "steps": 6}
    continued = pretrain(tiny_config(tmp_path / "one", model=MODEL, train=more, checkpoint={"every": 2}))
    assert continued.resumed_from == tmp_path / "one/checkpoints/step-000004"

    # resharded: the TP checkpoint resumes in 1 process (DCP reshards the split weights)
    shutil.copytree(tmp_path / "tp", tmp_path / "tp-to-one")
    resharded = pretrain(tiny_config(tmp_path / "tp-to-one", model=MODEL, train=more, checkpoint={"every": 2}))
    assert resharded.resumed_from == tmp_path / "tp-to-one/checkpoints/step-000004"

    # same layout: TP=2 resumes its own checkpoint under torchrun
    _torchrun(2, _toml(tmp_path, "tp", 2), "train.steps=6")
    tp = losses(tmp_path / "tp")
    assert sorted(tp) == [1, 2, 3, 4, 5, 6]
    for step in (5, 6):
        assert abs(resharded.losses[step] - continued.losses[step]) < 1e-5, step
        assert abs(tp[step] - continued.losses[step]) < 1e-5, (step, tp[step], continued.losses[step])


@pytest.mark.slow
def test_two_by_two_mesh_fsdp_and_tensor_parallel_match_one_process(tmp_path):
    """4 processes: FSDP2 over dp=2 composed with TP=2 (~50 s on 2 cores)."""
    _torchrun(4, _toml(tmp_path, "dp2tp2", 2))
    assert len(list((tmp_path / "dp2tp2/checkpoints/step-000004").glob("*.distcp"))) == 4
    one = pretrain(tiny_config(tmp_path / "one", model=MODEL, train=TRAIN, checkpoint={"every": 2, "export": True}))
    got = losses(tmp_path / "dp2tp2")
    for step, loss in one.losses.items():
        assert abs(got[step] - loss) < 1e-5, (step, got[step], loss)
    assert _grad_norms(tmp_path / "dp2tp2") == pytest.approx(_grad_norms(tmp_path / "one"), rel=1e-5)
    _assert_same_weights(tmp_path / "one", tmp_path / "dp2tp2")


def test_block_plan_names_every_linear_layer_of_a_block():
    block = Transformer(ModelArgs.from_name("tiny-nope")).model.layers[0]
    linears = {name for name, m in block.named_modules() if isinstance(m, torch.nn.Linear)}
    assert set(block_plan()) == linears  # every projection is split, none is left whole


def test_tensor_parallel_degree_must_divide_world_and_heads():
    args = ModelArgs.from_name("tiny")  # 4 query heads, 2 key/value heads
    check_tensor_parallel(args, 2, 4)
    with pytest.raises(TensorParallelError, match="world size 3"):
        check_tensor_parallel(args, 2, 3)
    with pytest.raises(TensorParallelError, match="n_kv_heads = 2"):
        check_tensor_parallel(args, 4, 4)
    with pytest.raises(TensorParallelError, match="n_heads = 6"):
        check_tensor_parallel(ModelArgs.from_name("tiny-nope"), 4, 4)
    with pytest.raises(TensorParallelError, match="world size 1"):
        init_distributed("cpu", tensor_parallel=2)  # one process cannot hold 2 TP ranks
    with pytest.raises(ConfigError, match="train.tensor_parallel"):
        tiny_config(REPO / "unused", train={"tensor_parallel": 0})


def test_init_from_streams_a_checkpoint_into_fsdp_and_tp_shards(tmp_path):
    """A sharded run reads model.init_from one tensor at a time (rank 0 memory-maps it, each
    rank keeps its shard) and starts exactly where one process loading it whole starts."""
    first = pretrain(tiny_config(tmp_path / "a", model=MODEL, train={**TRAIN, "steps": 2},
                                 checkpoint={"export": True}))
    one = pretrain(tiny_config(tmp_path / "one", model={**MODEL, "init_from": str(first.export_dir)}, train=TRAIN))
    for name, tp in (("fsdp", 1), ("tp", 2)):
        _torchrun(2, _toml(tmp_path, name, tp), f"model.init_from={first.export_dir}")
        sharded = losses(tmp_path / name)
        for step, loss in one.losses.items():
            assert abs(sharded[step] - loss) < 1e-5, (name, step, sharded[step], loss)
