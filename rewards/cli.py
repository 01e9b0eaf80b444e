"""``python -m rewards``: score JSONL hypothesis/reference pairs from the command line.

    python -m rewards score IN.jsonl [--weights wer=1,keyword=0.5] [--plugin module:function]... [--out OUT.jsonl]
                                     [--allow-nonfinite] [--normalizer basic|whisper_en]
    python -m rewards list [--plugin module:function]... [-v]
    python -m rewards replay RUN_DIR/rollouts.jsonl [--weights ...] [--plugin ...]... [--advantage grpo]
                                     [--run-advantage grpo] [--out REPORT.json] [--normalizer basic|whisper_en]

Every input line is validated before anything is scored or written; ``--out`` is
written to a temporary file in the same folder and renamed into place, so a failed
run never leaves a half-written output (nor touches an existing one).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from rewards.advantages import ESTIMATORS
from rewards.files import created_mode
from rewards.registry import (
    REGISTRY,
    TOTAL,
    NonFiniteRewardError,
    RewardError,
    load_plugin,
    resolve_weights,
    score_batch,
)
from rewards.replay import RolloutsError, format_report, replay
from rewards.text import NORMALIZERS, NormalizerError, check_normalizer

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT = 0, 1, 2

_EPILOG = """\
input (IN.jsonl, or - for stdin): one JSON object per line,
  {"hyp": str, "ref": str, "lang": str (optional), "keywords": [str, ...] (optional)}
  Other keys are passed to the rewards in the item's meta dict. Blank lines are skipped.
  "ref": "" marks a noise-only clip (the right output is empty).
output: one JSON object per input line, same order, with the name of every reward
  that was run and "total" = sum of weight * reward over the rewards that apply
  (null = not applicable), to stdout or --out; a per-reward count/mean/std table goes
  to stderr. A NaN or infinite reward stops the run (exit 1, nothing written) unless
  --allow-nonfinite is given: then it is written as null and counted on stderr.
weights: --weights wer=1,keyword=0.5 gives the listed rewards those weights and every
  other reward weight 0; rewards of weight 0 are not run (nor in the output).
  Without --weights every reward has weight 1.
plugins: --plugin my_module:my_reward imports my_module (from PYTHONPATH or the current
  folder) and registers my_reward(hyps, refs, metas) -> list[float | None] under its own
  name (or the name it gave itself with @rewards.register). Repeat for several.
normalizer: --normalizer whisper_en scores wer and keyword on text put through the Whisper
  English normaliser (numbers as digits, American spellings, contractions expanded), as
  published English ASR tables are; basic (the default) is lower-case without punctuation.
exit codes: 0 ok; 2 bad input (malformed line, unknown reward, bad weight, plugin that
  does not load, missing file, a normaliser whose package is missing: one line on stderr
  names the line or the name);
  1 a reward function raised while scoring, returned anything but one number
  or null per line, or a NaN / infinity (without --allow-nonfinite).
"""

_REPLAY_EPILOG = """\
input: a run's rollouts.jsonl (or - for stdin), read one line at a time; one line per step,
  {"step": N, "clips": [{"ref", "hyps": [...], "total": [...], "meta": {"lang", "keywords"}}, ...]}.
  Each clip is one group. Files written before "meta" was logged are rescored as if no clip had
  a language or keywords (a note on stderr says so).
what is compared: the run's advantages (its logged totals under --run-advantage) with the new
  ones (the totals rescored with --weights, under --advantage). Totals are compared as float32,
  as training holds them, so ties and flat groups are exact equalities.
  flat groups          share of groups whose totals are all equal (or G < 2): advantage 0
  best changed         share of groups whose SET of best hypotheses (argmax of the total, all
                       tied ones) changes; a tied best that stays tied the same way is unchanged
  Spearman (primary)   rank correlation of new vs run advantages, pooled over every hypothesis
                       of every group (sees the order in a group and each group's strength, so
                       also the estimator); 1 = every advantage keeps its rank
  mean per group       mean of the per-group rank correlations over groups flat in neither
                       (blind to the estimator)
  per-reward table     count / mean / std of each reward of the new mix, its total and the
                       run's logged total ("total (run)"), over all hypotheses
  A run with rollout.truncated=penalty logged totals that include the overlong penalty, which
  replay cannot recompute (token counts are not logged).
estimators: grpo (r - mean) / (std + 1e-6), unbiased std; dr_grpo r - mean; rloo r_i - mean of
  the others; all 0 for a flat group. --run-advantage is the run's learner.advantage (its
  config.yaml); --advantage defaults to it, so only the reward mix differs.
output: the table on stdout; --out REPORT.json also writes the numbers (atomically).
exit codes: 0 ok; 2 bad input (missing file, malformed line: one line on stderr naming
  FILE:LINE; unknown reward, bad weight, plugin that does not load); 1 a reward failed.
"""


class CliError(Exception):
    """A user error: printed as one line, exit code 2."""


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m rewards",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Score ASR hypotheses against references with the FunRL reward library "
        "(wer, keyword, hallucination, language, plus plugins).",
        epilog=_EPILOG,
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="{score,list,replay}")
    plugin_help = "import and register a reward function 'module:function' (repeatable)"
    s = sub.add_parser(
        "score",
        help="score a JSONL file of hyp/ref pairs",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=_EPILOG,
    )
    s.add_argument("input", metavar="IN.jsonl", help="input JSONL file ('-' reads stdin)")
    s.add_argument(
        "--weights",
        metavar="NAME=W,...",
        help="reward weights for 'total', e.g. wer=1,keyword=0.5 (unlisted rewards get 0; default: all 1)",
    )
    s.add_argument("--plugin", action="append", default=[], metavar="MODULE:FUNCTION", help=plugin_help)
    s.add_argument("--out", metavar="OUT.jsonl", help="write the scores here (atomically) instead of stdout")
    s.add_argument(
        "--allow-nonfinite",
        action="store_true",
        help="write a NaN or infinite reward (and total) as null and exit 0, instead of failing",
    )
    _normalizer_option(s)
    _replay_parser(sub, plugin_help)
    lst = sub.add_parser("list", help="print the registered reward names")
    lst.add_argument("--plugin", action="append", default=[], metavar="MODULE:FUNCTION", help=plugin_help)
    lst.add_argument("-v", "--verbose", action="store_true", help="also print each reward's first doc line")
    return p


def _replay_parser(sub, plugin_help: str) -> None:
    r = sub.add_parser(
        "replay",
        help="rescore a run's rollouts.jsonl with another reward mix, without training",
        description="Rescore every logged group with another reward mix and report how the advantages would change.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=_REPLAY_EPILOG,
    )
    r.add_argument("input", metavar="ROLLOUTS.jsonl", help="a run's RUN_DIR/rollouts.jsonl ('-' reads stdin)")
    r.add_argument(
        "--weights",
        metavar="NAME=W,...",
        help="the new reward mix, e.g. wer=1,keyword=0.5 (unlisted rewards get 0; default: all 1)",
    )
    r.add_argument("--plugin", action="append", default=[], metavar="MODULE:FUNCTION", help=plugin_help)
    r.add_argument(
        "--run-advantage",
        choices=ESTIMATORS,
        default="grpo",
        help="the run's advantage estimator, its learner.advantage (default: grpo)",
    )
    r.add_argument(
        "--advantage",
        choices=ESTIMATORS,
        help="the estimator of the new advantages (default: the same as --run-advantage)",
    )
    r.add_argument("--out", metavar="REPORT.json", help="also write the numbers as JSON here (atomically)")
    _normalizer_option(r)


def _normalizer_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--normalizer",
        choices=NORMALIZERS,
        default="basic",
        help="text normaliser of wer and keyword: basic (lower-case, no punctuation; default) or "
        "whisper_en (the Whisper English normaliser of published ASR tables)",
    )


def _check_normalizer(name: str) -> None:
    try:
        check_normalizer(name)
    except NormalizerError as exc:
        raise CliError(f"--normalizer: {exc}") from None


def parse_weights(spec: str) -> dict[str, float]:
    """'wer=1,keyword=0.5' -> {'wer': 1.0, 'keyword': 0.5}; raises CliError naming the bad entry."""
    out: dict[str, float] = {}
    for item in spec.split(","):
        name, sep, value = (part.strip() for part in item.partition("="))
        if not sep or not name:
            raise CliError(f"--weights: bad entry {item.strip()!r}: expected NAME=NUMBER, e.g. wer=1,keyword=0.5")
        if name in out:
            raise CliError(f"--weights: reward {name!r} is given twice")
        try:
            w = float(value)
        except ValueError:
            raise CliError(f"--weights: weight of {name!r} is not a number: {value!r}") from None
        if not math.isfinite(w):
            raise CliError(f"--weights: weight of {name!r} must be finite, got {value!r}")
        out[name] = w
    return out


def _read_bytes(path: str) -> bytes:
    if path == "-":
        return sys.stdin.buffer.read()
    try:
        return Path(path).read_bytes()
    except FileNotFoundError:
        raise CliError(f"input file not found: {path}") from None
    except OSError as exc:
        raise CliError(f"cannot read input file {path}: {exc.strerror or exc}") from None


def _check_item(obj: object, where: str) -> dict:
    if not isinstance(obj, dict):
        raise CliError(f"{where}: expected a JSON object, got {type(obj).__name__}")
    for key in ("hyp", "ref"):
        if key not in obj:
            raise CliError(f'{where}: missing {key!r} (each line needs "hyp" and "ref" strings)')
        if not isinstance(obj[key], str):
            raise CliError(f"{where}: {key!r} must be a string, got {type(obj[key]).__name__}")
    lang = obj.get("lang")
    if lang is not None and not isinstance(lang, str):
        raise CliError(f"{where}: 'lang' must be a string such as \"en\", got {type(lang).__name__}")
    kws = obj.get("keywords")
    if kws is not None and not (isinstance(kws, list) and all(isinstance(k, str) for k in kws)):
        raise CliError(f"{where}: 'keywords' must be a list of strings")
    return obj


def read_items(path: str) -> list[dict]:
    """Parse and validate every line of a JSONL file; the first bad line raises CliError."""
    return [item for _, item in read_numbered_items(path)]


def read_numbered_items(path: str) -> list[tuple[int, dict]]:
    """``read_items`` with each item's line number (blank lines are skipped, so they differ from indices)."""
    data = _read_bytes(path)
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    items = []
    for num, raw in enumerate(data.split(b"\n"), start=1):
        where = f"{path}, line {num}" if path != "-" else f"stdin, line {num}"
        try:
            line = raw.decode("utf-8").strip()
        except UnicodeDecodeError as exc:
            raise CliError(f"{where}: not valid UTF-8 ({exc.reason} at byte {exc.start})") from None
        if not line:
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise CliError(f"{where}: invalid JSON ({exc.msg} at column {exc.colno})") from None
        items.append((num, _check_item(obj, where)))
    return items


def _check_out(path: str) -> tuple[Path, Path]:
    """``--out``'s file and folder; a missing folder or a folder given as the file is a CliError."""
    target = Path(path)
    folder = target.parent if str(target.parent) else Path(".")
    if not folder.is_dir():
        raise CliError(f"--out: folder {folder} does not exist")
    if target.is_dir():
        raise CliError(f"--out: {target} is a folder; give a file path")
    return target, folder


def _write_atomic(path: str, lines: list[str]) -> None:
    target, folder = _check_out(path)
    try:
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{target.name}.", suffix=".tmp")
    except OSError as exc:
        raise CliError(f"--out: cannot write in {folder}: {exc.strerror}") from None
    try:
        os.fchmod(fd, created_mode(0o666))  # what open(path, "w") would give, not mkstemp's 0600
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.writelines(lines)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        raise CliError(f"--out: cannot write {target}: {exc.strerror}") from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def summary_table(rows: list[dict[str, float | None]], names: Sequence[str] | None = None) -> str:
    """Per-reward count of non-None values, mean and (population) std, as an aligned text table."""
    names = list(rows[0]) if rows else list(names or [*REGISTRY, TOTAL])
    width = max(len("reward"), *(len(n) for n in names))
    lines = [f"{'reward':<{width}}  {'count':>7}  {'mean':>8}  {'std':>8}"]
    for name in names:
        vals = [v for v in (r[name] for r in rows) if v is not None]
        if vals:
            mean = sum(vals) / len(vals)
            std = math.sqrt(sum((v - mean) ** 2 for v in vals) / len(vals))
            lines.append(f"{name:<{width}}  {len(vals):>7}  {mean:>8.4f}  {std:>8.4f}")
        else:
            lines.append(f"{name:<{width}}  {0:>7}  {'-':>8}  {'-':>8}")
    return "\n".join(lines)


def _load_plugins(specs: Sequence[str]) -> None:
    if specs and os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.append(os.getcwd())  # `python -m` has the current folder; the console script does not
    for spec in specs:
        try:
            load_plugin(spec)
        except RewardError as exc:
            raise CliError(f"--plugin {exc}") from None


def _nonfinite_as_null(rows: list[dict[str, float | None]], lines: list[int]) -> list[str]:
    """Replace every NaN / inf in ``rows`` by None (in place); returns 'NAME on line N' for each."""
    found = []
    for row, num in zip(rows, lines):
        for name, v in row.items():
            if v is not None and not math.isfinite(v):
                row[name] = None
                found.append(f"{name} on line {num}")
    return found


def _located(exc: RewardError, where: str, lines: list[int]) -> str:
    """The library's message, with the input line of the clip it names."""
    if exc.item is None:
        return str(exc)
    hint = "; --allow-nonfinite writes it as null" if isinstance(exc, NonFiniteRewardError) else ""
    return f"{exc} ({where}, line {lines[exc.item]}){hint}"


def cmd_score(args: argparse.Namespace) -> int:
    _load_plugins(args.plugin)
    weights = parse_weights(args.weights) if args.weights is not None else None
    try:
        active = [name for name, w in resolve_weights(weights).items() if w != 0.0]
    except RewardError as exc:
        raise CliError(f"--weights: {exc}") from None
    _check_normalizer(args.normalizer)
    numbered = read_numbered_items(args.input)
    lines, items = [num for num, _ in numbered], [it for _, it in numbered]
    metas = [{k: v for k, v in it.items() if k not in ("hyp", "ref")} for it in items]
    try:
        rows = score_batch(
            [it["hyp"] for it in items],
            [it["ref"] for it in items],
            metas,
            weights,
            allow_nonfinite=args.allow_nonfinite,
            normalizer=args.normalizer,
        )
    except RewardError as exc:
        where = "stdin" if args.input == "-" else args.input
        print(f"rewards: error: {_located(exc, where, lines)}", file=sys.stderr)
        return EXIT_FAILED
    nonfinite = _nonfinite_as_null(rows, lines)
    out = [json.dumps(row, ensure_ascii=False, allow_nan=False) + "\n" for row in rows]
    if args.out:
        _write_atomic(args.out, out)
    else:
        sys.stdout.writelines(out)
        sys.stdout.flush()
    print(summary_table(rows, [*active, TOTAL]), file=sys.stderr)
    if nonfinite:
        print(
            f"rewards: warning: {len(nonfinite)} non-finite values written as null: "
            f"{', '.join(nonfinite[:10])}{' ...' if len(nonfinite) > 10 else ''}",
            file=sys.stderr,
        )
    return EXIT_OK


def cmd_replay(args: argparse.Namespace) -> int:
    _load_plugins(args.plugin)
    weights = parse_weights(args.weights) if args.weights is not None else None
    try:
        resolve_weights(weights)
    except RewardError as exc:
        raise CliError(f"--weights: {exc}") from None
    if args.out:
        _check_out(args.out)
    _check_normalizer(args.normalizer)
    try:
        report = replay(
            args.input,
            weights,
            advantage=args.advantage or args.run_advantage,
            run_advantage=args.run_advantage,
            normalizer=args.normalizer,
        )
    except RolloutsError as exc:
        raise CliError(str(exc)) from None
    except RewardError as exc:
        print(f"rewards: error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    if report.clips_without_meta:
        print(
            f"rewards: note: {report.clips_without_meta} of {report.groups} clips have no 'meta' (a run from "
            "before rollouts.jsonl logged it): rescored as if they had no language and no keywords",
            file=sys.stderr,
        )
    print(format_report(report))
    sys.stdout.flush()
    if args.out:
        _write_atomic(args.out, [json.dumps(report.as_dict(), indent=2, allow_nan=False) + "\n"])
    return EXIT_OK


def cmd_list(args: argparse.Namespace) -> int:
    _load_plugins(args.plugin)
    for name, fn in REGISTRY.items():
        doc = (fn.__doc__ or "").strip().splitlines()
        print(f"{name}\t{doc[0] if doc else ''}" if args.verbose else name)
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m rewards``; returns the exit code."""
    args = _parser().parse_args(argv)
    try:
        return {"score": cmd_score, "list": cmd_list, "replay": cmd_replay}[args.command](args)
    except CliError as exc:
        print(f"rewards: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except BrokenPipeError:  # e.g. `python -m rewards score x.jsonl | head`
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK
