"""The anchored (error-correcting) feature-space fit: a rank-r affine layer from the compressed model's inputs
to the original model's outputs.

Open loop, `feature` fits y = W x + b0 on the original model's inputs x. In a compressed model the layer reads
x' instead (earlier layers are approximations). The anchored fit chooses the rank-r A and the bias c that
minimise E || (W x + b0) - (A x' + c) ||^2 over paired calibration tokens (`sfsd.calibration.paired`):

- for any A the best c is the difference of the means: c = b0 + W x_bar - A x'_bar, which leaves the centred
  problem min E || W (x - x_bar) - A (x' - x'_bar) ||^2;
- without the rank limit that is least squares, A = W* = W Cov(x, x') Cov(x')^-1;
- with rank r it is reduced-rank regression (Izenman 1975, "Reduced-rank regression for the multivariate
  linear model", J. Multivariate Anal. 5; Reinsel & Velu 1998, Thm 2.2 with identity weight): the error splits
  into the least-squares residual plus E || (W* - A)(x' - x'_bar) ||^2, which is minimised by A = V_r V_r^T W*,
  V_r the top eigenvectors of W* Cov(x') W*^T (the covariance of the fitted outputs).

So first = V_r^T W*, second = V_r and b = b0 + W x_bar - V_r V_r^T W* x'_bar, which is a `Decomposition` with
bias b0 + W x_bar - W* x'_bar and mean_shift W* x'_bar (b = bias + (I - V_r V_r^T) mean_shift). With x' = x,
W* = W and this is `feature` (Eq. 4-5) exactly.

Stability: the plain regression over-fits where Cov(x') is poorly conditioned (few tokens for the input width,
the near-empty directions of normalised residual streams) and its errors compound over blocks. The solve is a
ridge toward W, not toward zero: W*(lambda) = (W Cov(x, x') + lambda W)(Cov(x') + lambda I)^-1, lambda = `ridge`
times the mean eigenvalue of Cov(x'); ridge -> infinity gives W (closed-loop `feature` with the anchored bias).
"""

from __future__ import annotations

import torch

from sfsd.calibration.paired import PairedStatistics
from sfsd.decompose.methods import Decomposition, _cast, feature_space

# lambda = ANCHOR_RIDGE * mean eigenvalue of Cov(x') (see the module docstring and docs/results.md, issue 25)
ANCHOR_RIDGE = 1.0


def anchored_map(weight: torch.Tensor, paired: PairedStatistics, ridge: float | None = None) -> torch.Tensor:
    """W*(lambda) = (W Cov(x, x') + lambda W)(Cov(x') + lambda I)^-1 in float64 (lambda relative: see above;
    `ridge` None: ANCHOR_RIDGE)."""
    ridge = ANCHOR_RIDGE if ridge is None else ridge
    w = weight.to(torch.float64)
    cov = paired.covariance_xp.to(w.device)
    cross = paired.cross_covariance.to(w.device)
    lam = ridge * float(cov.diagonal().mean().clamp(min=0))
    system = cov + lam * torch.eye(cov.shape[0], dtype=cov.dtype, device=cov.device)
    rhs = cross.T @ w.T + lam * w.T  # (Cov(x') + lam I) W*^T = Cov(x', x) W^T + lam W^T
    solution = torch.linalg.lstsq(system, rhs).solution if lam == 0 else torch.linalg.solve(system, rhs)
    return solution.T


def anchored_feature(weight: torch.Tensor, bias: torch.Tensor | None, paired: PairedStatistics,
                     ridge: float | None = None, dtype: torch.dtype | None = None) -> Decomposition:
    """The anchored fit of one layer (float64 maths; factors stored in `dtype`, default the weight's)."""
    dtype = dtype or weight.dtype
    paired = paired.to(weight.device)
    w = weight.to(torch.float64)
    target = anchored_map(w, paired, ridge)
    dec = feature_space(target, None, paired.compressed_side(), name="feature-anchored")
    constant = w @ paired.mean_x - target @ paired.mean_xp
    dec.bias = constant if bias is None else bias.to(torch.float64) + constant
    dec.mean_shift = dec.mean_shift.to(torch.float64)
    return _cast(dec, dtype)
