"""What the per-image calibration saves, by what it fits, on how large a sample, after how many
L-BFGS iterations, and what the fit costs the encoder.

The 12 held-out images (snailcompress.bench.heldout.HOLDOUT) as the codec codes them (tile 32,
context 2, the default bands): every coded pixel scored under the model's output layer, calibrated
by each variant, plus the calibration's header bits. A variant is written SAMPLE[+features][/itN][/pxN]:

    64, 128   outputs' gain and offset (format version 4), fitted on the pixels of that many windows
              spread over the image (at most MAX_SAMPLE_PIXELS of them, drawn with a fixed seed)
    +features the features' gains as well (format version 5)
    all       the sample drawn from every window: a forward pass over the whole image
    /itN      at most N L-BFGS iterations (default LBFGS_ITERATIONS)
    /pxN      at most N pixels of those windows fitted (default MAX_SAMPLE_PIXELS)

`128+features` is what `snailcompress encode` does (codec/calibration.py's defaults: 60 iterations,
16,384 pixels), `128+features/it30/px65536` what it did before; the first variant listed is the one
the others are compared with. The features fitted on and scored are the integer network's, as the
coder's output layer reads them. Times, per image: sampling (the integer network's pass over the
sample's windows up to its output layer, then the draw of its pixels; run once per window count and
shared by the variants that sample as many windows; the encoder reuses those windows' features for
coding, so this is not time a calibration adds to encoding) and fitting (L-BFGS, then the sample's
NLL with and without the calibration, which decides whether it is sent: what a calibration adds),
wall-clock and CPU. The whole coding's times are in results/coding_speed.md.

    python benchmarks/calibration.py --threads 1 --out results/calibration.md   # the default variants
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from snailcompress.api import DEFAULT_CONTEXT, DEFAULT_TILE, integer_network
from snailcompress.bench.heldout import heldout_files
from snailcompress.bench.scripts import PartialRows, publish, run, run_facts
from snailcompress.codec import calibration
from snailcompress.codec.tiles import WindowPlan, default_band
from snailcompress.threads import set_threads
from snailcompress.zoo import LoadedModel, load_model

#: results/calibration.md: the default first, the default before it, fewer and more iterations, without the
#: feature gains, fewer windows, every window (earlier variants, on the float model's features: git history)
DEFAULT_VARIANTS = ",".join((
    "128+features/it60/px16384", "128+features/it30/px65536", "128+features/it45/px16384", "128+features/it90/px16384",
    "128/it60/px16384", "64+features/it60/px16384", "all+features/it60/px16384"))


@dataclass(frozen=True)
class Variant:
    windows: int | None  # None: every window
    feature_gains: bool
    iterations: int
    pixels: int


def parse_variant(spec: str) -> Variant:
    """'128+features/it10/px32768' -> 128 windows, with feature gains, 10 iterations, 32,768 pixels;
    'all' -> every window, without, the default iterations and pixels."""
    head, *options = spec.split("/")
    sample, plus, what = head.partition("+")
    settings = {"it": calibration.LBFGS_ITERATIONS, "px": calibration.MAX_SAMPLE_PIXELS}
    good = (not plus or what == "features") and (sample == "all" or sample.isdigit() and int(sample) > 0)
    for option in options:
        key, number = option[:2], option[2:]
        good = good and key in settings and number.isdigit() and int(number) > 0
        if good:
            settings[key] = int(number)
    if not good or len({o[:2] for o in options}) != len(options):
        raise SystemExit("calibration.py: error: a variant is N, N+features, all or all+features, each optionally"
                         f" followed by /itN (L-BFGS iterations) and /pxN (pixels fitted), not {spec!r}")
    return Variant(None if sample == "all" else int(sample), bool(plus), settings["it"], settings["px"])


class Clock:
    """Wall and CPU seconds (this process's, all its threads) since it was made, when called."""

    def __init__(self):
        self.wall, self.cpu = time.perf_counter(), time.process_time()

    def __call__(self) -> tuple[float, float]:
        return time.perf_counter() - self.wall, time.process_time() - self.cpu


def measure_image(loaded: LoadedModel, plane: np.ndarray, variants: dict[str, Variant]) -> dict:
    """One image's bits under each variant, and what sampling and fitting each cost (seconds)."""
    head, net = calibration.OutputLayer.from_weights(loaded.weights), integer_network(loaded)
    height, width = plane.shape[:2]
    plan = WindowPlan.for_image(height, width, (DEFAULT_TILE,) * 2, (DEFAULT_CONTEXT,) * 2,
                                default_band(height, width, (DEFAULT_TILE,) * 2, (DEFAULT_CONTEXT,) * 2))
    every = plan.rows * plan.cols
    clock = Clock()
    sample = calibration.sample_pixels(net, plan, plane, windows=every, pixels=None)
    features, values = sample.features, sample.values
    forward = {every: (features, values, clock())}  # the sample's forward pass, by window count
    row = {"bits": {"none": calibration.nll_bits(head, features, values, None)},
           "sample_s": {}, "fit_s": {}, "sample_cpu_s": {}, "fit_cpu_s": {}, "evals": {}, "sent": {}}
    evals = 0
    score = calibration.head_nll

    def counted(*args, **kwargs):  # counts the L-BFGS closure's evaluations of the NLL
        nonlocal evals
        evals += 1
        return score(*args, **kwargs)

    for spec, v in variants.items():
        windows = min(v.windows or every, every)
        if windows not in forward:
            clock = Clock()
            sample = calibration.sample_pixels(net, plan, plane, windows=windows, pixels=None)
            forward[windows] = (sample.features, sample.values, clock())
        sampled_features, sampled_values, (forward_s, forward_cpu_s) = forward[windows]
        clock = Clock()
        sample = calibration.draw_pixels(sampled_features, sampled_values, v.pixels)
        draw_s, draw_cpu_s = clock()
        row["sample_s"][spec], row["sample_cpu_s"][spec] = forward_s + draw_s, forward_cpu_s + draw_cpu_s
        evals, calibration.head_nll = 0, counted
        try:
            clock = Clock()
            fitted = calibration.fit(head, *sample, feature_gains=v.feature_gains, iterations=v.iterations)
        finally:
            calibration.head_nll = score
        row["evals"][spec] = evals
        saved = calibration.nll_bits(head, *sample, None) - calibration.nll_bits(head, *sample, fitted)
        row["fit_s"][spec], row["fit_cpu_s"][spec] = clock()
        # fit_calibration's estimate of the saving, scaled to the plane, against the header: sent or not
        row["sent"][spec] = bool(saved * len(values) / len(sample[1]) > fitted.header_bits)
        row["bits"][spec] = calibration.nll_bits(head, features, values, fitted) + fitted.header_bits
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="snail-rgb")
    parser.add_argument("--variants", default=DEFAULT_VARIANTS)
    parser.add_argument("--images", type=int, default=None, help="only the first N held-out images")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    set_threads(args.threads)
    variants = {spec: parse_variant(spec) for spec in args.variants.split(",")}
    loaded = load_model(args.model)
    kept = PartialRows(args.out, {"argv": sys.argv[1:], "model": loaded.model_id})
    names = ["none", *variants]
    rows = []
    for path in heldout_files()[: args.images]:
        row = kept.get(path.stem)
        if row is None:
            plane = np.asarray(Image.open(path).convert("RGB"))
            row = {**measure_image(loaded, plane, variants), "subpixels": int(plane.size)}
            kept.add(path.stem, row)
        rows.append((path.stem, row))
        print(path.stem, " ".join(f"{name} {b / row['subpixels']:.4f}" for name, b in row["bits"].items()),
              " ".join(f"{spec} {row['sample_s'][spec]:.2f}+{row['fit_s'][spec]:.2f}s" for spec in variants),
              flush=True)
    subpixels = sum(row["subpixels"] for _, row in rows)
    total = {name: sum(row["bits"][name] for _, row in rows) / subpixels for name in names}
    sent = {spec: sum(row["bits"][spec if row["sent"][spec] else "none"] for _, row in rows) / subpixels
            for spec in variants}
    mean = lambda key, spec: sum(row[key][spec] for _, row in rows) / len(rows)  # noqa: E731
    first = next(iter(variants))

    lines = [
        f"# Calibration of {args.model} for each image: what is fitted, on how large a sample, and at what cost",
        "",
        f"Command: `python {' '.join(sys.argv)}`  ",
        f"{run_facts()}; model {args.model} (id {loaded.model_id}).{kept.note()} Bits/subpixel of the held-out"
        f" images as the codec codes them (tile {DEFAULT_TILE}, context {DEFAULT_CONTEXT}): the NLL of every coded"
        " pixel, the integer network's features read by the float output layer under each calibration, plus its"
        " header bits. A variant is SAMPLE[+features][/itN][/pxN]: the"
        " number of windows sampled ('all': every window), '+features' with the features' gains, at most N L-BFGS"
        f" iterations (default {calibration.LBFGS_ITERATIONS}) and N pixels fitted (default"
        f" {calibration.MAX_SAMPLE_PIXELS}). Seconds are the mean per image: sampling (the integer network's pass over"
        " the sample's windows, measured once per window count, and the pixels' draw; the encoder codes from those"
        " windows' features, so sampling adds nothing to encoding) and fitting (L-BFGS and the"
        " sample's NLL with and without the calibration), wall-clock and, in brackets, this process's CPU time"
        " (less sensitive to a shared machine); 'evaluations' counts the fit's evaluations of the NLL and its"
        f" gradient on the sample. 'against {first}': the change in bits against that variant. 'sent': on how"
        " many images the encoder would send it (fit_calibration: its saving on the sample, scaled to the image,"
        " exceeds its header); 'change as sent': the bits with those images' calibrations and the others' none"
        " (the other columns charge every image its calibration).",
        "",
        "| variant | windows | pixels | iterations | bits/subpixel | change | against " + first
        + " | sent | change as sent | evaluations | sampling s | fitting s | total s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        f"| none | | | | {total['none']:.4f} | | {100 * (total['none'] / total[first] - 1):+.3f}% | | | | | | |",
    ]
    for spec, v in variants.items():
        wall, cpu = (mean("sample_s", spec), mean("fit_s", spec)), (mean("sample_cpu_s", spec), mean("fit_cpu_s", spec))
        seconds = [f"{w:.2f} ({c:.2f})" for w, c in zip((*wall, sum(wall)), (*cpu, sum(cpu)))]
        lines.append(f"| {spec} | {v.windows or 'all'} | {v.pixels} | {v.iterations} | {total[spec]:.4f}"
                     f" | {100 * (total[spec] / total['none'] - 1):+.2f}%"
                     f" | {100 * (total[spec] / total[first] - 1):+.3f}%"
                     f" | {sum(row['sent'][spec] for _, row in rows)} | {100 * (sent[spec] / total['none'] - 1):+.2f}%"
                     f" | {mean('evals', spec):.1f} | " + " | ".join(seconds) + " |")
    lines += ["", "Bits/subpixel by image:", "",
              "| image | " + " | ".join(names) + " |",
              "|---|" + "---|" * len(names)]
    for label, row in rows:
        per_subpixel = (f"{row['bits'][name] / row['subpixels']:.4f}" for name in names)
        lines.append(f"| {label} | " + " | ".join(per_subpixel) + " |")
    lines.append("| **all** | " + " | ".join(f"{total[name]:.4f}" for name in names) + " |")
    publish(lines, args.out)
    kept.done()


if __name__ == "__main__":
    run(main)
