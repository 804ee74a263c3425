"""The batched one-feature logistic regression against scikit-learn's, problem by problem."""

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression

from cvmf_ray.evidence.logistic import fit, fit_predict


def problems(seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """Loss-like samples (members 1, non-members 0): overlapping, nearly separable, and on another scale."""
    rng = np.random.default_rng(seed)
    draws = [
        (rng.exponential(1.0, 150), rng.exponential(1.5, 150)),
        (rng.exponential(1e-3, 40), rng.exponential(5.0, 40)),
        (rng.normal(5, 3, 300), rng.normal(5.5, 3, 300)),
        (rng.exponential(0.2, 9), rng.exponential(0.3, 9)),  # the forgetting quality's 2 × 9 training models
    ]
    return [(np.r_[a, b], np.r_[np.zeros(len(a)), np.ones(len(b))]) for a, b in draws]


@pytest.mark.parametrize("index", range(4))
def test_coefficients_and_predictions_match_scikit_learn(index):
    x, y = problems()[index]
    reference = LogisticRegression(solver="newton-cholesky", tol=1e-12).fit(x[:, None], y)
    w, b = fit(x[None], y[None])
    assert w[0] == pytest.approx(reference.coef_[0, 0], rel=1e-6, abs=1e-9)
    assert b[0] == pytest.approx(reference.intercept_[0], rel=1e-6, abs=1e-9)
    grid = np.linspace(x.min(), x.max(), 200)  # sklearn's own default solver, as the references call it
    expected = LogisticRegression().fit(x[:, None], y).predict(grid[:, None]) == 1
    assert np.array_equal(fit_predict(x[None], y[None], grid[None])[0], expected)


def test_a_batch_solves_each_problem_as_if_alone():
    rng = np.random.default_rng(1)
    y = np.tile(np.r_[np.zeros(20), np.ones(20)], (5, 1))
    x = rng.exponential(1.0, (5, 40)) * np.array([0.01, 0.1, 1, 10, 30])[:, None] * (1 + y)  # five scales
    w, b = fit(x, y)
    for row in range(5):
        alone = fit(x[row : row + 1], y[row : row + 1])
        assert (w[row], b[row]) == pytest.approx((alone[0][0], alone[1][0]), rel=1e-9, abs=1e-12)


def test_identical_groups_give_the_exact_optimum_zero():
    # the same samples in both groups: by symmetry the minimiser is w = b = 0, so nothing is called a member
    x = np.random.default_rng(2).exponential(1.0, 30)
    w, b = fit(np.r_[x, x][None], np.r_[np.zeros(30), np.ones(30)][None])
    assert abs(w[0]) < 1e-12 and abs(b[0]) < 1e-12
