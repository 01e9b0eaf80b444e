"""Build the built-in demo speech task: `python -m funrl.demo.build OUT_DIR [--seed N] [--size S] [--splits ...]`.

Writes ordinary manifests (docs/design.md#data-manifest) — `sft_train.jsonl`, `rl_train.jsonl`, `dev.jsonl`,
`test.jsonl` — and `wav/` (16-bit 16 kHz mono) into OUT_DIR, from speech synthesised locally
(espeak-ng voices and the piper neural voice) and synthetic noise:

* English sentences of 3–6 common words; a share contain rarer keywords (listed in `keywords`;
  for part of them the keywords, sometimes with one distractor, are also given as `context`);
* Mandarin sentences (`lang: "zh"`) from a small pool of common characters;
* 30–40 % of speech clips mixed with white/pink/babble noise at 0–15 dB SNR;
* noise-only clips (`text: ""`) in rl_train, dev and test — never in sft_train, as in real SFT data.

Splits are made by sentence: no sentence occurs in two splits (checked after every build).
The output is deterministic for a seed and cached: `DONE` holds a hash of the parameters and the
splits built, a second call with the same parameters returns at once, a call asking for more splits
renders only those, and a folder without a valid stamp is rebuilt (in a temporary folder that is
renamed into place when complete).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import hashlib
import json
import multiprocessing
import os
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import soundfile as sf

from funrl.demo.plan import BUILD_VERSION, LATER_FIELDS, PRESETS, DemoSizes, plan_clips
from funrl.demo.render import SAMPLE_RATE, ClipSpec, render_to_file
from funrl.demo.text import fingerprint
from funrl.demo.tts import check_voices
from policy.files import replace_dir

SPLITS = ("sft_train", "rl_train", "dev", "test")
TRAIN_SPLITS = ("sft_train", "rl_train")
_OWN_ENTRIES = {f"{s}.jsonl" for s in SPLITS} | {"wav", "DONE", "build.json"}


@dataclass(frozen=True)
class DemoPaths:
    """Where a built demo data set lives."""

    root: Path

    def manifest(self, split: str) -> Path:
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; the demo has {', '.join(SPLITS)}")
        return self.root / f"{split}.jsonl"

    @property
    def sft_train(self) -> Path:
        return self.manifest("sft_train")

    @property
    def rl_train(self) -> Path:
        return self.manifest("rl_train")

    @property
    def dev(self) -> Path:
        return self.manifest("dev")

    @property
    def test(self) -> Path:
        return self.manifest("test")


def cache_key(seed: int, sizes: DemoSizes) -> str:
    """Hash of everything the output depends on (parameters, text pools, builder version)."""
    blob = json.dumps(
        {
            "version": BUILD_VERSION,
            "seed": int(seed),
            "sizes": {k: v for k, v in dataclasses.asdict(sizes).items() if LATER_FIELDS.get(k, ()) != v},
            "text": fingerprint(),
            "sample_rate": SAMPLE_RATE,
        },
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode()).hexdigest()


def built_splits(out_dir: str | os.PathLike, seed: int = 0, sizes: DemoSizes | None = None) -> frozenset[str]:
    """The splits a finished build of these parameters holds in `out_dir` (none when absent or stale).

    `DONE` holds the parameters' hash, then a `splits:` line (a stamp without that line holds all splits).
    """
    stamp = Path(out_dir) / "DONE"
    lines = stamp.read_text().splitlines() if stamp.is_file() else []
    if not lines or lines[0].strip() != cache_key(seed, sizes or DemoSizes()):
        return frozenset()
    named = [ln.split(":", 1)[1].split() for ln in lines[1:] if ln.startswith("splits:")]
    return frozenset(named[0] if named else SPLITS) & frozenset(SPLITS)


def is_built(
    out_dir: str | os.PathLike, seed: int = 0, sizes: DemoSizes | None = None, splits: Sequence[str] = SPLITS
) -> bool:
    return set(splits) <= built_splits(out_dir, seed, sizes)


def check_split_by_sentence(texts: dict[str, set[str]]) -> None:
    """Raise if a non-empty sentence occurs in two splits (test/dev vs training above all)."""
    names = list(texts)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            shared = (texts[a] & texts[b]) - {""}
            if shared:
                raise RuntimeError(
                    f"demo data: {len(shared)} sentence(s) occur in both {a} and {b}, "
                    f"e.g. {sorted(shared)[:3]}: splits must be disjoint by sentence"
                )


def _check_replaceable(out_dir: Path) -> None:
    if out_dir.exists() and not out_dir.is_dir():
        raise FileExistsError(f"{out_dir} exists and is not a folder; choose another data folder")
    foreign = sorted(set(os.listdir(out_dir)) - _OWN_ENTRIES) if out_dir.is_dir() else []
    if foreign:
        raise FileExistsError(
            f"{out_dir} holds files the demo builder did not write ({foreign[:5]}); "
            "refusing to replace it: choose an empty or new data folder"
        )


def remove_stale_builds(out_dir: Path) -> None:
    """Delete temp folders of builds whose process is gone (a crashed or killed build)."""
    for tmp in out_dir.parent.glob(f".{out_dir.name}.building-*"):
        try:
            os.kill(int(tmp.name.rsplit("-", 1)[1]), 0)
        except (ValueError, ProcessLookupError):
            shutil.rmtree(tmp, ignore_errors=True)
        except PermissionError:
            pass


def render_all(
    specs: Sequence[ClipSpec], job: Callable[[ClipSpec], tuple[str, int]], workers: int, progress: bool, desc: str
) -> dict[str, int]:
    """Run ``job`` (a picklable clip renderer returning (name, samples)) on every spec, in ``workers``
    processes when more than one; returns the samples of each clip by name."""
    from tqdm import tqdm

    bar = tqdm(total=len(specs), desc=desc, unit="clip", disable=not progress, file=sys.stderr)
    samples: dict[str, int] = {}
    with bar:
        if workers <= 1:
            for spec in specs:
                name, n = job(spec)
                samples[name] = n
                bar.update()
        else:
            with multiprocessing.get_context("spawn").Pool(workers) as pool:
                for name, n in pool.imap_unordered(job, specs, chunksize=4):
                    samples[name] = n
                    bar.update()
    return samples


def _summary(specs: list[ClipSpec], samples: dict[str, int], seed: int, sizes: DemoSizes) -> dict:
    per_split = {}
    for split in [s for s in SPLITS if any(c.split == s for c in specs)]:
        mine = [s for s in specs if s.split == split]
        speech = [s for s in mine if s.text]
        per_split[split] = {
            "clips": len(mine),
            "noise_only": len(mine) - len(speech),
            "mandarin": sum(s.lang == "zh" for s in speech),
            "with_keywords": sum(bool(s.keywords) for s in speech),
            "with_context": sum(bool(s.context) for s in speech),
            "noisy_speech": sum(s.noise_kind is not None for s in speech),
            "piper": sum(s.engine == "piper" for s in speech),
            "hours": round(sum(samples[s.name] for s in mine) / SAMPLE_RATE / 3600, 4),
        }
    return {
        "version": BUILD_VERSION,
        "seed": seed,
        "sizes": dataclasses.asdict(sizes),
        "sample_rate": SAMPLE_RATE,
        "splits": per_split,
    }


def _write_outputs(specs: list[ClipSpec], folder: Path, key: str, summary: dict, splits: Sequence[str]) -> None:
    """Write the manifests of `splits` (all of `specs` are theirs), build.json and last the DONE stamp."""
    from funrl.data import load_manifest, write_manifest  # imports torch: only when building

    for split in splits:
        write_manifest([s.manifest_record() for s in specs if s.split == split], folder / f"{split}.jsonl")
    if "sft_train" in splits and any(s.text == "" for s in specs if s.split == "sft_train"):
        raise RuntimeError("demo data: a noise-only clip ended up in sft_train")
    for split in splits:  # what was written reads back as the plan
        if [c.text for c in load_manifest(folder / f"{split}.jsonl")] != [s.text for s in specs if s.split == split]:
            raise RuntimeError(f"demo data: {split}.jsonl does not read back as planned")
    (folder / "build.json").write_text(json.dumps(summary, indent=2, ensure_ascii=False) + "\n")
    (folder / "DONE").write_text(f"{key}\nsplits: {' '.join(splits)}\n")


def _adopt(src: Path, tmp: Path, specs: list[ClipSpec]) -> dict[str, int]:
    """Hard-link (or copy) the wavs of `specs` from a finished build in `src` into `tmp`; returns their lengths."""
    samples = {}
    for spec in specs:
        name = f"{spec.name}.wav"
        try:
            os.link(src / "wav" / name, tmp / "wav" / name)
        except FileExistsError:
            pass
        except OSError:  # another file system, or links not allowed
            shutil.copy2(src / "wav" / name, tmp / "wav" / name)
        samples[spec.name] = sf.info(str(tmp / "wav" / name)).frames
    return samples


def build_demo_data(
    out_dir: str | os.PathLike,
    seed: int = 0,
    sizes: DemoSizes | None = None,
    workers: int | None = None,
    progress: bool = True,
    splits: Sequence[str] = SPLITS,
) -> DemoPaths:
    """Build (or reuse) the demo data set in `out_dir`; returns its manifest paths.

    `splits`: which splits to render (the GRPO demo needs no sft_train: two thirds of the clips). Splits a
    finished build of the same parameters already holds are kept, so asking for sft_train later renders only
    it; every clip is the same as in a build of all splits at once, as the plan covers all of them.
    `workers`: rendering processes (default: 2 when there are two or more CPU cores and the
    set is large enough to pay for starting them, else 1). The output does not depend on it.
    """
    sizes = sizes or DemoSizes()
    unknown = sorted(set(splits) - set(SPLITS))
    if unknown:
        raise ValueError(f"unknown demo split(s) {unknown}; the demo has {', '.join(SPLITS)}")
    out_dir = Path(out_dir).absolute()
    key = cache_key(seed, sizes)
    have = built_splits(out_dir, seed, sizes)
    if set(splits) <= have:
        return DemoPaths(out_dir)
    want = [s for s in SPLITS if s in have or s in splits]
    check_voices()
    _check_replaceable(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_builds(out_dir)
    tmp = out_dir.parent / f".{out_dir.name}.building-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "wav").mkdir(parents=True)
    try:
        plan = plan_clips(seed, sizes)
        check_split_by_sentence({split: {c.text for c in plan if c.split == split} for split in SPLITS})
        new = [c for c in plan if c.split in want and c.split not in have]
        samples = _adopt(out_dir, tmp, [c for c in plan if c.split in have])
        if workers is None:
            workers = min(2, os.cpu_count() or 1) if len(new) >= 300 else 1
        job = functools.partial(render_to_file, out_dir=str(tmp))
        samples |= render_all(new, job, workers, progress, "demo data")
        have_now = built_splits(out_dir, seed, sizes)  # another process may have finished meanwhile
        if set(want) <= have_now:
            shutil.rmtree(tmp, ignore_errors=True)
            return DemoPaths(out_dir)
        samples |= _adopt(out_dir, tmp, [c for c in plan if c.split in have_now - set(want)])
        want = [s for s in SPLITS if s in want or s in have_now]
        specs = [c for c in plan if c.split in want]
        _write_outputs(specs, tmp, key, _summary(specs, samples, seed, sizes), want)
        replace_dir(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return DemoPaths(out_dir)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m funrl.demo.build",
        description="Build (or reuse) the built-in demo speech task: manifests + 16 kHz wavs.",
    )
    ap.add_argument("out_dir", help="data folder to create (reused when already built)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--size", choices=tuple(PRESETS), default="full", help="which preset (funrl/demo/plan.py)")
    ap.add_argument("--small", action="store_true", help="the tiny set for CI and tests (seconds): --size small")
    ap.add_argument("--workers", type=int, default=None, help="rendering processes (default: auto)")
    ap.add_argument(
        "--splits", nargs="+", choices=SPLITS, default=list(SPLITS), help="which splits to build (default: all)"
    )
    args = ap.parse_args(argv)
    sizes = DemoSizes.preset("small" if args.small else args.size)
    cached = is_built(args.out_dir, args.seed, sizes, args.splits)
    t0 = time.perf_counter()
    paths = build_demo_data(args.out_dir, seed=args.seed, sizes=sizes, workers=args.workers, splits=args.splits)
    info = json.loads((paths.root / "build.json").read_text())
    print(f"{'reused' if cached else 'built'} demo data in {paths.root} ({time.perf_counter() - t0:.1f} s)")
    cols = ("clips", "noise_only", "mandarin", "with_keywords", "with_context", "noisy_speech", "piper", "hours")
    print(f"{'split':<10}" + "".join(f"{c:>14}" for c in cols))
    for split, row in info["splits"].items():
        print(f"{split:<10}" + "".join(f"{row[c]:>14}" for c in cols))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
