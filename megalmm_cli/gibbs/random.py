"""Large batches of random numbers, drawn in parallel yet reproducibly.

A batch takes one 63-bit seed from the chain's Generator and fills fixed slices of the output
from 8 child Generators (SeedSequence(seed).spawn(8)) in a numba prange, so the result does
not depend on the number of threads and a resumed chain repeats it exactly.
"""

import math

import numpy as np
from numba import njit, prange

PARALLEL_MIN = 1 << 16  # smaller batches come straight from the chain's Generator
STREAMS = 8


def _children(rng: np.random.Generator):
    seed = int(rng.integers(0, 2**63 - 1))
    return tuple(np.random.Generator(np.random.PCG64(s))
                 for s in np.random.SeedSequence(seed).spawn(STREAMS))


def _size(shape) -> int:
    """Number of elements of an array shape (a tuple or an int); math.prod, not np.prod,
    which costs microseconds per call on a tuple (dozens of calls per iteration)."""
    return int(math.prod(shape)) if isinstance(shape, (tuple, list)) else int(shape)


def normals(rng: np.random.Generator, shape) -> np.ndarray:
    """Standard normals of the given shape."""
    size = _size(shape)
    if size < PARALLEL_MIN:
        return rng.standard_normal(shape)
    out = np.empty(size)
    _fill_normals(_children(rng), out)
    return out.reshape(shape)


def standard_gammas(rng: np.random.Generator, shape_param: float, shape) -> np.ndarray:
    """Gamma(shape_param, 1) draws of the given array shape."""
    size = _size(shape)
    if size < PARALLEL_MIN:
        return rng.standard_gamma(shape_param, size=shape)
    out = np.empty(size)
    _fill_gammas(_children(rng), float(shape_param), out)
    return out.reshape(shape)


@njit(parallel=True, cache=True)
def _fill_normals(gens, out):
    n = out.shape[0]
    for s in prange(len(gens)):
        g = gens[s]
        for i in range(s * n // len(gens), (s + 1) * n // len(gens)):
            out[i] = g.standard_normal()


@njit(parallel=True, cache=True)
def _fill_gammas(gens, shape_param, out):
    n = out.shape[0]
    whole = shape_param == np.floor(shape_param) and shape_param <= 8
    for s in prange(len(gens)):
        g = gens[s]
        for i in range(s * n // len(gens), (s + 1) * n // len(gens)):
            if whole:  # Gamma(m, 1) is the sum of m Exp(1): exact, and several times faster
                total = 0.0
                for _ in range(int(shape_param)):
                    total += g.standard_exponential()
                out[i] = total
            else:
                out[i] = g.standard_gamma(shape_param)
