"""Table 1 of the PixelSNAIL paper (Chen, Mishra, Rohaninejad, Abbeel), as data.

Transcribed from the paper text in ``/work/shared/docs/pixelsnail-paper.md``:
"Table 1: Average negative log-likelihoods on CIFAR-10 and ImageNet 32x32, in
bits per dim." Only what that table prints is here; nothing is added from
other sources.

Notes on the source text:

* The body text says "In Table 3, we provide negative log-likelihood results"
  but the only table, and its caption, are "Table 1"; we take it to be the same
  table.
* The table has CIFAR-10 and ImageNet 32x32 columns only; the paper reports no
  ImageNet 64x64 numbers, so there is no such field.
* A dash ("–") in the table means no number; it is ``None`` here.
* "Conv DRAW [4]" is printed as "3.5" on CIFAR-10, with one decimal where every
  other entry has two. We keep 3.5 exactly as printed (the text does not say
  whether digits were lost).
* The paper's own row reads "PixelSNAIL (ours)"; here the method is
  "PixelSNAIL" (so it cannot be confused with a re-implementation's rows) and
  ``paper_label`` keeps the printed name.
* PixelRNN is cited as [8]; the reference list has the same paper twice, as
  [8] and [13]. We keep [8] as printed in the table.

Added beside the table, for comparing a model with the paper's row of its architecture (the
``parameters`` and ``training`` columns; ``PAPER_MODELS``):

* Parameters. Neither the PixelSNAIL paper nor the PixelCNN++ paper prints a parameter count. The
  counts here are those of this package's presets of the papers' configurations (``pixelsnail-cifar10``,
  ``pixelsnail-imagenet32``, ``pixelcnnpp-cifar10``; exact, checked against the built models by
  tests/test_models.py), ports of the authors' code layer for layer: 46,180,788 for PixelSNAIL (its
  attention's inputs carry six position channels, as the authors' code broadcasts them) and 53,659,080
  for PixelCNN++, the commonly cited 53 M.
* Training. The PixelSNAIL paper gives no training budget. For PixelCNN++ the README of its code (openai/pixel-cnn,
  as quoted in the reference notes) says about 5 days to 2.92 bits/dim on 8 Maxwell Titan X GPUs.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from ..models.presets import PRESETS

__all__ = ["PaperRow", "TABLE1", "REFERENCES", "DATASETS", "ARCHITECTURES", "PAPER_MODELS", "paper_rows"]

#: the paper's reference list, verbatim, for the entries Table 1 cites
REFERENCES: dict[int, str] = {
    1: "Anonymous. Image transformer. Under review at the International Conference on Learning "
    "Representations (ICLR), 2018. URL https://openreview.net/forum?id=r16Vyf-0-.",
    2: "Laurent Dinh, Jascha Sohl-Dickstein, and Samy Bengio. Density estimation using real nvp. "
    "arXiv preprint arXiv:1605.08803, 2016.",
    4: "Karol Gregor, Frederic Besse, Danilo Jimenez Rezende, Ivo Danihelka, and Daan Wierstra. "
    "Towards conceptual compression. arXiv preprint arXiv:1604.08772, 2016.",
    5: "Diederik P. Kingma, Tim Salimans, Rafal Jozefowicz, Xi Chen, Ilya Sutskever, and Max Welling. "
    "Improving variational inference with inverse autoregressive flow. In Advances in Neural "
    "Information Processing Systems, 2016.",
    8: "Aaron van den Oord, Nal Kalchbrenner, and Koray Kavukcuoglu. Pixel recurrent neural networks. "
    "International Conference on Machine Learning (ICML), 2016.",
    9: "OpenAI. Block-sparse gpu kernels, Dec 2017. URL https://blog.openai.com/block-sparse-gpu-kernels/.",
    11: "Tim Salimans, Andrej Karpathy, Xi Chen, and Diederik P Kingma. Pixelcnn++: Improving the "
    "pixelcnn with discretized logistic mixture likelihood and other modifications. arXiv preprint "
    "arXiv:1701.05517, 2017.",
    12: "Aaron van den Oord, Nal Kalchbrenner, Lasse Espeholt, Oriol Vinyals, Alex Graves, et al. "
    "Conditional image generation with pixelcnn decoders. In Advances in Neural Information "
    "Processing Systems (NIPS), 2016.",
}


@dataclass(frozen=True)
class PaperRow:
    """One row of Table 1. Bits per subpixel as printed ("2.85", "3.5"), None where the table has a dash."""

    method: str
    paper_label: str  # the method cell as printed
    cifar10: str | None
    imagenet32: str | None
    ref: int | None  # number in the paper's reference list; None for the paper's own model

    @property
    def reference(self) -> str:
        if self.ref is None:
            return "this paper (PixelSNAIL, Chen et al.)"
        return f"[{self.ref}] {REFERENCES[self.ref]}"


#: Table 1, in the paper's row order
TABLE1: tuple[PaperRow, ...] = (
    PaperRow("Conv DRAW", "Conv DRAW [4]", "3.5", "4.40", 4),
    PaperRow("Real NVP", "Real NVP [2]", "3.49", "4.28", 2),
    PaperRow("VAE with IAF", "VAE with IAF [5]", "3.11", None, 5),
    PaperRow("PixelRNN", "PixelRNN [8]", "3.00", "3.86", 8),
    PaperRow("PixelCNN", "PixelCNN [12]", "3.03", "3.83", 12),
    PaperRow("Image Transformer", "Image Transformer [1]", "2.98", "3.81", 1),
    PaperRow("PixelCNN++", "PixelCNN++ [11]", "2.92", None, 11),
    PaperRow("Block Sparse PixelCNN++", "Block Sparse PixelCNN++ [9]", "2.90", None, 9),
    PaperRow("PixelSNAIL", "PixelSNAIL (ours)", "2.85", "3.80", None),
)

#: the data sets Table 1 has columns for
DATASETS: tuple[str, ...] = ("cifar10", "imagenet32")

#: a model config's "architecture" -> the Table 1 row of that architecture
ARCHITECTURES: dict[str, str] = {"pixelsnail": "PixelSNAIL", "pixelcnnpp": "PixelCNN++"}

#: (Table 1 method, data set) -> (the preset of the paper's configuration, its training budget as
#: published, "" where none is): the module docstring says where each comes from
PAPER_MODELS: dict[tuple[str, str], tuple[str, str]] = {
    ("PixelSNAIL", "cifar10"): ("pixelsnail-cifar10", ""),
    ("PixelSNAIL", "imagenet32"): ("pixelsnail-imagenet32", ""),
    ("PixelCNN++", "cifar10"): ("pixelcnnpp-cifar10", "about 5 days on 8 Maxwell Titan X GPUs"),
}

_COLUMNS = ["method", "kind", "bits_per_subpixel", "reference", "dataset", "architecture", "parameters",
            "parameters_source", "training"]


def printed_bits(method: str, dataset: str) -> str | None:
    """Table 1's cell for this method and data set as printed (None: a dash, or no such row)."""
    row = next((row for row in TABLE1 if row.method == method), None)
    return getattr(row, str(dataset).lower(), None) if row is not None and str(dataset).lower() in DATASETS else None


def paper_rows(dataset: str) -> pd.DataFrame:
    """Table 1 rows with a number for ``dataset`` ("cifar10" or "imagenet32").

    Columns: method, kind (always "paper"), bits_per_subpixel, reference, dataset; and for the rows
    of PAPER_MODELS the architecture (the method), parameters (of the preset of the paper's
    configuration), parameters_source (that preset) and training (as published, else empty).
    Any other data set name gives an empty frame with the same columns.
    """
    key = str(dataset).lower()
    records = []
    if key in DATASETS:
        for row in TABLE1:
            value = getattr(row, key)
            if value is None:
                continue
            preset, training = PAPER_MODELS.get((row.method, key), (None, None))
            records.append(
                {
                    "method": row.method,
                    "kind": "paper",
                    "bits_per_subpixel": float(value),
                    "reference": row.reference,
                    "dataset": key,
                    "architecture": row.method if preset else None,
                    "parameters": PRESETS[preset].parameters[0] if preset else None,
                    "parameters_source": f"preset {preset} (the paper prints no count)" if preset else None,
                    "training": training or None,
                }
            )
    frame = pd.DataFrame.from_records(records, columns=_COLUMNS)
    return frame.astype({"bits_per_subpixel": "float64", "parameters": "Int64"})
