"""The DoG kernel of METHOD.md: reference values, symmetry, signs, lobes, errors."""

import math

import pytest
import torch

from echos_core import dog_kernel
from echos_core.dog import dog_kernels, max_gamma

# (k, gamma, pixels in centre, centre weight, L2 norm) from METHOD.md
REFERENCE = [
    (3, 0.5, 5, 1.000, 1.118),
    (5, 0.5, 9, 0.415, 0.553),
    (7, 0.3, 5, 0.733, 0.765),
    (7, 0.5, 13, 0.236, 0.409),
    (7, 0.7, 21, 0.112, 0.332),
    (9, 0.5, 21, 0.148, 0.318),
]

VALID = [(k, g) for k in (3, 5, 7, 9, 11, 13) for g in (0.2, 0.35, 0.5, 0.65) if g < max_gamma(k)]


def _centre_mask(k, gamma):
    h = (k - 1) // 2
    x = torch.arange(-h, h + 1, dtype=torch.float64)
    d2 = x[None] ** 2 + x[:, None] ** 2
    return d2 <= (gamma * (k + 1) / 2) ** 2 + 1e-9


@pytest.mark.parametrize("k,gamma,n_centre,centre_w,l2", REFERENCE)
def test_reference_values(k, gamma, n_centre, centre_w, l2):
    w = dog_kernel(k, gamma)
    assert w.shape == (k, k) and w.dtype == torch.float32
    assert int(_centre_mask(k, gamma).sum()) == n_centre
    assert float(w[k // 2, k // 2]) == pytest.approx(centre_w, abs=5e-4)
    assert float(w.norm()) == pytest.approx(l2, abs=5e-4)


@pytest.mark.parametrize("k,gamma", VALID)
def test_symmetry_under_flips_and_rotations(k, gamma):
    w = dog_kernel(k, gamma)
    for t in (w.flip(0), w.flip(1), w.T, torch.rot90(w, 1), torch.rot90(w, 2), torch.rot90(w, 3)):
        assert torch.allclose(t, w, atol=1e-7)


@pytest.mark.parametrize("k,gamma", VALID)
def test_lobes_sum_to_plus_minus_one_and_zero_dc(k, gamma):
    w = dog_kernel(k, gamma).double()
    c = _centre_mask(k, gamma)
    assert float(w[c].sum()) == pytest.approx(1.0, abs=1e-6)
    assert float(w[~c].sum()) == pytest.approx(-1.0, abs=1e-6)
    assert float(w.sum()) == pytest.approx(0.0, abs=1e-6)
    # signs never flip: centre non-negative (boundary pixels ~ 0), surround strictly negative
    assert float(w[c].min()) > -1e-6
    assert float(w[~c].max()) < 0.0


@pytest.mark.parametrize("k,gamma", VALID)
def test_off_is_minus_on_and_centre_sign(k, gamma):
    on, off = dog_kernel(k, gamma, on=True), dog_kernel(k, gamma, on=False)
    assert torch.equal(off, -on)
    assert on[k // 2, k // 2] > 0 > off[k // 2, k // 2]
    assert on[0, 0] < 0 < off[0, 0]  # the corner is always surround


def test_zero_crossing_at_radius_continuous():
    # the unnormalised DoG crosses zero exactly at d = r
    for k, gamma in VALID:
        r = gamma * (k + 1) / 2
        sigma = r / (2 * gamma) * math.sqrt((1 - gamma**2) / (-math.log(gamma)))
        v = gamma**-2 * math.exp(-r**2 / (2 * (gamma * sigma) ** 2)) - math.exp(-r**2 / (2 * sigma**2))
        assert abs(v) < 1e-12


def test_batched_equals_single():
    gammas = torch.tensor([0.2, 0.45, 0.6])
    on = torch.tensor([True, False, True])
    batch = dog_kernels(7, gammas, on)
    for i in range(3):
        assert torch.allclose(batch[i], dog_kernel(7, float(gammas[i]), on=bool(on[i])), atol=1e-7)


def test_oocs_variant_sums_and_differs():
    w = dog_kernel(7, 0.5, normalisation="oocs").double()
    c = _centre_mask(7, 0.5)
    assert float(w[c].sum()) == pytest.approx(1.0, abs=1e-6)
    assert float(w[~c].sum()) == pytest.approx(-1.0, abs=1e-6)
    assert not torch.allclose(w.float(), dog_kernel(7, 0.5))
    assert torch.equal(dog_kernel(7, 0.5, on=False, normalisation="oocs"), -dog_kernel(7, 0.5, normalisation="oocs"))


@pytest.mark.parametrize("kwargs,needle", [
    ({"kernel_size": 4, "gamma": 0.5}, "kernel_size=4: must be odd"),
    ({"kernel_size": 1, "gamma": 0.5}, "kernel_size=1: must be >= 3"),
    ({"kernel_size": -3, "gamma": 0.5}, "kernel_size=-3: must be >= 3"),
    ({"kernel_size": 5.0, "gamma": 0.5}, "kernel_size=5.0: must be an integer"),
    ({"kernel_size": 5, "gamma": 0.0}, "gamma=0.0: must be in the open interval (0, 1)"),
    ({"kernel_size": 5, "gamma": 1.0}, "gamma=1.0: must be in the open interval (0, 1)"),
    ({"kernel_size": 5, "gamma": -0.2}, "gamma=-0.2"),
    ({"kernel_size": 5, "gamma": float("nan")}, "must be a finite number"),
    ({"kernel_size": 3, "gamma": 0.9}, "leaves no surround pixel"),
    ({"kernel_size": 3, "gamma": 0.71}, "leaves no surround pixel"),
    ({"kernel_size": 5, "gamma": 0.5, "normalisation": "l2"}, "normalisation='l2'"),
])
def test_invalid_inputs_raise_one_line(kwargs, needle):
    with pytest.raises(ValueError) as e:
        dog_kernel(**kwargs)
    assert needle in str(e.value)
    assert "\n" not in str(e.value)


def test_max_gamma_boundary():
    # just below the bound works, at the bound it does not
    assert dog_kernel(3, 0.70).shape == (3, 3)
    with pytest.raises(ValueError):
        dog_kernel(3, max_gamma(3))
    assert max_gamma(7) == pytest.approx(math.sqrt(2) * 3 / 4)
