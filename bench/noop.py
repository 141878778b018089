"""A no-op `dvc repro`: ruamel.yaml's C loader (ruamel.yaml.clib, a dependency) against its
pure-Python one, alternating, in the same run. DVC parses params.yaml once per stage and
dvc.lock twice per `dvc repro`, so the YAML loader is most of a no-op's time.

Run in a workspace whose pipeline is up to date (after `make repro`):

    python bench/noop.py --repo . --rounds 5
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

# `dvc repro` in a fresh interpreter; "pure" hides the C extension, so ruamel.yaml falls back
# to its Python parser exactly as it does where ruamel.yaml.clib is not installed.
SCRIPT = "import sys\n{hide}from dvc.cli import main\nsys.exit(main(['repro']))\n"
HIDE = "sys.modules['_ruamel_yaml'] = None\n"


def noop_seconds(repo: Path, pure: bool) -> float:
    started = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT.format(hide=HIDE if pure else "")],
        cwd=repo,
        capture_output=True,
        text=True,
    )
    seconds = time.perf_counter() - started
    output = result.stdout + result.stderr
    if result.returncode != 0 or "Running stage" in output or "didn't change" not in output:
        sys.exit(f"`dvc repro` in {repo} was not a no-op:\n{result.stdout[-2000:]}")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repo", type=Path, default=Path.cwd())
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    try:
        import _ruamel_yaml  # noqa: F401
    except ImportError:
        sys.exit("ruamel.yaml.clib is not installed here: nothing to compare (`make install`)")
    times: dict[str, list[float]] = {"C loader": [], "pure Python": []}
    noop_seconds(args.repo, pure=False)  # warm the file cache and DVC's state database
    for _ in range(args.rounds):
        times["C loader"].append(noop_seconds(args.repo, pure=False))
        times["pure Python"].append(noop_seconds(args.repo, pure=True))
    lines = sum(1 for _ in (args.repo / "dvc.lock").open())
    print(f"no-op `dvc repro` in {args.repo} ({lines}-line dvc.lock), median of {args.rounds}:")
    for name, values in times.items():
        spread = f"{min(values):.2f}-{max(values):.2f}"
        print(f"  {name:12} {statistics.median(values):.2f} s  ({spread})")
    ratio = statistics.median(times["C loader"]) / statistics.median(times["pure Python"])
    print(f"  C / pure     {ratio:.2f}")


if __name__ == "__main__":
    main()
