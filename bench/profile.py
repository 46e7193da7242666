"""py-spy helpers for the benches: record a process tree while a phase runs, then summarize the samples.

    .venv/bin/python -m bench.profile bench/results/profiles/worker-api.txt [--top 30] [--match app/]

The summary lists, for each function, the share of samples where it is on the stack (inclusive) and where it
is the innermost frame (self): enough to see which call paths eat the CPU without opening a flame graph.
"""

from __future__ import annotations

import argparse
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

PY_SPY = str(Path(sys.executable).with_name("py-spy"))


@contextmanager
def recording(pid: int, output: Path | None, *, rate: int = 200, idle: bool = False,
              gil: bool = False) -> Iterator[None]:
    """py-spy record (raw collapsed stacks) of `pid` and its subprocesses for the duration of the block.

    gil=True keeps only samples that hold the GIL: Python CPU, without the time spent waiting in drivers (py-spy
    otherwise counts a thread blocked in psycopg's or amqp's C-level wait as active). It pauses the process for
    each sample, so the phase's rates and CPU figures include that.
    """
    if output is None:
        yield
        return
    output.parent.mkdir(parents=True, exist_ok=True)
    cmd = [PY_SPY, "record", "--pid", str(pid), "--subprocesses", "--format", "raw", "--rate", str(rate),
           "-o", str(output)]
    cmd.append("--gil" if gil else "--nonblocking")
    if idle:
        cmd.append("--idle")
    spy = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        yield
    finally:
        spy.send_signal(signal.SIGINT)
        try:
            spy.wait(timeout=30)
        except subprocess.TimeoutExpired:
            spy.kill()


def summarize(path: Path, top: int = 30, match: str = "") -> str:
    """Inclusive and self sample shares per function from a raw (collapsed) py-spy file."""
    inclusive: Counter[str] = Counter()
    own: Counter[str] = Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [frame for frame in stack.split(";") if not frame.startswith("process ")]
        total += count
        for frame in set(frames):
            if match in frame:
                inclusive[frame] += count
        if frames and match in frames[-1]:
            own[frames[-1]] += count
    if not total:
        return f"{path}: no samples"
    lines = [f"{path}: {total} samples", "  inclusive%  function"]
    lines += [f"  {100 * n / total:9.1f}  {frame}" for frame, n in inclusive.most_common(top)]
    lines += ["  self%       function"]
    lines += [f"  {100 * n / total:9.1f}  {frame}" for frame, n in own.most_common(top)]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("paths", nargs="+", type=Path)
    parser.add_argument("--top", type=int, default=30)
    parser.add_argument("--match", default="", help="only functions whose frame text contains this")
    args = parser.parse_args()
    for path in args.paths:
        print(summarize(path, args.top, args.match))


if __name__ == "__main__":
    main()
