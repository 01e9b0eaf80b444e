"""`funrl.cli_help.doc_parser`: a module doc becomes `--help`'s description and epilog."""

from __future__ import annotations

from funrl.cli_help import doc_parser

DOC = """Do one thing well.

    python -m tool IN OUT

IN is read, OUT written.

Nothing else.
"""


def test_doc_parser_splits_head_from_rest_and_drops_the_usage_paragraph() -> None:
    p = doc_parser(DOC, prog="tool")
    assert p.prog == "tool"
    assert p.description == "Do one thing well."
    assert p.epilog == "IN is read, OUT written.\n\nNothing else."


def test_doc_parser_keeps_a_second_paragraph_that_is_not_indented() -> None:
    p = doc_parser("Head.\n\nMore text.\n")
    assert p.description == "Head."
    assert p.epilog == "More text."


def test_doc_parser_of_a_one_paragraph_doc_has_no_epilog() -> None:
    p = doc_parser("Only a head.\n")
    assert p.description == "Only a head."
    assert p.epilog is None


def test_doc_parser_help_keeps_the_docs_line_breaks() -> None:
    text = doc_parser("Head.\n\nline one\nline two\n", prog="t").format_help()
    assert "line one\nline two" in text
