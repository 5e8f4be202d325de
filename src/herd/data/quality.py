"""Model-based quality: a fastText classifier (train, score, threshold) and Llama 3's LLM-labelling recipe.

Llama 3 labelled a sample of web documents with a Llama model prompted with quality
criteria, trained a fast classifier on those labels, and scored the whole corpus with it.
herd does the same in three pieces:

* :func:`label_with_model` asks a herd model (any Llama 3.x Instruct checkpoint herd loads)
  whether each document meets :data:`QUALITY_CRITERIA`, reading the answer from the
  next-token logits of "yes" against "no" after the chat prompt (one forward pass per
  document, deterministic, no free-form parsing); it writes ``{"text", "label", "p_yes"}``.
* :func:`train_quality` trains fastText (PyPI ``fasttext-community``: ``fasttext`` 0.9.3
  breaks under NumPy 2) on ``{"text", "label"}`` JSONL and reports held-out precision/recall.
* :class:`QualityScore` scores every document (``meta.quality_score``, the probability of
  the positive label) and drops those below ``threshold``.
"""

from __future__ import annotations

import json
import os
import random
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from herd.data.records import CurateError, Record, Step

QUALITY_CRITERIA = (
    "You judge web documents for training a language model. A good document is written in fluent, "
    "grammatical prose; it informs or teaches (an article, a tutorial, documentation, a careful discussion); "
    "it is coherent and self-contained; it is not an advertisement, spam, a list of links or keywords, "
    "boilerplate, machine-generated filler or adult content. Answer with one word: yes if the document is "
    "good, no if it is not."
)


def _clean(text: str) -> str:
    return " ".join(text.split())


def read_labeled(path: str | Path) -> list[tuple[str, str]]:
    path = Path(path)
    if not path.is_file():
        raise CurateError(f"labeled data {path} does not exist")
    out = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise CurateError(f"{path}:{lineno}: not JSON ({e.msg})") from None
            if not isinstance(obj, dict) or not isinstance(obj.get("text"), str) or "label" not in obj:
                raise CurateError(f"{path}:{lineno}: need an object with a string 'text' and a 'label'")
            out.append((obj["text"], str(obj["label"])))
    if len({label for _, label in out}) < 2:
        raise CurateError(f"{path}: need examples of at least two labels")
    return out


def train_quality(examples: Sequence[tuple[str, str]], out_path: str | Path, *, epoch: int = 10, lr: float = 0.5,
                  word_ngrams: int = 2, dim: int = 64, min_count: int = 1, valid_fraction: float = 0.1,
                  seed: int = 0, threads: int = 1, bucket: int = 2_000_000) -> dict[str, Any]:
    """Train a fastText supervised classifier; save it atomically; held-out precision@1 and recall@1."""
    import fasttext

    rows = list(examples)
    random.Random(seed).shuffle(rows)
    n_valid = int(len(rows) * valid_fraction) if len(rows) >= 20 else 0
    valid, train = rows[:n_valid], rows[n_valid:]
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        train_file, valid_file = Path(tmp) / "train.txt", Path(tmp) / "valid.txt"
        train_file.write_text("".join(f"__label__{lab} {_clean(t)}\n" for t, lab in train), encoding="utf-8")
        model = fasttext.train_supervised(input=str(train_file), epoch=epoch, lr=lr, wordNgrams=word_ngrams,
                                          dim=dim, minCount=min_count, seed=seed, thread=threads, verbose=0,
                                          bucket=bucket if word_ngrams > 1 else 0)
        metrics: dict[str, Any] = {"train_examples": len(train), "valid_examples": len(valid),
                                   "labels": sorted(lab.removeprefix("__label__") for lab in model.labels)}
        if valid:
            valid_file.write_text("".join(f"__label__{lab} {_clean(t)}\n" for t, lab in valid), encoding="utf-8")
            _, precision, recall = model.test(str(valid_file))
            metrics.update(valid_precision=round(precision, 4), valid_recall=round(recall, 4))
        tmp_model = out_path.with_name(f".{out_path.name}.tmp")
        model.save_model(str(tmp_model))
        os.replace(tmp_model, out_path)
    metrics["model"] = str(out_path)
    return metrics


class QualityScore(Step):
    """``meta.quality_score`` = P(``positive_label``) from a fastText model; drop below ``threshold``."""

    kind = "quality"

    def __init__(self, *, model: str, positive_label: str = "hq", threshold: float = 0.5, max_chars: int = 10_000,
                 **kw) -> None:
        super().__init__(**kw)
        if not Path(model).is_file():
            raise CurateError(f"quality: model file {model} does not exist (train one with herd curate train-quality)")
        self.model_path, self.positive_label = str(model), positive_label
        self.threshold, self.max_chars = threshold, max_chars
        self._model: Any = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_model": None}

    def score(self, text: str) -> float:
        if self._model is None:
            import fasttext

            self._model = fasttext.load_model(self.model_path)
            if f"__label__{self.positive_label}" not in self._model.labels:
                raise CurateError(f"quality: model {self.model_path} has no label {self.positive_label!r} "
                                  f"(labels: {', '.join(self._model.labels)})")
        labels, probs = self._model.predict(_clean(text[: self.max_chars]), k=-1)
        return float(dict(zip(labels, probs, strict=False)).get(f"__label__{self.positive_label}", 0.0))

    def process(self, rec: Record) -> str | None:
        s = self.score(rec["text"])
        rec["meta"]["quality_score"] = round(s, 4)
        return "low_quality" if s < self.threshold else None


def label_with_model(texts: Iterable[str], model: Any, tokenizer: Any, *, criteria: str = QUALITY_CRITERIA,
                     max_doc_tokens: int = 1024, positive: str = "hq", negative: str = "lq") -> list[dict[str, Any]]:
    """Label documents with a herd Transformer: P(yes) vs P(no) as the assistant's first token."""
    import torch

    from herd.tokenizer import ChatFormat, Message

    chat = ChatFormat(tokenizer)
    yes = {tokenizer.encode(w, bos=False, eos=False)[0] for w in ("yes", "Yes")}
    no = {tokenizer.encode(w, bos=False, eos=False)[0] for w in ("no", "No")}
    device = next(model.parameters()).device
    out = []
    for text in texts:
        doc_ids = tokenizer.encode(text, bos=False, eos=False)[:max_doc_tokens]
        doc = tokenizer.decode(doc_ids)
        dialog = [Message(role="system", content=criteria),
                  Message(role="user", content=f"Document:\n{doc}\n\nIs this a good document? Answer yes or no.")]
        ids = chat.encode_dialog_prompt(dialog)
        ids = getattr(ids, "tokens", ids)
        with torch.inference_mode():
            logits = model(torch.tensor([list(ids)], device=device))[0, -1].float()
        logp = torch.log_softmax(logits, dim=-1)
        p_yes = torch.logsumexp(logp[list(yes)], 0).exp().item()
        p_no = torch.logsumexp(logp[list(no)], 0).exp().item()
        p = p_yes / (p_yes + p_no) if p_yes + p_no > 0 else 0.5
        out.append({"text": text, "label": positive if p >= 0.5 else negative, "p_yes": round(p, 4)})
    return out
