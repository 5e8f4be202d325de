"""Texts for tokenizer parity tests: many scripts, emoji, code, whitespace, numbers."""

from __future__ import annotations

import random

MULTILINGUAL = [
    "The quick brown fox jumps over the lazy dog. It's 5 o'clock; WE'LL see, they'd said.",
    "机器学习是人工智能的一个分支。今天天气很好，我们去公园散步吧！",
    "吾輩は猫である。名前はまだ無い。東京都渋谷区で「ラーメン」を食べました。カタカナ、ひらがな。",
    "안녕하세요, 세계! 한국어 문장은 띄어쓰기를 사용합니다. 서울특별시.",
    "مرحبا بالعالم! اللغة العربية تكتب من اليمين إلى اليسار، وتحتوي على ١٢٣ أرقام.",
    "שלום עולם! עברית נכתבת מימין לשמאל. מספרים: 2024.",
    "नमस्ते दुनिया! हिन्दी देवनागरी लिपि में लिखी जाती है। क्षत्रिय, ज्ञान, श्री।",
    "Привет, мир! Съешь же ещё этих мягких французских булок, да выпей чаю.",
    "สวัสดีชาวโลก ภาษาไทยไม่มีการเว้นวรรคระหว่างคำ กรุงเทพมหานคร",
    "Γειά σου κόσμε! Ξεσκεπάζω την ψυχοφθόρα βδελυγμία. Ωμέγα ω Ω.",
    "Tiếng Việt có dấu: Chào thế giới, Hà Nội, Đà Nẵng, ngữ pháp.",
    "Türkçe: Çağrı İstanbul'da ışığı gördü. Deutsch: Grüße aus München, Straße, Maß.",
    "Ελληνικά, Русский, 中文, 日本語, 한국어, العربية, עברית, हिन्दी, ไทย in one line.",
    "Combining: e\u0301te\u0301, n\u0303, a\u0308; precomposed: été, ñ, ä. Zero\u200bwidth\u200djoiner.",
    "Ge'ez: ሰላም ዓለም. Armenian: Բարեւ աշխարհ. Georgian: გამარჯობა. Tamil: வணக்கம் உலகம்.",
    "Math: ∀x∈ℝ, ∃y: x² + y² ≥ 2xy; ∫₀^∞ e^{-x} dx = 1; π ≈ 3.14159; ½ ¾ ⅞.",
    "Fullwidth：ＡＢＣ１２３　ideographic space and\u00a0no-break\u2009thin\u2028line sep\u2029para.",
]

EMOJI = [
    "Emoji: 😀😃😄 👍🏽 👩🏿‍💻 ❤️ 🔥🔥🔥",
    "Families and flags: 👨‍👩‍👧‍👦 👩‍❤️‍💋‍👨 🏳️‍🌈 🏴‍☠️ 🇯🇵 🇺🇸 🇫🇷 🇧🇷",
    "Keycaps and variation selectors: 1️⃣ #️⃣ ☺︎ ☺️ ✌🏻 🧑🏼‍🚀 🫠 🫶🏾",
]

CODE = [
    'def fib(n: int) -> int:\n    """Return the n-th Fibonacci number."""\n'
    "    a, b = 0, 1\n    for _ in range(n):\n        a, b = b, a + b\n    return a\n\n"
    'if __name__ == "__main__":\n\tprint(fib(30))  # 832040\n',
    "function debounce(fn, ms = 300) {\n  let t;\n  return (...args) => {\n"
    "    clearTimeout(t); t = setTimeout(() => fn.apply(this, args), ms);\n  };\n}\n",
    "fn main() -> Result<(), Box<dyn std::error::Error>> {\n    let v: Vec<u64> = (0..10).map(|x| x * x)"
    '.collect();\n    println!("{:?}", v);\n    Ok(())\n}\n',
    '#include <stdio.h>\nint main(void) {\n    for (int i = 0; i < 10; ++i) printf("%d\\n", i << 2);\n'
    "    return 0;\n}\n",
    "SELECT u.id, COUNT(*) AS n FROM users u JOIN orders o ON o.user_id = u.id\n"
    "WHERE o.created_at >= '2024-01-01' GROUP BY u.id HAVING n > 3 ORDER BY n DESC;",
    '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>Test &amp; more</title></head>\n'
    "<body><div class=\"a b\" id='x'>Hello</div></body></html>",
    '{"name": "herd", "version": [0, 1, 0], "nested": {"ok": true, "none": null, "pi": 3.14}}',
    "for f in *.txt; do echo \"$f\" | sed -e 's/\\.txt$/.md/' >> out.log 2>&1; done && ls -la ~/",
]

WHITESPACE_AND_NUMBERS = [
    "   leading spaces, trailing spaces   ",
    "tabs\tand\t\ttabs\t\t\t and mixed \t \t whitespace",
    "line1\nline2\r\nline3\rline4\n\n\n\n\nline9\n \n \n",
    " " * 300 + "after a long space run" + "\n" * 50 + "after newlines" + "\t" * 40,
    "Numbers: 0 1 12 123 1234 12345 123456789012345678901234567890 3.14159 -42 1e-9 1,000,000 0x1F",
    "Dates 2024-07-26, times 12:34:56.789, versions v1.2.3-rc.4+build.5, phone +1 (555) 010-9999",
    "",
    " ",
    "\n",
]

SPECIAL_STRINGS = [
    "<|begin_of_text|>Hello<|end_of_text|>",
    "Text with <|eot_id|> and <|start_header_id|>user<|end_header_id|> inside.",
    "<|python_tag|>print(1)<|eom_id|> <|finetune_right_pad_id|> <|reserved_special_token_1|>",
    "almost special: <|eot_id| and <eot_id|> and <|not_a_token|>",
]

CORPUS = MULTILINGUAL + EMOJI + CODE + WHITESPACE_AND_NUMBERS + SPECIAL_STRINGS

# Plain English and code: what the HF fast tokenizer must agree on with tiktoken.
ASCII_CORPUS = [t for t in CODE + WHITESPACE_AND_NUMBERS if t.isascii()] + [
    "The quick brown fox jumps over the lazy dog. It's 5 o'clock; WE'LL see, they'd said.",
    "Hello, world! This is a test of the tokenizer: it should handle punctuation... and CAPS.",
    "I'm sure you've heard: don't panic!  Two  spaces,   three   spaces.\n\nNew paragraph.",
    "e-mail: someone@example.com, url: https://example.org/path?q=1&r=two#frag",
    "Mr. Smith's 3rd car cost $12,345.67 (incl. 20% VAT) on 01/02/2023 at 10:30am.",
]


def random_texts(n: int, seed: int = 0) -> list[str]:
    """Random strings drawn from many Unicode blocks, spaces and punctuation."""
    rng = random.Random(seed)
    blocks = [
        (0x20, 0x7E),
        (0xA0, 0x24F),
        (0x370, 0x3FF),
        (0x400, 0x4FF),
        (0x590, 0x6FF),
        (0x900, 0x97F),
        (0xE00, 0xE7F),
        (0x3040, 0x30FF),
        (0x4E00, 0x4FFF),
        (0xAC00, 0xAD00),
        (0x1F300, 0x1F64F),
        (0x2000, 0x206F),
        (0x10000, 0x1007F),
    ]
    texts = []
    for _ in range(n):
        chars = []
        for _ in range(rng.randint(1, 200)):
            r = rng.random()
            if r < 0.15:
                chars.append(rng.choice(" \t\n\r  "))
            else:
                lo, hi = rng.choice(blocks)
                chars.append(chr(rng.randint(lo, hi)))
        texts.append("".join(chars))
    return texts
