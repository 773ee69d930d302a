"""The decompositions: feature space (SFSD, four variants), weight space (SVD) and two activation-aware baselines.

Every method factors a layer y = W x + b0 (W is d2 x d1) once, fully; any rank afterwards is a slice:
first = coeffs[:r] (r x d1), second = basis[:, :r] (d2 x r), bias = b0 + (I - V_r V_r^T) c where c is
the decomposition's `mean_shift` (absent: bias = b0).

The four feature-space variants (Sec. 3.2 of the seed paper and its released code):
- `feature`: eigenvectors of the centred C_y = W Cov(x) W^T, c = W x_bar: the optimal rank-r affine fit.
- `feature-paper`: eigenvectors of the uncentred Sigma_Y = W E[x x^T] W^T (Y Y^T / n), c = W x_bar:
  Sec. 3.2 as written, the compensation bias of Eq. 4 added to the thin layers as in Eq. 5.
- `feature-uncentred`: uncentred eigenvectors, no compensation; on calibration data it gives the same
  outputs as SVD-LLM's whitened truncation (a test shows it).
- `feature-official`: what nyunAI/SFSD-LLM `layers.py` (`DecomposeLinearEigen.init_lowrank`) computes:
  eigenvectors of the centred covariance (`torch.cov`) and bias V_r V_r^T b0, the layer's own bias
  projected onto the kept directions (zero for bias-free layers: no compensation at all). Expressed here
  as c = -b0, since b0 + (I - V_r V_r^T)(-b0) = V_r V_r^T b0.

The feature-space variants read only W Cov(x) W^T (or W E[x x^T] W^T) and W x_bar: from a group's input
statistics, or measured on the layer's outputs y = W x (bias taken off) where that Gram is cheaper
(`calibration.choose_sides`); the two give the same decompositions. ASVD and SVD-LLM need the inputs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from sfsd.calibration import InputStatistics, OutputStatistics, Statistics
from sfsd.errors import SfsdError
from sfsd.registry import Registry


@dataclass
class Decomposition:
    """A full factorisation of one layer; `factors(r)` slices it to rank r."""

    method: str
    basis: torch.Tensor  # d2 x k, columns ordered by decreasing importance
    coeffs: torch.Tensor  # k x d1
    spectrum: torch.Tensor  # energy of each direction (eigenvalues / squared singular values), descending
    bias: torch.Tensor | None  # b0 of the original layer
    mean_shift: torch.Tensor | None = None  # c of bias = b0 + (I - V_r V_r^T) c (W x_bar: Eq. 4)

    @property
    def max_rank(self) -> int:
        return self.coeffs.shape[0]

    def factors(self, rank: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """(first r x d1, second d2 x r, bias d2) of the rank-r replacement (Eq. 5)."""
        if not 1 <= rank <= self.max_rank:
            raise SfsdError(f"rank {rank} is outside 1..{self.max_rank} for this layer: choose a smaller rank")
        first, second = self.coeffs[:rank], self.basis[:, :rank]
        if self.mean_shift is None:
            return first, second, self.bias
        return first, second, compensated_bias(self.bias, second, self.mean_shift).to(second.dtype)

    def residual_energy(self, rank: int) -> float:
        """Sum of the discarded spectrum: the output error per token on calibration data (feature space)."""
        return float(self.spectrum[rank:].sum())


def compensated_bias(bias: torch.Tensor | None, basis: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """b = b0 + V_r^c V_r^cT c = b0 + (I - V_r V_r^T) c (Eq. 4 with c = W x_bar): the average output of the
    discarded directions, added back as a constant (Eq. 5). Computed in float64."""
    shift, basis = shift.to(torch.float64), basis.to(torch.float64)
    compensation = shift - basis @ (basis.T @ shift)
    return compensation if bias is None else bias.to(torch.float64) + compensation


def _psd_sqrt(matrix: torch.Tensor) -> torch.Tensor:
    """Symmetric square root of a positive semi-definite matrix (negative round-off clipped)."""
    values, vectors = torch.linalg.eigh(matrix)
    return (vectors * values.clamp(min=0).sqrt()) @ vectors.T


def _output_eigenbasis(weight: torch.Tensor, stats: Statistics, centred: bool):
    """Eigenvectors and eigenvalues of C_y = W M W^T (M = Cov(x) or E[x x^T]), descending, top min(d1, d2).

    From output-side statistics C_y is measured directly (they are only kept where d2 < d1). From
    input-side statistics, when d2 <= d1 this is eigh(W M W^T). When d2 > d1, C_y has rank at most d1 and
    the SVD of W M^{1/2} gives the same eigenvectors (left singular vectors) and eigenvalues (squared
    singular values) at lower cost; M^{1/2} is computed once per shared-input group.
    """
    d_out, d_in = weight.shape
    if isinstance(stats, OutputStatistics) or d_out <= d_in:
        values, vectors = torch.linalg.eigh(stats.output_moment(weight, centred))
        return vectors.flip(1), values.flip(0).clamp(min=0)
    moment = stats.covariance if centred else stats.second_moment
    half = stats.derived(f"sqrt-{centred}", lambda s: _psd_sqrt(moment))
    left, singular, _ = torch.linalg.svd(weight @ half, full_matrices=False)
    return left, singular.square()


def _cast(dec: Decomposition, dtype: torch.dtype) -> Decomposition:
    dec.basis, dec.coeffs = dec.basis.to(dtype).contiguous(), dec.coeffs.to(dtype).contiguous()
    return dec


def feature_space(weight, bias, stats: Statistics, centred: bool = True,
                  compensate: bool = True, name: str | None = None) -> Decomposition:
    """SFSD (Sec. 3.2, Eq. 4-5): keep the top eigenvectors V_r of the output covariance; first = V_r^T W,
    second = V_r, bias b = b0 + (I - V_r V_r^T) W x_bar when `compensate` (Eq. 4), else b0.

    centred: C_y = W Cov(x) W^T (with compensation, the optimal rank-r affine approximation of the outputs;
    the discarded eigenvalues sum to the mean squared error). Uncentred: Sigma_Y = W E[x x^T] W^T (Y Y^T / n).
    """
    basis, spectrum = _output_eigenbasis(weight, stats, centred)
    name = name or ("feature" if centred else "feature-uncentred")
    shift = stats.output_mean(weight) if compensate else None
    return Decomposition(name, basis, basis.T @ weight, spectrum, bias, shift)


def feature_paper(weight, bias, stats: Statistics) -> Decomposition:
    """The paper's Sec. 3.2 as written: eigenvectors of the uncentred Y Y^T, plus the Eq. 4 bias."""
    return feature_space(weight, bias, stats, centred=False, compensate=True, name="feature-paper")


def feature_official(weight, bias, stats: Statistics) -> Decomposition:
    """The released code's DecomposeLinearEigen: centred eigenvectors, bias V_r V_r^T b0 (c = -b0)."""
    dec = feature_space(weight, bias, stats, centred=True, compensate=False, name="feature-official")
    dec.mean_shift = None if bias is None else -bias
    return dec


def weight_space(weight, bias, stats: InputStatistics | None = None) -> Decomposition:
    """Plain truncated SVD of the weight: W ~ U_r S_r V_r^T."""
    left, singular, right_t = torch.linalg.svd(weight, full_matrices=False)
    return Decomposition("weight", left, singular[:, None] * right_t, singular.square(), bias)


def asvd(weight, bias, stats: InputStatistics, alpha: float = 0.5) -> Decomposition:
    """ASVD-style: SVD of W diag(s) with s = mean|x|^alpha per input channel, then undo the scaling."""
    scale = (stats.sum_abs_x / stats.count).pow(alpha).clamp(min=1e-6)
    left, singular, right_t = torch.linalg.svd(weight * scale[None, :], full_matrices=False)
    return Decomposition("asvd", left, singular[:, None] * right_t / scale[None, :], singular.square(), bias)


def _cholesky_with_shift(moment: torch.Tensor) -> torch.Tensor:
    """Cholesky factor of E[x x^T], adding a growing multiple of the identity until it is PD."""
    eye = torch.eye(moment.shape[0], dtype=moment.dtype, device=moment.device)
    scale = moment.diagonal().mean().clamp(min=1e-12)
    for shift in (0.0, 1e-8, 1e-6, 1e-4, 1e-2):
        factor, info = torch.linalg.cholesky_ex(moment + shift * scale * eye)
        if int(info) == 0:
            return factor
    raise SfsdError("the calibration inputs are degenerate (no Cholesky factor): use more calibration samples")


def svd_llm(weight, bias, stats: InputStatistics) -> Decomposition:
    """SVD-LLM-style whitening: SVD of W S with S S^T = E[x x^T] (Cholesky), first = S_r V_r^T S^{-1}."""
    chol = stats.derived("cholesky", lambda s: _cholesky_with_shift(s.second_moment))
    left, singular, right_t = torch.linalg.svd(weight @ chol, full_matrices=False)
    scaled = singular[:, None] * right_t
    coeffs = torch.linalg.solve_triangular(chol, scaled, upper=False, left=False)
    return Decomposition("svdllm", left, coeffs, singular.square(), bias)


@dataclass(frozen=True)
class Method:
    """A decomposition and everything shown about it: adding a method means registering one Method here."""

    name: str
    fit: Callable[..., Decomposition]
    needs_calibration: bool
    description: str
    label: str  # legends and tables of the dashboard and the report
    color: str  # its colour on every page
    spectrum: str  # what its spectrum is, in the legend of the spectra chart
    # Needs only W Cov(x) W^T, W E[x x^T] W^T and W E[x]: can work from the statistics of y = W x, which
    # are cheaper where a group's outputs are narrower than its input (see calibration.choose_sides).
    output_statistics: bool = False
    dash: str | None = None  # its line style on the Frontier page; None: by line order
    # Removes whole heads and MLP channels of a block range (sfsd.decompose.pruning) or whole directions of the
    # residual stream (sfsd.decompose.slicing) instead of factoring each layer: no rank, no spectrum, no
    # per-layer search; `fit` is None.
    structured: bool = False
    # Changes the whole model however few blocks a budget names (SliceGPT slices the residual stream every block
    # shares): only its parameter count is matched, and it is a line of its own on the Frontier.
    whole_model: bool = False


# Registered in Table 1's row order (weight space first), which every list of methods follows.
METHODS: Registry[Method] = Registry("method")
for _method in (
    Method("weight", weight_space, False, "weight space: truncated SVD of W", label="weight SVD",
           color="#ff7f0e", spectrum="weight: σ² of W", dash="dot"),  # plain SVD: orange
    Method("feature", feature_space, True, "feature space, centred, with bias compensation (SFSD)",
           label="feature space (SFSD, centred + bias)", color="#1f77b4",  # SFSD: blue
           spectrum="feature: eigenvalues of Cov(Wx)", output_statistics=True, dash="solid"),
    Method("feature-paper", feature_paper, True,
           "feature space as Sec. 3.2 is written: uncentred Y Y^T eigenvectors plus the Eq. 4 bias",
           label="feature space, paper Sec. 3.2 (uncentred + bias)", color="#d62728",  # red
           spectrum="feature (paper): eigenvalues of E[yyᵀ]", output_statistics=True, dash="dash"),
    Method("feature-official", feature_official, True,
           "feature space as the released code computes it: centred eigenvectors, no compensation bias",
           label="feature space, released code (centred, no bias)", color="#8c564b",  # the released code: brown
           spectrum="feature (released code): eigenvalues of Cov(Wx)", output_statistics=True),
    Method("feature-uncentred", lambda w, b, s: feature_space(w, b, s, centred=False, compensate=False),
           True, "feature space, uncentred, no bias (= SVD-LLM on calibration data)",
           label="feature space, uncentred, no bias (= SVD-LLM)", color="#17becf",  # cyan
           spectrum="feature (uncentred): eigenvalues of E[yyᵀ]", output_statistics=True),
    Method("asvd", asvd, True, "ASVD-style input-channel scaling (mean |x|^0.5)", label="ASVD",
           color="#2ca02c", spectrum="ASVD: σ² of W·S", dash="dashdot"),  # green
    Method("svdllm", svd_llm, True, "SVD-LLM-style whitening by the Cholesky factor of E[x x^T]", label="SVD-LLM",
           color="#9467bd", spectrum="SVD-LLM: σ² of W·L", dash="longdash"),  # purple
    Method("llm-pruner", None, True,
           "LLM-Pruner block-wise structured pruning (Taylor param_first importance of heads and MLP channels, "
           "no LoRA recovery)", label="LLM-Pruner (structured, no recovery)", color="#e377c2",  # pink
           spectrum="", dash="longdashdot", structured=True),
    Method("slicegpt", None, True,
           "SliceGPT: the residual stream rotated by its principal components (sequential PCA on the sliced model) "
           "and its least important directions deleted, on the whole model", label="SliceGPT (whole model)",
           color="#bcbd22", spectrum="", dash="8px,3px,2px,3px,2px,3px", structured=True, whole_model=True),  # olive
):
    METHODS.register(_method.name, _method)


def get_method(name: str) -> Method:
    return METHODS.get(name)


def layer_methods() -> list[str]:
    """The methods that factor each layer at a rank (what a search and the spectra work with)."""
    return [name for name, method in METHODS.items() if not method.structured]


def check_layer_method(name: str) -> Method:
    """The method `name`, refused in one line when it prunes structurally (it has no per-layer rank)."""
    method = get_method(name)
    if method.structured:
        raise SfsdError(f"{name} prunes whole heads and channels, with no per-layer rank to search or slice: "
                        f"use it with `sfsd uniform --method {name}` or `sfsd compress --method {name}`")
    return method


def decompose_layer(
    method: str, weight: torch.Tensor, bias: torch.Tensor | None, stats: Statistics | None,
    dtype: torch.dtype = torch.float32,
) -> Decomposition:
    """Factor one layer in float64 and store the factors in `dtype`."""
    chosen = check_layer_method(method)
    if isinstance(stats, OutputStatistics) and not chosen.output_statistics:
        raise SfsdError(f"{method} needs the statistics of each layer's inputs, not its outputs: "
                        "collect them with choose_sides(layers, output_side_ok=False)")
    w64 = weight.to(torch.float64)
    b64 = None if bias is None else bias.to(torch.float64)
    s64 = None if stats is None else stats.to(w64.device)
    dec = chosen.fit(w64, b64, s64)
    dec.bias = None if bias is None else bias.detach().clone()
    if dec.mean_shift is not None:
        dec.mean_shift = dec.mean_shift.to(torch.float64)
    return _cast(dec, dtype)
