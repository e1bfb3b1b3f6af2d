"""Relationship matrices from marker genotypes."""

import numpy as np


def vanraden(genotypes: np.ndarray) -> np.ndarray:
    """VanRaden (2008) method-1 genomic relationship matrix.

    genotypes: (n, m) allele counts 0/1/2, NaN for a missing call (replaced by the
    marker mean). Monomorphic markers contribute nothing. Returns K: (n, n).
    """
    geno = np.asarray(genotypes, dtype=np.float64)
    freq = np.nanmean(geno, axis=0) / 2.0
    centred = geno - 2.0 * freq
    centred[np.isnan(centred)] = 0.0
    scale = 2.0 * np.sum(freq * (1.0 - freq))
    if scale <= 0:
        raise ValueError("all markers are monomorphic: no relationship matrix can be computed")
    return centred @ centred.T / scale
