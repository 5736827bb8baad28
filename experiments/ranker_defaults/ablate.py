"""In-process ablations of a ranker on processed data: one run, one line of validation AUCs.

    python experiments/ranker_defaults/ablate.py data=/tmp/q/wnd model=deepfm hidden= l2=1000 \
        lr=0.003 bs=1024 epochs=8 sched=cosine

Keys (all optional): model=deepfm|wide_deep|logistic; data=<processed dir>; hidden=64,32
(empty: no hidden layer); k=8 (embedding size); dropout=0; l2=0 (model.embedding_l2);
l2lin= and l2emb= (the same prior, split between 1-wide and wider tables); dl2= (the same
prior on the MLP's weight matrices); wd=0 and opt=adam|adamw (trainer.weight_decay,
trainer.optimizer); lr=0.001; bs=3200; epochs=6; sched=cosine|none; seed=0; threads=1;
drop=f1,f2 (features left out); fields=f1,f2 (only these stay `deep`, the others become
`wide`: first-order only in DeepFM); cross=1 (adds hashed user x author and user x language
crosses to the wide part); trainauc=1 (AUC on 80,000 training rows after each epoch);
test=1 (test AUC of the last epoch: for diagnosis only, never for choosing).

It uses the training loop's pieces (build_model, train_wrapper, _make_optimizers,
read_shard, iter_batches) without checkpoints or early stopping, so that knobs the configs
do not have can be tried without changing the library.
"""

from __future__ import annotations

import math
import sys

import torch
from torchmetrics.classification import BinaryAUROC

from recsys.features.feature_spec import Feature, FeatureSpec
from recsys.models import build_model, embedding_tables, train_wrapper
from recsys.train.data import Shard, iter_batches, read_shard
from recsys.train.loop import _make_optimizers

TARGETS = {
    "deepfm": "recsys.models.deepfm.DeepFM",
    "wide_deep": "recsys.models.wide_deep.WideDeep",
    "logistic": "recsys.models.logistic.LogisticRegression",
}


def auc_of(model: torch.nn.Module, shard: Shard, max_batches: int | None = None) -> float:
    metric = BinaryAUROC()
    with torch.no_grad():
        for i, batch in enumerate(iter_batches(shard, 8192)):
            if max_batches is not None and i >= max_batches:
                break
            metric.update(torch.sigmoid(model(batch)), batch["label"].long())
    return round(float(metric.compute()), 4)


def main(argv: list[str]) -> None:
    args = dict(a.split("=", 1) for a in argv)
    torch.set_num_threads(int(args.get("threads", 1)))
    torch.manual_seed(int(args.get("seed", 0)))
    data = args.get("data", "data/recsys2021_wnd")
    spec = FeatureSpec.load(data)
    drop = [d for d in args.get("drop", "").split(",") if d]
    fields = [d for d in args.get("fields", "").split(",") if d]
    for f in spec.features:
        if f.name in drop:
            f.inputs = []
        elif fields and "deep" in f.inputs and f.name not in fields:
            f.inputs = ["wide"]
    splits = {s: read_shard(data, s, spec) for s in ("train", "valid", "test")}
    if args.get("cross"):
        size = 2**18
        pairs = [
            ("user_author", "enaging_user_id", "engaged_with_user_id"),
            ("user_language", "enaging_user_id", "language"),
        ]
        for name, a, b in pairs:
            spec.features.append(Feature(name, "cross", [a, b], "context", ["wide"], size))
            for shard in splits.values():
                x = shard.tensors[a] * 1000003 + shard.tensors[b]
                shard.tensors[name] = (x * 2654435761 % 4294967311) % (size - 1) + 1
    train, valid = splits["train"], splits["valid"]

    name = args.get("model", "deepfm")
    cfg: dict = {"_target_": TARGETS[name], "embedding_l2": float(args.get("l2", 0))}
    if name != "logistic":
        cfg["hidden_units"] = [int(h) for h in args.get("hidden", "64,32").split(",") if h]
        cfg["embedding_dim"] = int(args.get("k", 8))
        cfg["dropout"] = float(args.get("dropout", 0))
    model = build_model(cfg, spec)
    wrapper = train_wrapper(model, train_rows=train.total_rows)
    trainer = {
        "lr": float(args.get("lr", 1e-3)),
        "weight_decay": float(args.get("wd", 0)),
        "optimizer": args.get("opt", "adam"),
    }
    (optimizer,) = _make_optimizers(wrapper, trainer)
    dl2 = float(args.get("dl2", 0))
    l2lin, l2emb = float(args.get("l2lin", 0)), float(args.get("l2emb", 0))
    mlp = [p for n, p in model.named_parameters() if n.startswith("deep.") and p.dim() == 2]
    tables = embedding_tables(model)
    bs, epochs = int(args.get("bs", 3200)), int(args.get("epochs", 6))
    total = epochs * math.ceil(train.num_rows / bs)
    scheduler = None
    if args.get("sched") == "cosine":
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, total) / total))
        )
    curve = []
    for epoch in range(epochs):
        wrapper.train()
        for batch in iter_batches(train, bs, shuffle=True, seed=0, epoch=epoch, min_rows=2):
            loss, _ = wrapper(batch)
            if dl2:
                loss = loss + dl2 * sum(p.pow(2).sum() for p in mlp) / train.num_rows
            if l2lin or l2emb:
                prior = sum((l2lin if t.shape[1] == 1 else l2emb) * t.pow(2).sum() for t in tables)
                loss = loss + prior / train.num_rows
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            if scheduler is not None:
                scheduler.step()
        wrapper.eval()
        curve.append(auc_of(model, valid))
        if args.get("trainauc"):
            print(f"  train auc {auc_of(model, train, 10)} val {curve[-1]}", flush=True)
    if args.get("test"):
        print(f"  test auc (last epoch) {auc_of(model, splits['test'])}")
    best = max(curve)
    print(f"{' '.join(argv)} | best {best} at {curve.index(best) + 1} | {curve}", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
