"""Check that result files were made with the weights shipped now: the last step of shipped_results.sh.

A result's header (its lines above the first table row) names the model it measured, as the scripts
write it: `model NAME (id ID)` (the benchmark scripts) or `- **models**: [...]` with `- **model_ids**:
[...]` (the summary.md of `snailcompress bench`). Every id a header names must be the id of weights
shipped now (snailcompress.zoo: what `snailcompress models` lists), and every file must name one;
otherwise each stale file is said in a line and the exit code is 1.

    python benchmarks/check_model_ids.py results/default_model_heldout.md results/kodak-heldout-tiles/summary.md
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

from snailcompress.bench.scripts import run
from snailcompress.zoo import load_model, shipped_models

MODEL = re.compile(r"\bmodel (\S+) \(id ([0-9a-f]+)\)", re.IGNORECASE)
LISTED = re.compile(r"^- \*\*(models|model_ids)\*\*: (\[.*\])$", re.MULTILINE)


def named_models(text: str) -> list[tuple[str, str]]:
    """(name, id) of each model the header of a result file names."""
    header = text.split("\n|", 1)[0]
    listed = {key: json.loads(value) for key, value in LISTED.findall(header)}
    return MODEL.findall(header) + list(zip(listed.get("models", []), listed.get("model_ids", [])))


def stale(path: Path, shipped: dict[str, str]) -> list[str]:
    """What is wrong with one result file: models that are not the shipped ones, or none named."""
    named = named_models(path.read_text())
    if not named:
        return [f"{path}: names no model in its header"]
    wrong = []
    for name, model_id in named:
        if (model_id == shipped[name]) if name in shipped else (model_id in shipped.values()):
            continue  # the shipped weights, by their name or by a path to their file
        now = f"the shipped {name} is id {shipped[name]}" if name in shipped else "not a shipped model's weights"
        wrong.append(f"{path}: made with {name} id {model_id}, {now}")
    return wrong


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("results", type=Path, nargs="+")
    args = parser.parse_args()
    shipped = {name: load_model(name).model_id for name in shipped_models()}
    problems = [line for path in args.results for line in stale(path, shipped)]
    for line in problems:
        print(f"check_model_ids.py: error: {line}", file=sys.stderr)
    if problems:
        sys.exit(1)
    print(f"{len(args.results)} result file(s) made with the shipped weights ("
          + ", ".join(f"{name} id {model_id}" for name, model_id in shipped.items()) + ")")


if __name__ == "__main__":
    run(main)
