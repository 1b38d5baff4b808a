"""Cold start: ``import function_app`` against ``import fastapi, azure.functions``, in fresh processes.

Each round starts one fresh interpreter per variant, in an order that rotates
every round (so no variant always runs first or last), and reads the child's own
CPU time (user + system, from ``wait4``) besides its wall time:

- A: ``import fastapi, azure.functions`` (the framework floor)
- B: ``import function_app`` (what the Functions host does on a cold start)
- C: ``import fastapi, azure.functions; import function_app`` (C - A: what the app adds)
- B/pyc, C/pyc (``--bytecode``): the same from a copy of the deployed files compiled
  with ``compileall`` first, as a package that ships its bytecode would be
- B/<label>, C/<label> (``--also LABEL=DIR``): the same from another revision's files
- build (``--build``): CPU of building the FastAPI app on the first request, after the
  import (``function_app.ApiOnFirstUse.built``); that is what the first HTTP request pays

Every child runs with ``PYTHONDONTWRITEBYTECODE=1`` so a run never leaves bytecode
behind for the next one: the repository's own modules compile from source each time
(what a read-only deployment without shipped bytecode does), the installed packages
load their bytecode. Printed: per variant the median and range of CPU and wall
time, and per round the ratios B/A and the increment C-A, as median and range.

    .venv/bin/python bench/coldstart.py --rounds 15 --bytecode --build
"""

from __future__ import annotations

import argparse
import compileall
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
# Run as a script, this directory comes first on sys.path, where bench/http_path.py would
# shadow the standard module: import the harness as bench.harness instead.
sys.path[:] = [entry for entry in sys.path if Path(entry or ".").resolve() != HERE]
sys.path.insert(0, str(HERE.parent))

from bench.harness import ROOT, machine_load, median_range

#: What the Functions host deploys and imports (see .funcignore).
DEPLOYED = ("function_app.py", "functions", "shared")

FLOOR = "import fastapi, azure.functions"
APP = "import function_app"
BUILD = ("import time, function_app\n"
         "start = time.process_time()\n"
         "function_app.app.middleware._app.built\n"
         "print(time.process_time() - start)")


def run_timed(code: str, cwd: Path) -> tuple[float, float, str]:
    """(CPU seconds, wall seconds, stdout) of a fresh ``python -c code``; CPU from ``wait4``'s rusage."""
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1", "PYTHONPATH": str(cwd)}
    env.pop("PYTHONPYCACHEPREFIX", None)
    read, write = os.pipe()
    start = time.perf_counter()
    pid = _spawn(code, cwd, env, write, read)
    os.close(write)
    with os.fdopen(read) as stream:
        out = stream.read()
    _, status, usage = os.wait4(pid, 0)
    wall = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"child failed ({status}): {code!r}; run it by hand in {cwd} to see why")
    return usage.ru_utime + usage.ru_stime, wall, out


def _spawn(code: str, cwd: Path, env: dict[str, str], stdout_fd: int, other_fd: int) -> int:
    """Fork and exec ``python -c code`` (fork + wait4, not subprocess, to read the child's own rusage)."""
    pid = os.fork()
    if pid == 0:  # child: stdout to the pipe, stderr to /dev/null, then exec
        try:
            os.close(other_fd)
            os.chdir(cwd)
            os.dup2(stdout_fd, 1)
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, 2)
            os.execve(sys.executable, [sys.executable, "-c", code], env)
        finally:
            os._exit(127)
    return pid


def compiled_copy(into: Path) -> Path:
    """A copy of the deployed files with their bytecode compiled next to them, as a package would ship it."""
    for name in DEPLOYED:
        source = ROOT / name
        if source.is_dir():
            shutil.copytree(source, into / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(source, into / name)
    if not compileall.compile_dir(into, quiet=1, workers=1):
        raise SystemExit("compileall failed")
    return into


def show(label: str, values: list[float], unit: str = "ms", scale: float = 1000.0) -> str:
    middle, low, high = median_range([v * scale for v in values])
    return f"{label:<28} {middle:8.1f} {unit}  ({low:.1f} - {high:.1f})"


def show_ratio(label: str, values: list[float]) -> str:
    middle, low, high = median_range(values)
    return f"{label:<28} {middle:8.2f} x   ({low:.2f} - {high:.2f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=12)
    parser.add_argument("--bytecode", action="store_true", help="also B and C from a compiled copy")
    parser.add_argument("--build", action="store_true", help="also the first request's app build")
    parser.add_argument("--also", action="append", default=[], metavar="LABEL=DIR",
                        help="also B and C from DIR, a copy of the deployed files of another revision "
                             "(e.g. `git worktree add /tmp/before HEAD~1`), interleaved with the rest; repeatable")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="stowage-coldstart-") as tmp:
        variants: dict[str, tuple[str, Path]] = {
            "A": (FLOOR, ROOT), "B": (APP, ROOT), "C": (f"{FLOOR}; {APP}", ROOT)}
        if args.bytecode:
            compiled = compiled_copy(Path(tmp))
            variants["B/pyc"] = (APP, compiled)
            variants["C/pyc"] = (f"{FLOOR}; {APP}", compiled)
        others = [label for label, _, _ in (text.partition("=") for text in args.also)]
        for text in args.also:
            label, _, where = text.partition("=")
            variants[f"B/{label}"] = (APP, Path(where).resolve())
            variants[f"C/{label}"] = (f"{FLOOR}; {APP}", Path(where).resolve())
        cpu: dict[str, list[float]] = {name: [] for name in variants}
        wall: dict[str, list[float]] = {name: [] for name in variants}
        build: list[float] = []
        names = list(variants)
        print(f"{args.rounds} rounds, variants {', '.join(names)}; {machine_load()}")
        for round_number in range(args.rounds):
            shift = round_number % len(names)
            for name in names[shift:] + names[:shift]:
                code, cwd = variants[name]
                spent, took, _ = run_timed(code, cwd)
                cpu[name].append(spent)
                wall[name].append(took)
            if args.build:
                _, _, out = run_timed(BUILD, ROOT)
                build.append(float(out.strip().splitlines()[-1]))
        print(f"after the rounds: {machine_load()}")
        print("\nper variant, CPU (user+sys of the child) and wall, median (range):")
        for name in names:
            print(show(f"{name} CPU", cpu[name]) + "   " + show("wall", wall[name]).strip())
        if build:
            print(show("first request: app build CPU", build))
        print("\nper round:")
        for measure, table in (("CPU", cpu), ("wall", wall)):
            print(show_ratio(f"B/A {measure}", [b / a for a, b in zip(table["A"], table["B"])]))
            print(show(f"C-A {measure}", [c - a for a, c in zip(table["A"], table["C"])]))
            print(show_ratio(f"C/A {measure}", [c / a for a, c in zip(table["A"], table["C"])]))
            for label in others:
                print(show_ratio(f"B/{label} / A {measure}", [b / a for a, b in zip(table["A"], table[f"B/{label}"])]))
                print(show(f"C/{label} - A {measure}", [c - a for a, c in zip(table["A"], table[f"C/{label}"])]))
                print(show_ratio(f"C/{label} / A {measure}", [c / a for a, c in zip(table["A"], table[f"C/{label}"])]))
            if args.bytecode:
                print(show_ratio(f"B/pyc / A {measure}", [b / a for a, b in zip(table["A"], table["B/pyc"])]))
                print(show(f"C/pyc - A {measure}", [c - a for a, c in zip(table["A"], table["C/pyc"])]))
                print(show_ratio(f"C/pyc / A {measure}", [c / a for a, c in zip(table["A"], table["C/pyc"])]))


if __name__ == "__main__":
    main()
