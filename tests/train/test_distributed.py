"""FSDP2 over 2 processes (torchrun, gloo on CPU) trains like 1 process on the same global batch."""

from __future__ import annotations

import socket
import subprocess
import sys

import torch
from safetensors.torch import load_file

from herd.train.loop import pretrain

from .helpers import REPO, env, losses, tiny_config, tiny_raw, write_toml

TRAIN = {"steps": 4, "global_batch_rows": 4, "micro_batch_rows": 1, "threads": 1}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_fsdp2_two_processes_match_one_process(tmp_path):
    config = write_toml(tmp_path / "ddp.toml", tiny_raw(tmp_path / "two", train=TRAIN,
                                                        checkpoint={"every": 2, "export": True}))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
           str(_free_port()), "-m", "herd.cli", "pretrain", str(config)]
    proc = subprocess.run(cmd, env=env(), capture_output=True, text=True, timeout=300, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    # both ranks wrote their shards of the DCP checkpoint
    assert sorted(p.name for p in (tmp_path / "two/checkpoints/step-000004").glob("*.distcp")) == [
        "__0_0.distcp", "__1_0.distcp"]

    one = pretrain(tiny_config(tmp_path / "one", train={**TRAIN, "micro_batch_rows": 2},
                               checkpoint={"every": 2, "export": True}))
    two = losses(tmp_path / "two")
    assert sorted(two) == [1, 2, 3, 4]
    for step, loss in one.losses.items():
        assert abs(two[step] - loss) < 1e-5, (step, two[step], loss)
    a = load_file(str(tmp_path / "one/final/model.safetensors"))
    b = load_file(str(tmp_path / "two/final/model.safetensors"))
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-4, atol=1e-5, msg=name)

    # the 2-rank checkpoint resumes in 1 process (DCP reshards) and goes on like the 1-process run does
    more = {**TRAIN, "micro_batch_rows": 2, "steps": 6}
    resumed = pretrain(tiny_config(tmp_path / "two", train=more, checkpoint={"every": 2}))
    assert resumed.resumed_from == tmp_path / "two/checkpoints/step-000004"
    continued = pretrain(tiny_config(tmp_path / "one", train=more, checkpoint={"every": 2}))
    assert continued.resumed_from == tmp_path / "one/checkpoints/step-000004"
    for step in (5, 6):
        assert abs(resumed.losses[step] - continued.losses[step]) < 1e-5


def test_built_model_keeps_tied_embeddings_and_initialises_every_weight():
    from herd.model import ModelArgs, Transformer
    from herd.train.distributed import DistInfo, build_model

    model = build_model(ModelArgs.from_name("tiny-tied"), DistInfo(), init_std=0.02, seed=3)
    assert model.lm_head.weight is model.model.embed_tokens.weight
    reference = Transformer(ModelArgs.from_name("tiny-tied"))
    reference.init_weights(0.02, torch.Generator().manual_seed(3))
    for (name, a), b in zip(model.state_dict().items(), reference.state_dict().values(), strict=True):
        assert torch.equal(a, b), name  # the meta-device build initialises exactly like the eager one
