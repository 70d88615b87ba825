"""Mutation check of the acoustics tests: does a 1 % bias in any parameter make them fail?

Each mutation is applied, one at a time, to a temporary copy of ``src/sonalyze`` (the working tree is
never touched), and the acoustics tests run against that copy (``PYTHONPATH`` first, ahead of the
editable install). The tests run from a copy taken at the same time, so that edits to the tree during
the run cannot fail a test for another reason. A mutation is *caught* when pytest fails. Prints a
Markdown table.

    .venv/bin/python bench/acoustics_mutation.py [--tests tests/acoustics/test_pyrato.py ...]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TESTS = [
    "tests/acoustics/test_pyrato.py",
    "tests/acoustics/test_energy.py",
    "tests/acoustics/test_sti.py",
    "tests/acoustics/test_decay.py",
    "tests/acoustics/test_issue_cases.py",
]
#: (name, file under src/sonalyze/acoustics, original text, mutated text): each a bias of 1 % (or the issue's −58, −59).
#: EDT, T20 and T30 share the one ``rt_s`` line; C50 and C80 the one clarity line.
MUTATIONS = [
    ("T = −58/slope (T −3.3 %, the issue's)", "decay.py", "rt_s = -60.0 / slope", "rt_s = -58.0 / slope"),
    ("T = −59/slope (T −1.7 %)", "decay.py", "rt_s = -60.0 / slope", "rt_s = -59.0 / slope"),
    ("T = −60.6/slope (T +1 %)", "decay.py", "rt_s = -60.0 / slope", "rt_s = -60.6 / slope"),
    ("T = −59.4/slope (T −1 %)", "decay.py", "rt_s = -60.0 / slope", "rt_s = -59.4 / slope"),
    ("C50/C80 +1 % (10.1·lg)", "energy.py", "return 10.0 * math.log10(early / late)", "return 10.1 * math.log10(early / late)"),
    ("D50 −1 %", "energy.py", "return early / (early + late)", "return 0.99 * early / (early + late)"),
    ("Ts +1 %", "energy.py", "return (moment_s + self.tail_moment_s()) / self.total",
     "return 1.01 * (moment_s + self.tail_moment_s()) / self.total"),
    ("DRR +1 % (10.1·lg)", "energy.py", "return 10.0 * math.log10(direct / after_direct)", "return 10.1 * math.log10(direct / after_direct)"),
    ("STI −1 %", "sti.py", "sti = float(np.clip(ALPHA_MALE @ mti - BETA_MALE @ np.sqrt(mti[:-1] * mti[1:]), 0.0, 1.0))",
     "sti = 0.99 * float(np.clip(ALPHA_MALE @ mti - BETA_MALE @ np.sqrt(mti[:-1] * mti[1:]), 0.0, 1.0))"),
]


def run(tests: list[str], src: Path) -> tuple[int, str, float]:
    """pytest on ``tests`` of the copy beside ``src`` (its ``tests`` folder and ``pyproject.toml``)."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(src), str(src.parent)]), OMP_NUM_THREADS="1")
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:randomly", "-p", "no:cacheprovider", *tests],
        cwd=src.parent, env=env, capture_output=True, text=True,
    )
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("FAILED") or " passed" in ln or " failed" in ln]
    return proc.returncode, (lines[0] if lines else proc.stdout[-200:]), time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tests", nargs="*", default=TESTS)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="acoustics-mutation-") as tmp:
        src = Path(tmp) / "src"
        shutil.copytree(ROOT / "src" / "sonalyze", src / "sonalyze", ignore=shutil.ignore_patterns("__pycache__", "webapp"))
        shutil.copytree(ROOT / "tests", Path(tmp) / "tests", ignore=shutil.ignore_patterns("__pycache__", "node_modules"))
        shutil.copy(ROOT / "pyproject.toml", Path(tmp) / "pyproject.toml")
        code, line, seconds = run(args.tests, src)
        print(f"Tests: {' '.join(args.tests)}\n")
        print("| mutation | result | first failure | s |")
        print("|---|---|---|---|")
        print(f"| none (the copy as is) | {'pass' if code == 0 else 'FAIL'} | {line} | {seconds:.0f} |")
        for name, file, original, mutated in MUTATIONS:
            path = src / "sonalyze" / "acoustics" / file
            text = path.read_text()
            if text.count(original) != 1:
                print(f"| {name} | NOT APPLIED (text not found once) | | |")
                continue
            path.write_text(text.replace(original, mutated))
            try:
                code, line, seconds = run(args.tests, src)
            finally:
                path.write_text(text)
            print(f"| {name} | {'caught' if code != 0 else 'MISSED'} | {line} | {seconds:.0f} |", flush=True)


if __name__ == "__main__":
    main()
