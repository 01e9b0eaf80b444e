"""The help text of a command line taken from its module doc: the first paragraph is `--help`'s description,
the rest its epilog, printed as written (line breaks kept)."""

from __future__ import annotations

import argparse


def doc_parser(doc: str, prog: str | None = None) -> argparse.ArgumentParser:
    """An ArgumentParser whose description is ``doc``'s first paragraph and whose epilog is the rest, less an
    indented usage paragraph right after the first (argparse prints its own usage line)."""
    head, *rest = doc.strip("\n").split("\n\n")
    if rest and rest[0].startswith("    "):
        rest = rest[1:]
    return argparse.ArgumentParser(
        prog=prog,
        description=head,
        epilog="\n\n".join(rest) or None,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
