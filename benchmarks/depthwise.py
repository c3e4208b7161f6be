"""Depthwise 3x3 convolutions, the two lowerings of camjax.models.layers.conv_lowering:
XLA's grouped convolution ('conv') against strided slices multiplied and summed, with their
own gradient ('shifts'). Forward and forward+backward, median milliseconds per call.

    python benchmarks/depthwise.py [--batch 32] [--shapes 56x64s1,57x128s2,...]

Shapes are MobileNet layers (feature map side x channels, stride); each record also gives the
largest difference between the two lowerings' outputs and gradients (summation order only).
"""

from __future__ import annotations

import argparse
import functools

import common
import numpy as np

DEFAULT_SHAPES = "32x8s1,16x32s1,32x16s2,56x64s1,112x32s1,57x128s2"


def parse_args(argv=None):
    smoke = common.smoke()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=2 if smoke else 32)
    p.add_argument(
        "--shapes",
        default="8x4s1,9x4s2" if smoke else DEFAULT_SHAPES,
        help="<side>x<channels>s<stride>, comma-separated",
    )
    p.add_argument("--repeats", type=int, default=2 if smoke else 10, help="timed calls per measurement (median)")
    return p.parse_args(argv)


def parse_shape(text: str) -> tuple[int, int, int]:
    side, rest = text.split("x")
    channels, stride = rest.split("s")
    return int(side), int(channels), int(stride)


def main(argv=None) -> None:
    args = parse_args(argv)
    import jax
    import jax.numpy as jnp

    from camjax.models import layers
    from camjax.parallel import compile_count

    for spec in common.csv_strs(args.shapes):
        side, channels, stride = parse_shape(spec)
        rng = np.random.default_rng(side)
        x = jnp.asarray(rng.normal(size=(args.batch, side, side, channels)), jnp.float32)
        kernel = jnp.asarray(rng.normal(size=(3, 3, 1, channels)), jnp.float32)
        padding = "SAME" if stride == 1 else "VALID"  # Keras pads stride-2 inputs explicitly first
        out_side = side if stride == 1 else (side - 3) // stride + 1
        weights = jnp.asarray(rng.normal(size=(args.batch, out_side, out_side, channels)), jnp.float32)
        results = {}
        for impl in ("conv", "shifts"):
            lowering = layers.conv_lowering(impl)
            conv = functools.partial(
                lowering,
                window_strides=(stride, stride),
                padding=padding,
                dimension_numbers=jax.lax.conv_dimension_numbers(x.shape, kernel.shape, ("NHWC", "HWIO", "NHWC")),
                feature_group_count=channels,
            )
            forward = jax.jit(conv)
            out = forward(x, kernel)
            grads = jax.jit(
                jax.grad(lambda x, k, conv=conv, weights=weights: jnp.vdot(conv(x, k), weights), argnums=(0, 1))
            )
            outputs = (out, *grads(x, kernel))
            before = compile_count()
            # Each lambda is timed at once, in its own iteration: it never sees a later loop's values.
            fwd = common.median(common.time_calls(lambda: forward(x, kernel).block_until_ready(), args.repeats))  # noqa: B023
            bwd = common.median(common.time_calls(lambda: jax.block_until_ready(grads(x, kernel)), args.repeats))  # noqa: B023
            results[impl] = (fwd, bwd, outputs, compile_count() - before)
        diff = max(
            float(jnp.abs(a - b).max() / (jnp.abs(b).max() + 1e-12))
            for a, b in zip(results["shifts"][2], results["conv"][2])
        )
        for impl, (fwd, bwd, _, compiles) in results.items():
            common.emit(
                common.record(
                    "depthwise",
                    model=f"depthwise3x3 {side}x{side}x{channels} stride {stride}",
                    impl=impl,
                    batch=args.batch,
                    forward_ms=common.rounded(fwd * 1e3, 2),
                    train_ms=common.rounded(bwd * 1e3, 2),
                    speedup_vs_conv=common.rounded(results["conv"][1] / bwd, 2),
                    max_rel_diff=diff,
                    peak_rss_mb=common.peak_rss_mb(),
                    compiles_after_warmup=compiles,
                )
            )


if __name__ == "__main__":
    main()
