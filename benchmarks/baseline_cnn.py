"""Reference baseline: a small JAX CNN on fixed noise residuals, independent of camjax.

    python benchmarks/baseline_cnn.py --root DIR [--seconds 240 | --steps N] [--seed S]

Reads the challenge layout (DIR/train/<class>/*.jpg, DIR/test/*.tif, optional
DIR/test_labels.csv). Model: the patch minus its 3x3 box blur, 4x4 space-to-depth, three 3x3
convolutions (64/128/128, BatchNorm, ReLU), global average pool, dense. Adam 1e-3, batch 32
of 64x64 patches at random positions on the 8-px grid, augmented by JPEG recompression
(q 70/90) or gamma (0.8/1.2). Test: mean softmax over the 64 tiles of each 512 patch.
Prints one JSON line (weighted accuracy = 0.7 acc(unaltered) + 0.3 acc(manipulated)).
"""

from __future__ import annotations

import argparse
import io
import sys
import time
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import challenge_score, emit, record, rounded  # noqa: E402

P, BATCH = 64, 32


class Net(nn.Module):
    classes: int

    @nn.compact
    def __call__(self, x, train: bool):
        x = x.astype(jnp.float32)
        x = x - nn.avg_pool(jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="edge"), (3, 3), (1, 1))  # residual
        b, h, w, c = x.shape
        x = x.reshape(b, h // 4, 4, w // 4, 4, c).transpose(0, 1, 3, 2, 4, 5).reshape(b, h // 4, w // 4, 16 * c)
        for ch in (64, 128, 128):
            x = nn.relu(nn.BatchNorm(use_running_average=not train)(nn.Conv(ch, (3, 3))(x)))
        return nn.Dense(self.classes)(x.mean((1, 2)))


def augment(patch: np.ndarray, rng) -> np.ndarray:
    k = rng.integers(6)  # half unaltered, then jpeg70, jpeg90, gamma0.8, gamma1.2 alike
    if k in (2, 3):
        buf = io.BytesIO()
        Image.fromarray(patch).save(buf, format="JPEG", quality=(70, 90)[k - 2])
        return np.asarray(Image.open(buf).convert("RGB"))
    if k in (4, 5):
        return np.clip(np.round(255 * (patch / 255.0) ** (0.8, 1.2)[k - 4]), 0, 255).astype(np.uint8)
    return patch


def batches(frames, labels, rng):
    while True:
        idx = rng.integers(len(frames), size=BATCH)
        out = []
        for i in idx:
            f = frames[i]
            y, x = rng.integers((f.shape[0] - P) // 8 + 1) * 8, rng.integers((f.shape[1] - P) // 8 + 1) * 8
            out.append(augment(np.ascontiguousarray(f[y : y + P, x : x + P]), rng))
        yield np.stack(out), labels[idx]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", required=True, type=Path)
    ap.add_argument(
        "--seconds", type=float, default=240.0, help="training wall-clock budget (after the compiling first step)"
    )
    ap.add_argument("--steps", type=int, default=0, help="a fixed step budget instead (deterministic)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    classes = sorted(d.name for d in (args.root / "train").iterdir() if d.is_dir())
    files = [(f, c) for c, name in enumerate(classes) for f in sorted((args.root / "train" / name).glob("*.jpg"))]
    frames = [np.asarray(Image.open(f).convert("RGB")) for f, _ in files]
    labels = np.array([c for _, c in files], np.int32)

    model, tx = Net(len(classes)), optax.adam(1e-3)
    variables = model.init(jax.random.PRNGKey(args.seed), jnp.zeros((1, P, P, 3), jnp.uint8), train=False)
    params, stats = variables["params"], variables["batch_stats"]
    opt_state = tx.init(params)

    @jax.jit
    def train_step(params, stats, opt_state, x, y):
        def loss_fn(p):
            logits, upd = model.apply({"params": p, "batch_stats": stats}, x, train=True, mutable=["batch_stats"])
            return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(), upd["batch_stats"]

        (loss, stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), stats, opt_state, loss

    predict = jax.jit(
        lambda params, stats, x: jax.nn.softmax(model.apply({"params": params, "batch_stats": stats}, x, train=False))
    )

    stream, steps, loss = batches(frames, labels, np.random.default_rng(args.seed)), 0, None
    start = time.perf_counter()  # restarted after the first step, so compiling is not in the budget
    while (steps < args.steps) if args.steps else (time.perf_counter() - start < args.seconds):
        x, y = next(stream)  # made while the previous step runs; at most one step in flight
        loss = loss.block_until_ready() if loss is not None else None
        params, stats, opt_state, loss = train_step(params, stats, opt_state, x, y)
        if steps == 0:
            loss, start = loss.block_until_ready(), time.perf_counter()
        steps += 1
    jax.block_until_ready(params)
    train_seconds = time.perf_counter() - start

    preds = {}
    for f in sorted((args.root / "test").glob("*.tif")):
        img = np.asarray(Image.open(f).convert("RGB"))
        n = img.shape[0] // P
        tiles = img[: n * P, : n * P].reshape(n, P, n, P, 3).transpose(0, 2, 1, 3, 4).reshape(-1, P, P, 3)
        preds[f.name] = classes[int(np.asarray(predict(params, stats, tiles)).mean(0).argmax())]
    weighted, acc = challenge_score(args.root, preds)
    emit(
        record(
            "baseline_cnn",
            model="cnn50",
            root=str(args.root),
            seed=args.seed,
            steps=steps,
            train_seconds=rounded(train_seconds, 1),
            images_per_sec=rounded((steps - 1) * BATCH / train_seconds, 1) if steps > 1 else None,
            final_loss=rounded(loss, 4) if steps else None,
            weighted_accuracy=rounded(weighted, 4),
            accuracy_unalt=rounded(acc.get("unalt"), 4),
            accuracy_manip=rounded(acc.get("manip"), 4),
            classes=len(classes),
            train_frames=len(frames),
            test_files=len(preds),
        )
    )


if __name__ == "__main__":
    main()
