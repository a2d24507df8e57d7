"""Books -> one sentence per line, for sentence-mode training (`rnnchar prep book.txt`).

    sentences, report = book_sentences(Path("corpus.txt").read_text(), max_len=500)
    print(report.sentences, "sentences,", report.too_long, "too long")

Standard library only. The rule, kept simple enough to state in one paragraph:
paragraphs are separated by blank lines; the hard-wrapped lines of a paragraph
are joined with single spaces (all runs of whitespace collapse); a paragraph
with no lower-case letter (a heading, a chapter number, `* * *`) is dropped; a
sentence ends after `.`, `!` or `?`, plus any closing quotes or brackets, when
whitespace and then a capital letter or digit (optionally after opening quotes
or brackets) follow. There is no break after a title or other common
abbreviation (`Mr.`, `Mrs.`, `Dr.`, `St.`, `No.`, `etc.`, ...), after a single
capital letter other than `I` (an initial), or after a word with an inner
period (`U.S.`, `i.e.`), nor after a quoted `!` or `?` followed by "I" and a
lower-case word (a speech tag: `"Seven!" I answered.`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

ABBREVIATIONS = frozenset(
    "mr mrs ms messrs dr st mt jr sr prof rev col gen capt lt sgt gov hon no nos vol vols ch chap fig "
    "ed vs etc cf esq co inc ltd bros ave rd sq".split())
_CLOSERS = "\"'”’)]_»"
_OPENERS = "\"'“‘([_«"
# an end mark, its closing quotes/brackets, whitespace, then (opening quotes and) a capital or digit
_BREAK = re.compile(rf"([.!?][{re.escape(_CLOSERS)}]*)\s+(?=[{re.escape(_OPENERS)}]*([^\W_]))")
_WORD_BEFORE = re.compile(r"([\w.]+)\.$")
_SPEECH_TAG = re.compile(r"I [a-z]")


@dataclass
class PrepReport:
    sentences: int
    too_long: int  # sentences over max_len characters (training splits them into pieces)
    paragraphs_dropped: int  # paragraphs without a lower-case letter: headings, numbers, separators


def paragraphs(text: str) -> list[str]:
    """Blank-line separated blocks, each unwrapped into one line with single spaces."""
    blocks = re.split(r"\n[ \t\r\f\v]*\n", text.replace("\r\n", "\n"))
    return [" ".join(b.split()) for b in blocks if b.strip()]


def _is_abbreviation(head: str) -> bool:
    """Does `head` (the text up to and including a period) end with an abbreviation or initial?"""
    m = _WORD_BEFORE.search(head)
    if m is None:
        return False
    word = m.group(1).lstrip(_OPENERS)
    if "." in word:  # U.S., i.e., e.g.
        return True
    if len(word) == 1 and word.isupper() and word != "I":  # an initial: J. Smith
        return True
    return word.lower() in ABBREVIATIONS


def split_sentences(paragraph: str) -> list[str]:
    """One unwrapped paragraph -> its sentences, by the module's rule."""
    out, start = [], 0
    for m in _BREAK.finditer(paragraph):
        if not (m.group(2).isupper() or m.group(2).isdigit()):
            continue
        mark, quoted = paragraph[m.start(1)], len(m.group(1)) > 1
        if mark == "." and _is_abbreviation(paragraph[start:m.start(1) + 1]):
            continue
        if mark in "!?" and quoted and _SPEECH_TAG.match(paragraph, m.end()):
            continue
        out.append(paragraph[start:m.end(1)])
        start = m.end()
    out.append(paragraph[start:])
    return [s for s in out if s]


def book_sentences(text: str, max_len: int = 500) -> tuple[list[str], PrepReport]:
    """Every sentence of a hard-wrapped book, in order, and what happened on the way."""
    sentences, dropped = [], 0
    for para in paragraphs(text):
        if not any(c.islower() for c in para):
            dropped += 1
            continue
        sentences.extend(split_sentences(para))
    too_long = sum(len(s) > max_len for s in sentences)
    return sentences, PrepReport(len(sentences), too_long, dropped)
