"""Pictures people look at: training curves, sample grids, receptive fields."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from PIL import Image  # noqa: E402

from .errors import UsageError  # noqa: E402
from .fileio import atomic_path  # noqa: E402


#: the picture formats written, by extension: those that hold any RGB or gray picture with no other
#: program (Pillow's rarer writers refuse some modes, matplotlib's .pgf needs LaTeX)
PICTURE_FORMATS = ("png", "jpg", "jpeg", "webp", "tif", "tiff", "bmp")
FIGURE_FORMATS = ("png", "jpg", "jpeg", "webp", "tif", "tiff", "pdf", "svg", "eps", "ps")


def check_picture_path(path: Path, figure: bool = True) -> None:
    """Refuse (UsageError) a picture's name whose extension names none of the formats written (a
    figure: FIGURE_FORMATS; an image: PICTURE_FORMATS): the writers pick the format from it.
    Callers check before the work that makes the picture."""
    known = FIGURE_FORMATS if figure else PICTURE_FORMATS
    if Path(path).suffix.lower().lstrip(".") not in known:
        raise UsageError(f"cannot write {path}: its extension names none of the picture formats written "
                         f"(.{', .'.join(known)})")


def _save_atomic(fig_or_image, path: Path, **kwargs) -> Path:
    """Save a Pillow image or a matplotlib figure all or nothing (fileio.atomic_path), in the format
    its name's extension names (check_picture_path)."""
    path = Path(path)
    image = isinstance(fig_or_image, Image.Image)
    try:
        check_picture_path(path, figure=not image)
        with atomic_path(path) as tmp:
            (fig_or_image.save if image else fig_or_image.savefig)(tmp, **kwargs)
    finally:
        if not image:
            plt.close(fig_or_image)  # saved or not
    return path


def plot_training_curve(log_csv: Path, out_png: Path, title: str = "") -> Path:
    """Train and test bits/dim against images seen, from a training run's log.csv."""
    log = pd.read_csv(log_csv)
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=120)
    train = log.dropna(subset=["train_bpd"])
    test = log.dropna(subset=["test_bpd"])
    if len(train):
        ax.plot(train["images"], train["train_bpd"], lw=1, alpha=0.8, label="train (running, training mode)")
    if len(test):
        ax.plot(test["images"], test["test_bpd"], "o-", ms=3, label="test (EMA weights)")
    ax.set_xlabel("training images seen")
    ax.set_ylabel("bits / dim")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    if len(train) or len(test):  # a run stopped before its first log row has nothing to label
        ax.legend()
    fig.tight_layout()
    return _save_atomic(fig, out_png)


GRID_PAD = 2  # pixels of white around each cell of a sample grid


def image_grid(images: np.ndarray) -> Image.Image:
    """uint8 images (N, C, H, W) -> one near-square grid image, GRID_PAD pixels of white between cells."""
    n, c, h, w = images.shape
    columns, pad = int(np.ceil(np.sqrt(n))), GRID_PAD
    rows = int(np.ceil(n / columns))
    grid = np.full((rows * (h + pad) + pad, columns * (w + pad) + pad, c), 255, np.uint8)
    for k in range(n):
        r, col = divmod(k, columns)
        y, x = pad + r * (h + pad), pad + col * (w + pad)
        grid[y : y + h, x : x + w] = images[k].transpose(1, 2, 0)
    return Image.fromarray(grid[..., 0] if c == 1 else grid)


def save_image_grid(images: np.ndarray, path: Path, scale: int = 1) -> Path:
    grid = image_grid(images)
    if scale > 1:
        grid = grid.resize((grid.width * scale, grid.height * scale), Image.Resampling.NEAREST)
    return _save_atomic(grid, path)
