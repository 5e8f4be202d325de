"""HTML → plain text with trafilatura: main content only, code and math kept, no markdown markers.

Llama 3 kept code and math structure and dropped markdown markers. trafilatura's plain-text
output already has no markdown; ``include_formatting=False`` keeps it that way,
``favor_recall`` keeps short code blocks and formulas that the precision mode treats as
boilerplate, and ``include_tables`` keeps tabular data. MathML and ``<script type="math/tex">``
are rewritten to their TeX/alt text first (trafilatura would drop them), and ``<pre>``/``<code>``
keep their indentation and line breaks: each block is swapped for a placeholder paragraph
before extraction and put back verbatim (tags stripped, entities decoded) afterwards, since
trafilatura strips leading whitespace from every line. Inline ``<code>`` is unwrapped so it
stays inside its sentence.
"""

from __future__ import annotations

import html as htmllib
import re

_MATH_ALT_RE = re.compile(r"<math\b[^>]*\balttext=\"([^\"]*)\"[^>]*>.*?</math>", re.S | re.I)
_MATH_TEX_RE = re.compile(r"<script[^>]*type=\"math/tex[^\"]*\"[^>]*>(.*?)</script>", re.S | re.I)
_MATH_ANNOT_RE = re.compile(
    r"<math\b[^>]*>.*?<annotation[^>]*encoding=\"application/x-tex\"[^>]*>(.*?)</annotation>.*?</math>", re.S | re.I)


_PRE_RE = re.compile(r"<pre\b[^>]*>(.*?)</pre>", re.S | re.I)
_TAG_RE = re.compile(r"<[^>]+>")
_INLINE_CODE_RE = re.compile(r"</?(?:code|kbd|samp|tt)\b[^>]*>", re.I)
_PLACEHOLDER = "HERDCODEBLOCK{}X"
_PLACEHOLDER_RE = re.compile(r"HERDCODEBLOCK(\d+)X")


def _protect_code(html: str) -> tuple[str, list[str]]:
    blocks: list[str] = []

    def swap(m: re.Match[str]) -> str:
        blocks.append(htmllib.unescape(_TAG_RE.sub("", m.group(1))).strip("\n"))
        return f"<p>{_PLACEHOLDER.format(len(blocks) - 1)}</p>"

    html = _PRE_RE.sub(swap, html)
    return _INLINE_CODE_RE.sub("", html), blocks


def _math_to_text(html: str) -> str:
    html = _MATH_ANNOT_RE.sub(lambda m: f"<span>{m.group(1)}</span>", html)
    html = _MATH_ALT_RE.sub(lambda m: f"<span>{m.group(1)}</span>", html)
    return _MATH_TEX_RE.sub(lambda m: f"<span>{m.group(1)}</span>", html)


def html_to_text(html: str | bytes, url: str | None = None, *, favor_recall: bool = True,
                 include_tables: bool = True) -> str | None:
    """The page's main text, or None when trafilatura finds no content."""
    import trafilatura

    if isinstance(html, bytes):
        html = html.decode("utf-8", errors="replace")
    html, blocks = _protect_code(_math_to_text(html))
    text = trafilatura.extract(html, url=url, output_format="txt", include_comments=False,
                               include_tables=include_tables, include_formatting=False, include_links=False,
                               include_images=False, favor_recall=favor_recall, deduplicate=False)
    if text is None:
        return None
    return _PLACEHOLDER_RE.sub(lambda m: blocks[int(m.group(1))], text)
