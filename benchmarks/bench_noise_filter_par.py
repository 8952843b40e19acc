"""Noise filter and PAR: batched implementations vs the per-image way (same run, ratios).

    .venv/bin/python benchmarks/bench_noise_filter_par.py [--size 448] [--repeats 5] [--threads N]

Noise filter: batch 4 × two students = 8 loss maps; reference = scikit-learn GaussianMixture per
map (fit on the fitting set, posterior on every pixel), as the release does. PAR: batch 4 at half
the crop with the two threshold stacks (bg + 2 classes each); reference = one affinity + propagation
call per image and stack (affinity recomputed each time), as the release does.
"""

from __future__ import annotations

import argparse
import math
import time
import warnings

import numpy as np
import torch

from dupl_cli.core.labels import IGNORE_INDEX


def realistic_losses(n: int, size: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    losses = np.zeros((n, size, size), np.float32)
    labels = np.zeros((n, size, size), np.int64)
    for i in range(n):
        y = np.zeros((size, size), np.int64)
        y[size // 8 : size * 7 // 8, size // 6 : size * 5 // 6] = rng.integers(1, 21)
        y[:, : size // 10] = IGNORE_INDEX
        clean = rng.gamma(2.0, 0.3, (size, size))
        noisy = np.abs(rng.normal(rng.uniform(2, 5), rng.uniform(0.3, 1.2), (size, size)))
        losses[i] = np.where(rng.random((size, size)) < rng.uniform(0.1, 0.4), noisy, clean)
        labels[i] = y
    return torch.from_numpy(losses), torch.from_numpy(labels)


def sklearn_per_image(losses, labels, fits=None):
    """Noise masks as the release computes them; ``fits`` (a list) collects each map's fitted GMM."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.mixture import GaussianMixture

    out = []
    for loss, label in zip(losses.numpy(), labels.numpy(), strict=True):
        x, y = loss.reshape(-1, 1), label.ravel()
        sel = (y != 0) & (y != IGNORE_INDEX) & (x[:, 0] > 0.1)
        noise = np.zeros(y.shape, bool)
        if sel.sum() > 1000:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ConvergenceWarning)
                gmm = GaussianMixture(2, max_iter=10, tol=1e-2, reg_covar=5e-4, random_state=0).fit(x[sel])
            means = gmm.means_.ravel()
            if fits is not None:
                fits.append(gmm)
            if abs(means[0] - means[1]) > 1.0:
                noise = (gmm.predict_proba(x)[:, means.argmax()] > 0.95) & (y != 0)
        elif fits is not None:
            fits.append(None)
        out.append(noise.reshape(label.shape))
    return np.stack(out)


def fit_agreement(losses, labels) -> str:
    """How closely the batched EM reproduces scikit-learn's fits: parameters and iteration counts."""
    from dupl_cli.method.noise_filter import noisy_pixels
    from dupl_cli.method.params import NoiseFilterConfig

    fits: list = []
    sklearn_per_image(losses, labels, fits)
    _, ours = noisy_pixels(losses, labels, NoiseFilterConfig(one_sided=False), return_fit=True)
    rel = {"means": 0.0, "variances": 0.0, "weights": 0.0}
    same_iters = 0
    fitted = [i for i, g in enumerate(fits) if g is not None]
    for i in fitted:
        g = fits[i]
        ref = {"means": g.means_.ravel(), "variances": g.covariances_.ravel(), "weights": g.weights_.ravel()}
        for key, value in ref.items():
            mine = getattr(ours, key)[i].double().numpy()
            rel[key] = max(rel[key], float(np.max(np.abs(mine - value) / np.abs(value))))
        same_iters += int(ours.n_iter[i]) == g.n_iter_
    return (
        f"  fits vs scikit-learn over {len(fitted)} fitted maps: max relative error means "
        f"{rel['means']:.1e}, variances {rel['variances']:.1e}, weights {rel['weights']:.1e}; EM iterations "
        f"equal on {same_iters} of {len(fitted)}"
    )


def interleaved(fns, repeats):
    """Median seconds of each fn, warmed up and run alternately so machine load hits all alike."""
    results = [fn() for fn in fns]
    times = [[] for _ in fns]
    for _ in range(repeats):
        for k, fn in enumerate(fns):
            start = time.perf_counter()
            results[k] = fn()
            times[k].append(time.perf_counter() - start)
    return [float(np.median(t)) for t in times], results


def main() -> None:
    import os

    from dupl_cli.method.noise_filter import noisy_pixels
    from dupl_cli.method.par import pixel_affinity, propagate
    from dupl_cli.method.params import NoiseFilterConfig

    parser = argparse.ArgumentParser()
    parser.add_argument("--size", type=int, default=448)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    load = ", ".join(f"{v:.2f}" for v in os.getloadavg())
    print(
        f"torch {torch.__version__}, threads {torch.get_num_threads()}, cpus {os.cpu_count()}, load avg "
        f"{load}, crop {args.size}"
    )

    losses, labels = realistic_losses(8, args.size)
    release_filter = NoiseFilterConfig(one_sided=False)
    fit_share = ((labels != 0) & (labels != IGNORE_INDEX) & (losses > 0.1)).float().mean().item()
    (t_ref, t_ours), (ref, ours) = interleaved(
        [lambda: sklearn_per_image(losses, labels), lambda: noisy_pixels(losses, labels, release_filter)],
        args.repeats,
    )
    agree = (ours.numpy() == ref).mean()
    print(
        f"noise filter, 8 maps {args.size}x{args.size} ({fit_share:.0%} of pixels in the fitting set), "
        f"median of {args.repeats} interleaved runs:\n"
        f"  sklearn GaussianMixture per map {t_ref * 1e3:8.1f} ms/call\n"
        f"  batched noisy_pixels            {t_ours * 1e3:8.1f} ms/call\n"
        f"  speed-up {t_ref / t_ours:.1f}x (target >= 20x), decisions agree {agree:.5%} "
        f"({int((ours.numpy() != ref).sum())} of {ref.size} pixels differ)"
    )
    print(fit_agreement(losses, labels))

    half = args.size // 2
    g = torch.Generator().manual_seed(0)
    images = torch.rand(4, 3, half, half, generator=g)
    stacks = [torch.softmax(torch.randn(4, 3, half, half, generator=g) * 2, 1) for _ in range(2)]

    def straightforward_loop():
        return [straightforward_par(images[i], s[i]) for i in range(4) for s in stacks]

    def own_kernel_per_image():
        return [propagate(pixel_affinity(images[i : i + 1]), s[i : i + 1]) for i in range(4) for s in stacks]

    def batched():
        return propagate(pixel_affinity(images), torch.cat(stacks, 1))

    (t_loop, t_own, t_batch), (loop_out, own_out, batch_out) = interleaved(
        [straightforward_loop, own_kernel_per_image, batched], args.repeats
    )
    diff = max(
        (batch_out[i : i + 1, 3 * k : 3 * k + 3] - loop_out[2 * i + k]).abs().max().item()
        for i in range(4)
        for k in range(2)
    )
    print(
        f"PAR, batch 4 at {half}x{half}, 2 stacks x 3 channels, median of {args.repeats} interleaved runs:\n"
        "  straightforward per-image loop (affinity per stack, neighbour stacks materialised) "
        f"{t_loop * 1e3:8.1f} ms\n"
        "  dupl's kernel called per image and stack                                         "
        f"{t_own * 1e3:8.1f} ms\n"
        "  batched, affinity shared by both stacks                                          "
        f"{t_batch * 1e3:8.1f} ms\n"
        f"  speed-up {t_loop / t_batch:.1f}x vs the loop (target >= 2x), {t_own / t_batch:.1f}x vs per-image "
        f"calls; max diff {diff:.1e}"
    )


def straightforward_par(
    image: torch.Tensor, probs: torch.Tensor, dilations=(1, 2, 4, 8, 12, 24), iters: int = 10
):
    """The plain way for one image: gather the 48 neighbours as a stack, for the affinity and again
    in every propagation step (as the release's PAR does), in the order of docs/method.md §5."""
    offsets = [(dy * d, dx * d) for d in dilations for dy in (-1, 0, 1) for dx in (-1, 0, 1) if dy or dx]
    dist = torch.tensor([math.hypot(dy, dx) for dy, dx in offsets])
    pad = max(dilations)

    def stack(t):
        padded = torch.nn.functional.pad(t[None], (pad, pad, pad, pad), mode="replicate")[0]
        h, w = t.shape[-2:]
        return torch.stack(
            [padded[:, pad + dy : pad + dy + h, pad + dx : pad + dx + w] for dy, dx in offsets], 1
        )

    near = stack(image)  # 3×N×H×W
    sigma = near.std(dim=1, keepdim=True)
    colour = -((near - image[:, None]).abs() / (sigma + 1e-8) / 0.3).pow(2).mean(0)
    pos = -(dist / (dist.std() + 1e-8) / 0.3).pow(2)
    aff = colour.softmax(0) + 0.01 * pos.softmax(0)[:, None, None]
    for _ in range(iters):
        probs = (stack(probs) * aff[None]).sum(1)
    return probs


if __name__ == "__main__":
    main()
