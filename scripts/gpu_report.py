"""Collect the folder `scripts/gpu_check.sh` filled into one JSON (``gpu_check.json``) and one Markdown table
(``gpu_check.md``, also printed), for BENCHMARKS.md.

    python scripts/gpu_report.py OUT_DIR

Reads, for every part ``NAME`` the check ran: ``NAME.rc`` (its exit status, or ``skipped``), ``NAME.json`` (its
numbers, when it wrote any) and, for the tests, ``gpu_tests.xml`` (JUnit: passed / failed / skipped counts);
``device.txt`` names the GPU. Exit status 0 when every part that ran passed, else 1.
"""

from __future__ import annotations

import datetime
import json
import sys
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any


def _status(rc: str) -> str:
    if rc == "skipped":
        return "skipped"
    return {"0": "passed", "124": "timed out"}.get(rc, f"failed (exit {rc})")


def _junit_counts(path: Path) -> dict[str, int]:
    root = ET.parse(path).getroot()
    suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
    total = {k: sum(int(s.get(k, 0)) for s in suites) for k in ("tests", "failures", "errors", "skipped")}
    total["passed"] = total["tests"] - total["failures"] - total["errors"] - total["skipped"]
    return total


def collect(folder: Path) -> dict[str, Any]:
    """The report of one gpu_check folder (see the module doc)."""
    parts: dict[str, dict[str, Any]] = {}
    for rc_file in sorted(folder.glob("*.rc")):
        part: dict[str, Any] = {"status": _status(rc_file.read_text().strip())}
        numbers = folder / f"{rc_file.stem}.json"
        if numbers.is_file():
            part["results"] = json.loads(numbers.read_text())
        parts[rc_file.stem] = part
    junit = folder / "gpu_tests.xml"
    if "gpu_tests" in parts and junit.is_file():
        parts["gpu_tests"]["results"] = _junit_counts(junit)
    device = folder / "device.txt"
    return {
        "date": datetime.date.today().isoformat(),
        "device": device.read_text().strip() if device.is_file() else "unknown",
        "parts": parts,
    }


def _scalars(results: Any, prefix: str = "") -> list[tuple[str, Any]]:
    """(dotted key, value) of every number or string in a nested result, in order."""
    if isinstance(results, dict):
        return [kv for k, v in results.items() for kv in _scalars(v, f"{prefix}{k}.")]
    if isinstance(results, (int, float, str)) and not isinstance(results, bool):
        return [(prefix.rstrip("."), results)]
    return []


def markdown(report: dict[str, Any]) -> str:
    lines = [f"GPU check, {report['date']}: {report['device']}", "", "| part | status | numbers |", "|---|---|---|"]
    for name, part in report["parts"].items():
        numbers = ", ".join(
            f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in _scalars(part.get("results", {}))
        )
        lines.append(f"| {name} | {part['status']} | {numbers or '—'} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1 or not Path(args[0]).is_dir():
        print("usage: python scripts/gpu_report.py OUT_DIR (the folder scripts/gpu_check.sh filled)", file=sys.stderr)
        return 2
    folder = Path(args[0])
    report = collect(folder)
    (folder / "gpu_check.json").write_text(json.dumps(report, indent=2) + "\n")
    table = markdown(report)
    (folder / "gpu_check.md").write_text(table)
    print(table)
    ran = [p["status"] for p in report["parts"].values() if p["status"] != "skipped"]
    return 0 if ran and all(s == "passed" for s in ran) else 1


if __name__ == "__main__":
    raise SystemExit(main())
