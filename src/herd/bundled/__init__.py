"""Models that ship inside the herd package.

``base``: a 7M-parameter Llama 3 architecture base model (HF layout, bf16, its own
4,352-token vocabulary from ``herd tokenizer train``) pre-trained by ``herd pretrain`` on the
King James Version of the Bible (public domain; corpora/kjv in the repository), in two
stages (3.7M tokens, held-out loss 3.31). It writes KJV-style English and nothing else: it
is there so ``herd generate`` runs out of the box and tests and benchmarks have a real
trained model. Its recipe, figures and samples are in
``base/README.md``; ``scripts/train_base_model.sh`` reproduces it.

``chat``: that base model fine-tuned by ``herd sft`` (configs/chat-kjv.toml) on the English
conversations of chatterbot-corpus (BSD-3-Clause; corpora/chat), the default of ``herd chat``.
It speaks the Llama 3 chat format and ends its turns with <|eot_id|>; with 7M parameters
and 538 short conversations it answers small talk in chatterbot's words and little else
(``chat/README.md``).
"""

from __future__ import annotations

from pathlib import Path

BASE_MODEL_DIR = Path(__file__).resolve().parent / "base"
CHAT_MODEL_DIR = Path(__file__).resolve().parent / "chat"


def base_model_dir() -> Path:
    """The bundled base model's directory; FileNotFoundError if this installation lacks it."""
    if not (BASE_MODEL_DIR / "config.json").is_file():
        raise FileNotFoundError(f"the bundled base model is missing from {BASE_MODEL_DIR} (a broken installation?)")
    return BASE_MODEL_DIR


def chat_model_dir() -> Path:
    """The bundled chat model's directory; FileNotFoundError if this installation lacks it."""
    if not (CHAT_MODEL_DIR / "config.json").is_file():
        raise FileNotFoundError(f"the bundled chat model is missing from {CHAT_MODEL_DIR} (a broken installation?)")
    return CHAT_MODEL_DIR
