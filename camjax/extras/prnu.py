"""PRNU sensor-noise matching: noise residuals, device fingerprints, NCC/PCE, device clusters.

Every sensor multiplies the light it records by a fixed per-pixel gain pattern K (photo-
response non-uniformity), so an image I carries W = I K + noise in its denoising residual W.
All test patches of one challenge class come from one device, hence share K: correlating
residuals groups them by device, and a cluster's CNN predictions can be made to agree.

Residuals follow Lukas, Fridrich and Goljan (2006): a Mihcak-style local Wiener filter in the
wavelet domain (PyWavelets), then zero-mean rows and columns and a Wiener filter on the
Fourier magnitude, which remove the patterns every camera of a model shares (CFA
interpolation, the JPEG block grid) and would otherwise match across devices. Scores are in
z units: the normalised cross-correlation (NCC) times sqrt(pixels), about N(0, 1) for two
unrelated white residuals, whatever the patch size. The heavy part, correlating thousands of
512x512 residuals under four rotations, runs in JAX on fixed-size chunks (one compilation,
bounded memory); residuals are kept on the host in float16 at unit variance.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Sequence

import cv2
import jax
import jax.numpy as jnp
import numpy as np
import pywt
from scipy.cluster.hierarchy import fcluster, linkage
from scipy.spatial.distance import squareform

from camjax.data.decode import BadImageError, decode_image, read_bytes

LUMA = np.array([0.299, 0.587, 0.114], np.float32)
SATURATED = 250  # pixels at or above this grey level carry no PRNU (clipped): weight 0
WIENER_WINDOWS = (3, 5, 7, 9)


def _wiener_noise(x: np.ndarray, noise_var: float, windows: Sequence[int] = WIENER_WINDOWS) -> np.ndarray:
    """The noise part of x under a local Wiener filter: x * s^2 / (signal variance + s^2).

    The local signal variance is the smallest over square windows (Mihcak et al. 1999), so
    edges are not smeared into the estimate.
    """
    x = np.asarray(x, np.float32)
    sq = x * x
    local = np.min([cv2.blur(sq, (w, w), borderType=cv2.BORDER_REFLECT) for w in windows], axis=0)
    signal = np.maximum(local - noise_var, 0.0)
    return x * (noise_var / (signal + noise_var))


def grey(image: np.ndarray) -> np.ndarray:
    """float32 luminance of an HxWx3 (or HxW) image."""
    image = np.asarray(image, np.float32)
    return image @ LUMA if image.ndim == 3 else image


def zero_mean(w: np.ndarray) -> np.ndarray:
    """w with every row and column of each 2x2 CFA sub-lattice at mean zero (kills row/column
    readout patterns and the demosaicing period shared by all devices of a model)."""
    w = np.array(w, np.float32)
    for dy in (0, 1):
        for dx in (0, 1):
            sub = w[dy::2, dx::2]
            sub -= sub.mean(axis=1, keepdims=True)
            sub -= sub.mean(axis=0, keepdims=True)
    return w


def wiener_dft(w: np.ndarray) -> np.ndarray:
    """Flattens the residual's spectrum: peaks (periodic, non-unique artefacts such as the
    8x8 JPEG grid) are cut to the noise floor, the white part is kept."""
    spectrum = np.fft.fft2(w)
    magnitude = np.abs(spectrum).astype(np.float32) / np.float32(np.sqrt(w.size))
    kept = _wiener_noise(magnitude, float(np.var(w)) or 1.0)
    gain = np.divide(kept, magnitude, out=np.zeros_like(magnitude), where=magnitude > 0)
    return np.real(np.fft.ifft2(spectrum * gain)).astype(np.float32)


def residual(
    image: np.ndarray, *, sigma: float = 3.0, wavelet: str = "db4", levels: int = 4, whiten: bool = True
) -> np.ndarray:
    """The PRNU-bearing noise residual W (HxW float32) of one image.

    Luminance first (one transform instead of three; measured no worse on the synthetic
    cameras), the detail sub-bands of a `levels`-deep wavelet decomposition Wiener-filtered
    for a noise of std `sigma` grey levels, the approximation dropped. `whiten` applies
    `zero_mean` and `wiener_dft`.
    """
    x = grey(image)
    if x.ndim != 2 or min(x.shape) < 2**levels:
        raise ValueError(f"residual needs an image of at least {2**levels}x{2**levels}, got shape {np.shape(image)}")
    coeffs = pywt.wavedec2(x, wavelet, level=levels, mode="periodization")
    noise = [np.zeros_like(coeffs[0])]
    noise += [tuple(_wiener_noise(band, sigma**2) for band in bands) for bands in coeffs[1:]]
    w = pywt.waverec2(noise, wavelet, mode="periodization")[: x.shape[0], : x.shape[1]].astype(np.float32)
    return wiener_dft(zero_mean(w)) if whiten else w


def fingerprint(images: Iterable[np.ndarray], **residual_kw) -> np.ndarray:
    """A device's reference pattern K from its images (same shape, same orientation).

    Maximum-likelihood estimate K = sum(W I) / sum(I^2) over the images (Chen et al. 2008),
    saturated pixels left out, then `zero_mean` and `wiener_dft`. Streams: one image at a time.
    """
    num = den = None
    shape = None
    for image in images:
        i = grey(image)
        if shape is None:
            shape, num, den = i.shape, np.zeros(i.shape, np.float64), np.zeros(i.shape, np.float64)
        elif i.shape != shape:
            raise ValueError(f"fingerprint: images must share one shape, got {shape} and {i.shape}")
        w = residual(image, whiten=False, **residual_kw)
        i = np.where(i < SATURATED, i, 0.0)
        num += w * i
        den += i * i
    if num is None:
        raise ValueError("fingerprint needs at least one image")
    return wiener_dft(zero_mean((num / np.maximum(den, 1.0)).astype(np.float32)))


def standardise(x: np.ndarray, dtype=np.float16) -> np.ndarray:
    """[N, H, W] -> zero mean, unit variance per item (so <a, b> / pixels is the NCC), stored
    as `dtype` (float16 halves host memory: 2640 patches of 512x512 take 1.4 GB)."""
    x = np.asarray(x, np.float32)
    x = x - x.mean(axis=(-2, -1), keepdims=True)
    std = x.std(axis=(-2, -1), keepdims=True)
    return (x / np.where(std > 0, std, 1.0)).astype(dtype)


@jax.jit
def _ncc_block(a, b):
    """[4, ca, cb] NCC of a with b rotated by k quarter turns (a, b standardised)."""
    a = a.astype(jnp.float32).reshape(a.shape[0], -1)
    pixels = a.shape[1]
    out = [a @ jnp.rot90(b.astype(jnp.float32), k, axes=(1, 2)).reshape(b.shape[0], -1).T for k in range(4)]
    return jnp.stack(out) / pixels


def _chunks(x: np.ndarray, chunk: int):
    """(start, block padded with zeros to `chunk` rows): every block has one shape."""
    for s in range(0, len(x), chunk):
        block = x[s : s + chunk]
        if len(block) < chunk:
            block = np.concatenate([block, np.zeros((chunk - len(block),) + x.shape[1:], x.dtype)])
        yield s, block


def correlate(
    a: np.ndarray,
    b: np.ndarray,
    *,
    rotations: Sequence[int] = (0, 1, 2, 3),
    chunk: int = 64,
    upper_blocks_only: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """z scores [Na, Nb] = NCC * sqrt(pixels) of each a with each b under its best rotation
    in `rotations` (k quarter turns of b, counter-clockwise), and that k.

    a and b are `standardise`d [N, H, W] (square when rotating). Chunks of `chunk` x `chunk`
    pairs run as one compiled block, so memory is bounded by the chunk, not by N. With
    `upper_blocks_only` (a is b), blocks below the diagonal are skipped and left undefined.
    """
    a, b = np.asarray(a), np.asarray(b)
    if a.ndim != 3 or a.shape[1:] != b.shape[1:]:
        raise ValueError(f"correlate needs [N, H, W] stacks of one patch shape, got {a.shape} and {b.shape}")
    rotations = list(rotations)
    if any(k % 2 for k in rotations) and a.shape[1] != a.shape[2]:
        raise ValueError(f"quarter-turn rotations need square residuals, got {a.shape[1:]}")
    scores = np.empty((len(a), len(b)), np.float32)
    best = np.empty((len(a), len(b)), np.int32)
    scale = np.sqrt(a.shape[1] * a.shape[2])
    for i, block_a in _chunks(a, chunk):
        for j, block_b in _chunks(b, chunk):
            if upper_blocks_only and j < i:
                continue
            ncc = np.asarray(_ncc_block(block_a, block_b))[rotations] * scale
            na, nb = min(chunk, len(a) - i), min(chunk, len(b) - j)
            scores[i : i + na, j : j + nb] = ncc.max(0)[:na, :nb]
            best[i : i + na, j : j + nb] = np.take(rotations, ncc.argmax(0))[:na, :nb]
    return scores, best


def pairwise_scores(residuals: np.ndarray, *, rotations: Sequence[int] = (0, 1, 2, 3), chunk: int = 64) -> np.ndarray:
    """Symmetric [N, N] z scores of `correlate(residuals, residuals)`, diagonal 0.

    Rotating a by k is rotating b by -k, so over a rotation set closed under inverses the
    scores are symmetric: only the blocks on and above the diagonal are computed (half the work).
    """
    closed = sorted({k % 4 for k in rotations} | {-k % 4 for k in rotations})
    scores, _ = correlate(residuals, residuals, rotations=closed, chunk=chunk, upper_blocks_only=True)
    upper = np.triu(scores, 1)
    return upper + upper.T


@functools.partial(jax.jit, static_argnums=2)
def _pce_block(a, b, radius):
    """PCE [ca, cb] and the peak's circular shift [ca, cb, 2] of each (a, b) pair."""
    fa = jnp.fft.rfft2(a.astype(jnp.float32))
    fb = jnp.fft.rfft2(b.astype(jnp.float32))
    h, w = a.shape[1:]
    xc = jnp.fft.irfft2(fa[:, None] * jnp.conj(fb[None]), s=(h, w))  # [ca, cb, H, W]
    flat = xc.reshape(xc.shape[:2] + (-1,))
    arg = jnp.argmax(flat, axis=-1)
    peak = jnp.take_along_axis(flat, arg[..., None], -1)[..., 0]
    py, px = arg // w, arg % w
    dy = jnp.abs((jnp.arange(h)[None, None, :] - py[..., None] + h // 2) % h - h // 2)
    dx = jnp.abs((jnp.arange(w)[None, None, :] - px[..., None] + w // 2) % w - w // 2)
    near = (dy[..., :, None] <= radius) & (dx[..., None, :] <= radius)
    energy = jnp.where(near, 0.0, xc**2).sum((-2, -1)) / (h * w - (2 * radius + 1) ** 2)
    shift = jnp.stack([jnp.where(py > h // 2, py - h, py), jnp.where(px > w // 2, px - w, px)], -1)
    return peak**2 / energy, shift


def pce(a: np.ndarray, b: np.ndarray, *, radius: int = 5, chunk: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """Peak-to-correlation energy [Na, Nb] of the circular cross-correlation of each a with
    each b (FFT-based), and the shift (dy, dx) [Na, Nb, 2] at the peak: b moved by it matches a.

    PCE = peak^2 / mean square of the correlation surface outside a (2 radius + 1)^2 window
    around the peak; unlike NCC it finds a match under an unknown translation (cropping).
    """
    a, b = np.asarray(a), np.asarray(b)
    if a.ndim != 3 or a.shape[1:] != b.shape[1:]:
        raise ValueError(f"pce needs [N, H, W] stacks of one patch shape, got {a.shape} and {b.shape}")
    out = np.empty((len(a), len(b)), np.float32)
    shifts = np.empty((len(a), len(b), 2), np.int32)
    for i, block_a in _chunks(a, chunk):
        for j, block_b in _chunks(b, chunk):
            value, shift = (np.asarray(v) for v in _pce_block(block_a, block_b, radius))
            na, nb = min(chunk, len(a) - i), min(chunk, len(b) - j)
            out[i : i + na, j : j + nb] = value[:na, :nb]
            shifts[i : i + na, j : j + nb] = shift[:na, :nb]
    return out, shifts


def fingerprint_scores(
    images: Sequence[np.ndarray], fingerprints: np.ndarray, *, rotations: Sequence[int] = (0,), **residual_kw
) -> np.ndarray:
    """z scores [N, C] of each image against each reference fingerprint: the correlation of
    W with I K, computed as that of W I with K (the same inner product)."""
    weighted = np.stack([residual(im, **residual_kw) * np.where(grey(im) < SATURATED, grey(im), 0) for im in images])
    return correlate(standardise(weighted), standardise(fingerprints), rotations=rotations)[0]


def residuals_of_files(
    paths: Sequence[str], *, size: int = 512, read: Callable = read_bytes, **residual_kw
) -> tuple[np.ndarray, np.ndarray]:
    """Standardised residuals [M, size, size] of the centre crops of the test files, and the
    indices (into `paths`) of the M files that are large enough and readable."""
    out, used = [], []
    for i, path in enumerate(paths):
        try:
            data, name = read(path)
            image = decode_image(data, name=name)
        except BadImageError:
            continue  # the evaluator reports unreadable files; they join no cluster
        h, w = image.shape[:2]
        if min(h, w) < size:
            continue
        top, left = (h - size) // 2, (w - size) // 2
        out.append(standardise(residual(image[top : top + size, left : left + size], **residual_kw)))
        used.append(i)
    if not out:
        return np.zeros((0, size, size), np.float16), np.zeros(0, np.int64)
    return np.stack(out), np.array(used)


def cluster(scores: np.ndarray, threshold: float) -> np.ndarray:
    """Device clusters [N] (ids from 0) by average-linkage agglomeration of pairwise z scores:
    two groups merge while their mean pairwise score is at least `threshold`. Averaging over
    all pairs makes merges of grown clusters reliable although single pairs are weak."""
    scores = np.asarray(scores, np.float64)
    n = len(scores)
    if scores.shape != (n, n):
        raise ValueError(f"cluster needs a square score matrix, got {scores.shape}")
    if n < 2:
        return np.zeros(n, np.int64)
    top = float(scores.max())
    distance = top - np.minimum(scores, scores.T)
    np.fill_diagonal(distance, 0.0)
    tree = linkage(squareform(distance, checks=False), method="average")
    return fcluster(tree, top - threshold, criterion="distance").astype(np.int64) - 1


def merge_log_probs(log_probs: np.ndarray, clusters: np.ndarray) -> np.ndarray:
    """Each cluster's summed log-probabilities (the product of its members' independent
    evidence), renormalised and given to every member; singletons are unchanged."""
    log_probs = np.asarray(log_probs, np.float64)
    clusters = np.asarray(clusters)
    if clusters.shape != log_probs.shape[:1]:
        raise ValueError(f"merge_log_probs: {len(clusters)} cluster ids for {len(log_probs)} rows")
    out = log_probs.copy()
    for c in np.unique(clusters):
        rows = clusters == c
        if rows.sum() > 1:
            out[rows] = log_probs[rows].sum(axis=0)
    return out - np.logaddexp.reduce(out, axis=1, keepdims=True)


def purity(clusters: np.ndarray, labels: np.ndarray) -> dict:
    """How well clusters follow the true classes: purity (share of the clustered files whose
    class is their cluster's majority), files in clusters of two or more, cluster count."""
    clusters, labels = np.asarray(clusters), np.asarray(labels)
    ids, counts = np.unique(clusters, return_counts=True)
    multi = ids[counts > 1]
    majority = sum(int(np.unique(labels[clusters == c], return_counts=True)[1].max()) for c in multi)
    clustered = int(np.isin(clusters, multi).sum())
    return {
        "purity": majority / clustered if clustered else 1.0,
        "clustered": clustered,
        "files": len(clusters),
        "clusters": len(multi),
        "largest": int(counts.max()) if len(counts) else 0,
    }
