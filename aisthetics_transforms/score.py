"""Score stage: NIMA distributions -> mean and standard deviation.

The mean and sd are those of a histogram over the scores 1..10 with the
(normalised) predicted probabilities as weights, computed as the seed does.
"""
from __future__ import annotations

import numpy as np

SCORE_VALUES = np.arange(1, 11, dtype=np.float64)


def distribution_stats(probabilities: np.ndarray) -> tuple[float, float]:
    """(mean, sd) of the score distribution over 1..10."""
    p = np.asarray(probabilities, dtype=np.float64)
    p = p / p.sum()
    mean = float((p * SCORE_VALUES).sum())
    sd = float(np.sqrt((np.square(SCORE_VALUES - mean) * p).sum()))
    return mean, sd
