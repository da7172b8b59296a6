"""The adapter: channels, size and normalisation checked against numpy/PIL computations."""

import numpy as np
import pytest
import torch
from PIL import Image

from mergelab.data import DatasetInfo, ImageAdapter, ImageSpec, adapt_stats, augment, resize
from mergelab.data.transforms import LUMA

RGB_INFO = DatasetInfo("rgb", 10, 3, (32, 32), False, (0.4, 0.5, 0.6), (0.2, 0.25, 0.3))
GREY_INFO = DatasetInfo("grey", 10, 1, (28, 28), False, (0.13,), (0.31,))


def _pil_resize(a: np.ndarray, size: int) -> np.ndarray:
    """Independent bilinear (antialiased) resize of one float plane via PIL mode F."""
    img = Image.fromarray(a.astype(np.float32), mode="F")
    return np.asarray(img.resize((size, size), Image.BILINEAR))


def test_rgb_to_grey_resize_normalise_matches_independent_computation() -> None:
    rng = np.random.default_rng(0)
    x = rng.random((3, 32, 32)).astype(np.float32)
    out = ImageAdapter(RGB_INFO, ImageSpec(channels=1, size=16))(torch.from_numpy(x))
    grey = 0.299 * x[0] + 0.587 * x[1] + 0.114 * x[2]
    mean = 0.299 * 0.4 + 0.587 * 0.5 + 0.114 * 0.6
    std = 0.299 * 0.2 + 0.587 * 0.25 + 0.114 * 0.3
    expected = (_pil_resize(grey, 16) - mean) / std
    assert out.shape == (1, 16, 16) and out.dtype == torch.float32
    np.testing.assert_allclose(out[0].numpy(), expected, atol=1e-4)


def test_grey_to_rgb_upsample_normalise() -> None:
    rng = np.random.default_rng(1)
    x = rng.random((1, 28, 28)).astype(np.float32)
    out = ImageAdapter(GREY_INFO, ImageSpec(channels=3, size=32))(torch.from_numpy(x))
    expected = (_pil_resize(x[0], 32) - 0.13) / 0.31
    assert out.shape == (3, 32, 32)
    for c in range(3):
        np.testing.assert_allclose(out[c].numpy(), expected, atol=1e-4)


def test_native_spec_without_normalisation_is_identity() -> None:
    x = torch.rand(3, 32, 32)
    out = ImageAdapter(RGB_INFO, ImageSpec(channels=3, size=32, normalize=False))(x)
    assert torch.equal(out, x)


def test_none_spec_keeps_shape_and_normalises_per_channel() -> None:
    x = torch.rand(2, 3, 32, 32)
    out = ImageAdapter(RGB_INFO, None)(x)
    mean = torch.tensor(RGB_INFO.mean).view(3, 1, 1)
    std = torch.tensor(RGB_INFO.std).view(3, 1, 1)
    assert torch.allclose(out, (x - mean) / std, atol=1e-6)


def test_batch_and_single_agree() -> None:
    x = torch.rand(4, 3, 32, 32)
    adapter = ImageAdapter(RGB_INFO, ImageSpec(channels=1, size=20))
    batched = adapter(x)
    singles = torch.stack([adapter(t) for t in x])
    assert torch.allclose(batched, singles, atol=1e-6)


def test_adapt_stats() -> None:
    assert adapt_stats((0.2,), (0.3,), 3) == ((0.2, 0.2, 0.2), (0.3, 0.3, 0.3))
    m, s = adapt_stats((1.0, 0.0, 0.0), (0.5, 0.5, 0.5), 1)
    assert m == pytest.approx((LUMA[0],)) and s == pytest.approx((0.5,))


def test_resize_crops_centre_to_target_aspect() -> None:
    x = torch.arange(6 * 4, dtype=torch.float32).view(1, 6, 4)  # tall: H=6, W=4
    out = resize(x, (4, 4))
    assert torch.equal(out, x[:, 1:5, :])  # centre 4x4 crop, no interpolation needed
    wide = torch.rand(3, 10, 20)
    assert resize(wide, (5, 5)).shape == (3, 5, 5)


def test_channel_mismatch_is_an_error() -> None:
    with pytest.raises(ValueError, match="channels"):
        ImageAdapter(GREY_INFO, None)(torch.rand(3, 28, 28))


def test_describe_changes_with_spec() -> None:
    a = ImageAdapter(RGB_INFO, ImageSpec(3, 32)).describe()
    b = ImageAdapter(RGB_INFO, ImageSpec(3, 32, normalize=False)).describe()
    c = ImageAdapter(RGB_INFO, ImageSpec(1, 32)).describe()
    assert len({a, b, c}) == 3


def test_augment_is_seeded_and_crops_shifted_windows() -> None:
    x = torch.rand(16, 3, 8, 8)
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    a, b = augment(x, g1, padding=2), augment(x, g2, padding=2)
    assert torch.equal(a, b) and a.shape == x.shape
    assert not torch.equal(a, x)
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2))
    for n in range(16):  # each output is some window of the padded input, maybe flipped
        windows = [padded[n, :, i : i + 8, j : j + 8] for i in range(5) for j in range(5)]
        assert any(torch.equal(a[n], w) or torch.equal(a[n], w.flip(-1)) for w in windows)
    plain = augment(x, torch.Generator().manual_seed(0), padding=0, flip=False)
    assert torch.equal(plain, x)
