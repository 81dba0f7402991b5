"""A picture of what a reduction did: ``reduction(image, reduced, grid)`` (needs matplotlib).

Every visual token is one patch of the image, numbered in raster order over ``grid`` = (rows, cols). A
:class:`restore_ext.Reduced` says, per patch, which output it went into (``source``) and, per output, how many
patches it stands for (``size``) and the patch whose position it keeps (``position``). The picture shows:

- *kept* patches (the base method's picks when ``retained`` is given, else every output of size 1: the patch
  reaches the LLM unchanged) with a white frame and no tint;
- *merged* patches tinted with their cluster's colour (one colour per merged output; neighbouring outputs in
  position order get far-apart colours), the patch whose position the output keeps framed in that colour and
  labelled with the output's size;
- *dropped* patches (``source == -1``, pruning without merging) darkened.

For LLaVA-1.5 the grid is (24, 24) over the 336 px image; for a model whose merger joins 2 x 2 patches
(Qwen2.5-VL / Qwen3-VL) pass the grid after the merger, e.g. (grid_h // 2, grid_w // 2).
"""
from __future__ import annotations

import colorsys
import math
from typing import Optional, Sequence, Tuple, Union

import numpy as np
import torch

from . import Reduced  # the public name: the module holding it is being reorganised

TINT_ALPHA = 0.55  # share of the cluster colour in a merged patch's pixels
DROPPED_SHADE = 0.25  # dropped patches keep this share of their brightness
KEPT_EDGE = (1.0, 1.0, 1.0)


def cluster_colours(count: int) -> np.ndarray:
    """(count, 3) distinct RGB colours in [0, 1]: hues by the golden ratio, so that consecutive clusters (which
    sit near each other in raster order) differ strongly, and three lightness levels so that many clusters stay
    distinguishable."""
    hues = (np.arange(count) * 0.6180339887498949) % 1.0
    light = (0.45, 0.60, 0.35)
    return np.array([colorsys.hls_to_rgb(h, light[i % 3], 0.95) for i, h in enumerate(hues)]).reshape(count, 3)


def _as_rgb(image) -> np.ndarray:
    """PIL image, (H, W, 3) array / tensor, or (3, H, W) tensor -> (H, W, 3) float64 in [0, 1]."""
    if hasattr(image, "convert") and hasattr(image, "size"):  # PIL
        image = np.asarray(image.convert("RGB"))
    if isinstance(image, torch.Tensor):
        image = image.detach().cpu()
        if image.dim() == 3 and image.shape[0] == 3 and image.shape[-1] != 3:
            image = image.permute(1, 2, 0)
        image = (image.double() if image.is_floating_point() else image).numpy()
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[-1] != 3:
        raise ValueError(f"reduction: image must be RGB (H, W, 3) or a (3, H, W) tensor, got shape {image.shape}")
    if np.issubdtype(image.dtype, np.integer):
        return image.astype(np.float64) / 255.0
    image = image.astype(np.float64)
    if not np.isfinite(image).all():
        raise ValueError("reduction: image holds NaN or inf")
    lo, hi = image.min(), image.max()
    if lo < 0.0 or hi > 1.0:  # e.g. a normalised model input: stretch to [0, 1] for display
        image = (image - lo) / max(hi - lo, 1e-12)
    return image


def _one_row(reduced: Reduced, row: int, grid: Tuple[int, int], retained=None):
    """source (N,), size (K,), position (K,) of one batch row, and which outputs count as kept (K,) bool."""
    if not isinstance(reduced, Reduced):
        raise ValueError(f"reduction: reduced must be a restore_ext.Reduced, got {type(reduced).__name__}")
    source, size, position = (t.detach().cpu().long() for t in (reduced.source, reduced.size, reduced.position))
    if source.dim() == 2:
        if not -source.shape[0] <= row < source.shape[0]:
            raise ValueError(f"reduction: row must index the batch of {source.shape[0]}, got {row}")
        source, size, position = source[row], size[row], position[row]
    n, k = source.shape[0], size.shape[0]
    if grid[0] * grid[1] != n:
        raise ValueError(
            f"reduction: grid {grid[0]} x {grid[1]} = {grid[0] * grid[1]} patches, but reduced has N = {n}")
    if position.shape[0] != k or ((source < -1) | (source >= k)).any():
        raise ValueError(f"reduction: reduced.source must hold output slots in [-1, {k}), with {k} sizes and positions")
    counts = torch.bincount(source[source >= 0], minlength=k)
    if not torch.equal(counts, size):
        raise ValueError("reduction: reduced.size must equal how many patches each output's source entries name")
    if retained is None:
        kept = size == 1
    else:
        retained = torch.as_tensor(retained).detach().cpu().long()
        retained = retained[row] if retained.dim() == 2 else retained
        if retained.dim() != 1 or ((retained < 0) | (retained >= n)).any():
            raise ValueError(f"reduction: retained must hold patch indices in [0, {n}), got {retained.tolist()}")
        kept = torch.zeros(k, dtype=torch.bool)
        slots = source[retained]
        if (slots < 0).any() or (size[slots.clamp(min=0)] != 1).any():
            raise ValueError("reduction: every retained patch must be an output of its own (size 1) in reduced")
        kept[slots] = True
    return source.numpy(), size.numpy(), position.numpy(), kept.numpy()


def _colours(kept: np.ndarray) -> np.ndarray:
    """(K, 3): one colour per merged output (in position order), zeros for kept ones."""
    out = np.zeros((kept.shape[0], 3))
    out[~kept] = cluster_colours(int((~kept).sum()))
    return out


def overlay(image, reduced: Reduced, grid: Union[int, Sequence[int]], row: int = 0, retained=None) -> np.ndarray:
    """(H, W, 3) float64 in [0, 1]: the image with merged patches tinted by cluster and dropped ones darkened
    (kept patches untouched). Patch (i, j) covers rows ``[i * H // rows, (i + 1) * H // rows)``, likewise
    columns. ``retained``: see :func:`reduction`."""
    grid = (grid, grid) if isinstance(grid, int) else tuple(grid)
    rgb = _as_rgb(image).copy()
    source, _, _, kept = _one_row(reduced, row, grid, retained)
    colour_of = _colours(kept)
    h, w = rgb.shape[:2]
    rows, cols = grid
    for p, slot in enumerate(source):
        i, j = divmod(p, cols)
        box = rgb[i * h // rows:(i + 1) * h // rows, j * w // cols:(j + 1) * w // cols]
        if slot < 0:
            box *= DROPPED_SHADE
        elif not kept[slot]:
            box[:] = (1 - TINT_ALPHA) * box + TINT_ALPHA * colour_of[slot]
    return rgb


def reduction(image, reduced: Reduced, grid: Union[int, Sequence[int]], row: int = 0, retained=None,
              path: Optional[str] = None, title: Optional[str] = None, dpi: int = 100):
    """Draws what ``reduced`` did to ``image`` (see the module doc) and returns the matplotlib Figure; with
    ``path`` also saves it (PNG). ``grid``: patches per (row, column), or one int for a square grid;
    ``row``: which batch row of ``reduced`` to draw. ``retained``: the base method's kept patch indices (R,)
    or (B, R), when known: then exactly those are drawn as kept, and an anchor nothing joined is drawn as a
    merged output of size 1; without it every output of size 1 counts as kept (it reaches the LLM unchanged)."""
    # A Figure with its own Agg canvas, not pyplot: no global backend switch, nothing left open.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch, Rectangle

    grid = (grid, grid) if isinstance(grid, int) else tuple(grid)
    picture = overlay(image, reduced, grid, row, retained)
    source, size, position, kept = _one_row(reduced, row, grid, retained)
    colours = _colours(kept)
    h, w = picture.shape[:2]
    rows, cols = grid
    ph, pw = h / rows, w / cols
    scale = max(1.0, 700.0 / max(h, w))  # at least ~700 px across, so the size labels stay legible
    fig_h = h * scale / dpi + 1.0  # inches: the image, and 1 inch below it for the legend
    fig = Figure(figsize=(w * scale / dpi, fig_h), dpi=dpi)
    FigureCanvasAgg(fig)
    ax = fig.add_axes((0.0, 1.0 / fig_h, 1.0, 1.0 - 1.0 / fig_h))
    ax.imshow(picture, interpolation="nearest", extent=(0, w, h, 0))
    ax.set_axis_off()
    font = max(5.0, min(11.0, 0.45 * ph * scale * 72 / dpi))
    for slot, (s, p) in enumerate(zip(size, position)):
        i, j = divmod(int(p), cols)
        edge = KEPT_EDGE if kept[slot] else colours[slot]
        ax.add_patch(Rectangle((j * pw, i * ph), pw, ph, fill=False, edgecolor=edge,
                               linewidth=1.6 if kept[slot] else 2))
        if not kept[slot]:
            ax.text((j + 0.5) * pw, (i + 0.5) * ph, str(int(s)), ha="center", va="center", fontsize=font,
                    color="white", fontweight="bold",
                    bbox=dict(boxstyle="round,pad=0.12", facecolor=colours[slot], edgecolor="none", alpha=0.9))
    merged, dropped = size[~kept], int((source < 0).sum())
    summary = title or (
        f"{source.shape[0]} patches -> {size.shape[0]} tokens: {int(kept.sum())} kept"
        + (" by the base method" if retained is not None else "")
        + (f", {len(merged)} merged (sizes {merged.min()}-{merged.max()})" if len(merged) else "")
        + (f", {dropped} dropped" if dropped else "")
    )
    handles = [Patch(facecolor="none", edgecolor="black", label="kept (white frame)"),
               Patch(facecolor=cluster_colours(1)[0], alpha=TINT_ALPHA,
                     label="merged: colour = cluster, number = size")]
    if dropped:
        handles.append(Patch(facecolor=(0.2, 0.2, 0.2), label="dropped"))
    fig.legend(handles=handles, loc="lower center", ncol=len(handles), fontsize=8, frameon=False,
               bbox_to_anchor=(0.5, 0.0), title=summary, title_fontsize=9)
    if path is not None:
        fig.savefig(path, dpi=dpi)
    return fig


def sample_image(size: int = 336, seed: int = 0) -> np.ndarray:
    """A synthetic (size, size, 3) uint8 picture (sky gradient, a sun, hills, two houses) for demos and tests
    that must not download one: flat regions and edges, so a reduction has something to merge and keep."""
    g = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size] / size
    img = np.stack([0.35 + 0.3 * y, 0.55 + 0.25 * y, 0.95 - 0.1 * y], -1)  # sky
    img[(x - 0.75) ** 2 + (y - 0.2) ** 2 < 0.01] = (1.0, 0.85, 0.2)  # sun
    hill = 0.62 + 0.08 * np.sin(6 * x + 1.0)
    img[y > hill] = (0.25, 0.6, 0.25)
    for x0, colour in ((0.15, (0.8, 0.2, 0.15)), (0.45, (0.9, 0.8, 0.6))):
        body = (x > x0) & (x < x0 + 0.2) & (y > 0.55) & (y < 0.8)
        roof = (y > 0.42) & (y <= 0.55) & (np.abs(x - x0 - 0.1) < (y - 0.42) * 0.9)
        img[body], img[roof] = colour, (0.35, 0.2, 0.15)
    # a smooth texture, so that no two patches are exactly alike (and the PNG stays small)
    img = img + 0.03 * (np.sin(23 * x + 3 * g.random()) * np.cos(19 * y))[..., None]
    return (np.clip(img, 0, 1) * 255).astype(np.uint8)


def patch_grid(num_patches: int) -> Tuple[int, int]:
    """The square grid of a LLaVA-1.5-style tower (N = side * side); a clear error otherwise."""
    side = math.isqrt(num_patches)
    if side * side != num_patches:
        raise ValueError(f"patch_grid: {num_patches} patches are not a square grid; pass grid=(rows, cols)")
    return side, side


def llava_reduction(model, pixel_values, num_tokens: int = 64, base="divprune", keep_ratio: float = 0.5,
                    rule: str = "reference") -> Tuple[Reduced, Tuple[int, int], torch.Tensor]:
    """(Reduced, grid, retained) of the first image of ``pixel_values`` in a LLaVA-1.5-style transformers model:
    the call ``apply_restore(model, num_tokens, base, keep_ratio, rule)`` makes on the projector outputs
    (:func:`restore_ext.reduce`), made here in the open so it can be drawn. LLaVA-NeXT's tiled images are not a
    single grid: draw one tile's rows yourself with ``reduction(tile, reduced, grid)``."""
    from . import reduce, select

    with torch.inference_mode():
        feats = model.model.get_image_features(pixel_values=pixel_values[:1], return_dict=True).pooler_output[0]
    grid = patch_grid(feats.shape[0])
    num_out = min(num_tokens, feats.shape[0])
    feats = feats[None].float()
    reduced = reduce(feats, num_out, base=base, keep_ratio=keep_ratio, rule=rule)
    # reduce's base pick again (deterministic), so the picture can tell kept tokens from lone anchors
    retained = select(feats, math.floor(num_out * keep_ratio + 0.5), base)
    return reduced, grid, retained


# transformers' OPENAI_CLIP_MEAN / OPENAI_CLIP_STD: LLaVA-1.5's image processor normalisation
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def unnormalize(pixel_values, mean=CLIP_MEAN, std=CLIP_STD) -> np.ndarray:
    """One model input (3, H, W), normalised as ``(x - mean) / std``, back to an (H, W, 3) picture in [0, 1]."""
    x = pixel_values.detach().cpu().double()
    x = x * torch.tensor(std, dtype=x.dtype)[:, None, None] + torch.tensor(mean, dtype=x.dtype)[:, None, None]
    return x.clamp(0, 1).permute(1, 2, 0).numpy()


def llava_picture(model, pixel_values, path: Optional[str] = None, num_tokens: int = 64, mean=CLIP_MEAN,
                  std=CLIP_STD, **reduce_kwargs):
    """:func:`reduction` of what RESTORE does to the first image of ``pixel_values`` in a LLaVA-1.5 model (see
    :func:`llava_reduction`; ``reduce_kwargs``: base, keep_ratio, rule), drawn over the unnormalised input."""
    reduced, grid, retained = llava_reduction(model, pixel_values, num_tokens, **reduce_kwargs)
    return reduction(unnormalize(pixel_values[0], mean, std), reduced, grid, retained=retained, path=path)


__all__ = ["cluster_colours", "llava_picture", "llava_reduction", "overlay", "patch_grid", "reduction", "sample_image",
           "unnormalize"]
