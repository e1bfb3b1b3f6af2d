"""Steps 7-8: shrinkage priors on Lambda (ARD or horseshoe) and on B2F (horseshoe or ridge).

Lambda's prior precision is relative: lambda_lj ~ N(0, 1 / (tot_eta_prec_j * lambda_prec_lj)).
"""

import llvmlite.binding as llvm
import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import get_cython_function_address, intrinsic

from .random import standard_gammas


# scipy's regularised upper incomplete gamma and its inverse, called from numba through
# scipy.special.cython_special's C entry points (the same code as scipy.special's ufuncs).
# They are linked by symbol name, registered here in every process, so the compiled kernels
# hold no process-specific address and numba can cache them on disk.
def _c_function(symbol: str, name: str):
    llvm.add_symbol(symbol, get_cython_function_address("scipy.special.cython_special", name))

    @intrinsic
    def call(typingctx, a, x):
        def codegen(context, builder, signature, args):
            fnty = ir.FunctionType(ir.DoubleType(), [ir.DoubleType(), ir.DoubleType()])
            return builder.call(cgutils.get_or_insert_function(builder.module, fnty, symbol), args)
        return types.float64(types.float64, types.float64), codegen

    return call


_gammaincc = _c_function("megalmm_scipy_gammaincc", "gammaincc")
_gammainccinv = _c_function("megalmm_scipy_gammainccinv", "gammainccinv")


@njit(cache=True)
def truncated_gamma_above_one(shape, rate, uniform):
    """Gamma(shape, rate) truncated to [1, inf) by the inverse CDF of its upper tail."""
    tail = _gammaincc(shape, rate)
    if tail <= 0.0:
        return 1.0
    return max(1.0, _gammainccinv(shape, tail * (1.0 - uniform)) / rate)


@njit(cache=True)
def _delta_sweeps(delta, half_ss, shapes, rates0, std_gammas, uniforms):
    """`iterations` sweeps of the ARD delta_h | rest, in place.

    delta_h = std_gammas[it, h] / rate_h with rate_h = rates0[h] + sum_{l>=h} tau_l s_l / delta_h;
    for h > 0 the draw is truncated to >= 1: an untruncated draw that lands >= 1 is kept, else
    an inverse-CDF draw from the tail with uniforms[it, h] (together exactly the truncated law).
    """
    iterations, k = std_gammas.shape
    for it in range(iterations):
        for h in range(k):
            tau = 1.0
            total = 0.0
            for l in range(k):
                tau *= delta[l]
                if l >= h:
                    total += tau * half_ss[l]
            rate = rates0[h] + total / delta[h]
            value = std_gammas[it, h] / rate
            if h > 0 and value < 1.0:
                value = truncated_gamma_above_one(shapes[h], rate, uniforms[it, h])
            delta[h] = value


def loading_precision(lambda_type: str, lambda_phi, delta, global2) -> np.ndarray:
    """lambda_prec (k, t) from its parts: ARD phi_lj tau_l; horseshoe tau_l / (global2 local2_lj),
    tau_l = prod_{h <= l} delta_h (lambda_phi holds phi or local2; global2 unused by ARD)."""
    cum = np.cumprod(delta)[:, None]
    if lambda_type == "ARD":
        return lambda_phi * cum
    return cum / (global2 * lambda_phi)


def sample_ard(lam, tot_eta_prec, delta, rng, df, delta_1, delta_2, iterations):
    """ARD / multiplicative gamma process (Bhattacharya & Dunson 2011).

    lam: (k, t) loadings; tot_eta_prec: (t,); delta: (k,) current values;
    delta_1, delta_2: (shape, rate) of the first and later deltas.
    phi_lj ~ Gamma((df + 1) / 2, (df + tau_l tot_eta_prec_j lam_lj^2) / 2), then `iterations`
    sweeps over delta_h given phi (delta_h >= 1 for h > 1), tau_l = prod_{h <= l} delta_h.
    A truncated delta is an untruncated draw when that lands >= 1, else an inverse-CDF draw
    from the tail: together exactly the truncated distribution.
    Returns phi (k, t), delta (k,), lambda_prec = phi * tau (k, t).
    """
    k, t = lam.shape
    scaled_sq = tot_eta_prec[None, :] * lam * lam
    tau = np.cumprod(delta)
    phi = standard_gammas(rng, (df + 1.0) / 2.0, (k, t)) / (0.5 * (df + tau[:, None] * scaled_sq))
    half_ss = 0.5 * (phi * scaled_sq).sum(axis=1)  # (k,)
    delta = delta.copy()
    shapes = np.array([delta_1[0]] + [delta_2[0]] * (k - 1)) + 0.5 * t * (k - np.arange(k))
    rates0 = np.array([delta_1[1]] + [delta_2[1]] * (k - 1), dtype=np.float64)
    std_gammas = rng.standard_gamma(shapes, size=(iterations, k))
    uniforms = rng.random((iterations, k))
    _delta_sweeps(delta, half_ss, shapes.astype(np.float64), rates0, std_gammas, uniforms)
    tau = np.cumprod(delta)
    return phi, delta, phi * tau[:, None]


def sample_horseshoe_lambda(lam, tot_eta_prec, local2, local_nu, global2, global_xi, delta,
                            rng, global_scale, delta_2, iterations):
    """Horseshoe on loadings with a column-ordered shrinkage delta (delta_1 = 1).

    lam_lj ~ N(0, global2 * local2_lj * tau_l / tot_eta_prec_j), tau_l = prod_{h<=l} 1/delta_h
    ... written as lambda_prec_lj = delta_cum_l / (global2 * local2_lj); auxiliary inverse-gamma
    variables as in Makalic & Schmidt (2016). Returns the updated
    (local2, local_nu, global2, global_xi, delta, lambda_prec).
    """
    k, t = lam.shape
    scaled_sq = 0.5 * tot_eta_prec[None, :] * lam * lam
    cum = np.cumprod(delta)

    def inv_gamma(shape, rate, size=None):
        return rate / rng.gamma(shape, 1.0, size=size)

    local2 = inv_gamma(1.0, 1.0 / local_nu + scaled_sq * cum[:, None] / global2, size=(k, t))
    local_nu = inv_gamma(1.0, 1.0 + 1.0 / local2, size=(k, t))
    per_factor = (scaled_sq / local2).sum(axis=1)  # (k,)
    delta = delta.copy()
    for _ in range(iterations):
        cum = np.cumprod(delta)
        global2 = inv_gamma(0.5 * (k * t + 1), 1.0 / global_xi + np.dot(cum, per_factor))
        global_xi = inv_gamma(1.0, 1.0 / global_scale**2 + 1.0 / global2)
        for h in range(1, k):
            cum = np.cumprod(delta)
            rate = delta_2[1] + np.dot(cum[h:], per_factor[h:]) / (delta[h] * global2)
            delta[h] = rng.gamma(delta_2[0] + 0.5 * t * (k - h), 1.0) / rate
    cum = np.cumprod(delta)
    lambda_prec = cum[:, None] / (global2 * local2)
    return local2, local_nu, global2, global_xi, delta, lambda_prec


def sample_horseshoe_columns(coef, col_prec, local2, local_nu, global2, global_xi, rng, global_scale):
    """Column-wise horseshoe (one global scale per column) for B2F: (b2, k).

    coef_cl ~ N(0, global2_l * local2_cl / col_prec_l). Returns
    (local2, local_nu, global2, global_xi, prior_prec) with prior_prec = 1 / (global2 local2).
    """
    b2, k = coef.shape
    scaled_sq = 0.5 * col_prec[None, :] * coef * coef

    def inv_gamma(shape, rate, size=None):
        return rate / rng.gamma(shape, 1.0, size=size)

    local2 = inv_gamma(1.0, 1.0 / local_nu + scaled_sq / global2[None, :], size=(b2, k))
    local_nu = inv_gamma(1.0, 1.0 + 1.0 / local2, size=(b2, k))
    global_xi = inv_gamma(1.0, 1.0 / global_scale**2 + 1.0 / global2, size=k)
    global2 = inv_gamma(0.5 * (b2 + 1), 1.0 / global_xi + (scaled_sq / local2).sum(axis=0), size=k)
    return local2, local_nu, global2, global_xi, 1.0 / (global2[None, :] * local2)
