"""Golden triggers: our attacks against the outputs of BackdoorBench's own poisoning code.

The fixtures in ``tests/fixtures/golden_triggers`` were made by running BackdoorBench's functions
(commit and files in PROVENANCE.md there) on 4 fixed CIFAR-10 and 4 fixed GTSRB test images; the
trigger inputs BackdoorBench reads from files (BadNets' patch, Blended's key, LF's pattern, the
WaNet grid, a TrojanNN pattern) are stored beside them. Each test feeds the same images and
trigger inputs to our attack and asserts the uint8 outputs are equal.

Exact everywhere except three documented places, where BackdoorBench's float arithmetic and ours
land on different sides of a truncation boundary (Q8 truncates, as BackdoorBench does): there
one grey level is allowed, and *only* at the pixels where the exact value is an integer (or, for
WaNet, within 1e-3 of one). Everywhere else a single changed grey level fails the test (see
``test_one_pixel_change_is_detected``).

- Blended: BB's key is ToTensor(key) * 255 (k / 255 * 255 in float32, not always k) and the
  blend runs in float64; ours blends the integer key in float32. Where 0.8 x + 0.2 k is an
  integer (4x + k = 0 mod 5), BB's value can fall just below it and truncate one lower.
- SIG: at the zeros of the sine (columns j with 2 j f / W an integer: 8, 16, 24 at W = 32, f = 6)
  BB's float64 sin gives +-1e-14 and ours (float32) +-1e-6 with other signs, so x + v truncates
  to x or x - 1 depending on the sign (BB: x - 1 at column 16, ours at 8 and 24).
- WaNet: BB warps the *normalised* image and denormalises before x255 and truncation; ours warps
  0-255 values. The warped floats agree to 5e-5 grey levels; where the value is an integer
  (flat regions) the two land on either side of it.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from attacks.badnets import BadNets
from attacks.blended import Blended, noise_key
from attacks.bpp import BPP
from attacks.lc import LabelConsistent
from attacks.lf import LowFrequency, gaussian_low_pass
from attacks.sig import SIG
from attacks.trojannn import TrojanNN, square_mask
from attacks.wanet import WaNet, warp_grid

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "golden_triggers"
DATASETS = ("cifar10", "gtsrb")


@cache
def fixture(name: str) -> dict[str, np.ndarray]:
    with np.load(FIXTURES / f"{name}.npz") as data:
        return {k: data[k] for k in data.files}


def batch(hwc: np.ndarray) -> torch.Tensor:
    """N x H x W x C (BackdoorBench's arrays) -> uint8 N x C x H x W (ours)."""
    return torch.from_numpy(np.ascontiguousarray(hwc)).permute(0, 3, 1, 2).contiguous()


def hwc(images: torch.Tensor) -> np.ndarray:
    return images.permute(0, 2, 3, 1).numpy()


def chw(image_hwc: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(image_hwc)).permute(2, 0, 1).contiguous()


def inputs(dataset: str) -> torch.Tensor:
    return batch(fixture("inputs")[dataset])


def mismatches(ours: np.ndarray, expected: np.ndarray, slack: np.ndarray | None) -> np.ndarray:
    """Pixels (N, H, W, C indices) where ``ours`` differs from ``expected``; inside the boolean
    ``slack`` mask a difference of one grey level is not a mismatch."""
    assert ours.shape == expected.shape, (ours.shape, expected.shape)
    assert ours.dtype == expected.dtype == np.uint8, (ours.dtype, expected.dtype)
    diff = np.abs(ours.astype(np.int16) - expected.astype(np.int16))
    bad = diff != 0
    if slack is not None:
        bad &= ~(slack & (diff <= 1))
    return np.argwhere(bad)


def assert_golden(ours: np.ndarray, expected: np.ndarray, slack: np.ndarray | None = None):
    bad = mismatches(ours, expected, slack)
    if len(bad):
        diff = np.abs(ours.astype(np.int16) - expected.astype(np.int16))
        pytest.fail(
            f"{len(bad)} pixels differ from BackdoorBench (max {diff.max()} grey levels), "
            f"first (n, h, w, c): {bad[:5].tolist()}"
        )


# ------------------------------------------------------------------ the cases
# Each returns (ours, BackdoorBench's, slack mask or None), all N x H x W x C uint8.


def case_badnets(ds: str):
    # BB: AddMaskPatchTrigger with resource/badnet/trigger_image.png (3x3 white, bottom-right)
    return hwc(BadNets().apply(inputs(ds))), fixture("badnets")[ds], None


def blend_boundary(ds: str, key_hwc: np.ndarray) -> np.ndarray:
    """Pixels where 0.8 x + 0.2 k is an integer: a truncation boundary (alpha = 1/5)."""
    x = fixture("inputs")[ds].astype(np.int64)
    return (4 * x + key_hwc[None].astype(np.int64)) % 5 == 0


def case_blended_noise(ds: str):
    # BB's blendedImageAttack given our seeded noise key through BB's key transform
    key = fixture("blended")["noise_key"]
    ours = hwc(Blended().apply(inputs(ds)))
    return ours, fixture("blended")[f"{ds}_noise"], blend_boundary(ds, key)


def case_blended_kitty(ds: str):
    # BB's own key (resource/blended/hello_kitty.jpeg resized to 32 x 32 by BB's transform),
    # given to our blend in place of the noise key
    key = fixture("blended")["kitty_key"]
    attack = Blended()
    attack.key = lambda shape, device: chw(key).to(device)
    ours = hwc(attack.apply(inputs(ds)))
    return ours, fixture("blended")[f"{ds}_kitty"], blend_boundary(ds, key)


def case_sig(ds: str):
    ours = hwc(SIG().apply(inputs(ds)))
    expected = fixture("sig")[ds]
    w = expected.shape[2]
    f = SIG().params.frequency
    zero_columns = np.array([(2 * j * f) % w == 0 for j in range(w)])  # sin(2 pi j f / W) = 0
    slack = np.broadcast_to(zero_columns[None, None, :, None], expected.shape)
    return ours, expected, slack


def case_lc(ds: str):
    # BB's labelConsistentAttack("all-corners", reduced_amplitude=1).poison_from_indices on the
    # unperturbed images (its test-time transform)
    return hwc(LabelConsistent().apply_test(inputs(ds))), fixture("lc")[ds], None


def case_lf(ds: str):
    # BB's SimpleAdditiveTrigger with its own resource/lowFrequency/<ds>_preactresnet18_0_255.npy
    attack = LowFrequency()
    attack.pattern = chw(fixture("lf")[f"{ds}_pattern"])
    return hwc(attack.apply(inputs(ds))), fixture("lf")[ds], None


def case_trojannn(ds: str):
    # BB's TrojanTrigger: (pattern + x).astype(uint8), wrapping modulo 256
    attack = TrojanNN(application="add_wrap")
    attack.pattern = chw(fixture("trojannn")["pattern"])[None]
    attack.mask = square_mask(32, 10, 2)  # unused by add_wrap (the pattern is zero outside)
    return hwc(attack.apply(inputs(ds))), fixture("trojannn")[ds], None


def case_wanet(ds: str):
    bb_float = fixture("wanet")[f"{ds}_float"]
    slack = np.abs(bb_float - np.round(bb_float)) < 1e-3
    return hwc(WaNet(grid_seed=0).apply(inputs(ds))), fixture("wanet")[ds], slack


def case_bpp(ds: str):
    # squeeze_num 8, no dithering (BackdoorBench's defaults)
    return hwc(BPP().apply(inputs(ds))), fixture("bpp")[ds], None


CASES = {
    "badnets": case_badnets,
    "blended_noise": case_blended_noise,
    "blended_kitty": case_blended_kitty,
    "sig": case_sig,
    "lc": case_lc,
    "lf": case_lf,
    "trojannn": case_trojannn,
    "wanet": case_wanet,
    "bpp": case_bpp,
}
EXACT = {"badnets", "lc", "lf", "trojannn", "bpp"}
PARAMS = [pytest.param(name, ds, id=f"{name}-{ds}") for name in CASES for ds in DATASETS]


@pytest.mark.parametrize(("name", "ds"), PARAMS)
def test_trigger_matches_backdoorbench(name: str, ds: str):
    ours, expected, slack = CASES[name](ds)
    assert (slack is None) == (name in EXACT)
    assert_golden(ours, expected, slack)
    # the attack changed the images at all (a golden of a no-op would prove nothing)
    assert not np.array_equal(expected, fixture("inputs")[ds])


@pytest.mark.parametrize(("name", "ds"), PARAMS)
def test_one_pixel_change_is_detected(name: str, ds: str):
    ours, expected, slack = CASES[name](ds)
    assert len(mismatches(ours, expected, slack)) == 0
    strict = np.ones(expected.shape, bool) if slack is None else ~slack
    # one grey level at one pixel where no slack is allowed (past the middle, so inside the
    # image rather than at the first corner)
    flat = np.flatnonzero(strict.ravel())
    pixel = np.unravel_index(flat[len(flat) // 2], expected.shape)
    changed = expected.copy()
    changed[pixel] = changed[pixel] + 1 if changed[pixel] < 255 else 254
    assert len(mismatches(ours, changed, slack)) == 1
    if slack is not None:
        # inside the slack, two grey levels are still a mismatch
        pixel = np.unravel_index(np.flatnonzero(slack.ravel())[0], expected.shape)
        changed = expected.copy()
        changed[pixel] = changed[pixel] + 2 if changed[pixel] < 254 else changed[pixel] - 2
        assert len(mismatches(ours, changed, slack)) >= 1


def test_slack_is_used_sparingly():
    """The one-grey-level allowance covers only a minority of pixels in every tolerant case."""
    for name in set(CASES) - EXACT:
        for ds in DATASETS:
            slack = CASES[name](ds)[2]
            assert slack.mean() < 0.3, (name, ds, slack.mean())


# ------------------------------------------------------------------ trigger inputs


def test_blended_noise_key_is_the_one_in_the_fixture():
    assert np.array_equal(hwc(noise_key((3, 32, 32), 0)[None])[0], fixture("blended")["noise_key"])


def test_wanet_grid_is_backdoorbenchs_grid_for_the_same_seed():
    # BB: torch.manual_seed(0); ins = torch.rand(1, 2, k, k) * 2 - 1 ... (attack/wanet.py:237-249,
    # 287-288); ours draws from a Generator seeded with grid_seed, the same stream on the CPU
    bb_grid = torch.from_numpy(fixture("wanet")["grid"])
    assert torch.equal(warp_grid(32, 4, 0.5, 1.0, 0), bb_grid)
    assert torch.equal(WaNet(grid_seed=0).grid(32, torch.device("cpu")), bb_grid)


@pytest.mark.parametrize("ds", DATASETS)
def test_wanet_warped_floats_match_before_truncation(ds: str):
    ours = hwc(WaNet(grid_seed=0).trigger(inputs(ds).float()))
    np.testing.assert_allclose(ours, fixture("wanet")[f"{ds}_float"], rtol=0, atol=1e-3)


def test_trojannn_pattern_conversion_matches_backdoorbench(monkeypatch):
    """fit()'s float trigger -> uint8 pattern (x255, truncation) equals BB's ToPILImage path
    (attack/trojannn.py:219-228) on the same float trigger; surrogate and PGD are stubbed."""
    import attacks.trojannn as trojannn

    mask_image = torch.from_numpy(fixture("trojannn")["mask_image"])[None]
    linear = torch.nn.Linear(4, 10)
    monkeypatch.setattr(trojannn, "clean_surrogate", lambda ctx: torch.nn.Sequential(linear))
    monkeypatch.setattr(trojannn, "final_linear", lambda model: linear)
    monkeypatch.setattr(trojannn, "optimise_trigger", lambda *a, **k: (mask_image.clone(), 0.0))
    ctx = SimpleNamespace(
        images=torch.zeros(1, 3, 32, 32, dtype=torch.uint8),
        device=torch.device("cpu"),
        artifact=lambda kind, params, build: build(),
    )
    attack = TrojanNN(application="add_wrap")
    attack.fit(ctx)
    assert attack.pattern.dtype == torch.uint8
    assert np.array_equal(hwc(attack.pattern)[0], fixture("trojannn")["pattern"])


@pytest.mark.xfail(
    strict=True,
    reason="LF low-pass kernel centred at 14 (attacks/lf.py:30), BackdoorBench's gauss_smooth "
    "at 14.5 ((kernel_size - 1) / 2, resource/lowFrequency/gauss_smooth.py:24) with the same "
    "(14, 15) zero padding: a half-pixel shift of every blur, max |diff| 0.006 on a U(-1, 1) "
    "input whose blur peaks at 0.057",
)
def test_lf_low_pass_matches_backdoorbench_gauss_smooth():
    lf = fixture("lf")
    v = chw(lf["lowpass_input"][0])
    ours = gaussian_low_pass(v).permute(1, 2, 0).numpy()
    np.testing.assert_allclose(ours, lf["lowpass_output"][0], rtol=0, atol=1e-6)


def test_fixtures_are_small_and_documented():
    files = list(FIXTURES.glob("*.npz"))
    assert len(files) == 9
    assert sum(f.stat().st_size for f in files) < 2 * 1024 * 1024
    provenance = (FIXTURES / "PROVENANCE.md").read_text()
    assert "f02e3534645f0ee63d6848653062cd6c0d6c400d" in provenance
