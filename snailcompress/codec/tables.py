"""Probabilities -> integer frequency tables, by one deterministic rule.

constriction's range coder, given a float64 table of non-negative integers summing to exactly
2**24 - 256 through `Categorical(perfect=False)`, codes every symbol with frequency (count + 1) out of
2**24: every one of the 256 values stays codable, and the table is exactly what we computed (see
docs: coding-notes). The rule below uses only elementwise IEEE operations and one row sum on
identical inputs, so encoder and decoder get identical tables from identical probabilities.
"""

from __future__ import annotations

import numpy as np

PRECISION_BITS = 24
TABLE_TOTAL = 2**PRECISION_BITS - 256  # constriction adds 1 to each of the 256 counts


def quantize(probabilities: np.ndarray) -> np.ndarray:
    """(N, 256) probabilities -> (N, 256) float64 integer counts summing to TABLE_TOTAL per row.

    Counts are floor(p * TOTAL / sum(p)); what flooring leaves over goes to the most probable value.
    """
    p = np.maximum(np.asarray(probabilities, dtype=np.float64), 0.0)
    counts = np.floor(p * (TABLE_TOTAL / p.sum(axis=1, keepdims=True)))
    rows = np.arange(len(counts))
    counts[rows, counts.argmax(axis=1)] += TABLE_TOTAL - counts.sum(axis=1)
    return counts


def code_length_bits(counts: np.ndarray, symbols: np.ndarray) -> np.ndarray:
    """Ideal code length in bits of each symbol under its table (what the range coder approaches)."""
    chosen = counts[np.arange(len(symbols)), symbols] + 1.0
    return PRECISION_BITS - np.log2(chosen)
