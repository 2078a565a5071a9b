"""Outputs of a benchmark run: summary.csv, summary.md, per_image.h5, bits_per_subpixel.png.

``rows`` is a DataFrame with one row per result and at least the columns
``method``, ``kind`` (``model-nll``, ``model-coded``, ``codec`` or ``paper``),
``bits_per_subpixel`` and ``images``; the timing columns ``encode_images_per_s``
and ``decode_images_per_s`` may be missing or NaN; ``dataset``, ``mosaic``,
``reference`` and any other columns are optional and kept in the CSV. Model and paper rows may
carry ``parameters``, ``training`` (the budget in words: ``training_text``) and ``architecture``
(the Table 1 method of the model's architecture): summary.md then sets each model beside the
paper's row of its architecture.

Every file is written to a temporary file in ``out_dir`` and then moved into
place with ``os.replace``, so a reader never sees a half-written file.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
import platform
import shlex
import sys
from pathlib import Path
from typing import Mapping

import numpy as np
import pandas as pd

from ..fileio import atomic_path
from .paper import printed_bits

__all__ = [
    "KINDS",
    "REPORT_FILES",
    "REQUIRED_COLUMNS",
    "TIMING_COLUMNS",
    "default_meta",
    "format_table",
    "normalize_rows",
    "training_text",
    "write_report",
]

KINDS: tuple[str, ...] = ("model-nll", "model-coded", "codec", "paper")
#: what write_report writes into its directory
REPORT_FILES: tuple[str, ...] = ("summary.csv", "summary.md", "per_image.h5", "bits_per_subpixel.png")
REQUIRED_COLUMNS: tuple[str, ...] = ("method", "kind", "bits_per_subpixel", "images")
TIMING_COLUMNS: tuple[str, ...] = ("encode_images_per_s", "decode_images_per_s")

# the columns shown in the printed / markdown tables, in this order, when present
_SHOWN = ("method", "kind", "dataset", "mosaic", "bits_per_subpixel", "nll_same_images", "over_nll", "images") + TIMING_COLUMNS + (
    "parameters", "training")
_HEADERS = {
    "parameters": "parameters",
    "training": "training",
    "method": "method",
    "kind": "kind",
    "dataset": "dataset",
    "mosaic": "mosaic",
    "bits_per_subpixel": "bits/subpixel",
    "nll_same_images": "NLL, same images",
    "over_nll": "over NLL",
    "images": "images",
    "encode_images_per_s": "enc img/s",
    "decode_images_per_s": "dec img/s",
}
_KIND_COLOURS = {
    "model-nll": "#1f77b4",
    "model-coded": "#2ca02c",
    "codec": "#ff7f0e",
    "paper": "#9e9e9e",
}


# --------------------------------------------------------------------------- rows


def normalize_rows(rows: pd.DataFrame) -> pd.DataFrame:
    """Check the required columns and kinds; add missing timing columns as NaN; sort.

    Sorted by dataset (if present), then bits/subpixel ascending, then method.
    """
    missing = [c for c in REQUIRED_COLUMNS if c not in rows.columns]
    if missing:
        raise ValueError(f"report rows lack column(s) {', '.join(missing)}")
    bad = sorted(set(rows["kind"].astype(str)) - set(KINDS))
    if bad:
        raise ValueError(f"unknown kind(s) {', '.join(bad)}; expected one of {', '.join(KINDS)}")
    out = rows.copy()
    for col in TIMING_COLUMNS:
        if col not in out.columns:
            out[col] = np.nan
    out["bits_per_subpixel"] = pd.to_numeric(out["bits_per_subpixel"], errors="coerce").astype("float64")
    out["images"] = pd.to_numeric(out["images"], errors="coerce")
    for col in TIMING_COLUMNS:
        out[col] = pd.to_numeric(out[col], errors="coerce").astype("float64")
    keys = (["dataset"] if "dataset" in out.columns else []) + ["bits_per_subpixel", "method"]
    return out.sort_values(keys, kind="stable", na_position="last").reset_index(drop=True)


def _is_missing(value) -> bool:
    if value is None:
        return True
    try:
        return bool(pd.isna(value))
    except (TypeError, ValueError):
        return False


def _fmt(col: str, value) -> str:
    if _is_missing(value):
        return "-"
    if col in ("bits_per_subpixel", "nll_same_images"):
        return f"{float(value):.4f}"
    if col == "images":
        return f"{int(value)}"
    if col == "over_nll":
        return f"{float(value):+.2%}"
    if col in TIMING_COLUMNS:
        v = float(value)
        if math.isinf(v):
            return "inf"
        return f"{v:.3g}" if v < 100 else f"{v:.0f}"
    if col == "mosaic":
        return "yes" if bool(value) else "no"
    if col == "parameters":
        return _count(int(value))
    return str(value) or "-"


def _count(parameters: int) -> str:
    """46.02M, 79.7k: a parameter count as `snailcompress models` lists them (999,950 is 1.00M, not 1000.0k)."""
    return f"{parameters / 1e6:.2f}M" if round(parameters / 1e3, 1) >= 1000 else f"{parameters / 1e3:.1f}k"


def _hours(hours: float) -> str:
    return f"{hours:.3g}"


def training_text(record: Mapping) -> str:
    """A model's training budget in words from what its file records (zoo.training_record): steps,
    images seen, and time: GPU-hours (wall time x processes) on CUDA, else wall hours and rank 0's
    CPU-hours. "untrained" for a preset, "" where nothing is recorded."""
    if record.get("untrained"):
        return "untrained"
    parts = []
    if record.get("step") is not None:
        parts.append(f"{int(record['step']):,} steps")
    if record.get("images") is not None:
        parts.append(f"{int(record['images']):,} images")
    device, processes = record.get("device"), int(record.get("processes") or 1)
    if record.get("elapsed_s") is not None:
        hours = float(record["elapsed_s"]) / 3600
        if device == "cuda":
            parts.append(f"{_hours(hours * processes)} GPU-hours" + (f" ({processes} GPUs)" if processes > 1 else ""))
        else:
            where = {"cpu": " on the CPU"}.get(device, " wall") + (f" ({processes} processes)" if processes > 1 else "")
            parts.append(f"{_hours(hours)} h{where}")
    if record.get("cpu_s") is not None and device != "cuda":
        parts.append(f"{_hours(float(record['cpu_s']) / 3600)} CPU-hours")
    return ", ".join(parts)


def _cells(rows: pd.DataFrame) -> tuple[list[str], list[list[str]]]:
    rows = normalize_rows(rows)
    cols = [c for c in _SHOWN if c in rows.columns]
    header = [_HEADERS[c] for c in cols]
    body = [[_bits_cell(r) if c == "bits_per_subpixel" else _fmt(c, r[c]) for c in cols] for _, r in rows.iterrows()]
    return header, body


def _bits_cell(row) -> str:
    """A row's bits/subpixel; a paper row's as its table prints it (2.85, 3.00, 3.5), neither padded
    to a precision it lacks nor given digits it does not print."""
    value = row.get("bits_per_subpixel")
    if row.get("kind") == "paper" and isinstance(value, (int, float)) and value == value:
        return printed_bits(row.get("method"), row.get("dataset")) or f"{value:.2f}"
    return _fmt("bits_per_subpixel", value)


_NUMERIC_HEADERS = {"bits/subpixel", "NLL, same images", "over NLL", "images", "enc img/s", "dec img/s", "parameters"}


def format_table(rows: pd.DataFrame) -> str:
    """The fixed-width plain-text table printed at the end of a run."""
    header, body = _cells(rows)
    widths = [max([len(h)] + [len(r[i]) for r in body]) for i, h in enumerate(header)]

    def line(cells: list[str]) -> str:
        parts = [
            c.rjust(w) if h in _NUMERIC_HEADERS else c.ljust(w)
            for c, w, h in zip(cells, widths, header)
        ]
        return "  ".join(parts).rstrip()

    sep = "  ".join("-" * w for w in widths)
    return "\n".join([line(header), sep] + [line(r) for r in body])


def _markdown_table(rows: pd.DataFrame) -> str:
    header, body = _cells(rows)

    def esc(s: str) -> str:
        return s.replace("|", "\\|")

    align = ["---:" if h in _NUMERIC_HEADERS else "---" for h in header]
    lines = ["| " + " | ".join(esc(h) for h in header) + " |", "| " + " | ".join(align) + " |"]
    lines += ["| " + " | ".join(esc(c) for c in r) + " |" for r in body]
    return "\n".join(lines)


# --------------------------------------------------------------------------- meta


def default_meta(
    dataset: str | None = None,
    images: int | None = None,
    argv: list[str] | None = None,
    **extra,
) -> dict:
    """Command line, machine and date (UTC, ISO 8601), plus dataset, image count and ``extra``."""
    argv = list(sys.argv if argv is None else argv)
    meta = {
        "command": shlex.join(argv),
        "machine": f"{platform.node()} ({platform.system()} {platform.release()}, "
        f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()})",
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    if dataset is not None:
        meta["dataset"] = dataset
    if images is not None:
        meta["images"] = int(images)
    meta.update(extra)
    return meta


def _meta_value(value):
    """A value h5py can store as an attribute (JSON text for anything unusual)."""
    if isinstance(value, (str, bool, int, float, np.integer, np.floating, np.bool_)):
        return value
    return json.dumps(value, default=str)


def _write_text(target: Path, text: str) -> None:
    with atomic_path(target) as tmp:
        tmp.write_text(text, encoding="utf-8")


# --------------------------------------------------------------------------- outputs


def _write_markdown(target: Path, rows: pd.DataFrame, meta: Mapping) -> None:
    title = "# Benchmark summary"
    if meta.get("dataset"):
        title += f": {meta['dataset']}"
    lines = [title, ""]
    for key, value in meta.items():
        shown = value if isinstance(value, str) else json.dumps(value, default=str)
        if key == "command":
            shown = f"`{shown}`"
        lines.append(f"- **{key}**: {shown}")
    lines += [
        "",
        "bits/subpixel = coded (or model) bits per subpixel, a subpixel being one channel of one pixel: "
        "what the papers call bits/dim, so the paper's rows compare directly; lower is better. "
        "Kinds: model-nll = model negative log-likelihood, model-coded = actual file size "
        "from the model's entropy coder, codec = classical lossless codec (complete files)"
        + (", paper = number reported in the PixelSNAIL paper's Table 1 (to its two decimals)."
           if (rows["kind"] == "paper").any() else
           ". The PixelSNAIL paper's Table 1 has no numbers for this data set (its columns are CIFAR-10 and "
           "ImageNet 32x32).")
        + (" NLL, same images = the coded row's model's NLL on the images it codes (a row of the first few "
           "compares with this, not with rows over all of them); over NLL = by how much its real bits exceed "
           "that (what the container, the stream's end and the coder's arithmetic cost, less what a per-image "
           "calibration saves, or a plane stored or deflated where the model does worse)."
           if "over_nll" in rows.columns else ""),
        "",
        _markdown_table(rows),
    ]
    lines += _beside_the_paper(rows)
    if "reference" in rows.columns:
        refs = sorted(
            (r for r in dict.fromkeys(rows["reference"].dropna().astype(str)) if r),
            key=lambda r: (int(r[1 : r.index("]")]) if r.startswith("[") and "]" in r else -1, r),
        )
        if refs:
            lines += ["", "## References", ""] + [f"- {r}" for r in refs]
    _write_text(target, "\n".join(lines) + "\n")


def _beside_the_paper(rows: pd.DataFrame) -> list[str]:
    """summary.md's section setting each model's NLL row beside the paper's row of its architecture
    (same data set): parameters, training budget and bits/subpixel. Nothing without both."""
    if not {"architecture", "parameters"} <= set(rows.columns):
        return []
    paper = rows[(rows["kind"] == "paper") & rows["architecture"].notna()]
    models = rows[rows["kind"] == "model-nll"]
    if not len(paper) or not len(models):
        return []

    def cells(row) -> list[str]:
        if row is None:
            return ["-"] * 4
        return [str(row["method"])] + [_fmt(c, row.get(c)) for c in ("parameters", "training")] + [_bits_cell(row)]

    lines = [
        "", "## Models beside the paper", "",
        "Each model's NLL row beside Table 1's row of the same architecture. Parameters of the paper's "
        "rows: this package's preset of the paper's configuration (the papers print no count); training: "
        "as recorded in the model's file, or as published.", "",
        "| model | parameters | training | bits/subpixel | paper's row | parameters | training | bits/dim |",
        "| --- | ---: | --- | ---: | --- | ---: | --- | ---: |",
    ]
    for _, model in models.iterrows():
        same = paper[paper["method"] == model.get("architecture")]
        if "dataset" in rows.columns:
            same = same[same["dataset"] == model.get("dataset")]
        row = cells(model) + cells(same.iloc[0] if len(same) else None)
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in row) + " |")
    return lines


def _h5_name(method: str, used: set[str]) -> str:
    name = str(method).replace("/", "_").strip() or "method"
    if name.startswith("."):
        name = "_" + name
    base, i = name, 2
    while name in used:
        name = f"{base}_{i}"
        i += 1
    used.add(name)
    return name


def _write_h5(target: Path, per_image: Mapping[str, np.ndarray], meta: Mapping) -> None:
    import h5py

    with atomic_path(target) as tmp:
        with h5py.File(tmp, "w") as f:
            for key, value in meta.items():
                f.attrs[key] = _meta_value(value)
            used: set[str] = set()
            for method, values in per_image.items():
                arr = np.asarray(values)
                ds = f.create_dataset(_h5_name(method, used), data=arr)
                ds.attrs["method"] = str(method)
                ds.attrs["unit"] = "bits/subpixel"
                for key, value in meta.items():
                    ds.attrs[key] = _meta_value(value)


def _bar_label(row: pd.Series) -> str:
    label = str(row["method"])
    suffix = {"paper": " (paper)", "model-nll": " (NLL)", "model-coded": " (coded)"}.get(str(row.get("kind")), "")
    if suffix.strip(" ()") not in label:  # method names may already say it
        label += suffix
    if "mosaic" in row.index and not _is_missing(row["mosaic"]) and bool(row["mosaic"]):
        label += " [mosaic]"
    return label


def _write_chart(target: Path, rows: pd.DataFrame, meta: Mapping) -> None:
    # Agg canvas on a bare Figure: no pyplot, no global backend switch, thread-safe
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    rows = rows[rows["bits_per_subpixel"].notna()]
    if "dataset" in rows.columns and rows["dataset"].nunique(dropna=True) > 1:
        groups = [(str(k), g) for k, g in rows.groupby("dataset", sort=True, dropna=False)]
    else:
        groups = [(str(meta.get("dataset", "")) if meta.get("dataset") else "", rows)]
    heights = [max(1.0, 0.35 * len(g) + 0.8) for _, g in groups]
    fig = Figure(figsize=(9, sum(heights) + 0.9), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(groups), 1, squeeze=False, height_ratios=heights)[:, 0]
    vmax = float(rows["bits_per_subpixel"].max()) if len(rows) else 1.0
    for ax, (name, group) in zip(axes, groups):
        # best (lowest) at the top
        group = group.sort_values(["bits_per_subpixel", "method"], ascending=[False, False], kind="stable")
        y = np.arange(len(group))
        kinds = group["kind"].astype(str).tolist()
        bars = ax.barh(
            y,
            group["bits_per_subpixel"].to_numpy(),
            color=[_KIND_COLOURS.get(k, "#444444") for k in kinds],
            edgecolor="black",
            linewidth=0.5,
        )
        for bar, kind in zip(bars, kinds):
            if kind == "paper":
                bar.set_hatch("//")
        for bar, value in zip(bars, group["bits_per_subpixel"].to_numpy()):
            ax.text(
                bar.get_width() + vmax * 0.01,
                bar.get_y() + bar.get_height() / 2,
                f"{value:.3f}",
                va="center",
                fontsize=8,
            )
        ax.set_yticks(y, [_bar_label(r) for _, r in group.iterrows()], fontsize=8)
        ax.set_xlim(0, vmax * 1.12 if vmax > 0 else 1)
        ax.set_xlabel("bits per subpixel (lower is better)")
        if name:
            ax.set_title(name, fontsize=10)
        ax.grid(axis="x", alpha=0.3)
        ax.set_axisbelow(True)
    present = [k for k in KINDS if k in set(rows["kind"].astype(str))]
    handles = [
        Patch(facecolor=_KIND_COLOURS[k], edgecolor="black", hatch="//" if k == "paper" else None, label=k)
        for k in present
    ]
    if handles:
        fig.legend(handles=handles, loc="outside upper center", ncols=len(handles), fontsize=8)
    with atomic_path(target) as tmp:
        with open(tmp, "wb") as fh:
            fig.savefig(fh, format="png", dpi=120)


def write_report(
    out_dir: Path,
    rows: pd.DataFrame,
    per_image: Mapping[str, np.ndarray] | None,
    meta: Mapping,
) -> None:
    """Write summary.csv, summary.md, per_image.h5 and bits_per_subpixel.png into ``out_dir``.

    * summary.csv: all columns of ``rows`` (timing columns added as NaN when
      missing), sorted by dataset then bits/subpixel.
    * summary.md: ``meta`` as a header list, then a markdown table, then the
      references of paper rows.
    * per_image.h5: one dataset per method (``per_image`` key; "/" becomes
      "_", the original name is the ``method`` attribute) with attribute
      ``unit`` = "bits/subpixel"; ``meta`` is
      stored as attributes of the file and of each dataset (non-scalar values
      as JSON). Written (empty but with the attributes) when ``per_image`` is
      None or empty.
    * bits_per_subpixel.png: horizontal bars sorted by bits/subpixel, coloured by kind,
      paper rows grey and hatched, value labels; one panel per dataset when
      ``rows`` has several.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    meta = dict(meta)
    table = normalize_rows(rows)
    csv, markdown, h5, chart = (out_dir / name for name in REPORT_FILES)
    with atomic_path(csv) as tmp:
        table.to_csv(tmp, index=False)
    _write_markdown(markdown, table, meta)
    _write_h5(h5, per_image or {}, meta)
    _write_chart(chart, table, meta)
