"""A chat session: dialog history, system prompt and streamed assistant replies.

The Python API behind ``herd chat``; a notebook user drives it directly::

    session = ChatSession.load("path/to/Llama-3.2-1B-Instruct")
    for delta in session.send("Name three prime numbers."):
        print(delta, end="")
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from herd.generation import Generator, SamplingParams
from herd.tokenizer import Tokenizer
from herd.tokenizer.chat_format import ChatFormat, Message


@dataclass
class ChatSession:
    generator: Generator
    params: SamplingParams
    system: str | None = None
    history: list[Message] = field(default_factory=list)
    last_reply: Message | None = None

    @classmethod
    def load(cls, model_dir: str | Path, *, dtype: str | None = None, device: str = "cpu",
             params: SamplingParams | None = None, system: str | None = None,
             compile: bool = False) -> ChatSession:
        from herd.checkpoint import load_any

        model = load_any(model_dir, dtype=dtype, device=device)
        tokenizer = Tokenizer.from_dir(model_dir)
        return cls(Generator(model, tokenizer, compile=compile), params or SamplingParams(), system)

    @property
    def tokenizer(self) -> Tokenizer:
        return self.generator.tokenizer

    def clear(self) -> None:
        self.history.clear()
        self.last_reply = None

    def dialog(self) -> list[Message]:
        system = [Message(role="system", content=self.system)] if self.system else []
        return system + self.history

    def context_tokens(self) -> int:
        """Tokens the current dialog takes in the prompt (to show how full the context is)."""
        return len(ChatFormat(self.tokenizer).encode_dialog_prompt(self.dialog()))

    def send(self, text: str) -> Iterator[str]:
        """Add a user turn, stream the assistant's reply as text deltas, then record it.

        A reply that calls tools is recorded with its parsed tool calls (see
        ``last_reply``); its raw text is what streams.
        """
        self.history.append(Message(role="user", content=text))
        try:
            prompt = ChatFormat(self.tokenizer).encode_dialog_prompt(self.dialog())
            stream = self.generator.stream(prompt, self.params)
            yield from stream
        except BaseException:
            self.history.pop()  # a failed or interrupted turn leaves the dialog as it was
            raise
        completion = stream.completion
        reply = ChatFormat(self.tokenizer).decode_assistant_message(
            completion.token_ids, completion.stop_reason
        )
        self.history.append(reply)
        self.last_reply = reply
