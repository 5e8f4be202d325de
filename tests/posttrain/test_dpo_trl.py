"""herd's DPO against TRL's DPOTrainer (the peer) on the same model, batch and masks."""

from __future__ import annotations

import pytest
import torch

from herd.checkpoint import load_any, save_pretrained
from herd.posttrain.dpo import DPO, dpo_loss, pair_logps, reference_logps
from herd.posttrain.pairs import PairBatch, load_pairs
from tests.posttrain.conftest import make_byte_model, write_jsonl

pytest.importorskip("trl")

RECORDS = [
    {"prompt": [{"role": "user", "content": "Greet me."}],
     "chosen": [{"role": "assistant", "content": "Hello there, friend!"}],
     "rejected": [{"role": "assistant", "content": "no"}]},
    {"prompt": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2?"}],
     "chosen": "4", "rejected": "It is five, I think."},
    {"prompt": "Colour of the sky?", "ranked": ["Blue.", "Grey", "Green, obviously"]},
]


@pytest.fixture(scope="module")
def setup(tmp_path_factory, byte_tok):
    from datasets import Dataset
    from transformers import AutoTokenizer, LlamaForCausalLM
    from trl import DPOConfig, DPOTrainer

    root = tmp_path_factory.mktemp("dpo_trl")
    save_pretrained(make_byte_model(seed=2), root / "policy", tokenizer=byte_tok)
    save_pretrained(make_byte_model(seed=3), root / "ref", tokenizer=byte_tok)
    policy = LlamaForCausalLM.from_pretrained(root / "policy", dtype=torch.float32)
    ref = LlamaForCausalLM.from_pretrained(root / "ref", dtype=torch.float32)
    hf_tok = AutoTokenizer.from_pretrained(root / "policy")
    ds = Dataset.from_list([{"prompt": [{"role": "user", "content": "hi"}],
                             "chosen": [{"role": "assistant", "content": "yo"}],
                             "rejected": [{"role": "assistant", "content": "no"}]}])
    args = DPOConfig(output_dir=str(root / "trl"), beta=0.1, loss_type=["sigmoid"], report_to=[], use_cpu=True,
                     bf16=False)
    trainer = DPOTrainer(model=policy, ref_model=ref, args=args, train_dataset=ds, processing_class=hf_tok)
    pairs = load_pairs(write_jsonl(root / "prefs.jsonl", RECORDS), byte_tok)
    return trainer, load_any(root / "policy"), load_any(root / "ref"), pairs


def trl_inputs(batch: PairBatch) -> dict[str, torch.Tensor]:
    """TRL's batch layout: chosen rows then rejected rows, right-padded, completion_mask = herd's mask."""
    width = max(batch.chosen.shape[1], batch.rejected.shape[1])
    pad = torch.nn.functional.pad
    ids = torch.cat([pad(batch.chosen, (0, width - batch.chosen.shape[1])),
                     pad(batch.rejected, (0, width - batch.rejected.shape[1]))])
    mask = torch.cat([pad(batch.chosen_mask, (0, width - batch.chosen.shape[1])),
                      pad(batch.rejected_mask, (0, width - batch.rejected.shape[1]))])
    lengths = torch.cat([batch.chosen_len, batch.rejected_len])
    attention = (torch.arange(width)[None, :] < lengths[:, None]).long()
    return {"input_ids": ids, "attention_mask": attention, "completion_mask": mask}


def trl_loss(trainer, inputs, loss_types, weights):
    trainer.loss_types, trainer.loss_weights = loss_types, weights
    trainer.model.zero_grad(set_to_none=True)
    trainer.model.train()
    loss = trainer._compute_loss(trainer.model, inputs, return_outputs=False)
    return loss


def test_logps_loss_and_gradients_match_trl(setup):
    trainer, policy, ref, pairs = setup
    assert len(pairs) == 5  # 2 pairs + a ranking of 3 expanded to 3 pairs
    batch = PairBatch.from_pairs(pairs, reference_logps(ref, pairs))
    # TRL: loss and gradients with its own reference model forward
    loss_trl = trl_loss(trainer, trl_inputs(batch), ["sigmoid"], [1.0])
    loss_trl.backward()
    metrics = {k: v[-1] for k, v in trainer._metrics["train"].items()}
    # herd: the trainer objective, NLL term off
    policy.zero_grad(set_to_none=True)
    policy.train()
    loss_sum, n, stats = DPO(beta=0.1, nll_coef=0.0)(policy, batch)
    (loss_sum / n).backward()
    pi_c, pi_r, _, _ = pair_logps(policy, batch)
    assert float(pi_c.mean()) == pytest.approx(metrics["logps/chosen"], rel=1e-5)
    assert float(pi_r.mean()) == pytest.approx(metrics["logps/rejected"], rel=1e-5)
    assert float(loss_sum / n) == pytest.approx(float(loss_trl), rel=1e-5)
    assert stats["reward_accuracy"] / n == pytest.approx(metrics["rewards/accuracies"])
    assert stats["reward_margin"] / n == pytest.approx(metrics["rewards/margins"], rel=1e-4, abs=1e-7)
    hf_grads = dict(trainer.model.named_parameters())
    compared = 0
    for name, p in policy.named_parameters():
        g_hf = hf_grads[name].grad
        assert g_hf is not None and p.grad is not None, name
        torch.testing.assert_close(p.grad, g_hf, rtol=1e-4, atol=1e-7, msg=name)
        compared += 1
    assert compared == len(hf_grads)


def test_nll_term_against_trl_sft_loss(setup):
    trainer, policy, ref, pairs = setup
    # equal chosen lengths: herd's per-sequence normalisation equals TRL's per-token one
    same = [p for p in pairs if sum(p.chosen_mask) == sum(pairs[2].chosen_mask)]
    assert len(same) >= 2
    batch = PairBatch.from_pairs(same, reference_logps(ref, same))
    with torch.no_grad():
        loss_trl = trl_loss(trainer, trl_inputs(batch), ["sigmoid", "sft"], [1.0, 0.2])
        loss_sum, n, _ = DPO(beta=0.1, nll_coef=0.2)(policy, batch)
    assert float(loss_sum / n) == pytest.approx(float(loss_trl), rel=1e-5)
    # unequal lengths: herd = TRL's DPO term + 0.2 * mean over pairs of (NLL / own length)
    batch = PairBatch.from_pairs(pairs, reference_logps(ref, pairs))
    with torch.no_grad():
        sigmoid_trl = trl_loss(trainer, trl_inputs(batch), ["sigmoid"], [1.0])
        both_trl = trl_loss(trainer, trl_inputs(batch), ["sigmoid", "sft"], [1.0, 0.2])
        loss_sum, n, _ = DPO(beta=0.1, nll_coef=0.2)(policy, batch)
        pi_c, _, n_c, _ = pair_logps(policy, batch)
    per_sequence = float((-pi_c / n_c).mean())
    per_token = float(-pi_c.sum() / n_c.sum())
    assert float(loss_sum / n) == pytest.approx(float(sigmoid_trl) + 0.2 * per_sequence, rel=1e-5)
    assert float(both_trl) == pytest.approx(float(sigmoid_trl) + 0.2 * per_token, rel=1e-5)
    assert per_sequence != pytest.approx(per_token, rel=1e-3)  # the lengths differ: so do the two


def test_dpo_loss_formula_by_hand():
    pi_c, pi_r = torch.tensor([-3.0, -5.0]), torch.tensor([-4.0, -2.0])
    ref_c, ref_r = torch.tensor([-3.5, -5.0]), torch.tensor([-3.0, -2.5])
    losses, stats = dpo_loss(pi_c, pi_r, ref_c, ref_r, beta=0.1, nll_coef=0.2, n_c=torch.tensor([2, 5]))
    margin = 0.1 * ((pi_c - ref_c) - (pi_r - ref_r))
    want = torch.log1p(torch.exp(-margin)) + 0.2 * (-pi_c / torch.tensor([2.0, 5.0]))
    torch.testing.assert_close(losses, want)
    assert stats["reward_accuracy"].tolist() == [1.0, 0.0]
