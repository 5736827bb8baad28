"""`python -m recsys.pipeline` as a subprocess on a tiny configuration (the pipeline tests and
the Ctrl-C fault tests), and the /proc look-ups they use to check that no process is left."""

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
TINY = [
    "pipeline.rows=3000",
    "dataset.num_users=300",
    "dataset.num_tweets=800",
    "dataset.num_hashtags=50",
    "backend=local",
    "trainer.epochs=1",
    "trainer.batch_size=512",
    "pipeline.smoke.users=2",
    "pipeline.smoke.k=5",
]


def pipeline_command(work: Path, run: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "recsys.pipeline",
        *TINY,
        f"pipeline.work_dir={work}",
        f"hydra.run.dir={run}",
        *extra,
    ]


def run_pipeline(
    work: Path, run: Path, *extra: str, timeout: int = 600
) -> subprocess.CompletedProcess:
    return subprocess.run(
        pipeline_command(work, run, *extra),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def leftovers(work: Path) -> list[Path]:
    """Temporary outputs (every stage writes under a `.tmp-` name, then renames)."""
    return [p for p in work.rglob("*") if ".tmp-" in p.name]
