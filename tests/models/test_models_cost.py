from torch import nn

from mergelab.models import build_model, count_flops, count_params


def test_linear_flops_and_params() -> None:
    in_features, classes = 1 * 8 * 8, 10
    model = build_model("linear", classes, in_chans=1, img_size=8)
    assert count_flops(model, (1, 8, 8)) == 2 * in_features * classes
    assert count_params(model) == in_features * classes + classes


def test_cnn_flops_match_hand_count() -> None:
    model = build_model("cnn", 10, in_chans=1, img_size=8, channels=(4, 8)).train()
    conv1 = 2 * (8 * 8) * 4 * (1 * 3 * 3)  # output pixels x out channels x (in x k x k)
    conv2 = 2 * (4 * 4) * 8 * (4 * 3 * 3)  # after the first 2x2 max-pool
    head = 2 * 8 * 10
    assert count_flops(model, (1, 8, 8)) == conv1 + conv2 + head
    assert model.training  # mode restored


def test_tied_parameters_counted_once() -> None:
    a = nn.Linear(4, 4)
    model = nn.Sequential(a, nn.ReLU(), a)
    assert count_params(model) == 4 * 4 + 4


def test_vit_flops_positive_and_grow_with_size() -> None:
    small = build_model("vit_small", 10, in_chans=1, img_size=8)
    big = build_model("vit_small", 10, in_chans=1, img_size=8, embed_dim=128)
    assert 0 < count_flops(small, (1, 8, 8)) < count_flops(big, (1, 8, 8))
