"""Dense convolutions on the CPU: XLA's convolution ('conv') against the lowerings of
camjax.models.layers.conv_lowering - the matrix product over gathered taps ('gather'), the
product with every tap's kernel and a shifted sum ('taps', stride 1; its input's gradient is the
convolution's, its kernel's a product of the cotangent's shifted taps) - and the rule 'auto' applies (a gathered product for 1x1 kernels, for kernels
larger than their input map, for kernels over an image's few channels, and for convolutions with
256 or more channels in and out over at most 256 positions: `layers._gather_wins`; the taps'
product for narrow layers over mid-sized maps: `layers._taps_product_wins`; otherwise XLA's
convolution, its kernel gradient in runs of the batch, or bands of an image's rows, where its
operands outgrow 2 MiB: `layers._kernel_grad_slices`, recorded as [runs, bands]).

    python benchmarks/conv_lowering.py --layers [--shapes 8x2x512x3,4x56x64x3,...]
    python benchmarks/conv_lowering.py --models resnet50:64:8,resnet50:224:4,...

`--layers`: one convolution (stride 1, 'SAME'), forward plus both gradients, median ms per
call, the lowerings timed in alternating rounds (`compare.time_in_rounds`); the shapes are
batch x side x channels x kernel, with as many output channels as input channels (ResNet50's
3x3 layers at patch 64 and 224) unless a fifth field gives them. `--models`: the train step `camjax.train` runs (as in compare.py: the
registry model, plain head, Adam, state donated, batch resident) built once per
`model.kwargs.conv_impl` choice in one process and timed in alternating rounds, so the
choices share the machine's state; images/sec medians and each choice's ratio to 'conv'.
Each record gives the largest relative difference between the choices' outputs (`--layers`)
or first losses (`--models`): summation order only.
"""

from __future__ import annotations

import argparse

import common
import numpy as np

DEFAULT_SHAPES = "8x2x512x3,8x4x256x3,8x8x128x3,8x16x64x3,4x14x256x3,4x28x128x3,4x56x64x3,8x16x64x1x256,4x56x64x1x256"
DEFAULT_MODELS = "resnet50:64:8,resnet50:224:4"
CHOICES = ("conv", "auto", "gather", "taps")


def parse_args(argv=None):
    smoke = common.smoke()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--layers", action="store_true", help="time single convolutions (--shapes)")
    what.add_argument("--models", help="model:patch:batch,... - time whole train steps")
    p.add_argument("--shapes", default="2x2x8x3,2x6x8x3,2x12x8x1x4,2x12x8x3x2,4x48x64x3" if smoke else DEFAULT_SHAPES)
    p.add_argument("--choices", default=",".join(CHOICES), help="conv_impl values to compare")
    p.add_argument("--repeats", type=int, default=2 if smoke else 7, help="timed calls per layer and round (median)")
    p.add_argument("--steps", type=int, default=2 if smoke else 5, help="timed steps per round (--models)")
    p.add_argument("--rounds", type=int, default=2 if smoke else 4, help="alternating rounds")
    p.add_argument("--warmup", type=int, default=1 if smoke else 3, help="untimed steps per choice (--models)")
    return p.parse_args(argv)


def parse_shape(text: str) -> tuple[int, int, int, int, int]:
    fields = [int(v) for v in text.split("x")]
    if len(fields) not in (4, 5):
        raise ValueError(f"shape {text!r}: expected batch x side x channels x kernel[x out_channels]")
    batch, side, channels, kernel = fields[:4]
    return batch, side, channels, kernel, fields[4] if len(fields) == 5 else channels


def time_layers(args, choices) -> None:
    import types

    import compare
    import jax
    import jax.numpy as jnp

    from camjax.models import layers

    numbers = jax.lax.conv_dimension_numbers
    for spec in common.csv_strs(args.shapes):
        batch, side, cin, k, cout = parse_shape(spec)
        rng = np.random.default_rng(side * 1000 + cin)
        x = jnp.asarray(rng.normal(size=(batch, side, side, cin)), jnp.float32)
        kernel = jnp.asarray(rng.normal(size=(k, k, cin, cout)), jnp.float32)
        weights = jnp.asarray(rng.normal(size=(batch, side, side, cout)), jnp.float32)
        dims = numbers(x.shape, kernel.shape, ("NHWC", "HWIO", "NHWC"))
        runners = {}
        for choice in choices:
            lowering = layers.conv_lowering(dense=choice)

            def loss(x, kernel, lowering=lowering, dims=dims, weights=weights):
                return jnp.vdot(lowering(x, kernel, (1, 1), "SAME", dimension_numbers=dims), weights)

            step = jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))
            runners[choice] = types.SimpleNamespace(
                outputs=jax.tree.leaves(jax.block_until_ready(step(x, kernel))),  # compiles once
                step=lambda step=step, x=x, kernel=kernel: jax.block_until_ready(step(x, kernel)),
            )
        compare.time_in_rounds(list(runners.values()), args.rounds, args.repeats)
        ms = {c: 1e3 * common.median(r.times) for c, r in runners.items()}
        reference = runners[choices[0]].outputs
        for choice, r in runners.items():
            diff = max(float(jnp.abs(a - b).max() / (jnp.abs(b).max() + 1e-12)) for a, b in zip(r.outputs, reference))
            common.emit(
                common.record(
                    "conv_lowering",
                    model=f"conv{k}x{k} {side}x{side}x{cin}->{cout}",
                    positions=side * side,
                    gathered_by_auto=layers._gather_wins(x.shape, kernel.shape),
                    taps_by_auto=layers._taps_product_wins(x.shape, kernel.shape),
                    kernel_grad_slices_by_auto=layers._kernel_grad_slices(x.shape, kernel.shape, x.dtype.itemsize),
                    impl=choice,
                    batch=batch,
                    train_ms=common.rounded(ms[choice], 3),
                    speedup_vs_first=common.rounded(ms[choices[0]] / ms[choice], 2),
                    max_rel_diff=diff,
                    peak_rss_mb=common.peak_rss_mb(),
                    compiles_after_warmup=r.compiles,
                )
            )


def time_models(args, choices) -> None:
    import step_variants

    step_variants.time_variants(
        args.models,
        [{"conv_impl": choice} for choice in choices],
        steps=args.steps,
        rounds=args.rounds,
        warmup=args.warmup,
        benchmark="conv_lowering",
        label=lambda kwargs: {"impl": kwargs["conv_impl"]},
    )


def main(argv=None) -> None:
    args = parse_args(argv)
    choices = tuple(common.csv_strs(args.choices))
    if not choices or any(c not in CHOICES for c in choices):
        raise SystemExit(f"conv_lowering.py: --choices takes some of {', '.join(CHOICES)}, got {args.choices!r}")
    if args.layers:
        time_layers(args, choices)
    else:
        time_models(args, choices)


if __name__ == "__main__":
    main()
