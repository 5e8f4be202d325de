"""`herd sft | dpo | reward | ppo | distill | average | synth | round`: post-training commands over herd.posttrain."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

ConfigOpt = Annotated[Path, typer.Option("--config", "-c", help="Run config (TOML), e.g. configs/sft-tiny.toml.")]
Overrides = Annotated[list[str] | None, typer.Argument(help="section.key=value overrides, e.g. dpo.beta=0.2")]


def _run(method: str, config: Path, overrides: list[str] | None) -> None:
    import logging

    from herd.cli import _fail, _report_run, console
    from herd.posttrain.chat_data import ChatDataError
    from herd.posttrain.config import load_posttrain_config
    from herd.train import ConfigError, TrainingFault

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        cfg = load_posttrain_config(method, config, overrides or [])
    except ConfigError as e:
        raise _fail(str(e)) from None
    if method == "sft":
        from herd.posttrain.sft import run_sft as runner
    elif method == "dpo":
        from herd.posttrain.dpo import run_dpo as runner
    elif method == "reward":
        from herd.posttrain.reward import run_reward as runner
    elif method == "ppo":
        from herd.posttrain.ppo import run_ppo as runner
    else:
        from herd.posttrain.distill import run_distill as runner
    try:
        result = runner(cfg)
    except (ConfigError, ChatDataError, TrainingFault, FileNotFoundError, ValueError) as e:
        raise _fail(str(e)) from None
    _report_run(result, f"{method}: step")
    report = Path(result.run_dir) / "held_out.json"
    if report.exists():
        console.print(f"held-out: {report.read_text().strip()}")


def register(app: typer.Typer) -> None:
    @app.command()
    def sft(config: ConfigOpt, overrides: Overrides = None) -> None:
        """Supervised fine-tuning on chat JSON Lines (loss on assistant turns only, packed)."""
        _run("sft", config, overrides)

    @app.command()
    def dpo(config: ConfigOpt, overrides: Overrides = None) -> None:
        """DPO with Llama 3's changes (beta, NLL on chosen, formatting tokens masked)."""
        _run("dpo", config, overrides)

    @app.command()
    def reward(config: ConfigOpt, overrides: Overrides = None) -> None:
        """Train a reward model (saved as LlamaForSequenceClassification)."""
        _run("reward", config, overrides)

    @app.command()
    def ppo(config: ConfigOpt, overrides: Overrides = None) -> None:
        """PPO against a reward model, with a KL penalty to the starting model (Llama 2's RLHF)."""
        _run("ppo", config, overrides)

    @app.command()
    def distill(config: ConfigOpt, overrides: Overrides = None) -> None:
        """Distil a teacher's logits into a student (forward KL + cross-entropy)."""
        _run("distill", config, overrides)

    @app.command("rejection-sample")
    def rejection_sample_cmd(
        model: Annotated[Path, typer.Option("--model", "-m", help="The policy (model directory).")],
        reward_model: Annotated[Path, typer.Option(help="A reward model directory (herd reward).")],
        prompts: Annotated[Path, typer.Option(help="JSON Lines of {'prompt': ...} or {'messages': [...]}.")],
        out: Annotated[Path, typer.Option("--out", "-o", help="SFT JSON Lines to write (+ .report.json).")],
        k: Annotated[int, typer.Option(help="Samples per prompt.")] = 4,
        threshold: Annotated[float | None, typer.Option(help="Drop prompts whose best score is lower.")] = None,
        temperature: Annotated[float, typer.Option()] = 1.0,
        max_new_tokens: Annotated[int, typer.Option()] = 256,
        seed: Annotated[int, typer.Option()] = 0,
    ) -> None:
        """Best-of-K replies per prompt by reward-model score, written as SFT data."""
        import json

        from herd.checkpoint import CheckpointError, load_any
        from herd.cli import _fail, console
        from herd.posttrain.chat_data import ChatDataError
        from herd.posttrain.rejection import read_prompts, rejection_sample
        from herd.posttrain.reward import load_reward_model
        from herd.tokenizer import Tokenizer

        try:
            dialogs = read_prompts(prompts)
            report = rejection_sample(load_any(model), load_reward_model(reward_model), Tokenizer.from_dir(model),
                                      dialogs, out, k=k, threshold=threshold, temperature=temperature,
                                      max_new_tokens=max_new_tokens, seed=seed)
        except (ChatDataError, CheckpointError, ValueError, FileNotFoundError) as e:
            raise _fail(str(e)) from None
        console.print(json.dumps(report, indent=1))

    @app.command()
    def synth(config: ConfigOpt, overrides: Overrides = None) -> None:
        """Synthetic SFT data: a herd model writes instructions and responses, filtered (dedup, length,
        reward, code that parses and passes its tests in a sandbox)."""
        import json

        from herd.checkpoint import CheckpointError
        from herd.cli import _fail, console
        from herd.posttrain.chat_data import ChatDataError
        from herd.posttrain.synth import load_synth_config, run_synth
        from herd.train import ConfigError

        try:
            report = run_synth(load_synth_config(config, overrides or []))
        except (ConfigError, ChatDataError, CheckpointError, ValueError, FileNotFoundError) as e:
            raise _fail(str(e)) from None
        console.print(json.dumps({k: report[k] for k in ("seeds", "generated", "dropped", "kept", "out")}, indent=1))

    @app.command("round")
    def round_cmd(config: ConfigOpt, overrides: Overrides = None) -> None:
        """One post-training round: reward model -> rejection sampling -> SFT -> DPO -> average, with a
        lineage manifest (round.json); re-running finishes an interrupted round."""
        import json

        from herd.checkpoint import CheckpointError
        from herd.cli import _fail, console
        from herd.posttrain.chat_data import ChatDataError
        from herd.posttrain.round import load_round_config, run_round
        from herd.train import ConfigError, TrainingFault

        try:
            manifest = run_round(load_round_config(config, overrides or []), str(config))
        except (ConfigError, ChatDataError, CheckpointError, TrainingFault, ValueError, FileNotFoundError) as e:
            raise _fail(str(e)) from None
        summary = {name: {"output": rec["output"], "seconds": rec["seconds"]}
                   for name, rec in manifest["stages"].items()}
        console.print(json.dumps({"final": manifest["final"], "stages": summary}, indent=1))

    @app.command()
    def average(
        out: Annotated[Path, typer.Option("--out", "-o", help="Where to write the averaged model.")],
        checkpoints: Annotated[list[Path] | None, typer.Argument(
            help="Model directories of one architecture (or use --run).")] = None,
        run: Annotated[Path | None, typer.Option(
            help="A `herd pretrain` run directory: average its last training checkpoints instead.")] = None,
        last: Annotated[int, typer.Option(help="With --run: how many of the newest checkpoints.")] = 5,
        weights: Annotated[str | None, typer.Option(help="Comma-separated weights (default: uniform).")] = None,
        dtype: Annotated[str | None, typer.Option(help="Saved dtype (default: the first checkpoint's).")] = None,
    ) -> None:
        """Average checkpoints (uniform or weighted) into one model."""
        from herd.checkpoint import CheckpointError
        from herd.cli import _fail, console
        from herd.posttrain.average import average_checkpoints

        if (run is None) == (not checkpoints):
            raise _fail("give model directories, or --run RUN_DIR (not both)")
        try:
            w = [float(x) for x in weights.split(",")] if weights else None
        except ValueError:
            raise _fail(f"--weights {weights!r} is not a comma-separated list of numbers") from None
        try:
            if run is not None:
                from herd.checkpoint import save_pretrained
                from herd.tokenizer import Tokenizer
                from herd.train.averaging import average_run_checkpoints, run_config

                model, steps = average_run_checkpoints(run, last=last, weights=w)
                tokenizer = run_config(run).data.tokenizer
                save_pretrained(model, out, tokenizer=Tokenizer.load(tokenizer) if tokenizer else None,
                                dtype=dtype)
                console.print(f"averaged the checkpoints of steps {steps} of {run} into {out}")
                return
            average_checkpoints(checkpoints, out, weights=w, dtype=dtype)
        except (CheckpointError, ValueError, FileNotFoundError) as e:
            raise _fail(str(e)) from None
        console.print(f"averaged {len(checkpoints)} checkpoints into {out}")
