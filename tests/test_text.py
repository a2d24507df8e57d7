"""`rnnchar prep`: hard-wrapped books -> one sentence per line."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from click.testing import CliRunner

from rnnchar.cli import main
from rnnchar.text import book_sentences, paragraphs, split_sentences

CORPORA = Path(__file__).resolve().parent.parent.parent / "shared" / "corpora"
BOOK = CORPORA / "sherlock-holmes.txt"
REFERENCE = CORPORA / "sherlock-holmes-sentences.txt"  # made independently (see SOURCES.md there)
needs_book = pytest.mark.skipif(not BOOK.exists() or not REFERENCE.exists(), reason="shared corpora absent")


@pytest.mark.parametrize("paragraph, expected", [
    ("It rained. We stayed in.", ["It rained.", "We stayed in."]),
    ("Mr. Holmes came at six. Dr. Watson did not.", ["Mr. Holmes came at six.", "Dr. Watson did not."]),
    ("Where? Here! Now.", ["Where?", "Here!", "Now."]),
    ("“Come in,” said he. “Sit down.”", ["“Come in,” said he.", "“Sit down.”"]),
    ('He said "Go." Then he left.', ['He said "Go."', "Then he left."]),
    ("It was J. H. Smith at No. 3 Baker St. and nobody else.",
     ["It was J. H. Smith at No. 3 Baker St. and nobody else."]),
    ("We met in the U.S. Army once.", ["We met in the U.S. Army once."]),
    ("So did I. Then we left.", ["So did I.", "Then we left."]),
    ("Wait. it is lower case. Really.", ["Wait. it is lower case.", "Really."]),
    ("It cost 3.5 pounds. 1888 was a year.", ["It cost 3.5 pounds.", "1888 was a year."]),
    ('"Seven!" I answered. "Good," said he.', ['"Seven!" I answered.', '"Good," said he.']),
    ("(It was late.) The end.", ["(It was late.)", "The end."]),
    ("No end mark", ["No end mark"]),
])
def test_split_sentences_hand_written_cases(paragraph, expected):
    assert split_sentences(paragraph) == expected


def test_paragraphs_unwrap_lines_and_split_at_blank_lines():
    text = "One line\nwrapped  here.\n\n  \nSecond\r\nparagraph.\n\n\n"
    assert paragraphs(text) == ["One line wrapped here.", "Second paragraph."]


def test_headings_are_dropped_and_counted():
    text = "CHAPTER I.\n\nIt began. It ended.\n\n* * *\n\nII.\n\nAgain it began.\n"
    sentences, report = book_sentences(text, max_len=10)
    assert sentences == ["It began.", "It ended.", "Again it began."]
    assert (report.sentences, report.paragraphs_dropped, report.too_long) == (3, 3, 1)


@needs_book
def test_prep_a_real_book_keeps_every_character_and_agrees_with_an_independent_split(tmp_path):
    out = tmp_path / "sentences.txt"
    r = CliRunner().invoke(main, ["prep", str(BOOK), "-o", str(out)])
    assert r.exit_code == 0, r.output
    lines = out.read_text(encoding="utf-8").splitlines()
    n = int(re.search(r"([\d,]+) sentences", r.stderr).group(1).replace(",", ""))
    assert n == len(lines) > 5000
    assert all(line and line == line.strip() and "  " not in line for line in lines)
    too_long = int(re.search(r"(\d+) longer than 500", r.stderr).group(1))
    assert sum(len(line) > 500 for line in lines) == too_long
    # nothing but whitespace and headings is lost: the book's lower-case paragraphs, character for character
    book = BOOK.read_text(encoding="utf-8")
    kept = [p for p in re.split(r"\n\s*\n", book) if any(c.islower() for c in p)]
    assert "".join("".join(lines).split()) == "".join("".join(kept).split())
    # the reference file was split by another rule set and converted to ASCII: most of its
    # sentences must come out of ours character for character (double quotes were re-balanced there)
    ascii_of = str.maketrans({"“": '"', "”": '"', "‘": "'", "’": "'", "—": "--", "£": "L", "é": "e", "è": "e",
                              "à": "a", "â": "a", "æ": "ae", "œ": "oe", "½": "1/2", "_": ""})
    ours = {line.translate(ascii_of).replace('"', "").strip() for line in lines}
    reference = REFERENCE.read_text(encoding="utf-8").splitlines()
    found = sum(ref.replace('"', "").strip() in ours for ref in reference)
    assert found / len(reference) > 0.97, found / len(reference)


def test_prep_reads_stdin_and_reports_on_stderr_only():
    r = CliRunner().invoke(main, ["prep", "-"], input="A wrapped\nline. And another\none.\n")
    assert r.exit_code == 0, r.output
    assert r.stdout == "A wrapped line.\nAnd another one.\n"
    assert "2 sentences" in r.stderr


@pytest.mark.parametrize("args, stdin, code, message", [
    (["prep", "-"], "\n\n  \n", 1, "no sentences"),
    (["prep", "/no/such/book.txt"], None, 1, "book.txt"),
    (["prep", "-"], None, 1, "no sentences"),
    (["prep"], None, 2, "Missing argument"),
])
def test_prep_errors(args, stdin, code, message):
    r = CliRunner().invoke(main, args, input=stdin)
    assert r.exit_code == code, r.output
    assert message in r.output and "Traceback" not in r.output
