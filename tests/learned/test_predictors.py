"""Tests for lkstn.learned.predictors: the exact layers and capacities of [LL17] Tables 2 and 3."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lkstn.learned.predictors import (
    FC,
    POOL,
    Conv,
    ConvNet,
    LinearPredictor,
    count_parameters,
    gtsrb_classifier,
    gtsrb_cnn,
    gtsrb_predictor,
    mnist_classifier,
    mnist_cnn,
    mnist_predictor,
    table2_capacity,
    table3_capacity,
)

# Capacities printed in [LL17] Table 2 (MNIST) and Table 3 (GTSRB).
TABLE2 = {
    "CNN(a)": 39079,
    "STN(a)": 39048,
    "c-STN-1(a)": 39048,
    "c-STN-2(a)": 38528,
    "c-STN-4(a)": 37376,
    "IC-STN-2(a)": 39048,
    "IC-STN-4(a)": 39048,
    "CNN(b)": 19610,
    "STN(b)": 18536,
    "c-STN-1(b)": 18536,
    "IC-STN-2(b)": 18536,
    "IC-STN-4(b)": 18536,
}
TABLE3 = {"CNN": 200207, "STN": 197343, "c-STN-1": 197343, "IC-STN-2": 197343, "IC-STN-4": 197343}

MNIST = (1, 28, 28)
GTSRB = (3, 36, 36)

# (builder, input shape, output size, is a geometric predictor)
MODELS = {
    "mnist_predictor_a": (lambda: mnist_predictor("a"), MNIST, 8, True),
    "mnist_predictor_a2": (lambda: mnist_predictor("a2"), MNIST, 8, True),
    "mnist_predictor_a4": (lambda: mnist_predictor("a4"), MNIST, 8, True),
    "mnist_predictor_b": (lambda: mnist_predictor("b"), MNIST, 8, True),
    "mnist_classifier": (mnist_classifier, MNIST, 10, False),
    "mnist_cnn_a": (lambda: mnist_cnn("a"), MNIST, 10, False),
    "mnist_cnn_b": (lambda: mnist_cnn("b"), MNIST, 10, False),
    "gtsrb_predictor": (gtsrb_predictor, GTSRB, 8, True),
    "gtsrb_classifier": (gtsrb_classifier, GTSRB, 43, False),
    "gtsrb_cnn": (gtsrb_cnn, GTSRB, 43, False),
    "linear_planar": (lambda: LinearPredictor((50, 50), 6), (1, 50, 50), 6, True),
}
PREDICTORS = [name for name, (*_, is_predictor) in MODELS.items() if is_predictor]


def test_component_counts_by_hand() -> None:
    # conv: out*(in*k*k + 1); FC: out*(in + 1). Valid convs: s -> s - k + 1; pool halves.
    # (a): conv7,4 28->22: 4*(49+1)=200; conv7,8 ->16: 8*(4*49+1)=1576; P ->8;
    #      FC48 8*8*8=512: 48*513=24624; FC8: 8*49=392.
    assert count_parameters(mnist_predictor("a")) == 200 + 1576 + 24624 + 392 == 26792
    # (a2): conv9,4 28->20: 4*(81+1)=328; FC8 20*20*4=1600: 8*1601=12808.
    assert count_parameters(mnist_predictor("a2")) == 328 + 12808 == 13136
    # (a4), (b): FC8 on 784 pixels: 8*785.
    assert count_parameters(mnist_predictor("a4")) == count_parameters(mnist_predictor("b")) == 6280
    # classifier: conv9,3 28->20: 3*82=246; FC10 20*20*3=1200: 10*1201=12010.
    assert count_parameters(mnist_classifier()) == 246 + 12010 == 12256
    # CNN(a): conv3,3 ->26: 30; conv3,6 ->24: 168; P ->12; conv3,9 ->10: 495; conv3,12 ->8: 984;
    #         FC48 768: 36912; FC10: 490.
    assert count_parameters(mnist_cnn("a")) == 30 + 168 + 495 + 984 + 36912 + 490 == 39079
    # CNN(b): conv9,2 ->20: 164; conv9,4 ->12: 652; FC32 576: 18464; FC10: 330.
    assert count_parameters(mnist_cnn("b")) == 164 + 652 + 18464 + 330 == 19610
    # GTSRB predictor: conv7,6 36->30: 6*(3*49+1)=888; conv7,24 ->24: 24*(6*49+1)=7080;
    #                  FC8 24*24*24=13824: 8*13825=110600.
    assert count_parameters(gtsrb_predictor()) == 888 + 7080 + 110600 == 118568
    # GTSRB classifier: conv7,6: 888; conv7,12 ->24: 12*(6*49+1)=3540; P ->12; FC43 1728: 74347.
    assert count_parameters(gtsrb_classifier()) == 888 + 3540 + 74347 == 78775
    # GTSRB CNN: 888; 3540; P ->12; conv7,24 ->6: 24*(12*49+1)=14136; FC200 864: 173000; FC43: 8643.
    assert count_parameters(gtsrb_cnn()) == 888 + 3540 + 14136 + 173000 + 8643 == 200207
    # planar: 50*50 pixels -> 6 affine parameters.
    assert count_parameters(LinearPredictor((50, 50), 6)) == 6 * 2501 == 15006


@pytest.mark.parametrize("row", TABLE2)
def test_table2_capacity(row: str) -> None:
    assert table2_capacity(row) == TABLE2[row]


@pytest.mark.parametrize("row", TABLE3)
def test_table3_capacity(row: str) -> None:
    assert table3_capacity(row) == TABLE3[row]


def test_capacity_by_summing_modules() -> None:
    clf = count_parameters(mnist_classifier())
    assert count_parameters(mnist_predictor("a")) + clf == 39048
    assert 2 * count_parameters(mnist_predictor("a2")) + clf == 38528
    assert 4 * count_parameters(mnist_predictor("a4")) + clf == 37376
    assert count_parameters(mnist_predictor("b")) + clf == 18536
    assert count_parameters(gtsrb_predictor()) + count_parameters(gtsrb_classifier()) == 197343


def test_architecture_strings_match_the_paper() -> None:
    assert mnist_predictor("a").architecture == "conv(7x7,4)-conv(7x7,8)-P-FC(48)-FC(8)"
    assert mnist_predictor("a2").architecture == "conv(9x9,4)-FC(8)"
    assert mnist_predictor("b").architecture == "FC(8)"
    assert mnist_classifier().architecture == "conv(9x9,3)-FC(10)"
    assert mnist_cnn("a").architecture == (
        "conv(3x3,3)-conv(3x3,6)-P-conv(3x3,9)-conv(3x3,12)-FC(48)-FC(10)"
    )
    assert mnist_cnn("b").architecture == "conv(9x9,2)-conv(9x9,4)-FC(32)-FC(10)"
    assert gtsrb_predictor().architecture == "conv(7x7,6)-conv(7x7,24)-FC(8)"
    assert gtsrb_classifier().architecture == "conv(7x7,6)-conv(7x7,12)-P-FC(43)"
    assert gtsrb_cnn().architecture == "conv(7x7,6)-conv(7x7,12)-P-conv(7x7,24)-FC(200)-FC(43)"


def test_relu_after_every_conv_and_hidden_fc_only() -> None:
    layers = list(mnist_predictor("a").layers)
    kinds = [type(m).__name__ for m in layers]
    assert kinds == [
        "Conv2d", "ReLU", "Conv2d", "ReLU", "MaxPool2d", "Flatten", "Linear", "ReLU", "Linear",
    ]  # fmt: skip
    convs = [m for m in layers if isinstance(m, nn.Conv2d)]
    assert all(m.padding == (0, 0) and m.stride == (1, 1) for m in convs)  # "valid" convolutions


@pytest.mark.parametrize("name", MODELS)
def test_output_shape(name: str) -> None:
    build, in_shape, n_out, _ = MODELS[name]
    out = build()(torch.rand(3, *in_shape))
    assert out.shape == (3, n_out)
    assert out.dtype == torch.float32


@pytest.mark.parametrize("name", PREDICTORS)
def test_predictor_starts_at_identity_warp(name: str) -> None:
    build, in_shape, n_out, _ = MODELS[name]
    predictor = build()
    last = [m for m in predictor.modules() if isinstance(m, nn.Linear)][-1]
    assert torch.count_nonzero(last.weight) == 0 and torch.count_nonzero(last.bias) == 0
    out = predictor(torch.rand(3, *in_shape))
    assert torch.equal(out, torch.zeros(3, n_out))


@pytest.mark.parametrize("name", PREDICTORS)
def test_gradients_reach_the_last_layer_of_a_fresh_predictor(name: str) -> None:
    build, in_shape, n_out, _ = MODELS[name]
    predictor = build()
    target = torch.randn(3, n_out, generator=torch.Generator().manual_seed(0))
    (predictor(torch.rand(3, *in_shape)) * target).sum().backward()
    assert all(p.grad is not None for p in predictor.parameters())
    last = [m for m in predictor.modules() if isinstance(m, nn.Linear)][-1]
    assert torch.count_nonzero(last.weight.grad) > 0 and torch.count_nonzero(last.bias.grad) > 0
    # The zero last layer blocks the upstream gradients at step 0, as expected.
    for p in predictor.parameters():
        if p is not last.weight and p is not last.bias:
            assert torch.count_nonzero(p.grad) == 0


@pytest.mark.parametrize("name", MODELS)
def test_gradients_flow_to_every_parameter(name: str) -> None:
    build, in_shape, n_out, _ = MODELS[name]
    model = build()
    with torch.no_grad():  # leave the identity start so that the whole stack is exercised
        for m in model.modules():
            if isinstance(m, nn.Linear):
                m.weight.normal_(0.0, 0.1, generator=torch.Generator().manual_seed(1))
    target = torch.randn(3, n_out, generator=torch.Generator().manual_seed(0))
    (model(torch.rand(3, *in_shape)) * target).sum().backward()
    for p in model.parameters():
        assert p.grad is not None and torch.count_nonzero(p.grad) > 0


def test_initialisation_follows_the_authors_stddev() -> None:
    gen = torch.Generator().manual_seed(0)
    fc48 = mnist_predictor("a", generator=gen).layers[6]  # 24,576 weights ~ N(0, 0.1^2)
    assert fc48.weight.std().item() == pytest.approx(0.1, rel=0.05)
    assert fc48.bias.abs().max() > 0  # biases are drawn too, not zeroed
    fc43 = gtsrb_classifier(generator=gen).layers[-1]  # ~ N(0, 0.01^2)
    assert fc43.weight.std().item() == pytest.approx(0.01, rel=0.05)
    conv = gtsrb_predictor(generator=gen).layers[2]  # ~ N(0, 0.001^2)
    assert conv.weight.std().item() == pytest.approx(0.001, rel=0.05)


def test_generator_makes_weights_reproducible() -> None:
    a = mnist_cnn("a", generator=torch.Generator().manual_seed(3))
    b = mnist_cnn("a", generator=torch.Generator().manual_seed(3))
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.equal(pa, pb)


def test_linear_predictor_weights_follow_ravel_order() -> None:
    # Column k of the weight multiplies pixel k of image.ravel(): the IC-LK regressor layout.
    predictor = LinearPredictor((4, 5), 2)
    image = torch.arange(20.0).reshape(1, 1, 4, 5)
    with torch.no_grad():
        predictor.linear.weight[0, 7] = 1.0  # pixel (row 1, col 2)
        predictor.linear.bias[1] = -2.0
    assert torch.equal(predictor(image), torch.tensor([[7.0, -2.0]]))
    assert LinearPredictor((3, 4, 5), 6).in_shape == (3, 4, 5)


def test_models_follow_the_dtype_given_by_to() -> None:
    model = mnist_predictor("a").to(torch.float64)
    assert model(torch.rand(2, *MNIST, dtype=torch.float64)).dtype == torch.float64


def test_bad_input_shape_names_the_argument() -> None:
    with pytest.raises(ValueError, match=r"image must have shape \(B, 1, 28, 28\)"):
        mnist_predictor("a")(torch.rand(3, 1, 32, 32))
    with pytest.raises(ValueError, match="image"):
        gtsrb_classifier()(torch.rand(3, 36, 36))


def test_bad_arguments_raise_value_error() -> None:
    with pytest.raises(ValueError, match="arch"):
        mnist_predictor("c")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="arch"):
        mnist_cnn("c")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="row"):
        table2_capacity("IC-STN-8(a)")
    with pytest.raises(ValueError, match="row"):
        table3_capacity("IC-STN-8")
    with pytest.raises(ValueError, match="n_params"):
        LinearPredictor((50, 50), 0)
    with pytest.raises(ValueError, match="FC"):
        ConvNet(MNIST, [Conv(7, 4)], init_std=0.1)
    with pytest.raises(ValueError, match="after an FC"):
        ConvNet(MNIST, [FC(8), POOL, FC(8)], init_std=0.1)
    with pytest.raises(ValueError, match="shrinks"):
        ConvNet(MNIST, [Conv(9, 4), Conv(9, 4), Conv(9, 4), Conv(9, 4), FC(8)], init_std=0.1)
    with pytest.raises(ValueError, match="in_shape"):
        ConvNet((28, 28), [FC(8)], init_std=0.1)  # type: ignore[arg-type]
