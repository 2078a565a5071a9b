"""The images the shipped default models learnt from and the ones they never saw (benchmarks/default_models.py).

../shared/data beside this checkout (the package installed editable, as the benchmarks run it):
kodak/ (24 images) and photos/ (79). HOLDOUT, 6 of each, is held out of training and used for every
held-out number (results/default_model_heldout.md, results/experiments/).
"""

from __future__ import annotations

from pathlib import Path

SHARED = Path(__file__).resolve().parents[2].parent / "shared" / "data"
KODAK_HOLDOUT = ("kodim03", "kodim07", "kodim12", "kodim15", "kodim20", "kodim23")
PHOTO_HOLDOUT = (
    "budgie-backgrounds__casa-mila",
    "elementary-wallpapers__Jonas_Nilsson_Lee",
    "lomiri-wallpapers__aitzgorri_by_Aitzol_Berasategi",
    "pop-os-wallpapers__nasa-53884",
    "squeeze-unsplash__jake-nackos-HjpNeUD8qdw-unsplash",
    "squeeze-unsplash__raynaldy-dachlan-DdBGiqkIvJ8-unsplash",
)
HOLDOUT = KODAK_HOLDOUT + PHOTO_HOLDOUT


def _images(shared: Path) -> list[Path]:
    return sorted((shared / "kodak").glob("*.png")) + sorted((shared / "photos").glob("*.png"))


def training_files(shared: Path = SHARED) -> list[Path]:
    return [f for f in _images(shared) if f.stem not in HOLDOUT]


def heldout_files(shared: Path = SHARED) -> list[Path]:
    return [f for f in _images(shared) if f.stem in HOLDOUT]
