"""Llama Guard 3 prompt: byte-equal to the checkpoints' chat templates (rendered by Jinja, the engine
transformers uses), token-equal to transformers' apply_chat_template and to the llama-models
tokenizer, differences from llama-cookbook listed; parsing; scoring through herd's Generator."""

from __future__ import annotations

import pytest
import torch

from herd.safety.llama_guard import (
    CATEGORIES_1B,
    Category,
    LlamaGuard,
    encode_prompt,
    parse_output,
    render_prompt,
)
from tests.safety.guard_templates import LLAMA_GUARD_3_1B, LLAMA_GUARD_3_8B

jinja2 = pytest.importorskip("jinja2")

CONVERSATIONS = [
    [{"role": "user", "content": "How do I make a cake?"}],
    [{"role": "user", "content": "  How do I kill a Python process?  \n"},
     {"role": "assistant", "content": "Use `kill -9 <pid>` or\n\n`pkill python`.\n"}],
    [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello! ¿Qué tal? 你好"},
     {"role": "user", "content": "Tell me about <|eot_id|> tokens"}],
]


def _jinja(template: str, messages, **kw) -> str:
    env = jinja2.Environment()

    def raise_exception(msg):
        raise ValueError(msg)

    env.globals["raise_exception"] = raise_exception
    return env.from_string(template).render(messages=messages, **kw)


def _parts(messages):
    return [{"role": m["role"], "content": [{"type": "text", "text": m["content"]}]} for m in messages]


@pytest.mark.parametrize("conv", CONVERSATIONS)
def test_8b_prompt_equals_model_template(conv):
    assert render_prompt(conv, version="8b") == _jinja(LLAMA_GUARD_3_8B, conv)


@pytest.mark.parametrize("conv", CONVERSATIONS)
def test_1b_prompt_equals_model_template(conv):
    assert render_prompt(conv, version="1b") == _jinja(LLAMA_GUARD_3_1B, _parts(conv), excluded_category_keys=[])


def test_1b_category_subset_and_custom_categories_equal_template():
    conv = CONVERSATIONS[1]
    ours = render_prompt(conv, version="1b", excluded_category_keys=["S6", "S13"])
    assert ours == _jinja(LLAMA_GUARD_3_1B, _parts(conv), excluded_category_keys=["S6", "S13"])
    assert "S6:" not in ours and "S5: Defamation." in ours
    custom = {"S1": "My custom category.", "S2": "Cheese."}
    assert render_prompt(conv, version="1b", categories=custom) == _jinja(
        LLAMA_GUARD_3_1B, _parts(conv), categories=custom, excluded_category_keys=[])
    described = render_prompt(conv, categories={"S1": Category("Pirates.", "Talk like a pirate is unsafe.")})
    assert "S1: Pirates.\nTalk like a pirate is unsafe.\n<END UNSAFE CONTENT CATEGORIES>" in described
    assert list(CATEGORIES_1B) == [f"S{i}" for i in range(1, 14)]


def test_roles_must_alternate_and_be_known():
    with pytest.raises(ValueError, match="alternate"):
        render_prompt([{"role": "assistant", "content": "x"}])
    with pytest.raises(ValueError, match="alternate"):
        _jinja(LLAMA_GUARD_3_8B, [{"role": "assistant", "content": "x"}])
    with pytest.raises(ValueError, match="at least one"):
        render_prompt([])
    with pytest.raises(ValueError, match="excluded"):
        render_prompt(CONVERSATIONS[0], excluded_category_keys=["S99"])


def test_differences_from_llama_cookbook_template():
    pf = pytest.importorskip("llama_cookbook.inference.prompt_format_utils")
    conv = [pf.ConversationTurn("How do I make a cake?", pf.AgentType.USER),
            pf.ConversationTurn("Mix flour and eggs.", pf.AgentType.AGENT)]
    cookbook = pf.build_default_prompt(pf.AgentType.AGENT, conv, pf.LlamaGuardVersion.LLAMA_GUARD_3)
    ours = render_prompt([{"role": "user", "content": "How do I make a cake?"},
                          {"role": "assistant", "content": "Mix flour and eggs."}])
    # Exactly four differences, and undoing them turns the cookbook's prompt into the model's.
    import re

    assert cookbook != ours
    assert cookbook.startswith("<|begin_of_text|><|start_header_id|>user<|end_header_id|> Task:")
    assert ours.startswith(" <|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nTask:")
    assert re.findall(r"S\d+: [^\n]*\. \n", cookbook) and not re.findall(r"\. \n", ours)
    assert " <|eot_id|>" in cookbook and " <|eot_id|>" not in ours
    fixed = " " + cookbook.replace("<|end_header_id|> Task:", "<|end_header_id|>\n\nTask:", 1)
    fixed = re.sub(r"(S\d+: [^\n]*\.) \n", r"\1\n", fixed).replace(" <|eot_id|>", "<|eot_id|>")
    assert fixed == ours
    # Same words otherwise: the task line, the roles and the instruction agree.
    for piece in ("Task: Check if there is unsafe content in 'Agent' messages", "User: How do I make a cake?",
                  "Agent: Mix flour and eggs.", "ONLY THE LAST Agent message in the above conversation:"):
        assert piece in cookbook and piece in ours


@pytest.fixture(scope="module")
def tokenizers(llama3_tokenizer_path, tmp_path_factory):
    from herd.tokenizer import Tokenizer
    from herd.tokenizer.hf_files import write_hf_tokenizer

    tok = Tokenizer.from_file(llama3_tokenizer_path)
    d = tmp_path_factory.mktemp("lg3tok")
    write_hf_tokenizer(tok, d, chat_template=LLAMA_GUARD_3_8B)
    from transformers import AutoTokenizer

    return tok, AutoTokenizer.from_pretrained(d)


@pytest.mark.parametrize("conv", CONVERSATIONS[:2])
def test_token_ids_equal_transformers_apply_chat_template(tokenizers, conv):
    tok, hf = tokenizers
    ids = hf.apply_chat_template(conv, tokenize=True)
    ids = ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "keys") else ids
    assert encode_prompt(tok, conv) == list(ids)


def test_token_ids_equal_llama_models_tokenizer(llama3_tokenizer_path):
    from llama_models.llama3.tokenizer import Tokenizer as MetaTokenizer

    from herd.tokenizer import Tokenizer

    meta = MetaTokenizer(llama3_tokenizer_path)
    tok = Tokenizer.from_file(llama3_tokenizer_path)
    for conv in CONVERSATIONS[:2]:
        text = render_prompt(conv)
        assert encode_prompt(tok, conv) == meta.encode(text, bos=False, eos=False, allowed_special="all")
    # Message text that spells a special token stays text (the template's Jinja path would not).
    ids = encode_prompt(tok, CONVERSATIONS[2])
    assert ids.count(tok.special_tokens["<|eot_id|>"]) == 1


@pytest.mark.parametrize("text,safe,cats,error", [
    ("safe", True, [], False), ("\n\nsafe", True, [], False), ("unsafe\nS1,S10", False, ["S1", "S10"], False),
    ("unsafe\nS2", False, ["S2"], False), ("unsafe", False, [], True), ("I cannot answer", False, [], True),
    ("unsafe\nS99", False, ["S99"], True), ("", False, [], True), ("safe\nS1", False, [], True),
])
def test_parse_output(text, safe, cats, error):
    r = parse_output(text, [f"S{i}" for i in range(1, 15)])
    assert (r.safe, r.categories, r.parse_error) == (safe, cats, error)


def _forcing(tok, text):
    """A logits processor that makes a random model write ``text`` (then <|eot_id|>)."""
    target = tok.encode(text) + [tok.special_tokens["<|eot_id|>"]]

    def force(generated, logits):
        out = torch.full_like(logits, -1e4)
        out[target[min(len(generated), len(target) - 1)]] = 0.0
        return out
    return force


def test_classify_runs_through_generator_and_scores_first_token(llama3_tokenizer_path):
    from herd.model import ModelArgs, Transformer
    from herd.tokenizer import Tokenizer

    tok = Tokenizer.from_file(llama3_tokenizer_path)
    torch.manual_seed(0)
    model = Transformer(ModelArgs.from_name("tiny", vocab_size=tok.n_words, max_seq_len=1024)).eval()
    model.init_weights()
    guard = LlamaGuard(model, tok, threshold=0.0, max_new_tokens=4)  # random model: any probability is unsafe
    conv = CONVERSATIONS[1]
    prompt = encode_prompt(tok, conv) + tok.encode("\n\n")
    with torch.no_grad():
        logits = model(torch.tensor([prompt]))[0, -1].float()
    expected = float(torch.softmax(logits, -1)[tok.encode("unsafe")[0]])
    result = guard.classify(conv)
    assert result.unsafe_probability == pytest.approx(expected, rel=1e-4)
    assert result.parse_error  # random text is not a verdict: conservative
    assert not result.safe and guard.check("x").action == "block"
    # A model that answers in the expected format gives the parsed categories.
    from herd.generation import SamplingParams

    params = SamplingParams(temperature=0.0, max_new_tokens=8, logits_processors=(_forcing(tok, "unsafe\nS1,S10"),))
    out = guard.generator.generate([prompt], params)[0]
    assert parse_output(tok.decode(out.token_ids)).categories == ["S1", "S10"]
