"""One-feature logistic regression, many independent problems at once.

The loss attacks fit scikit-learn's `LogisticRegression()` on a single number per sample, over and over:
the simple MIA 10 folds per draw, the forgetting quality 2 folds per forget example (12,000 fits for a
Fashion-MNIST class). Each sklearn fit costs ~1 ms of input checking around microseconds of arithmetic, so
the attacks cost more than the rest of the evaluation. This solves the same problem, sklearn's objective
C · Σ log(1 + exp(−ỹ(w·x + b))) + w²/2 (L2 on w, intercept unpenalised, C = 1), for a whole batch of
problems with one vectorised Newton iteration (damped where a full step would not lower the objective).
`tests/test_evidence_logistic.py` holds it to sklearn's coefficients and predictions.
"""

from __future__ import annotations

import numpy as np
from scipy.special import expit

MAX_ITERATIONS, TOLERANCE = 100, 1e-12  # relative decrease below which a problem is solved


def fit_predict(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, c: float = 1.0) -> np.ndarray:
    """Fit one model per row of `train_x`/`train_y` ((B, n), labels 0/1) and predict the same row of
    `test_x` ((B, m)): True where w·x + b > 0, sklearn's `predict` == 1."""
    w, b = fit(train_x, train_y, c)
    return w[:, None] * test_x + b[:, None] > 0


def fit(x: np.ndarray, y: np.ndarray, c: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """(w, b) per row of x, y: the minimiser of sklearn's objective (module docstring)."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    w, b = np.zeros(len(x)), np.zeros(len(x))
    active = np.arange(len(x))  # the problems not yet converged
    for _ in range(MAX_ITERATIONS):
        xa, ya, wa, ba = x[active], y[active], w[active], b[active]
        p = expit(wa[:, None] * xa + ba[:, None])
        residual, curvature = c * (p - ya), c * p * (1 - p)
        grad_w, grad_b = (residual * xa).sum(1) + wa, residual.sum(1)
        h_ww, h_wb, h_bb = (curvature * xa * xa).sum(1) + 1, (curvature * xa).sum(1), curvature.sum(1)
        det = np.maximum(h_ww * h_bb - h_wb**2, np.finfo(float).tiny)
        step_w, step_b = (h_bb * grad_w - h_wb * grad_b) / det, (h_ww * grad_b - h_wb * grad_w) / det
        value = _objective(wa, ba, xa, ya, c)
        # Newton decrement²: twice the decrease the step promises. Once that is within rounding of the
        # objective, the full step lands on the optimum (quadratic convergence): take it and stop there.
        done = grad_w * step_w + grad_b * step_b <= TOLERANCE * (1 + value)
        w[active[done]], b[active[done]] = wa[done] - step_w[done], ba[done] - step_b[done]
        moving = ~done
        if not moving.any():
            break
        active, xa, ya, wa, ba = active[moving], xa[moving], ya[moving], wa[moving], ba[moving]
        step_w, step_b, value = step_w[moving], step_b[moving], value[moving]
        scale = np.ones(len(active))
        for _ in range(50):  # halve the step where it would not lower the objective (NaN counts as higher)
            higher = ~(_objective(wa - scale * step_w, ba - scale * step_b, xa, ya, c) <= value)
            if not higher.any():
                break
            scale = np.where(higher, scale / 2, scale)
        w[active], b[active] = wa - scale * step_w, ba - scale * step_b
    return w, b


def _objective(w: np.ndarray, b: np.ndarray, x: np.ndarray, y: np.ndarray, c: float) -> np.ndarray:
    margin = (2 * y - 1) * (w[:, None] * x + b[:, None])
    return c * np.logaddexp(0, -margin).sum(1) + w**2 / 2
