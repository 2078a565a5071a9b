"""The committed results and the README's copy of them describe the weights that ship.

Shipping new weights (benchmarks/default_models.py ship) makes every weight-dependent result stale
until benchmarks/shipped_results.sh remakes it, and the README's numbers are copied from those
files by hand. These tests fail when either step was forgotten: a results file made with other
weights, or a README number that is not its table's.
"""

from __future__ import annotations

import csv
import re
from pathlib import Path

import pytest

from snailcompress.zoo import load_model

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "results"
README = (ROOT / "README.md").read_text()

# Results made by benchmarks/shipped_results.sh whose header names the model id they were made with.
REMADE_WITH_ID = [
    "default_model_heldout.md",
    "default_model_heldout_variants.md",
    "codec_speed.md",
    "context_tradeoff.md",
    "tiling_with_context.md",
    "adaptation_bands.md",
    "calibration.md",
]

# The README's table of the shipped model against classical codecs: row label -> codec column.
CODEC_ROWS = {
    "JPEG-XL lossless, effort 9": "jpegxl-e9",
    "JPEG-XL lossless, effort 7": "jpegxl-e7",
    "WebP lossless, method 6": "webp",
    "JPEG 2000 lossless": "jpeg2000",
    "JPEG-LS": "jpegls",
    "PNG (optimize)": "png",
}


def markdown_table(text: str) -> list[dict[str, str]]:
    """The first markdown table in `text`, one dict per row, bold marks removed."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("|"))
    end = next((i for i in range(start, len(lines)) if not lines[i].startswith("|")), len(lines))
    lines = lines[start:end]
    header = [cell.strip() for cell in lines[0].strip("|").split("|")]
    rows = []
    for line in lines[2:]:
        cells = [cell.strip().replace("**", "") for cell in line.strip("|").split("|")]
        rows.append(dict(zip(header, cells)))
    return rows


def all_row(name: str) -> dict[str, str]:
    (row,) = [r for r in markdown_table((RESULTS / name).read_text()) if r["image"] == "all"]
    return row


def readme_codec_table() -> dict[str, tuple[str, str]]:
    """Row label -> (bits/subpixel, change against snailcompress) of the README's codec table."""
    section = README.split("**Shipped model against classical codecs**", 1)[1]
    return {row["method"]: (row["bits/subpixel"], row["vs snailcompress"]) for row in markdown_table(section)}


def change(value: float, base: float, digits: int = 1) -> str:
    """'+0.8%': value against base, signed."""
    return f"{100 * (value / base - 1):+.{digits}f}%"


def size_of_change(value: float, base: float, digits: int = 2) -> str:
    """'0.84%': how far value is from base, without its sign."""
    return change(value, base, digits).lstrip("+-")


def against(value: float, base: float, digits: int) -> str:
    """'0.83% larger' (or 'smaller')."""
    return f"{size_of_change(value, base, digits)} {'larger' if value > base else 'smaller'}"


@pytest.fixture(scope="module")
def shipped_id() -> str:
    return load_model("snail-rgb").model_id


@pytest.fixture(scope="module")
def measured() -> dict[str, str]:
    """The 'all' row of the held-out table: the shipped model's files and the classical codecs."""
    return all_row("default_model_heldout.md")


@pytest.fixture(scope="module")
def variants() -> dict[str, str]:
    """The 'all' row of the held-out variants table: `--no-calibrate` (static) and `--adapt`."""
    return all_row("default_model_heldout_variants.md")


@pytest.mark.parametrize("name", REMADE_WITH_ID)
def test_results_were_made_with_the_shipped_rgb_model(name, shipped_id):
    header = "\n".join((RESULTS / name).read_text().splitlines()[:6])
    ids = re.findall(r"snail-rgb \(id ([0-9a-f]{16})\)", header)
    assert ids == [shipped_id], f"{name} was made with {ids}; rerun benchmarks/shipped_results.sh"


def test_kodak_tile_benchmark_was_made_with_the_shipped_rgb_model(shipped_id):
    with open(RESULTS / "kodak-heldout-tiles" / "summary.csv", newline="") as f:
        ids = {row["model_id"] for row in csv.DictReader(f) if row["method"].startswith("snail-rgb")}
    assert ids == {shipped_id}


def test_readme_codec_table_is_the_held_out_table(measured, variants):
    ours = float(measured["default file"])
    table = readme_codec_table()
    (shipped_label,) = [label for label in table if label.startswith("snailcompress (snail-rgb")]
    assert table[shipped_label][0] == f"{ours:.3f}"
    expected = {label: float(measured[column]) for label, column in CODEC_ROWS.items()}
    for label in table:
        if "--adapt" in label:
            expected[label] = float(variants["adapt file"])
        elif "--no-calibrate" in label:
            expected[label] = float(variants["static file"])
    assert set(expected) | {shipped_label} == set(table), "a README row without a measured counterpart"
    for label, value in expected.items():
        assert table[label] == (f"{value:.3f}", change(value, ours)), label


def test_readme_says_how_far_from_jpegxl_effort_9(measured, variants):
    e9 = float(measured["jpegxl-e9"])
    ours, adapted = float(measured["default file"]), float(variants["adapt file"])

    sentence = f"{against(ours, e9, 1)} than JPEG-XL effort 9's, {against(adapted, e9, 1)} with `--adapt`"
    assert sentence in " ".join(README.split()), f"README should say: {sentence}"


def reading(name: str) -> str:
    """The file's **Reading.** paragraph, on one line."""
    text = (RESULTS / name).read_text()
    return " ".join(text.split("**Reading.**", 1)[1].split("\n\n", 1)[0].split())


def test_held_out_tables_say_their_own_numbers(measured, variants):
    """The hand-written Reading paragraphs of the two held-out tables quote their own 'all' rows: a
    remade table whose paragraph was not rewritten fails here."""
    e9 = float(measured["jpegxl-e9"])
    nll, payload, ours = (float(measured[k]) for k in ("model NLL", "default payload", "default file"))
    static, default, adapted = (float(variants[k]) for k in ("static file", "default file", "adapt file"))
    assert float(variants["jpegxl-e9"]) == e9
    expected = {
        "default_model_heldout.md": [
            f"below the shipped model's NLL ({change(payload, nll, 2)})",
            f"Against JPEG-XL effort 9 ({e9:.4f}): {against(ours, e9, 2)} in all",
        ],
        "default_model_heldout_variants.md": [
            f"by {size_of_change(default, static)} in all",
            f"a further {size_of_change(adapted, default)} off ({change(adapted, static, 2)} against `--no-calibrate`)",
            f"Against JPEG-XL effort 9 ({e9:.4f}): default {against(default, e9, 2)}, `--adapt` {against(adapted, e9, 2)}",
        ],
    }
    for name, fragments in expected.items():
        text = reading(name)
        for fragment in fragments:
            assert fragment in text, f"{name}'s Reading should say: {fragment}"
