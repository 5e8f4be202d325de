"""PPO (the Llama 2 recipe Llama 3 compared DPO against), small but real, in the one trainer.

Pieces: the **policy** (the trained Transformer) with a **value head** (``Linear(dim, 1)``
on each position's final hidden state), a frozen **reference** (the starting model), a
**reward model** (``herd.posttrain.reward``), a per-token **KL penalty**, **GAE**, and the
**clipped** policy and value objectives.

Each optimizer step works on a rollout made by ``RolloutLoader``: ``global_batch_rows``
prompts, one sampled response each from the current policy (``herd.generation.Generator``),
then, without gradients,

- old log-probs and values of the response tokens under the policy, reference log-probs;
- rewards ``r_t = -kl_coef * (logp_t - ref_logp_t)``, plus the reward model's score of the
  whole sequence on the last response token;
- GAE advantages (``gamma``, ``lam``) and returns ``A_t + V_t``; advantages whitened over
  the rollout.

The same rollout serves ``ppo_epochs`` optimizer steps (old log-probs stay fixed, so the
ratio moves away from 1 and clipping matters). The objective per response token:

    pg = max(-A * ratio, -A * clip(ratio, 1 - clip, 1 + clip)),   ratio = exp(logp - old_logp)
    vf = 0.5 * max((V - R)^2, (clip(V, V_old - clip_value, V_old + clip_value) - R)^2)
    loss = mean over the response's tokens of (pg + vf_coef * vf), averaged over responses

(normalised per response, so it is exact under gradient accumulation over micro-batches).
Metrics per step (means over responses): ``score``, ``kl`` (summed over the response),
``clip_fraction``, ``value_loss``, ``response_tokens``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from herd.posttrain.config import PosttrainConfig, PPOConfig
from herd.posttrain.setup import configure, load_tokenizer, make_export, make_prepare, reference_model
from herd.train import TrainResult, pretrain


def add_value_head(model: nn.Module, seed: int = 0) -> nn.Module:
    """Attach ``model.value_head`` = Linear(dim, 1) (zero-initialised: values start at 0)."""
    weight = model.model.embed_tokens.weight
    model.value_head = nn.Linear(model.args.dim, 1, bias=True, device=weight.device, dtype=weight.dtype)
    with torch.no_grad():
        model.value_head.weight.zero_()
        model.value_head.bias.zero_()
    return model


def gae(rewards: Tensor, values: Tensor, mask: Tensor, gamma: float, lam: float) -> tuple[Tensor, Tensor]:
    """(advantages, returns) over (B, T) tensors; ``mask`` marks each row's response tokens
    (contiguous); values after a row's last token count as 0 (the episode ends there)."""
    advantages = torch.zeros_like(rewards)
    next_value = torch.zeros(rewards.shape[0], dtype=rewards.dtype, device=rewards.device)
    running = torch.zeros_like(next_value)
    for t in reversed(range(rewards.shape[1])):
        m = mask[:, t].to(rewards.dtype)
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        running = (delta + gamma * lam * running) * m
        advantages[:, t] = running
        next_value = values[:, t] * m  # V(s_t) for the step before; 0 past the response's end
    return advantages, advantages + values


def token_logps_and_values(model: nn.Module, tokens: Tensor) -> tuple[Tensor, Tensor]:
    """(log p(tokens[:, t+1] | ..t), value at t) for every position t of (B, T) tokens: (B, T-1) each."""
    hidden = model(tokens[:, :-1], return_hidden=True)
    logp = torch.log_softmax(model.lm_head(hidden).float(), -1).gather(2, tokens[:, 1:, None]).squeeze(2)
    values = model.value_head(hidden).squeeze(-1).float() if hasattr(model, "value_head") else torch.zeros_like(logp)
    return logp, values


@dataclass
class RolloutBatch:
    tokens: Tensor  # (B, T) prompt + response, right-padded
    mask: Tensor  # (B, T-1) 1 where the target tokens[:, t+1] is a response token
    old_logp: Tensor  # (B, T-1)
    old_values: Tensor
    advantages: Tensor
    returns: Tensor
    scores: Tensor  # (B,) reward-model scores
    kl: Tensor  # (B,) summed log(pi / ref) over the response
    n_targets: int = 0  # responses

    def _map(self, fn) -> RolloutBatch:
        fields = {f.name: fn(getattr(self, f.name)) for f in dataclasses.fields(self) if f.name != "n_targets"}
        return RolloutBatch(**fields, n_targets=self.n_targets)

    def split(self, micro_rows: int) -> list[RolloutBatch]:
        out = []
        for start in range(0, self.n_targets, micro_rows):
            part = self._map(lambda t, s=start: t[s:s + micro_rows])
            part.n_targets = int(part.tokens.shape[0])
            out.append(part)
        return out

    def to(self, device: torch.device) -> RolloutBatch:
        return self._map(lambda t: t.to(device))


@dataclass
class RolloutLoader:
    """Makes rollouts with the current policy (set by the trainer's ``prepare_model`` hook)."""

    prompts: list[list[int]]  # prompt token ids (ending in the assistant header)
    reference: nn.Module
    reward_model: nn.Module
    tokenizer: Any
    settings: PPOConfig = field(default_factory=PPOConfig)  # the [ppo] section
    seed: int = 0
    policy: nn.Module | None = None
    rollouts: int = 0  # rollouts made so far
    _current: RolloutBatch | None = None
    _served: int = 0

    def next_batch(self, global_rows: int) -> RolloutBatch:
        if self._current is None or self._served >= self.settings.ppo_epochs or \
                self._current.n_targets != global_rows:
            self._current = self._rollout(global_rows)
            self._served = 0
            self.rollouts += 1
        self._served += 1
        return self._current

    @torch.no_grad()
    def _rollout(self, rows: int) -> RolloutBatch:
        from herd.generation import Generator, SamplingParams
        from herd.posttrain.reward import sequence_rewards

        if self.policy is None:
            raise RuntimeError("RolloutLoader.policy is unset: pass prepare_model=loader.attach to the trainer")
        s = self.settings
        rng = np.random.default_rng([self.seed, self.rollouts])
        picked = [self.prompts[i] for i in rng.integers(len(self.prompts), size=rows)]
        was_training = self.policy.training
        params = SamplingParams(temperature=s.temperature, top_p=1.0, max_new_tokens=s.max_new_tokens,
                                seed=int(rng.integers(1 << 31)))
        outs = Generator(self.policy, self.tokenizer, cpu_gemv=False).generate(picked, params)
        self.policy.train(was_training)
        seqs, spans = [], []
        for prompt, out in zip(picked, outs, strict=True):
            response = list(out.token_ids) + ([out.stop_token] if out.stop_token is not None else [])
            if not response:
                response = [self.tokenizer.eot_id]
            seqs.append(prompt + response)
            spans.append((len(prompt), len(prompt) + len(response)))
        width = max(map(len, seqs))
        device = next(self.policy.parameters()).device
        tokens = torch.tensor([q + [0] * (width - len(q)) for q in seqs], device=device)
        mask = torch.zeros(rows, width - 1, device=device)
        for i, (a, b) in enumerate(spans):
            mask[i, a - 1:b - 1] = 1.0  # targets tokens[a..b-1]: predicted at positions a-1..b-2
        self.policy.eval()
        old_logp, old_values = token_logps_and_values(self.policy, tokens)
        self.policy.train(was_training)
        ref_logp, _ = token_logps_and_values(self.reference, tokens)
        lengths = torch.tensor([b for _, b in spans], device=device)
        scores = sequence_rewards(self.reward_model, tokens, lengths).float()
        log_ratio = (old_logp - ref_logp) * mask
        rewards = -s.kl_coef * log_ratio
        last = torch.tensor([b - 2 for _, b in spans], device=device)
        rewards[torch.arange(rows, device=device), last] += scores
        advantages, returns = gae(rewards, old_values * mask, mask, s.gamma, s.lam)
        valid = mask.bool()
        mean, std = advantages[valid].mean(), advantages[valid].std().clamp_min(1e-6)
        advantages = torch.where(valid, (advantages - mean) / std, torch.zeros_like(advantages))
        return RolloutBatch(tokens, mask, old_logp, old_values, advantages, returns, scores, log_ratio.sum(1),
                            n_targets=rows)

    def attach(self, model: nn.Module, info: Any = None) -> nn.Module:
        """The trainer's ``prepare_model`` tail: add the value head, remember the policy."""
        add_value_head(model)
        self.policy = model
        return model

    def state_dict(self) -> dict[str, Any]:
        return {"rollouts": self.rollouts, "seed": self.seed}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.rollouts, self._current = int(state["rollouts"]), None  # resumes with a fresh rollout


@dataclass
class PPO:
    """The trainer objective over ``RolloutBatch``: clipped policy + value losses, per response."""

    clip: float = 0.2
    clip_value: float = 0.2
    vf_coef: float = 0.1

    def __call__(self, model: nn.Module, batch: RolloutBatch) -> tuple[Tensor, int, dict[str, float]]:
        logp, values = token_logps_and_values(model, batch.tokens)
        m = batch.mask
        n = m.sum(1).clamp_min(1)
        ratio = torch.exp(logp - batch.old_logp)
        pg = torch.maximum(-batch.advantages * ratio,
                           -batch.advantages * ratio.clamp(1 - self.clip, 1 + self.clip))
        v_clipped = batch.old_values + (values - batch.old_values).clamp(-self.clip_value, self.clip_value)
        vf = 0.5 * torch.maximum((values - batch.returns) ** 2, (v_clipped - batch.returns) ** 2)
        per_response = ((pg + self.vf_coef * vf) * m).sum(1) / n
        clipped = ((ratio - 1).abs() > self.clip).float()
        stats = {"score": batch.scores.sum(), "kl": batch.kl.sum(), "clip_fraction": ((clipped * m).sum(1) / n).sum(),
                 "value_loss": ((vf * m).sum(1) / n).sum(), "response_tokens": m.sum()}
        return per_response.sum(), batch.n_targets, {k: float(v) for k, v in stats.items()}


def ppo_loss_reference(logp: Tensor, old_logp: Tensor, adv: Tensor, clip: float) -> Tensor:
    """The clipped surrogate written as in the PPO paper (for tests): -min(r A, clip(r) A)."""
    ratio = torch.exp(logp - old_logp)
    return -torch.minimum(ratio * adv, torch.clamp(ratio, 1 - clip, 1 + clip) * adv)



def load_prompts(path: str, tokenizer: Any) -> list[list[int]]:
    """Prompt ids from JSON Lines: ``{"prompt": messages or text}`` or ``{"messages": [...]}``
    (a trailing assistant message is dropped), each ending in the assistant header."""
    from herd.posttrain.chat_data import ChatDataError, parse_messages, read_jsonl
    from herd.tokenizer.chat_format import ChatFormat, Message

    fmt = ChatFormat(tokenizer)
    out = []
    for where, rec in read_jsonl(path):
        raw = rec.get("prompt", rec.get("messages"))
        if raw is None:
            raise ChatDataError(f"{where}: a PPO prompt record needs 'prompt' or 'messages'")
        messages = [Message("user", raw)] if isinstance(raw, str) else parse_messages(raw, where, "prompt")
        if messages[-1].role == "assistant":
            messages = messages[:-1]
        out.append(fmt.encode_dialog_prompt(messages))
    if not out:
        raise ChatDataError(f"{path}: no prompts")
    return out


def run_ppo(cfg: PosttrainConfig) -> TrainResult:
    """PPO from ``base.model`` against ``ppo.reward_model``; the reference is the base model."""
    from herd.posttrain.reward import load_reward_model
    from herd.train.distributed import init_distributed

    tokenizer, tok_source = load_tokenizer(cfg)
    configure(cfg)
    train, m = cfg.train, cfg.method
    info = init_distributed(train.train.device)
    if info.sharded:
        raise ValueError("PPO runs on one device for now (rollouts are generated on each rank's full model)")
    if cfg.base.model is None:
        raise ValueError("PPO starts from a model: set base.model")
    reference = reference_model(cfg, info.device).eval()  # with QLoRA: the quantized base
    reward_model = load_reward_model(m.reward_model, device=info.device)
    for p in [*reference.parameters(), *reward_model.parameters()]:
        p.requires_grad_(False)
    loader = RolloutLoader(load_prompts(m.prompts, tokenizer), reference, reward_model, tokenizer, m,
                           seed=train.train.seed)
    base_prepare = make_prepare(cfg)
    train.data.tokenizer = tok_source
    return pretrain(train, objective=PPO(m.clip, m.clip_value, m.vf_coef), loader=loader,
                    prepare_model=lambda model, info: loader.attach(base_prepare(model, info), info),
                    export=make_export(cfg, tokenizer))
