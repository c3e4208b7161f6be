"""The dihedral group D4 on NHWC batches, and test-time augmentation over its views.

Element k (0..7) is encoded as r = k % 4 counter-clockwise quarter turns applied after
f = k // 4 horizontal flips (mirror along W):  transform(x, k) = rot90(hflip^f(x), r).
So 0..3 are the rotations by 0, 90, 180, 270 degrees and 4..7 the reflections; 6 (hflip
then half turn) is the vertical flip, 5 the transpose, 7 the anti-transpose.

A rotation or flip moves the CFA phase and the JPEG grid, so test-time views only help a
model trained with the same views: `views_unseen` says which requested views it never saw.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

D4_NAMES: tuple[str, ...] = (
    "identity",
    "rot90",
    "rot180",
    "rot270",
    "hflip",
    "transpose",  # rot90 after hflip
    "vflip",  # rot180 after hflip
    "antitranspose",  # rot270 after hflip
)

# 'flips' is the Klein four-group of the axis-aligned mirrors: identity, horizontal flip,
# vertical flip and both flips (= rot180). It never swaps H and W, so it works on
# non-square patches; 'rot90' and 'd4' need square ones.
VIEW_SETS: dict[str, tuple[int, ...]] = {
    "none": (0,),
    "flips": (0, 4, 6, 2),
    "rot90": (0, 1, 2, 3),
    "d4": tuple(range(8)),
}


def views(name: str) -> tuple[int, ...]:
    """The D4 indices of a named view set."""
    try:
        return VIEW_SETS[name]
    except KeyError:
        raise ValueError(f"unknown view set {name!r}; expected one of {sorted(VIEW_SETS)}") from None


def views_unseen(trained: str, requested: str) -> tuple[int, ...]:
    """Views of the `requested` set a model trained with the `trained` set never saw."""
    seen = set(views(trained))
    return tuple(k for k in views(requested) if k not in seen)


def _check(k: int) -> tuple[int, int]:
    if not isinstance(k, int) or not 0 <= k < 8:
        raise ValueError(f"D4 element must be a Python int in 0..7, got {k!r}")
    return k % 4, k // 4


def compose(a: int, b: int) -> int:
    """The element c with transform(transform(x, b), a) == transform(x, c).

    Uses hflip . rot^r == rot^-r . hflip: R^ra H^fa R^rb H^fb = R^(ra +- rb) H^(fa xor fb).
    """
    ra, fa = _check(a)
    rb, fb = _check(b)
    r = (ra + (-rb if fa else rb)) % 4
    return r + 4 * (fa ^ fb)


def inverse(k: int) -> int:
    """Reflections are their own inverse; a rotation by r is undone by 4 - r."""
    r, f = _check(k)
    return k if f else (-r) % 4


def transform(x: jax.Array, k: int) -> jax.Array:
    """Applies D4 element `k` (a static Python int) to every image of an NHWC batch."""
    r, f = _check(k)
    if x.ndim != 4:
        raise ValueError(f"transform expects an NHWC batch, got shape {x.shape}")
    if r % 2 and x.shape[1] != x.shape[2]:
        raise ValueError(
            f"D4 element {k} ({D4_NAMES[k]}) swaps H and W and needs square images, got "
            f"{x.shape[1]}x{x.shape[2]}; use the 'flips' view set for non-square patches"
        )
    if f:
        x = jnp.flip(x, axis=2)
    return jnp.rot90(x, r, axes=(1, 2)) if r else x


def transform_batch(x: jax.Array, ks: jax.Array) -> jax.Array:
    """Per-example transform with a traced int32 element per image: [B, H, W, C], [B].

    Under `jax.vmap` the `lax.switch` becomes a select over all 8 branches (cheap
    permutations, fused by XLA). Out-of-range `ks` are clamped to 0..7, as `lax.switch` does.
    """
    if x.ndim != 4 or x.shape[1] != x.shape[2]:
        raise ValueError(f"transform_batch needs square NHWC images, got shape {x.shape}")
    branches = [lambda img, k=k: transform(img[None], k)[0] for k in range(8)]
    return jax.vmap(lambda img, k: lax.switch(k, branches, img))(x, jnp.asarray(ks, jnp.int32))


def make_tta_predict(
    apply_fn: Callable[..., Any], view_ids: tuple[int, ...], *, features: bool = False
) -> Callable[..., Any]:
    """Wraps `apply_fn(images, *args) -> logits [N, C]` into `fn(images, *args) -> probs [V, B, C]`.

    `args` are per-example arrays (e.g. the is_manipulated flags) with the batch axis first;
    anything shared, such as the model state, belongs in `apply_fn`'s closure. The views are
    static permutations and the model runs once on all B * V view-images, laid out
    batch-major: a batch sharded over devices stays sharded (a `jax.vmap` over the view axis
    merges it view-major, and XLA then replicated every device's work). Softmax in float32.
    With `features`, `apply_fn` returns (features [N, D], logits [N, C]) and `fn` returns
    (probs, the identity view's features [B, D]): the embedding comes out of the same model
    call, so the views must include the identity. The result is a pure function: wrap it in
    `jax.jit`.
    """
    view_ids = tuple(int(k) for k in view_ids)
    for k in view_ids:
        _check(k)
    num_views = len(view_ids)
    if features and 0 not in view_ids:
        raise ValueError(f"features are read from the identity view, and the views {view_ids} lack it")

    def predict(images: jax.Array, *args):
        b = images.shape[0]
        stacked = jnp.stack([transform(images, k) for k in view_ids], axis=1)  # [B, V, H, W, C]
        flat = stacked.reshape(b * num_views, *stacked.shape[2:])
        out = apply_fn(flat, *(jnp.repeat(a, num_views, axis=0) for a in args))
        logits = out[1] if features else out
        probs = jax.nn.softmax(logits.astype(jnp.float32), axis=-1).reshape(b, num_views, -1).swapaxes(0, 1)
        if not features:
            return probs
        embedded = out[0].reshape(b, num_views, -1)[:, view_ids.index(0)]
        return probs, embedded.astype(jnp.float32)

    return predict
