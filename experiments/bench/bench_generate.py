"""Generator throughput: rows/s at 1,000,000 rows, 1 vs 2 worker processes, and the CLI.

    python experiments/bench/bench_generate.py [--rows 1000000]

Prints one JSON line per figure. Worker counts run side by side in one process so their
ratio is meaningful on a noisy shared machine; the CLI figure includes interpreter start-up.
"""

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from recsys.data.generator import GeneratorSettings, generate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        for workers in (1, 2):
            t0 = time.perf_counter()
            generate(GeneratorSettings(rows=args.rows), Path(tmp, f"w{workers}"), workers=workers)
            seconds = time.perf_counter() - t0
            print(
                json.dumps(
                    {
                        "bench": "generate",
                        "rows": args.rows,
                        "workers": workers,
                        "seconds": round(seconds, 2),
                        "rows_per_s": round(args.rows / seconds),
                    }
                ),
                flush=True,
            )
        t0 = time.perf_counter()
        subprocess.run(
            [
                sys.executable,
                "-m",
                "recsys.generate",
                f"rows={args.rows}",
                f"out={tmp}/cli",
                f"hydra.run.dir={tmp}/run",
            ],
            check=True,
            capture_output=True,
        )
        seconds = time.perf_counter() - t0
        print(
            json.dumps(
                {
                    "bench": "generate_cli",
                    "rows": args.rows,
                    "seconds": round(seconds, 2),
                    "rows_per_s": round(args.rows / seconds),
                    "target_seconds": 20,
                }
            ),
            flush=True,
        )


if __name__ == "__main__":
    main()
