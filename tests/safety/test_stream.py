"""An unsafe verdict stops generation mid-stream (herd Generator + Code Shield)."""

from __future__ import annotations

import torch

from herd.safety.shield import CodeShieldShield, Verdict
from herd.safety.stream import guarded_stream

OUTPUT = ("Here is the query:\n```python\ndef find(cursor, uid):\n"
          "    cursor.execute(\"SELECT * FROM users WHERE id = \" + uid)\n    return cursor.fetchall()\n```\n"
          "This returns every matching user, and you can extend it with more filters later on.")


def test_code_shield_stops_generation_mid_stream(llama3_tokenizer_path):
    from herd.generation import Generator, SamplingParams
    from herd.model import ModelArgs, Transformer
    from herd.tokenizer import Tokenizer

    tok = Tokenizer.from_file(llama3_tokenizer_path)
    torch.manual_seed(0)
    model = Transformer(ModelArgs.from_name("tiny", vocab_size=tok.n_words, max_seq_len=512)).eval()
    target = tok.encode(OUTPUT) + [tok.special_tokens["<|eot_id|>"]]
    steps = []

    def force(generated, logits):  # a random model writing OUTPUT token by token
        steps.append(len(generated))
        out = torch.full_like(logits, -1e4)
        out[target[min(len(generated), len(target) - 1)]] = 0.0
        return out

    gen = Generator(model, tok)
    params = SamplingParams(temperature=0.0, max_new_tokens=len(target) + 5, logits_processors=(force,))
    prompt = tok.encode("Write a lookup.", bos=True)
    stream = guarded_stream(gen, prompt, CodeShieldShield(), params)
    text = "".join(stream)
    assert stream.stopped and stream.verdict.action == "block"
    assert "CWE-89" in stream.verdict.categories
    assert "+ uid" not in text and text.startswith("Here is the query")  # withheld: the delta that made it unsafe
    # Decoding ended right after the offending tokens: far fewer steps than the whole answer.
    assert max(steps) < len(target) - 20

    # Without a blocking verdict the whole answer comes through.
    steps.clear()

    class Allow:
        name = "allow"

        def check(self, text, role="assistant"):
            return Verdict()

    allowed = guarded_stream(gen, prompt, Allow(), params)
    assert "".join(allowed) == OUTPUT and not allowed.stopped


def test_streaming_code_shield_agrees_with_full_scans():
    from herd.safety.code_shield import scan_output
    from herd.safety.code_shield.streaming import StreamingCodeShield

    filler = "".join(f"static int f{i}(int x) {{ return x * {i}; }}\n" for i in range(40))
    text = ("First:\n```c\n" + filler + "void g(char *s) {\n  char b[8];\n  strcpy(b, s);\n}\n" + filler + "```\n"
            "Then:\n```\n" + filler + "int make_token(void) { return rand(); }\n```\nDone.")
    stream = StreamingCodeShield()
    first_block = None
    for end in range(1, len(text) + 1, 5):
        prefix = text[:end]
        streamed = {(f.rule, f.line) for f in stream.findings(prefix)}
        full = {(f.rule, f.line) for r in scan_output(prefix) for f in r.findings}
        assert streamed == full, end
        if first_block is None and ("c-strcpy", 43) in streamed:
            first_block = end
    assert first_block is not None and first_block < text.index("```\nThen")  # seen while the block was open
    final = {(f.rule, f.line) for f in stream.findings(text)}
    assert final == {(f.rule, f.line) for r in scan_output(text) for f in r.findings}
    assert {"c-strcpy", "c-weak-prng"} <= {rule for rule, _ in final}
