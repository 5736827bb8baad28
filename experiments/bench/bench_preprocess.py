"""Feature engineering throughput: `features=recsys2021_wnd` on 100,000 and 1,000,000 rows.

    python experiments/bench/bench_preprocess.py [--rows 100000 1000000] [--cores 2]

Generates RecSys 2021 data (seed 0, not timed), then runs `python -m recsys.preprocess` as a
user would, in a subprocess, and prints one JSON line per size: wall seconds (JVM start-up
included), rows/s, the peak resident memory of the whole process tree (Python driver +
Spark's JVM + Python workers) and the CPU seconds it used, both sampled from /proc every
0.1 s (CPU seconds show the work done even when other jobs share the machine), and the
job's own stage timings (`_preprocess.json`).

Targets (issue 3): under 30 s for 100,000 rows, under 120 s for 1,000,000 rows, peak memory
under 6 GiB. BigDL Friesian's wnd_preprocess_recsys.py took 557 s for 100,000 rows on the
same 2-core machine.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from recsys.data.generator import GeneratorSettings, generate

REPO = Path(__file__).resolve().parents[2]
TARGET_SECONDS = {100_000: 30, 1_000_000: 120}
TARGET_PEAK_GIB = 6.0
PAGE = os.sysconf("SC_PAGE_SIZE")


def _processes() -> dict[int, tuple[int, int, int]]:
    """pid -> (parent pid, resident bytes, CPU ticks used) of every process."""
    found = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            found[int(entry)] = (
                int(fields[1]),
                int(fields[21]) * PAGE,
                int(fields[11]) + int(fields[12]),
            )
        except (OSError, IndexError, ValueError):
            continue
    return found


def tree_sample(root: int) -> tuple[int, dict[int, int]]:
    """Resident bytes of `root` and its descendants, and CPU ticks per process."""
    procs = _processes()
    children: dict[int, list[int]] = {}
    for pid, (ppid, _, _) in procs.items():
        children.setdefault(ppid, []).append(pid)
    rss, ticks, stack = 0, {}, [root]
    while stack:
        pid = stack.pop()
        if pid in procs:
            rss += procs[pid][1]
            ticks[pid] = procs[pid][2]
        stack.extend(children.get(pid, []))
    return rss, ticks


def run_preprocess(data: Path, out: Path, cores: int, run_dir: Path) -> tuple[float, int, float]:
    """Wall seconds, peak tree RSS and CPU seconds of one `recsys.preprocess` run.

    CPU seconds add up every process of the tree (the last value seen of each; a process
    that lives less than the 0.1 s sampling interval is missed), so they show the work done
    whatever else the machine runs, while wall seconds depend on it.
    """
    cmd = [
        sys.executable, "-m", "recsys.preprocess", "features=recsys2021_wnd", f"data={data}",
        f"out={out}", f"spark.cores={cores}", f"hydra.run.dir={run_dir}",
    ]  # fmt: skip
    peak, ticks = 0, {}
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.is_set():
            rss, seen = tree_sample(proc.pid)
            peak = max(peak, rss)
            ticks.update(seen)
            time.sleep(0.1)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    output, _ = proc.communicate()
    seconds = time.perf_counter() - t0
    done.set()
    sampler.join()
    if proc.returncode != 0:
        sys.stderr.write(output.decode(errors="replace"))
        raise SystemExit(f"recsys.preprocess failed with exit code {proc.returncode}")
    return seconds, peak, sum(ticks.values()) / os.sysconf("SC_CLK_TCK")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--cores", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        for rows in args.rows:
            data = Path(tmp, f"raw{rows}")
            generate(GeneratorSettings(rows=rows, seed=0), data)
            out = Path(tmp, f"wnd{rows}")
            seconds, peak, cpu = run_preprocess(data, out, args.cores, Path(tmp, f"run{rows}"))
            summary = json.loads((out / "_preprocess.json").read_text())
            print(
                json.dumps(
                    {
                        "bench": "preprocess",
                        "features": "recsys2021_wnd",
                        "rows": rows,
                        "cores": args.cores,
                        "seconds": round(seconds, 1),
                        "rows_per_s": round(rows / seconds),
                        "peak_rss_gib": round(peak / 2**30, 2),
                        "cpu_seconds": round(cpu, 1),
                        "target_seconds": TARGET_SECONDS.get(rows),
                        "target_peak_gib": TARGET_PEAK_GIB,
                        "stages": summary["stages"],
                        "load_average_1min": round(os.getloadavg()[0], 2),
                    }
                ),
                flush=True,
            )


if __name__ == "__main__":
    main()
