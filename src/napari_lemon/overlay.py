"""Nucleus outlines coloured by cluster, drawn over the image, as an RGB picture.

Used for the ``overlay.png`` of ``lemon analyze``; napari draws its own layers.
"""

from __future__ import annotations

import math

import numpy as np

OUTLINES_PER_BLOCK = 4_096  # outlines drawn at once, so memory stays bounded

# the 10 strong colours of the "tab10" qualitative table, then their 10 light
# companions from "tab20": distinct for up to 20 clusters. NOTE: purple, pink and
# grey come last among the strong ones: they vanish against H&E stain.
TAB20_ORDERED = np.array(
    [
        (31, 119, 180),
        (255, 127, 14),
        (44, 160, 44),
        (214, 39, 40),
        (23, 190, 207),
        (188, 189, 34),
        (140, 86, 75),
        (148, 103, 189),
        (227, 119, 194),
        (127, 127, 127),
        (174, 199, 232),
        (255, 187, 120),
        (152, 223, 138),
        (255, 152, 150),
        (158, 218, 229),
        (219, 219, 141),
        (196, 156, 148),
        (197, 176, 213),
        (247, 182, 210),
        (199, 199, 199),
    ],
    dtype=np.uint8,
)


def cluster_palette(k: int) -> np.ndarray:
    """Distinct colours for ``k`` clusters.

    The first 20 come from the tab10/tab20 qualitative tables; beyond 20, hues
    spaced by the golden angle at alternating lightness.

    Returns
    -------
    ndarray of shape (k, 3), uint8
    """
    if k < 0:
        raise ValueError(f"k={k!r} must be >= 0")
    if k <= len(TAB20_ORDERED):
        return TAB20_ORDERED[:k].copy()

    from skimage.color import hsv2rgb

    extra = np.arange(k - len(TAB20_ORDERED))
    hue = (extra * 0.618033988749895) % 1.0
    value = np.where(extra % 2, 0.65, 0.95)
    hsv = np.stack([hue, np.full_like(hue, 0.75), value], axis=1)
    rgb = np.rint(hsv2rgb(hsv[None])[0] * 255).astype(np.uint8)
    return np.concatenate([TAB20_ORDERED, rgb])


def shrink_for_display(
    image: np.ndarray, labels: np.ndarray, max_side: int = 4096
) -> tuple[np.ndarray, np.ndarray]:
    """Shrink an image and its labels by a whole factor so neither side > max_side.

    Labels are subsampled (nearest), the image is resampled with anti-aliasing to
    the same shape, so outlines drawn afterwards stay one pixel wide.

    Returns
    -------
    image : ndarray of shape (rows', cols', 3), uint8
    labels : ndarray of shape (rows', cols'), same dtype as ``labels``
    """
    from .slide import resize_rgb

    step = math.ceil(max(labels.shape) / max_side) if labels.size else 1
    if step <= 1:
        return image, labels
    labels = labels[::step, ::step]
    return resize_rgb(image, labels.shape), labels


def boundary_rings(labels: np.ndarray, thickness: int = 1) -> np.ndarray:
    """Inner boundary pixels of each labelled object, ``thickness`` pixels deep.

    Returns
    -------
    ndarray of shape (rows, cols), bool
    """
    from skimage.segmentation import find_boundaries

    mask = np.zeros(labels.shape, dtype=bool)
    remaining = labels.copy()
    for _ in range(max(1, int(thickness))):
        ring = find_boundaries(remaining, mode="inner") & (remaining > 0)
        mask |= ring
        remaining[ring] = 0
    return mask


def render_overlay(
    image: np.ndarray,
    labels: np.ndarray,
    label_ids: np.ndarray,
    values: np.ndarray,
    palette: np.ndarray | None = None,
    thickness: int = 1,
) -> np.ndarray:
    """Draw nucleus outlines over ``image``, coloured by an integer per nucleus.

    Parameters
    ----------
    image : ndarray of shape (rows, cols, 3), uint8
        The RGB image the labels were made on.
    labels : ndarray of shape (rows, cols), int
        Instance labels, 0 = background.
    label_ids : ndarray of shape (n,), int
        The label of each nucleus.
    values : ndarray of shape (n,), int
        Cluster of each nucleus; nucleus ``i`` is drawn in
        ``palette[values[i] % len(palette)]``. Negative values and labels not in
        ``label_ids`` are not drawn.
    palette : ndarray of shape (k, 3), uint8, optional
        Default :func:`cluster_palette` of ``max(values) + 1`` colours.
    thickness : int
        Outline width in pixels, drawn inside each nucleus.

    Returns
    -------
    ndarray of shape (rows, cols, 3), uint8
        A copy of ``image`` with the outlines drawn in.
    """
    label_ids = np.asarray(label_ids, dtype=np.int64).ravel()
    values = np.asarray(values, dtype=np.int64).ravel()
    if image.ndim != 3 or image.shape[:2] != labels.shape:
        raise ValueError(
            f"image has shape {image.shape} and labels {labels.shape}; expected "
            "(rows, cols, 3) and (rows, cols)"
        )
    if label_ids.shape != values.shape:
        raise ValueError(
            f"label_ids has shape {label_ids.shape} but values {values.shape}; "
            "give one value per label"
        )
    out = np.array(image[..., :3], dtype=np.uint8, copy=True)
    if len(label_ids) == 0:
        return out

    # value of each label, -1 = not drawn
    if palette is None:
        palette = cluster_palette(max(int(values.max()) + 1, 1))
    palette = np.asarray(palette, dtype=np.uint8).reshape(-1, 3)
    lookup = np.full(max(int(labels.max()), int(label_ids.max())) + 1, -1, np.int64)
    lookup[label_ids] = values

    # colour the rings
    ring = boundary_rings(labels, thickness)
    ring_values = lookup[labels[ring]]
    drawn = ring_values >= 0
    rows, cols = np.nonzero(ring)
    out[rows[drawn], cols[drawn]] = palette[ring_values[drawn] % len(palette)]
    return out


def draw_outlines(
    image: np.ndarray,
    offsets: np.ndarray,
    xy: np.ndarray,
    values: np.ndarray,
    scale: float,
    palette: np.ndarray | None = None,
) -> np.ndarray:
    """Draw packed polygon outlines, in level-0 px, over a downsampled image.

    Outlines less than two pixels of ``image`` across become a dot, so a thumbnail
    of a whole slide still shows every nucleus in its colour.

    Parameters
    ----------
    image : ndarray of shape (rows, cols, 3), uint8
        The slide (or region) at ``scale`` level-0 px per pixel.
    offsets : ndarray of shape (n + 1,), int
        Nucleus ``i`` owns vertices ``xy[offsets[i]:offsets[i + 1]]`` (the
        ``uns["outlines"]`` layout of the results store).
    xy : ndarray of shape (total_vertices, 2), float
        ``(x, y)`` vertices in level-0 px relative to the image's origin.
    values : ndarray of shape (n,), int
        Cluster of each nucleus; negative values are not drawn.
    scale : float
        Level-0 px per pixel of ``image``.

    Returns
    -------
    ndarray of shape (rows, cols, 3), uint8
    """
    offsets = np.asarray(offsets, dtype=np.int64).ravel()
    values = np.asarray(values, dtype=np.int64).ravel()
    if len(offsets) != len(values) + 1:
        raise ValueError(
            f"{len(offsets) - 1} outlines but {len(values)} values; give one value "
            "per nucleus"
        )
    out = np.array(image[..., :3], dtype=np.uint8, copy=True)
    if palette is None:
        palette = cluster_palette(max(int(values.max(initial=0)) + 1, 1))
    colours = np.asarray(palette, dtype=np.uint8).reshape(-1, 3)
    rc = np.asarray(xy, dtype=np.float32).reshape(-1, 2)[:, ::-1] / np.float32(scale)

    # extent of each outline on the image, from the packed vertex table
    counts = np.diff(offsets)
    drawn = (values >= 0) & (counts > 0)
    starts = offsets[:-1][drawn]
    rows_lo = np.minimum.reduceat(rc[:, 0], starts) if len(starts) else starts
    rows_hi = np.maximum.reduceat(rc[:, 0], starts) if len(starts) else starts
    cols_lo = np.minimum.reduceat(rc[:, 1], starts) if len(starts) else starts
    cols_hi = np.maximum.reduceat(rc[:, 1], starts) if len(starts) else starts
    small = np.maximum(rows_hi - rows_lo, cols_hi - cols_lo) < 2

    # dots, all at once
    index = np.flatnonzero(drawn)
    centre = np.column_stack([rows_lo + rows_hi, cols_lo + cols_hi])[small] / 2
    _paint(
        out, np.rint(centre).astype(int), colours[values[index[small]] % len(colours)]
    )

    # perimeters: every edge sampled at under a pixel, a block of outlines at once
    big, rgb = index[~small], colours[values % len(colours)]
    for start in range(0, len(big), OUTLINES_PER_BLOCK):
        block = big[start : start + OUTLINES_PER_BLOCK]
        _draw_perimeters(out, offsets, block, rc, rgb)
    return out


def _draw_perimeters(
    out: np.ndarray, offsets: np.ndarray, which: np.ndarray, rc: np.ndarray, rgb
) -> None:
    """Paint the closed outlines ``which`` of the packed table in ``rgb[which]``."""
    a, b, polygon = _edges(offsets, which, rc)
    steps = np.ceil(np.abs(b - a).max(axis=1, initial=0)).astype(np.int64) + 1
    edge = np.repeat(np.arange(len(a)), steps)
    first = np.repeat(np.cumsum(steps) - steps, steps)
    t = ((np.arange(steps.sum()) - first) / np.repeat(steps, steps))[:, None]
    points = a[edge] + (b[edge] - a[edge]) * t
    _paint(out, np.rint(points).astype(np.int64), rgb[polygon][edge])


def _edges(offsets: np.ndarray, which: np.ndarray, rc: np.ndarray):
    """Start and end ``(row, col)`` of every edge of outlines ``which``, closed.

    Returns
    -------
    (start, end, owner) with ``start``/``end`` of shape (n_edges, 2) and
    ``owner`` (n_edges,) the outline of each edge.
    """
    counts = offsets[which + 1] - offsets[which]
    first = np.repeat(offsets[which], counts)
    local = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
    vertex = first + local
    after = np.where(local + 1 == np.repeat(counts, counts), first, vertex + 1)
    return rc[vertex], rc[after], np.repeat(which, counts)


def _paint(image: np.ndarray, rc: np.ndarray, colour: np.ndarray) -> None:
    """Set pixels ``rc`` (n, 2) of ``image`` that lie inside it to ``colour``."""
    rows, cols = rc[:, 0], rc[:, 1]
    inside = (
        (rows >= 0) & (rows < image.shape[0]) & (cols >= 0) & (cols < image.shape[1])
    )
    colour = np.asarray(colour)
    image[rows[inside], cols[inside]] = colour[inside] if colour.ndim == 2 else colour
