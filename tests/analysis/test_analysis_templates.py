"""Weights as templates: reshaping, correlation with class means, mixing, kernel grids."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mergelab.analysis import (
    averaged_templates,
    class_means,
    half_mixed_templates,
    kernel_grid,
    linear_templates,
    merged_templates,
    template_correlation,
    tile_images,
)


def test_linear_templates_reshape_rows_in_flatten_order():
    weight = torch.arange(3 * 2 * 4 * 5, dtype=torch.float32).reshape(3, 40)
    t = linear_templates(weight, (2, 4, 5))
    assert t.shape == (3, 2, 4, 5)
    image = torch.randn(1, 2, 4, 5, generator=torch.Generator().manual_seed(0)).double()
    # template . image == the logit the model computes from the flattened image
    logits = (weight.double() @ image.flatten(1).T).squeeze(1).numpy()
    np.testing.assert_allclose((t * image.numpy()).sum(axis=(1, 2, 3)), logits, rtol=1e-12)
    with pytest.raises(ValueError, match="inputs per class"):
        linear_templates(weight, (1, 4, 5))
    with pytest.raises(ValueError):
        linear_templates(weight.flatten(), (2, 4, 5))


def test_class_means_match_numpy():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(30, 1, 3, 3))
    y = np.repeat([0, 1, 2], 10)
    rng.shuffle(y)
    means = class_means((torch.as_tensor(x), torch.as_tensor(y)))
    for c in range(3):
        np.testing.assert_allclose(means[c], x[y == c].mean(axis=0))
    with_empty = class_means((x, y), num_classes=4)
    assert np.isnan(with_empty[3]).all()


def test_a_classifier_made_of_class_means_has_correlation_one(digits):
    means = class_means(digits.split("train"))
    assert means.shape == (10, 1, 8, 8)
    layer = torch.nn.Linear(64, 10)
    with torch.no_grad():
        layer.weight.copy_(torch.as_tensor(means.reshape(10, 64)))
    templates = linear_templates(layer.weight, (1, 8, 8))
    np.testing.assert_allclose(template_correlation(templates, means), 1.0, atol=1e-6)
    shifted = template_correlation(np.roll(templates, 1, axis=0), means)
    assert (shifted < 0.99).all()


def test_template_correlation_is_pearson_r():
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(4, 1, 5, 5)), rng.normal(size=(4, 1, 5, 5))
    b[2] = 3 * a[2] + 1  # affine copy: r = 1
    r = template_correlation(a, b)
    for c in range(4):
        assert r[c] == pytest.approx(np.corrcoef(a[c].ravel(), b[c].ravel())[0, 1])
    assert r[2] == pytest.approx(1.0)
    a[0] = 0.0
    assert np.isnan(template_correlation(a, b)[0])
    with pytest.raises(ValueError, match="shape"):
        template_correlation(a, b[:3])


def test_trained_linear_templates_resemble_class_means(tmp_path, digits):
    from mergelab.io import load_state_dict
    from mergelab.train import TrainConfig, train_model

    path = train_model(
        TrainConfig(dataset="digits", arch="linear", epochs=3, lr=0.05, batch_size=32),
        cache_dir=tmp_path,
        progress=False,
    )
    weight = load_state_dict(path)["head.weight"]
    r = template_correlation(
        linear_templates(weight, (1, 8, 8)), class_means(digits.split("train"))
    )
    assert np.nanmean(r) > 0.3


def test_half_mixing_pairs_class_i_with_i_plus_half():
    t = np.stack([np.full((1, 2, 2), float(c)) for c in range(6)])
    mixed = half_mixed_templates(t)
    assert mixed.shape == (3, 1, 2, 2)
    for i in range(3):
        assert (mixed[i] == (i + (i + 3)) / 2).all()
    np.testing.assert_array_equal(merged_templates(t), mixed)
    with pytest.raises(ValueError, match="even"):
        half_mixed_templates(t[:5])


def test_averaging_two_classifiers_averages_their_templates():
    rng = np.random.default_rng(2)
    a, b = rng.normal(size=(4, 1, 3, 3)), rng.normal(size=(4, 1, 3, 3))
    np.testing.assert_allclose(merged_templates(a, b), (a + b) / 2)
    np.testing.assert_allclose(averaged_templates(a, b, a), (2 * a + b) / 3)
    with pytest.raises(ValueError, match="differ"):
        averaged_templates(a, b[:, :, :2])


def test_kernel_grid_tiles_normalised_kernels_with_gaps():
    rng = np.random.default_rng(3)
    w = rng.normal(size=(6, 1, 3, 3))
    w[5] = 2.0  # constant kernel
    grid = kernel_grid(torch.as_tensor(w))
    assert grid.shape == (2 * 3 + 1, 3 * 3 + 2)  # 2 rows x 3 cols, 1-px gaps
    assert (grid[3, :] == 1.0).all() and (grid[:, 3] == 1.0).all() and (grid[:, 7] == 1.0).all()
    first = grid[0:3, 0:3]
    assert first.min() == 0.0 and first.max() == 1.0
    expected = (w[0, 0] - w[0, 0].min()) / (w[0, 0].max() - w[0, 0].min())
    np.testing.assert_allclose(first, expected)
    assert (grid[4:7, 8:11] == 0.5).all()  # the constant kernel (index 5: row 1, col 2)


def test_kernel_grid_rgb_and_other_channel_counts():
    rgb = kernel_grid(np.random.default_rng(4).normal(size=(4, 3, 5, 5)))
    assert rgb.shape == (11, 11, 3)
    many = tile_images(np.ones((3, 4, 2, 2)), ncols=3, gap=2)
    assert many.shape == (2, 3 * 2 + 2 * 2)
    with pytest.raises(ValueError):
        kernel_grid(np.ones((4, 3, 5)))
