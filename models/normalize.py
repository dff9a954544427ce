"""Text normalisation for petitions: one pure function used by training, serving and indexing.

`normalize_text` removes scraping noise (HTML, ruby/pinyin residue, control characters, doubled
punctuation), maps traditional to simplified Chinese and bounds the length. It never drops Han
characters or other petition content. Chinese fullwidth punctuation (，！？：；（）…～) is kept as is;
everything else goes through Unicode NFKC (fullwidth digits and letters become ASCII).
"""

from __future__ import annotations

import html
import re
import threading
import unicodedata
from functools import lru_cache

__all__ = ["join_normalized", "normalize_text", "petition_text"]

# Chinese punctuation that NFKC would turn into ASCII ("，" -> ",", "…" -> "...").
_PROTECTED = "，！？：；（）…～"
_PROTECTED_SPLIT = re.compile(f"([{_PROTECTED}]+)")

_HAN = "\u3007\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0003134f"

# HTML: comments, script/style blocks, tags. A tag must start with a letter (or "/" + letter) so
# that text such as "温度<10度" survives. Block-level tags become a space, inline tags vanish.
_HTML_COMMENT = re.compile(r"<!--.*?-->", re.S)
_HTML_SCRIPT = re.compile(r"<(script|style)\b[^>]*>.*?</\1\s*>", re.S | re.I)
_BLOCK_TAG = re.compile(
    r"</?(?:br|p|div|li|ul|ol|tr|td|th|table|h[1-6]|hr|section|article|blockquote|pre)\b[^<>]*>", re.I
)
_INLINE_TAG = re.compile(r"</?[a-zA-Z][a-zA-Z0-9:-]*(?:\s[^<>]*)?/?>")

# Cc and Cf characters (but not \t \n \r etc., handled as whitespace) and lone surrogates.
_CONTROL = re.compile(
    "[\x00-\x08\x0e-\x1b\x7f-\x84\x86-\x9f"
    "\u00ad\u0600-\u0605\u061c\u06dd\u070f\u0890\u0891\u08e2\u180e\u200b-\u200f\u202a-\u202e"
    "\u2060-\u2064\u2066-\u206f\ufeff\ufff9-\ufffb\U000110bd\U000110cd\U00013430-\U0001343f"
    "\U0001bca0-\U0001bca3\U0001d173-\U0001d17a\U000e0001\U000e0020-\U000e007f"
    "\ud800-\udfff]"
)
_WHITESPACE = re.compile(r"\s+")

# Doubled Chinese punctuation ("，，" -> "，"); "……" and "——" are not in the set and are kept.
_DOUBLED_PUNCT = re.compile(r"([，。、；：])\1+")

# Ruby/pinyin residue: one or more parenthesised pinyin groups right after a Han character,
# e.g. 擔(dān)負(fù)起, 担（dān）, 担(dan1). Candidates are validated in `_drop_pinyin`.
_PINYIN_LETTERS = "a-zāáǎàēéěèīíǐìōóǒòūúǔùüǖǘǚǜêếềḿńňǹ\u0300-\u036f"
_PINYIN_SYL = f"[{_PINYIN_LETTERS}]{{1,7}}[1-5]?"
_PINYIN_PAREN = f"[(（] ?{_PINYIN_SYL}(?: {_PINYIN_SYL}){{0,3}} ?[)）]"
_PINYIN_RUN = re.compile(f"(?<=[{_HAN}])((?:{_PINYIN_PAREN})+)")
_PINYIN_ONE = re.compile(_PINYIN_PAREN)
_TONE_MARKS = re.compile("[āáǎàēéěèīíǐìōóǒòūúǔùǖǘǚǜếềḿńňǹ\u0300-\u036f]")
_SYLLABLE = re.compile(
    r"(?:[zcs]h|[bpmfdtnlgkhjqxrzcsyw])?"
    r"(?:iang|iong|uang|ueng|iao|ian|uai|uan|ang|eng|ing|ong|ai|ei|ui|ao|ou|iu|ie|ve|ue|er|an|en|in|un|vn"
    r"|ia|ua|uo|a|o|e|i|u|v)"
)


def _is_pinyin(paren: str) -> bool:
    """True when a "(dān)"-like group is pinyin: toned or numbered, or toneless of 2+ letters."""
    body = paren[1:-1].strip()
    toned = bool(_TONE_MARKS.search(body))
    for syl in body.split(" "):
        numbered = syl[-1].isdigit()
        bare = unicodedata.normalize("NFD", syl.rstrip("12345"))
        bare = "".join(c for c in bare if not unicodedata.combining(c)).replace("ü", "v").replace("ê", "e")
        if not _SYLLABLE.fullmatch(bare):
            return False
        if not (toned or numbered or len(bare) >= 2):
            return False
    return True


def _drop_pinyin(match: re.Match[str]) -> str:
    """Drop leading pinyin groups of a run; keep the run from the first non-pinyin group on."""
    groups = _PINYIN_ONE.findall(match.group(1))
    for i, group in enumerate(groups):
        if not _is_pinyin(group):
            return "".join(groups[i:])
    return ""


@lru_cache(maxsize=1)
def _t2s():
    import opencc

    try:
        return opencc.OpenCC("t2s")
    except Exception:  # older packagings want the file name
        return opencc.OpenCC("t2s.json")


_T2S_LOCK = threading.Lock()


def _to_simplified(text: str) -> str:
    converter = _t2s()
    with _T2S_LOCK:
        return converter.convert(text)


def _nfkc(text: str) -> str:
    """NFKC everywhere except on the protected Chinese punctuation."""
    if text.isascii():
        return text
    parts = _PROTECTED_SPLIT.split(text)
    for i in range(0, len(parts), 2):  # even indices: text between protected runs
        parts[i] = unicodedata.normalize("NFKC", parts[i])
    return "".join(parts)


def _strip_html(text: str) -> str:
    """Remove tags and decode entities, repeating for double-escaped markup (bounded)."""
    for _ in range(4):
        if "<" not in text and "&" not in text:
            break
        before = text
        text = _HTML_COMMENT.sub("", text)
        text = _HTML_SCRIPT.sub(" ", text)
        text = _BLOCK_TAG.sub(" ", text)
        text = _INLINE_TAG.sub("", text)
        text = html.unescape(text)
        if text == before:
            break
    return text


def normalize_text(text: str | None, max_chars: int = 8000) -> str:
    """Clean one petition field: NFKC, HTML and pinyin residue removed, t2s, single spaces, bounded length.

    None or empty gives "". The result is at most `max_chars` characters and is stable under a
    second call (normalize_text(normalize_text(x)) == normalize_text(x)).
    """
    if not text:
        return ""
    text = _CONTROL.sub("", _nfkc(text))
    for _ in range(3):  # entities may decode to markup, control or compatibility characters
        html_free = _strip_html(text)
        if html_free == text:
            break
        text = _CONTROL.sub("", _nfkc(html_free))
    text = _WHITESPACE.sub(" ", text)
    if "(" in text or "（" in text:
        text = _PINYIN_RUN.sub(_drop_pinyin, text)
    if not text.isascii():
        text = _to_simplified(text)
    text = _DOUBLED_PUNCT.sub(r"\1", text)
    text = text.strip()
    if len(text) > max_chars:
        text = text[:max_chars].rstrip()
    return text


def petition_text(title: str | None, text: str | None, max_chars: int = 8000) -> str:
    """Normalised title and text joined by "\\n"; empty parts skipped, a title repeated in the text once."""
    return join_normalized(normalize_text(title, max_chars), normalize_text(text, max_chars), max_chars)


def join_normalized(title: str, text: str, max_chars: int = 8000) -> str:
    """`petition_text` of an already normalised title and text."""
    joined = text if title and text.startswith(title) else "\n".join(p for p in (title, text) if p)
    return joined[:max_chars].rstrip()
