"""The Bernoulli-mixture EM (models/bernoulli_mixture.py) against the handout's formulas.

Expected values come from hand computations, plain-Python loops over i, k, d (math.log/exp), an
independent numpy log-likelihood, or properties (EM's monotonicity, recovery of a known mixture); never
from the code under test.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
import pytest
import torch
from scipy.optimize import linear_sum_assignment
from scipy.special import logsumexp

from models.mixture.em import (
    BernoulliMixtureEM,
    binarize,
    classifier_errors,
    e_step,
    m_step,
    parameter_count,
)
from tests.numerics import assert_same_em_records, em_tol

EPS = 1e-6


# -- fixtures and independent references ---------------------------------------------------------------------
@lru_cache(maxsize=1)
def digits_binary() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The handout's 50/50 split of the digits, pixels >= 8 -> 1: x (898, 64), y, x_test (899, 64), y_test."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    order = np.random.default_rng(0).permutation(1797)
    train, test = order[:898], order[898:]
    x = (bunch.data >= 8).astype(np.float64)
    return x[train], bunch.target[train], x[test], bunch.target[test]


def synthetic(n: int = 3000, seed: int = 123) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """n images from a known 3-component mixture on {0,1}^20: (x (n, 20), p_true (3, 20), pi_true (3,)).

    Means are drawn from [0.05, 0.15] or [0.85, 0.95] (distinct components, small sampling variance), so
    the maximum-likelihood estimate of every p_kd is within ~0.04 of the truth at these sample sizes.
    """
    rng = np.random.default_rng(seed)
    pi_true = np.array([0.4, 0.35, 0.25])
    p_true = np.where(rng.random((3, 20)) < 0.5, rng.uniform(0.05, 0.15, (3, 20)), rng.uniform(0.85, 0.95, (3, 20)))
    z = rng.choice(3, size=n, p=pi_true)
    x = (rng.random((n, 20)) < p_true[z]).astype(np.float64)
    return x, p_true, pi_true


def numpy_loglik(x: np.ndarray, p: np.ndarray, pi: np.ndarray) -> np.ndarray:
    """Mean log-likelihood per image for each member: x (n, D), p (S, K, D), pi (S, K) -> (S,), nats."""
    out = []
    for ps, pis in zip(p, pi, strict=True):
        with np.errstate(divide="ignore"):
            joint = x @ np.log(ps).T + (1 - x) @ np.log(1 - ps).T + np.log(pis)
        out.append(logsumexp(joint, axis=1).mean())
    return np.array(out)


def loop_e_step(x, p, pi):
    """The handout's E-step, one number at a time: returns eta[i][k] and loglik[i] as Python floats."""
    n, K, D = len(x), len(pi), len(x[0])
    eta, loglik = [], []
    for i in range(n):
        joint = []
        for k in range(K):
            log_px = 0.0
            for d in range(D):
                log_px += x[i][d] * math.log(p[k][d]) + (1 - x[i][d]) * math.log(1 - p[k][d])
            joint.append(math.log(pi[k]) + log_px)
        top = max(joint)
        lse = top + math.log(sum(math.exp(a - top) for a in joint))
        loglik.append(lse)
        eta.append([math.exp(a - lse) for a in joint])
    return eta, loglik


def loop_m_step(x, eta, eps):
    """The handout's M-step, one number at a time, then p clamped to [eps, 1 - eps]."""
    n, K, D = len(x), len(eta[0]), len(x[0])
    N = [sum(eta[i][k] for i in range(n)) for k in range(K)]
    p = [[min(max(sum(eta[i][k] * x[i][d] for i in range(n)) / N[k], eps), 1 - eps) for d in range(D)]
         for k in range(K)]
    return p, [N[k] / n for k in range(K)]


def t(a) -> torch.Tensor:
    return torch.as_tensor(np.asarray(a, dtype=np.float64))


# -- EM's defining property ------------------------------------------------------------------------------------
def assert_monotone(x: np.ndarray, K: int, seeds: list[int], iterations: int) -> None:
    em = BernoulliMixtureEM(K, seeds, t(x))
    previous = numpy_loglik(x, em.p.numpy(), em.pi.numpy())
    for it in range(iterations):
        reported = em.step().numpy()
        # step() reports the log-likelihood of the parameters it started from
        np.testing.assert_allclose(reported, previous, rtol=0, atol=1e-10)
        current = numpy_loglik(x, em.p.numpy(), em.pi.numpy())
        drops = previous - current
        assert (drops <= 1e-9).all(), f"log-likelihood fell at iteration {it + 1}: {drops} (seeds {seeds})"
        previous = current


@pytest.mark.parametrize("K", [2, 10, 40])
def test_em_never_decreases_training_loglik_on_digits(K):
    x, _, _, _ = digits_binary()
    assert_monotone(x, K, seeds=[0, 1, 2], iterations=40)


def test_em_never_decreases_training_loglik_on_synthetic_data():
    x, _, _ = synthetic()
    # K = 8 > 3 true components: redundant components shrink, a stress case for monotonicity
    assert_monotone(x, 8, seeds=[0, 1, 2, 3, 4], iterations=60)


def test_em_recovers_a_known_three_component_mixture():
    x, p_true, pi_true = synthetic()
    em = BernoulliMixtureEM(3, [0, 1, 2, 3, 4], t(x))
    for _ in range(200):
        em.step()
    recovered = 0
    for p, pi in zip(em.p.numpy(), em.pi.numpy(), strict=True):
        cost = np.abs(p[:, None, :] - p_true[None, :, :]).sum(axis=2)  # (estimated, true)
        rows, cols = linear_sum_assignment(cost)
        p_err = np.abs(p[rows] - p_true[cols]).max()
        pi_err = np.abs(pi[rows] - pi_true[cols]).max()
        recovered += p_err <= 0.05 and pi_err <= 0.05
    assert recovered >= 4


# -- the formulas, number by number ----------------------------------------------------------------------------
TINY_X = [[1, 0, 1, 1], [0, 0, 1, 1], [1, 1, 1, 1], [0, 0, 0, 1], [1, 0, 1, 1], [0, 1, 0, 1]]  # last pixel all 1


def tiny_params():
    """Two members (S = 2) of K = 2 components on D = 4, distinct numbers per member."""
    p = [[[0.2, 0.7, 0.4, 0.9], [0.6, 0.3, 0.8, 0.5]], [[0.55, 0.35, 0.65, 0.25], [0.15, 0.85, 0.45, 0.75]]]
    pi = [[0.3, 0.7], [0.6, 0.4]]
    return p, pi


def test_one_e_step_and_m_step_equal_the_loop_by_loop_formulas():
    p, pi = tiny_params()
    eta, loglik = e_step(t(TINY_X), t(p), t(pi))
    p_new, pi_new = m_step(t(TINY_X), eta, t(p), EPS)
    for s in range(2):
        ref_eta, ref_loglik = loop_e_step(TINY_X, p[s], pi[s])
        np.testing.assert_allclose(eta[s].numpy(), ref_eta, rtol=0, atol=1e-12)
        np.testing.assert_allclose(loglik[s].numpy(), ref_loglik, rtol=0, atol=1e-12)
        ref_p, ref_pi = loop_m_step(TINY_X, ref_eta, EPS)
        np.testing.assert_allclose(p_new[s].numpy(), ref_p, rtol=0, atol=1e-12)
        np.testing.assert_allclose(pi_new[s].numpy(), ref_pi, rtol=0, atol=1e-12)
    # the last pixel is 1 in every image: the closed form gives 1, clamped to 1 - eps
    assert (p_new[:, :, 3] == 1 - EPS).all()


def test_per_image_loglik_matches_the_term_by_term_form_where_most_p_sit_at_a_bound():
    # K = 80 on the digits: after 50 iterations most p_kd are clamped to eps or 1 - eps, the worst case for
    # the cancellation in the E-step's x (log p - log(1 - p)) + log(1 - p) form
    x, _, x_test, _ = digits_binary()
    em = BernoulliMixtureEM(80, [0], t(x))
    for _ in range(50):
        em.step()
    p, pi = em.p[0].numpy(), em.pi[0].numpy()
    assert ((p <= EPS) | (p >= 1 - EPS)).mean() > 0.5
    for images in (x, x_test):
        with np.errstate(divide="ignore"):
            joint = images @ np.log(p).T + (1 - images) @ np.log(1 - p).T + np.log(pi)
        _, loglik = e_step(t(images), em.p, em.pi)
        np.testing.assert_allclose(loglik[0].numpy(), logsumexp(joint, axis=1), rtol=0, atol=1e-12)


def test_class_starts_from_its_seed_and_steps_like_the_loops():
    em = BernoulliMixtureEM(2, [3], t(TINY_X))
    p0 = np.random.default_rng(3).uniform(0.25, 0.75, (2, 4))  # the documented init convention
    np.testing.assert_array_equal(em.p[0].numpy(), p0)
    np.testing.assert_array_equal(em.pi[0].numpy(), [0.5, 0.5])
    ref_eta, _ = loop_e_step(TINY_X, p0.tolist(), [0.5, 0.5])
    ref_p, ref_pi = loop_m_step(TINY_X, ref_eta, EPS)
    em.step()
    np.testing.assert_allclose(em.p[0].numpy(), ref_p, rtol=0, atol=1e-12)
    np.testing.assert_allclose(em.pi[0].numpy(), ref_pi, rtol=0, atol=1e-12)
    assert em.iteration == 1


def test_binarize_is_pixel_at_least_threshold():
    x = binarize(np.array([[0, 7, 8, 16], [3, 9, 12, 1]]))
    assert x.dtype == torch.float64
    assert x.tolist() == [[0, 0, 1, 1], [0, 1, 1, 0]]
    assert binarize(torch.tensor([1, 2, 3]), threshold=2).tolist() == [0, 1, 1]


def test_parameter_count_by_hand():
    assert parameter_count(1, 64) == 64
    assert parameter_count(80) == 80 * 64 + 79 == 5199
    assert BernoulliMixtureEM.parameter_count(3, 20) == 62


# -- packing -----------------------------------------------------------------------------------------------------
def test_packed_seeds_equal_the_same_seeds_run_alone():
    x, y, x_test, y_test = digits_binary()
    packed = BernoulliMixtureEM(10, [0, 1, 2], t(x))
    alone = [BernoulliMixtureEM(10, [s], t(x)) for s in (0, 1, 2)]
    for _ in range(20):
        packed.step()
        for em in alone:
            em.step()
    records = packed.evaluate(t(x), torch.as_tensor(y), t(x_test), torch.as_tensor(y_test))
    for i, em in enumerate(alone):
        np.testing.assert_allclose(packed.p[i].numpy(), em.p[0].numpy(), rtol=0, atol=em_tol(20))
        np.testing.assert_allclose(packed.pi[i].numpy(), em.pi[0].numpy(), rtol=0, atol=em_tol(20))
        (single,) = em.evaluate(t(x), torch.as_tensor(y), t(x_test), torch.as_tensor(y_test))
        assert records[i]["seed"] == single["seed"] == i
        assert_same_em_records(records[i], single, len(x), len(x_test), 20)


# -- underflow and eps -------------------------------------------------------------------------------------------
def test_a_component_with_no_responsibility_gets_pi_zero_and_no_nan():
    x = np.zeros((5, 64))
    x[:, 0] = [1, 0, 1, 0, 1]
    em = BernoulliMixtureEM(2, [0], t(x))
    # component 1 says "every pixel on": each image is 63+ pixels off, log P <= 63 log(1e-6) ~ -870, so its
    # responsibility exp(-870 + ...) underflows to exactly 0 in float64 (smallest positive ~ exp(-745))
    em.p = torch.stack([torch.full((64,), 0.3), torch.full((64,), 1 - EPS)]).to(torch.float64).unsqueeze(0)
    stale = em.p[0, 1].clone()
    before = numpy_loglik(x, em.p.numpy(), em.pi.numpy())[0]
    em.step()
    assert em.pi[0, 1].item() == 0.0
    assert torch.equal(em.p[0, 1], stale)  # kept, not 0/0
    for _ in range(3):  # the next E-steps see log pi = -inf
        em.step()
        assert torch.isfinite(em.p).all() and not torch.isnan(em.pi).any()
    eta, loglik = e_step(em.x_train, em.p, em.pi)
    assert not torch.isnan(eta).any() and torch.isfinite(loglik).all()
    assert (eta[0, :, 1] == 0).all()
    # the surviving component is the (clamped) pixel means
    np.testing.assert_allclose(em.pi[0].numpy(), [1.0, 0.0], rtol=0, atol=0)
    assert em.p[0, 0, 0].item() == pytest.approx(0.6, abs=1e-15)
    assert em.p[0, 0, 1].item() == EPS
    (record,) = em.evaluate(t(x), torch.zeros(5, dtype=torch.int64), t(x), torch.zeros(5, dtype=torch.int64))
    assert all(math.isfinite(v) for v in record.values())
    assert record["train_loglik"] > before


def test_test_loglik_is_finite_on_a_pixel_every_training_image_agrees_on():
    # K = 1: one M-step gives the clamped pixel means p = [eps, 0.5] (pixel 0 is off in every training image)
    x_train = [[0, 0], [0, 1], [0, 1], [0, 0]]
    x_test = [[1, 1]]
    em = BernoulliMixtureEM(1, [7], t(x_train))
    em.step()
    np.testing.assert_allclose(em.p[0, 0].numpy(), [EPS, 0.5], rtol=0, atol=1e-15)
    y = torch.tensor([0, 0, 0, 0])
    (record,) = em.evaluate(t(x_train), y, t(x_test), torch.tensor([0]))
    assert record["test_loglik"] == pytest.approx(math.log(EPS) + math.log(0.5), abs=1e-12)
    assert record["train_loglik"] == pytest.approx(math.log(1 - EPS) + math.log(0.5), abs=1e-12)
    assert record["loglik_gap"] == pytest.approx(math.log(1 - EPS) - math.log(EPS), abs=1e-12)
    # bic = -2 * (4 images * (log(1 - eps) + log 0.5)) + (1*2 + 1 - 1) * ln 4
    expected_bic = -8 * (math.log(1 - EPS) + math.log(0.5)) + 2 * math.log(4)
    assert record["bic"] == pytest.approx(expected_bic, abs=1e-12)


# -- the mixture as a classifier, and bic ------------------------------------------------------------------------
def test_classifier_errors_by_hand():
    # 5 training images, K = 3 components, labels 0..2; dyadic numbers so the sums (and ties) are exact
    eta_train = t([[[0.75, 0.25, 0.0],
                    [0.5, 0.0, 0.5],
                    [0.25, 0.75, 0.0],
                    [0.25, 0.25, 0.5],
                    [0.0, 0.5, 0.5]]])
    y_train = torch.tensor([0, 1, 1, 2, 2])
    # label mass per component: k0: y0 0.75, y1 0.75, y2 0.25 -> tie 0/1 -> 0; k1: y0 0.25, y1 0.75, y2 0.75 ->
    # tie 1/2 -> 1; k2: y0 0, y1 0.5, y2 1.0 -> 2. Most responsible: 0, 0 (tie -> first), 1, 2, 1 (tie) ->
    # predicted 0, 0, 1, 2, 1 against 0, 1, 1, 2, 2: 2 mistakes of 5.
    assert classifier_errors(eta_train, y_train, eta_train, y_train).tolist() == [0.4]
    eta_test = t([[[0.25, 0.5, 0.25], [0.5, 0.5, 0.0], [0.0, 0.25, 0.75]]])  # argmax: 1, 0 (tie -> first), 2
    # predicted 1, 0, 2 against 1, 1, 2: one mistake of 3
    assert classifier_errors(eta_train, y_train, eta_test, torch.tensor([1, 1, 2])).tolist() == [1 / 3]


def test_evaluate_errors_and_bic_on_a_hand_set_two_component_mixture():
    # D = 3. Component 0 ~ "pixels off", component 1 ~ "pixels on" with p in {0.1, 0.9}: every image here has
    # one component clearly more responsible.
    x_train = [[0, 0, 0], [0, 0, 1], [1, 1, 1], [1, 1, 0], [0, 0, 0]]
    y_train = torch.tensor([3, 3, 5, 5, 5])
    x_test = [[1, 1, 1], [0, 0, 0], [0, 1, 1]]
    y_test = torch.tensor([3, 3, 5])
    em = BernoulliMixtureEM(2, [0], t(x_train))
    em.p = t([[[0.1, 0.1, 0.1], [0.9, 0.9, 0.9]]])
    em.pi = t([[0.5, 0.5]])
    (r,) = em.evaluate(t(x_train), y_train, t(x_test), y_test)
    # log P(x | k) per image: a pixel that agrees with the component contributes log 0.9, one that disagrees
    # log 0.1. Images with 0/1 pixels on -> component 0 (labels 3, 3, 5 -> mass: 3 from two images, 5 from
    # one); images with 2/3 on -> component 1 (labels 5, 5). Component 0 -> label 3, component 1 -> label 5.
    # Train: predicted 3, 3, 5, 5, 3 vs 3, 3, 5, 5, 5 -> 1/5. Test: predicted 5, 3, 5 vs 3, 3, 5 -> 1/3.
    # (The mass sums use eta, not hard counts; eta here is >= 0.9 for the winning component, so the majority
    # is the same.)
    assert r["train_error"] == pytest.approx(0.2, abs=0)
    assert r["test_error"] == pytest.approx(1 / 3, abs=1e-15)
    a, b = math.log(0.9), math.log(0.1)

    def image_ll(on: int) -> float:  # log(0.5 * 0.1^on 0.9^(3-on) + 0.5 * 0.9^on 0.1^(3-on))
        return math.log(0.5 * math.exp(on * b + (3 - on) * a) + 0.5 * math.exp(on * a + (3 - on) * b))

    total = sum(image_ll(on) for on in (0, 1, 3, 2, 0))
    assert r["train_loglik"] == pytest.approx(total / 5, abs=1e-12)
    assert r["bic"] == pytest.approx(-2 * total + (2 * 3 + 1) * math.log(5), abs=1e-12)
    test_mean = sum(image_ll(on) for on in (3, 0, 2)) / 3
    assert r["test_loglik"] == pytest.approx(test_mean, abs=1e-12)
    assert r["loglik_gap"] == pytest.approx(total / 5 - test_mean, abs=1e-12)


# -- checkpoints -------------------------------------------------------------------------------------------------
def test_state_dict_resumes_bit_for_bit_and_refuses_other_runs():
    x, _, _, _ = digits_binary()
    straight = BernoulliMixtureEM(5, [0, 4], t(x))
    for _ in range(10):
        straight.step()
    state = straight.state_dict()
    for _ in range(10):
        straight.step()
    resumed = BernoulliMixtureEM(5, [0, 4], t(x))
    resumed.load_state_dict(state)
    assert resumed.iteration == 10
    for _ in range(10):
        resumed.step()
    assert torch.equal(resumed.p, straight.p) and torch.equal(resumed.pi, straight.pi)
    for other in (BernoulliMixtureEM(6, [0, 4], t(x)), BernoulliMixtureEM(5, [0, 5], t(x)),
                  BernoulliMixtureEM(5, [0, 4], t(x[:500])), BernoulliMixtureEM(5, [0, 4], t(x), eps=1e-3)):
        with pytest.raises(ValueError, match="another configuration"):
            other.load_state_dict(state)


def test_export_describes_one_member():
    em = BernoulliMixtureEM(2, [4, 9], t(TINY_X))
    em.step()
    out = em.export(9)
    assert out["family"] == "bernoulli_mixture" and out["K"] == 2 and out["seed"] == 9 and out["iteration"] == 1
    assert torch.equal(out["p"], em.p[1]) and torch.equal(out["pi"], em.pi[1])
    with pytest.raises(ValueError, match="not one of"):
        em.export(3)


# -- validation ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"K": 0}, "K .* integer >= 1"),
        ({"K": -2}, "K .* integer >= 1"),
        ({"K": 2.5}, "K .* integer >= 1"),
        ({"K": True}, "K .* integer >= 1"),
        ({"K": 7}, "more than the 6 training images"),
        ({"eps": 0.0}, r"eps .* \(0, 0.5\)"),
        ({"eps": 0.5}, r"eps .* \(0, 0.5\)"),
        ({"eps": -1e-3}, r"eps .* \(0, 0.5\)"),
        ({"seeds": []}, "at least one seed"),
        ({"seeds": [0, -1]}, "non-negative integer"),
        ({"x_train": t([[0, 0.5, 1, 1]])}, "only 0 and 1"),
        ({"x_train": t([0, 1, 1])}, "2-D"),
    ],
)
def test_bad_parameters_raise_clear_value_errors(kwargs, message):
    args = {"K": 2, "seeds": [0], "x_train": t(TINY_X), **kwargs}
    with pytest.raises(ValueError, match=message):
        BernoulliMixtureEM(args.pop("K"), args.pop("seeds"), args.pop("x_train"), **args)


@pytest.mark.parametrize("threshold", [0, 17])
def test_binarize_refuses_a_threshold_outside_1_to_16(threshold):
    with pytest.raises(ValueError, match="1..16"):
        binarize(np.zeros(3), threshold=threshold)


def test_evaluate_refuses_images_of_another_width():
    em = BernoulliMixtureEM(2, [0], t(TINY_X))
    with pytest.raises(ValueError, match="D = 4"):
        em.evaluate(t(TINY_X), torch.zeros(6, dtype=torch.int64), t([[0, 1, 1]]), torch.tensor([0]))
