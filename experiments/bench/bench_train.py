"""Training throughput on 1,000,000 generated rows (features=recsys2021_wnd), side by side:

- a bare single-process PyTorch loop over the same tensors (forward, BCE, backward, Adam): the
  ceiling that any trainer's bookkeeping can only lower;
- `backend=local` and `backend=ray` with 1 and 2 workers, fp32 and bf16, for W&D and DeepFM;
- the CPU's matrix-multiply rate at the deep MLP's layer shapes, measured in the same run, and
  the compute ceiling (that rate / the model's forward+backward FLOPs per sample).

    python experiments/bench/bench_train.py [--rows 1000000] [--steps 60] [--data DIR]

One JSON line per figure. Each trainer run is one epoch capped at `--steps` steps; samples/s
is the loop's own figure (training steps only: no start-up, no validation).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir

from recsys.config import CONF_DIR, register_configs
from recsys.data.generator import GeneratorSettings, generate
from recsys.features.feature_spec import FeatureSpec
from recsys.models import build_model, train_wrapper
from recsys.train.data import iter_batches, read_shard
from recsys.train.run import check_train_config, ensure_ray, run_training

REPO = Path(__file__).resolve().parents[2]
FRIESIAN_TF_WND = 5_000  # samples/s within an epoch, BigDL Friesian's TF W&D on this machine
MODELS = {
    # Friesian's W&D architecture; DeepFM with the same deep part for comparison
    "wide_deep": ["model=wide_deep", "model.hidden_units=[1024,1024]", "model.embedding_dim=8"],
    "deepfm": ["model=deepfm", "model.hidden_units=[1024,1024]", "model.embedding_dim=8"],
}


def emit(**figure: object) -> None:
    print(json.dumps(figure), flush=True)


def prepare_data(rows: int, cache: Path) -> Path:
    """Generated rows run through `python -m recsys.preprocess features=recsys2021_wnd`."""
    raw, processed = cache / f"raw_{rows}", cache / f"wnd_{rows}"
    if not (processed / "feature_spec.json").is_file():
        if not (raw / "_generator.json").is_file():
            generate(GeneratorSettings(rows=rows), raw, overwrite=True)
        subprocess.run(
            [
                sys.executable,
                "-m",
                "recsys.preprocess",
                "features=recsys2021_wnd",
                f"data={raw}",
                f"out={processed}",
                "overwrite=true",
                f"hydra.run.dir={cache}/preprocess_run",
            ],
            check=True,
            cwd=REPO,
        )
    return processed


def mlp_flops_per_sample(model: torch.nn.Module) -> tuple[int, list[tuple[int, int]]]:
    """Forward+backward FLOPs of the model's Linear layers per sample (3x forward), and shapes."""
    shapes = [
        (m.in_features, m.out_features) for m in model.modules() if isinstance(m, torch.nn.Linear)
    ]
    forward = sum(2 * i * o for i, o in shapes)
    return 3 * forward, shapes


def matmul_rate(shapes: list[tuple[int, int]], batch: int, dtype: torch.dtype) -> float:
    """FLOP/s of batch x in @ in x out products at the given layer shapes (best of 5)."""
    total_flops, total_time = 0.0, 0.0
    for fan_in, fan_out in shapes:
        a = torch.randn(batch, fan_in, dtype=dtype)
        b = torch.randn(fan_in, fan_out, dtype=dtype)
        for _ in range(3):
            torch.mm(a, b)
        best = min(_timed(lambda a=a, b=b: torch.mm(a, b)) for _ in range(5))
        total_flops += 2 * batch * fan_in * fan_out
        total_time += best
    return total_flops / total_time


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def with_small_eval(data: Path, rows: int, into: Path) -> Path:
    """`data` with its valid and test splits cut to `rows` rows (train is linked, not copied):
    bf16 runs, slow on CPUs without AMX, then spend their time in training steps."""
    import pyarrow.dataset as ds
    import pyarrow.parquet as pq

    into.mkdir(parents=True, exist_ok=True)
    for name in ("train", "feature_spec.json"):
        (into / name).symlink_to((data / name).resolve())
    for split in ("valid", "test"):
        if (data / split).is_dir():
            (into / split).mkdir()
            table = ds.dataset(data / split, format="parquet").head(rows)
            pq.write_table(table, into / split / "part-0.parquet")
    return into


def bare_loop(data: Path, model_overrides: list[str], batch: int, steps: int, precision: str):
    """The ceiling: the same model and tensors, no trainer around them."""
    spec = FeatureSpec.load(data)
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose("train", model_overrides)
    torch.manual_seed(0)
    model = build_model(cfg.model, spec)
    shard = read_shard(data, "train", spec)
    wrapper = train_wrapper(model, train_rows=shard.total_rows)
    optimizer = torch.optim.Adam(wrapper.parameters(), lr=1e-3)
    batches = iter_batches(shard, batch, shuffle=True, max_batches=steps + 5)
    seen, elapsed = 0, 0.0
    for step, b in enumerate(batches):
        t0 = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            loss, _ = wrapper(b)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if step >= 5:  # warm-up steps are not timed
            elapsed += time.perf_counter() - t0
            seen += len(b[spec.label])
    return seen / elapsed, model


def trainer_run(
    data: Path,
    model_overrides: list[str],
    backend: list[str],
    batch: int,
    steps: int,
    precision: str,
    run_dir: Path,
) -> float:
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose(
            "train",
            [
                *model_overrides,
                *backend,
                f"data={data}",
                f"precision={precision}",
                "trainer.epochs=1",
                f"trainer.batch_size={batch}",
                f"trainer.max_steps_per_epoch={steps}",
            ],
        )
    cfg.paths.output_dir = str(run_dir)
    check_train_config(cfg)
    run_training(cfg, run_dir)
    history = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return history[-1]["train/samples_per_s"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--steps", type=int, default=60, help="training steps per measurement")
    parser.add_argument("--batch", type=int, default=3200)
    parser.add_argument("--data", type=Path, help="a processed recsys2021_wnd directory")
    parser.add_argument("--cache", type=Path, default=REPO / "outputs" / "bench_cache")
    parser.add_argument("--models", nargs="+", default=list(MODELS))
    parser.add_argument("--precisions", nargs="+", default=["fp32", "bf16"])
    parser.add_argument(
        "--bf16-steps",
        type=int,
        default=12,
        help="steps per bf16 measurement (bf16 is 10-30x slower on CPUs without AMX)",
    )
    parser.add_argument(
        "--bf16-eval-rows",
        type=int,
        default=8192,
        help="bf16 trainer runs validate and test on this many rows (their speed is not timed)",
    )
    args = parser.parse_args()
    small = tempfile.TemporaryDirectory()
    logging.basicConfig(level=logging.WARNING)
    register_configs()
    torch.set_num_threads(os.cpu_count() or 1)
    data = args.data or prepare_data(args.rows, args.cache)
    load = os.getloadavg()[0]
    ensure_ray(None)

    for name in args.models:
        overrides = MODELS[name]
        for precision in args.precisions:
            dtype = torch.bfloat16 if precision == "bf16" else torch.float32
            steps = args.bf16_steps if precision == "bf16" else args.steps
            bare, model = bare_loop(data, overrides, args.batch, steps, precision)
            flops, shapes = mlp_flops_per_sample(model)
            rate = matmul_rate(shapes, args.batch, dtype)
            ceiling = rate / flops
            emit(
                bench="train",
                model=name,
                precision=precision,
                runner="bare_loop",
                samples_per_s=round(bare),
                matmul_gflops=round(rate / 1e9, 1),
                flops_per_sample=flops,
                compute_ceiling=round(ceiling),
                of_ceiling=round(bare / ceiling, 3),
                load1=load,
            )
            trained_on = data
            if precision == "bf16":
                trained_on = with_small_eval(data, args.bf16_eval_rows, Path(small.name) / name)
            runs = [
                ("local", ["backend=local", "backend.cpus_per_worker=2"]),
                ("ray_1", ["backend=ray", "backend.num_workers=1", "backend.cpus_per_worker=2"]),
                ("ray_2", ["backend=ray", "backend.num_workers=2", "backend.cpus_per_worker=1"]),
            ]
            for runner, backend in runs:
                with tempfile.TemporaryDirectory() as tmp:
                    rate_s = trainer_run(
                        trained_on,
                        overrides,
                        backend,
                        args.batch,
                        steps,
                        precision,
                        Path(tmp) / "run",
                    )
                emit(
                    bench="train",
                    model=name,
                    precision=precision,
                    runner=runner,
                    samples_per_s=round(rate_s),
                    of_bare_loop=round(rate_s / bare, 3),
                    of_ceiling=round(rate_s / ceiling, 3),
                    x_friesian_tf=round(rate_s / FRIESIAN_TF_WND, 1)
                    if name == "wide_deep"
                    else None,
                )


if __name__ == "__main__":
    main()
