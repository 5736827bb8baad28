"""Model throughput: forward and forward+backward samples/s, fp32 and bf16 autocast.

    python experiments/bench/bench_models.py [--spec data/recsys2021_wnd/feature_spec.json]
        [--models wide_deep deepfm two_tower] [--batch-size 4096] [--iters 10] [--threads 2]

Prints one JSON line per figure. Each model is built from its `conf/model/<name>.yaml`
defaults and a FeatureSpec: `--spec` reads a real one; without it the benchmark builds one
with the layout of the `features=recsys2021_wnd` pipeline (BigDL Friesian's RecSys 2021
Wide&Deep: see `recsys2021_wnd_spec`). Batches are random and follow the column contract.

- forward: `model.eval()` under `torch.inference_mode()` (what serving runs; logits only);
- forward_backward: `model.train()`, the training wrapper's loss, `loss.backward()`
  (no optimizer step; gradients are zeroed between iterations);
- bf16: the same inside `torch.autocast("cpu", dtype=torch.bfloat16)` (fp32 weights).
"""

import argparse
import json
import os
import time
from collections.abc import Callable

import torch
from hydra import compose, initialize_config_dir

from recsys.config import CONF_DIR, register_configs
from recsys.features.feature_spec import Feature, FeatureSpec
from recsys.models import build_model, random_batch, train_wrapper

MODELS = ("wide_deep", "deepfm", "two_tower")


def recsys2021_wnd_spec(
    users: int = 20_000, tweets: int = 50_000, hashtags: int = 5_000, domains: int = 1_000
) -> FeatureSpec:
    """The `features=recsys2021_wnd` layout, sized like the generator's defaults.

    Wide (one-hot and cross, Friesian's wide columns): present_media, tweet_type, language,
    present_media x language (600 buckets). Deep: those three as embeddings too; the two
    user ids (one user vocabulary, two features), tweet_id; hashtags, present_domains,
    present_links pooled; follower/following count bins and is_verified of both users;
    continuous: min-max scaled list lengths and engagee_follows_engager.
    Towers: the engaging user's features; the tweet's and its author's features.
    Sizes count the two reserved indices (0 missing, 1 unknown).
    """
    item, user, ctx = "item", "user", "context"
    wide_item = ["wide", "deep", "item_tower"]
    deep_item = ["deep", "item_tower"]
    deep_user = ["deep", "user_tower"]

    def cat(name: str, entity: str, inputs: list[str], size: int) -> Feature:
        return Feature(name, "categorical", [name], entity, inputs, size)

    def multi(name: str, size: int, max_len: int) -> Feature:
        return Feature(name, "multi_categorical", [name], item, deep_item, size, max_len, "mean")

    def scaled(name: str, source: str, entity: str, inputs: list[str]) -> Feature:
        stats = {"min": 0.0, "max": 1.0}
        return Feature(name, "continuous", [source], entity, inputs, stats=stats)

    features = [
        cat("present_media", item, wide_item, 8 + 2),
        cat("tweet_type", item, wide_item, 3 + 2),
        cat("language", item, wide_item, 66 + 2),
        Feature(
            "present_media_language", "cross", ["present_media", "language"], item, ["wide"], 600
        ),
        cat("engaged_with_user_id", item, deep_item, users + 2),
        cat("enaging_user_id", user, deep_user, users + 2),
        cat("tweet_id", item, deep_item, tweets + 2),
        multi("hashtags", hashtags + 2, 10),
        multi("present_domains", domains + 2, 5),
        multi("present_links", 5_000 + 2, 5),
        cat("engaged_with_user_follower_count", item, deep_item, 10 + 2),
        cat("engaged_with_user_following_count", item, deep_item, 10 + 2),
        cat("enaging_user_follower_count", user, deep_user, 10 + 2),
        cat("enaging_user_following_count", user, deep_user, 10 + 2),
        cat("engaged_with_user_is_verified", item, deep_item, 2 + 2),
        cat("enaging_user_is_verified", user, deep_user, 2 + 2),
        scaled("len_hashtags", "hashtags", item, deep_item),
        scaled("len_domains", "present_domains", item, deep_item),
        scaled("len_links", "present_links", item, deep_item),
        scaled("len_text_tokens", "text_tokens", item, deep_item),
        scaled("engagee_follows_engager", "engagee_follows_engager", ctx, ["deep"]),
        Feature("label", "label", ["like_timestamp"]),
    ]
    return FeatureSpec(
        features=features,
        label="label",
        user_id="enaging_user_id",
        item_id="tweet_id",
        dataset="recsys2021_wnd (benchmark equivalent)",
    )


def _model_cfg(name: str):
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose(config_name="train", overrides=[f"model={name}"]).model


def _seconds_per_batch(step: Callable[[], None], warmup: int, iters: int) -> float:
    """The median wall time of `iters` calls of `step`, after `warmup` untimed calls."""
    for _ in range(warmup):
        step()
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    times.sort()
    return times[len(times) // 2]


def bench_model(
    name: str, spec: FeatureSpec, batch: dict[str, torch.Tensor], warmup: int, iters: int
) -> list[dict]:
    """The four figures (fp32/bf16 x forward/forward_backward) of one model."""
    torch.manual_seed(0)
    model = build_model(_model_cfg(name), spec)
    # train_rows only scales a ranker's L2 prior: the cost of a step does not depend on it
    wrapper = train_wrapper(model, train_rows=100_000)
    params = sum(p.numel() for p in model.parameters())

    def forward() -> None:
        model.eval()
        with torch.inference_mode():
            model(batch)

    def forward_backward() -> None:
        wrapper.train()
        wrapper.zero_grad(set_to_none=True)
        loss, _ = wrapper(batch)
        loss.backward()

    figures = []
    for precision in ("fp32", "bf16"):
        for mode, step in (("forward", forward), ("forward_backward", forward_backward)):
            enabled = precision == "bf16"

            def timed(step: Callable[[], None] = step, enabled: bool = enabled) -> None:
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=enabled):
                    step()

            seconds = _seconds_per_batch(timed, warmup, iters)
            figures.append(
                {
                    "model": name,
                    "precision": precision,
                    "mode": mode,
                    "ms_per_batch": round(seconds * 1e3, 1),
                    "samples_per_s": round(len(batch[spec.features[0].name]) / seconds),
                    "params": params,
                    # the machine is shared: a 1-minute load above the thread count means
                    # other processes took CPU from this figure
                    "load_1min": round(os.getloadavg()[0], 2),
                }
            )
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spec", help="feature_spec.json (or its directory) to use instead")
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    parser.add_argument("--batch-size", type=int, default=4096)
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    register_configs()
    spec = FeatureSpec.load(args.spec) if args.spec else recsys2021_wnd_spec()
    batch = random_batch(spec, args.batch_size, torch.Generator().manual_seed(0))
    # without oneDNN bf16 kernels (AVX512-BF16 or AMX) bf16 matmuls take a slow fallback
    machine = {
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "onednn_bf16": bool(torch.ops.mkldnn._is_mkldnn_bf16_supported()),
    }
    for name in args.models:
        for figure in bench_model(name, spec, batch, args.warmup, args.iters):
            line = {"bench": "models", **figure, "batch_size": args.batch_size}
            line |= {"threads": args.threads, "spec": args.spec or "recsys2021_wnd equivalent"}
            line |= machine
            print(json.dumps(line), flush=True)


if __name__ == "__main__":
    main()
