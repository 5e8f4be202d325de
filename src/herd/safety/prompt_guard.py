"""Prompt Guard: jailbreak and indirect-injection scores for text going into a model.

Two classifiers behind one scoring interface:

- Meta's Prompt-Guard-86M (mDeBERTa-v3, labels BENIGN / INJECTION / JAILBREAK) loaded with
  transformers' DeBERTa-v2 classes when a user has the checkpoint (``PromptGuard.from_pretrained``;
  the ``safety`` extra). herd does not re-implement DeBERTa.
- herd's own classifier (``HashedNgramClassifier``), trained by ``herd guard train-prompt`` on data
  herd ships (``herd.safety.prompt_data``): a bag of hashed character n-grams -> mean embedding ->
  three logits, in PyTorch. It needs no tokenizer file, reads any script, and sees through
  spaced-out letters ("i g n o r e") because it also embeds the text with whitespace removed.
  Its attacks are all English while its benign data spans 28 languages, so trained naively it
  learns "not English" as "benign" (a Hindi attack scored benign for its script alone). Training
  therefore also shows it English records wrapped in other languages' benign lines (``mix_languages``)
  so a script carries no label, and it reads the text romanized too (anyascii: "सिस्टम ओवरराइड" ->
  "sistm ovrraid"), so loanwords and cognates of English attack words count across scripts.

Scoring follows Meta's reference utility: probabilities are ``softmax(logits / temperature)``;
jailbreak score = p(JAILBREAK); indirect-injection score = p(INJECTION) + p(JAILBREAK). Text
longer than one context (512 tokens for the DeBERTa model; 24-word windows every 6 words for
herd's bag-of-n-grams model) is split into windows scored separately, and each score is the
maximum over windows, so an attack placed after the first window is still seen. For the DeBERTa
model, text first goes through Meta's preprocessing (whitespace that splits what would be one
token is removed: "ign ore" reads as "ignore"), see ``preprocess_text``.
"""

from __future__ import annotations

import json
import math
import re
import unicodedata
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from herd.safety.shield import Verdict

LABELS = ("BENIGN", "INJECTION", "JAILBREAK")
WINDOW = 512


@dataclass
class PromptScores:
    jailbreak: float
    indirect_injection: float
    probabilities: dict[str, float]  # of the window with the highest indirect-injection score
    windows: int = 1

    def to_dict(self) -> dict:
        return {"jailbreak": self.jailbreak, "indirect_injection": self.indirect_injection,
                "probabilities": self.probabilities, "windows": self.windows}


def scores_from_probabilities(probs: Tensor) -> PromptScores:
    """probs (windows, 3) in LABELS order -> the max-over-windows scores."""
    jailbreak = probs[:, 2]
    indirect = probs[:, 1] + probs[:, 2]
    best = int(indirect.argmax())
    return PromptScores(float(jailbreak.max()), float(indirect.max()),
                        {lab: float(p) for lab, p in zip(LABELS, probs[best], strict=True)}, probs.shape[0])


def preprocess_text(text: str, tokenize: Callable[[str], list[str]], piece_text: Callable[[str], str]) -> str:
    """Meta's Prompt Guard preprocessing: drop whitespace that splits a token, keep the rest.

    The text without whitespace is tokenized; each token keeps a space in front only if the
    original text had whitespace right before the token's first character.
    """
    kept, origin = [], []
    for i, ch in enumerate(text):
        if not ch.isspace():
            kept.append(ch)
            origin.append(i)
    cleaned = "".join(kept)
    if not cleaned:
        return text
    out, pos = [], 0
    for token in tokenize(cleaned):
        piece = piece_text(token).strip()
        if not piece:
            continue
        start = cleaned.find(piece, pos)
        if start < 0:  # a normalizing tokenizer changed the text: give up, as the reference does
            return text
        if origin[start] > 0 and text[origin[start] - 1].isspace():
            out.append(" ")
        out.append(piece)
        pos = start + len(piece)
    return "".join(out)


# ---------------------------------------------------------------- herd's classifier

def _normalize(text: str) -> str:
    return unicodedata.normalize("NFKC", text).lower()


FEATURES = ("chars", "squeezed", "romanized")
OLD_FEATURES = ("chars", "squeezed")  # what a config.json without "features" (herd before romanization) used


def _romanize(text: str) -> str:
    try:
        from anyascii import anyascii
    except ImportError as e:
        raise ImportError("this Prompt Guard classifier reads romanized text, which needs anyascii: "
                          "pip install anyascii (one of herd's dependencies)") from e
    return anyascii(text).lower()


class HashedNgramClassifier(nn.Module):
    """Hashed character n-grams (n = 2..4) -> EmbeddingBag (frequency-weighted sum) -> Linear -> logits
    over LABELS. ``features`` names the texts the n-grams are read from: "chars" (the text), "squeezed"
    (without whitespace), "romanized" (transliterated to ASCII, so "пароль" reads "parol'")."""

    def __init__(self, buckets: int = 1 << 15, dim: int = 16, ngrams: Sequence[int] = (2, 3, 4),
                 features: Sequence[str] = OLD_FEATURES) -> None:
        super().__init__()
        unknown = [f for f in features if f not in FEATURES]
        if unknown or not features:
            raise ValueError(f"unknown prompt-guard features {unknown or list(features)}; known: {list(FEATURES)}")
        if "romanized" in features:
            _romanize("")  # a missing anyascii fails here, at load, not at the first prompt
        self.config = {"buckets": buckets, "dim": dim, "ngrams": list(ngrams), "features": list(features)}
        self.embed = nn.EmbeddingBag(buckets, dim, mode="sum")
        self.head = nn.Linear(dim, len(LABELS))

    def features(self, text: str) -> tuple[list[int], list[float]]:
        """Distinct n-gram buckets of ``text`` and their frequencies (which sum to 1)."""
        t = _normalize(text)
        views = {"chars": (b"w", lambda: " " + t + " "), "squeezed": (b"s", lambda: re.sub(r"\s+", "", t)),
                 "romanized": (b"r", lambda: " " + _romanize(t) + " ")}
        buckets = self.config["buckets"]
        counts: dict[int, int] = {}
        for name in self.config["features"]:
            tag, view = views[name]
            s = view()
            for n in self.config["ngrams"]:
                for i in range(max(0, len(s) - n + 1)):
                    b = zlib.crc32(tag + s[i:i + n].encode("utf-8", "surrogatepass")) % buckets
                    counts[b] = counts.get(b, 0) + 1
        if not counts:
            return [0], [1.0]
        total = sum(counts.values())
        return list(counts), [c / total for c in counts.values()]

    def forward_features(self, feats: Sequence[tuple[list[int], list[float]]]) -> Tensor:
        flat = torch.tensor([i for ids, _ in feats for i in ids], dtype=torch.long)
        weights = torch.tensor([w for _, ws in feats for w in ws], dtype=torch.float32)
        offsets = torch.tensor([0] + [len(ids) for ids, _ in feats[:-1]], dtype=torch.long).cumsum(0)
        return self.head(self.embed(flat, offsets, per_sample_weights=weights))

    def forward(self, texts: Sequence[str]) -> Tensor:
        return self.forward_features([self.features(t) for t in texts])

    def save(self, directory: str | Path) -> None:
        from safetensors.torch import save_file

        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        tmp = d / "model.safetensors.tmp"
        save_file({k: v.contiguous() for k, v in self.state_dict().items()}, str(tmp))
        tmp.rename(d / "model.safetensors")
        cfg = {"model_type": "herd-prompt-guard", "labels": list(LABELS), **self.config}
        (d / "config.json.tmp").write_text(json.dumps(cfg, indent=2))
        (d / "config.json.tmp").rename(d / "config.json")

    @classmethod
    def load(cls, directory: str | Path) -> HashedNgramClassifier:
        from safetensors.torch import load_file

        d = Path(directory)
        try:
            cfg = json.loads((d / "config.json").read_text())
        except FileNotFoundError:
            raise FileNotFoundError(f"{d}: no config.json (not a herd prompt-guard classifier)") from None
        if cfg.get("model_type") != "herd-prompt-guard":
            raise ValueError(f"{d}/config.json: model_type is {cfg.get('model_type')!r}, not 'herd-prompt-guard'")
        model = cls(cfg["buckets"], cfg["dim"], cfg["ngrams"], cfg.get("features", OLD_FEATURES))
        model.load_state_dict(load_file(str(d / "model.safetensors")))
        return model.eval()


def train_classifier(records: Sequence[dict], *, epochs: int = 8, lr: float = 0.05, batch_size: int = 64,
                     seed: int = 0, buckets: int = 1 << 15, dim: int = 16, features: Sequence[str] = FEATURES,
                     mix_languages: int = 3, log: Callable[[str], None] | None = None) -> HashedNgramClassifier:
    """Train herd's classifier on ``{"text", "label", "language"?}`` records (class-balanced cross-entropy, AdamW).

    ``mix_languages`` copies of each English record of an attack-bearing source are added, wrapped
    in benign lines of another language (``prompt_data.mix_languages``), so no script is all-benign.
    Embeddings start at zero: an n-gram never seen in training adds nothing to a score. Runs on one
    CPU thread: the steps are too small to split, and on a busy machine two threads made them 7x slower.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _train(records, epochs, lr, batch_size, seed, buckets, dim, features, mix_languages, log)
    finally:
        torch.set_num_threads(threads)


def _train(records: Sequence[dict], epochs: int, lr: float, batch_size: int, seed: int, buckets: int, dim: int,
           features: Sequence[str], mix_languages: int, log: Callable[[str], None] | None) -> HashedNgramClassifier:
    from herd.safety.prompt_data import mix_languages as mix

    records = list(records) + mix(records, mix_languages, seed)
    torch.manual_seed(seed)
    model = HashedNgramClassifier(buckets, dim, features=features)
    nn.init.zeros_(model.embed.weight)
    feats = [model.features(r["text"]) for r in records]
    labels = torch.tensor([LABELS.index(r["label"]) for r in records])
    counts = torch.bincount(labels, minlength=len(LABELS)).float().clamp(min=1)
    weight = counts.sum() / (len(LABELS) * counts)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    gen = torch.Generator().manual_seed(seed)
    model.train()
    for epoch in range(epochs):
        order = torch.randperm(len(records), generator=gen).tolist()
        total = 0.0
        for i in range(0, len(order), batch_size):
            idx = order[i:i + batch_size]
            logits = model.forward_features([feats[j] for j in idx])
            loss = nn.functional.cross_entropy(logits, labels[idx], weight=weight)
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(idx)
        if log:
            log(f"epoch {epoch + 1}/{epochs}: loss {total / len(order):.4f}")
    return model.eval()


# ---------------------------------------------------------------- the scorer

# Bumped whenever the default classifier's training changes (data, features, mixing): names its cache.
DEFAULT_MODEL_VERSION = 2


class PromptGuard:
    """Scores text with either classifier; also the ``Shield`` for prompts and tool results.

    ``check(text, role)``: user text is judged by its jailbreak score, anything else (tool
    results, retrieved documents: third-party data) by its indirect-injection score; at or above
    ``block_threshold`` the action is block, at or above ``warn_threshold`` warn.
    """

    name = "prompt_guard"

    def __init__(self, backend: Any, *, temperature: float = 1.0, window: int | None = None,
                 block_threshold: float = 0.5, warn_threshold: float = 0.3) -> None:
        if temperature <= 0 or not math.isfinite(temperature):
            raise ValueError(f"temperature must be a positive number, got {temperature}")
        window = backend.default_window if window is None else window
        if window < 8:
            raise ValueError(f"window must be at least 8 tokens, got {window}")
        self.backend, self.temperature, self.window = backend, temperature, window
        self.block_threshold, self.warn_threshold = block_threshold, warn_threshold

    @classmethod
    def from_pretrained(cls, path: str | Path, **kwargs: Any) -> PromptGuard:
        """Meta's Prompt-Guard-86M (or any DeBERTa-v2 sequence classifier with these labels) from a local dir."""
        return cls(_DebertaBackend(Path(path)), **kwargs)

    @classmethod
    def herd(cls, path: str | Path, **kwargs: Any) -> PromptGuard:
        """herd's classifier saved by ``herd guard train-prompt``."""
        return cls(_NgramBackend(HashedNgramClassifier.load(path)), **kwargs)

    @classmethod
    def from_classifier(cls, model: HashedNgramClassifier, **kwargs: Any) -> PromptGuard:
        return cls(_NgramBackend(model), **kwargs)

    @classmethod
    def default(cls, cache_dir: str | Path | None = None, **kwargs: Any) -> PromptGuard:
        """herd's classifier trained on all the data herd ships: loaded from ``cache_dir``
        (default ``~/.cache/herd/prompt-guard-v{DEFAULT_MODEL_VERSION}``, so a model cached by
        an herd whose training differed is not reused), or trained there once (seconds to a
        minute on a CPU)."""
        from herd.safety.prompt_data import load_records

        d = (Path(cache_dir) if cache_dir is not None
             else Path.home() / ".cache" / "herd" / f"prompt-guard-v{DEFAULT_MODEL_VERSION}")
        if not (d / "model.safetensors").exists():
            model = train_classifier(load_records())
            if d.exists():
                model.save(d)  # each file is written to a temp name, then renamed
            else:
                tmp = d.with_name(d.name + ".tmp")
                model.save(tmp)
                tmp.rename(d)  # the directory appears complete or not at all
        return cls.herd(d, **kwargs)

    @torch.inference_mode()
    def probabilities(self, text: str) -> Tensor:
        """(windows, 3) class probabilities of each window of ``text``."""
        logits = self.backend.window_logits(text, self.window)
        return torch.softmax(logits.float() / self.temperature, dim=-1)

    def score(self, text: str) -> PromptScores:
        if not isinstance(text, str):
            raise TypeError(f"PromptGuard.score needs a str, got {type(text).__name__}")
        return scores_from_probabilities(self.probabilities(text))

    def check(self, text: str, role: str = "user") -> Verdict:
        s = self.score(text)
        key = "jailbreak" if role == "user" else "indirect_injection"
        value = getattr(s, key)
        action = "block" if value >= self.block_threshold else "warn" if value >= self.warn_threshold else "allow"
        cats = [key.upper()] if action != "allow" else []
        return Verdict(action, cats, {"jailbreak": s.jailbreak, "indirect_injection": s.indirect_injection},
                       self.name, f"{key} score {value:.3f}", s)


class _NgramBackend:
    """herd's classifier reads windows of ``window`` words (default 24) every ``window // 4`` words:
    a bag of n-grams has no attention to single out a short attack among benign text, so windows
    are short and overlap, and some window holds the attack with little else. (With 64-word
    windows an 18-word attack after 700 benign words scored 0.11; with 24 it scores 0.97.)"""

    default_window = 24

    def __init__(self, model: HashedNgramClassifier) -> None:
        self.model = model.eval()

    def window_logits(self, text: str, window: int) -> Tensor:
        words = re.findall(r"\S+\s*", text) or [text]
        if len(words) <= window:
            return self.model(["".join(words)])
        stride = max(1, window // 4)
        starts = range(0, len(words) - window + stride, stride)
        return self.model(["".join(words[i:i + window]) for i in starts])


class _DebertaBackend:
    default_window = WINDOW  # tokens, [CLS] and [SEP] included

    def __init__(self, path: Path) -> None:
        try:
            from transformers import AutoModelForSequenceClassification, AutoTokenizer
        except ImportError as e:
            raise ImportError("loading a Prompt Guard checkpoint needs transformers: pip install 'herd[safety]'") from e
        if not (path / "config.json").exists():
            raise FileNotFoundError(f"{path}: no config.json (expected a Prompt-Guard-86M checkpoint directory)")
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.model = AutoModelForSequenceClassification.from_pretrained(path).eval()
        labels = [self.model.config.id2label[i].upper() for i in range(self.model.config.num_labels)]
        if labels != list(LABELS):
            raise ValueError(f"{path}: labels are {labels}, Prompt Guard needs {list(LABELS)}")

    def preprocess(self, text: str) -> str:
        tok = self.tokenizer
        def piece(t: str) -> str:  # a token's text, without SentencePiece's word mark or WordPiece's "##"
            return tok.convert_tokens_to_string([t]).replace("\u2581", " ").removeprefix("##")

        return preprocess_text(text, tok.tokenize, piece)

    def window_logits(self, text: str, window: int) -> Tensor:
        tok = self.tokenizer
        ids = tok(self.preprocess(text), add_special_tokens=False)["input_ids"]
        body = window - 2  # room for [CLS] and [SEP]
        chunks = [ids[i:i + body] for i in range(0, max(len(ids), 1), body)]
        if tok.cls_token_id is None or tok.sep_token_id is None:
            raise ValueError("the Prompt Guard tokenizer has no [CLS]/[SEP] tokens (expected a DeBERTa tokenizer)")
        rows = [[tok.cls_token_id, *c, tok.sep_token_id] for c in chunks]  # DeBERTa's single-sequence form
        width = max(len(r) for r in rows)
        pad = tok.pad_token_id if tok.pad_token_id is not None else 0
        input_ids = torch.tensor([r + [pad] * (width - len(r)) for r in rows])
        mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows])
        return self.model(input_ids=input_ids, attention_mask=mask).logits
