"""Every registered architecture builds for small and MNIST-sized inputs and has exact gradients.

The classifiers and regressors share these cases; the DCGAN (noise in, images out) has its
gradcheck here and the rest of its cases in test_gan.py.
"""

from __future__ import annotations

import pytest
import torch

from reprolab.core import registry
from reprolab.models._base import ModelSpec, build_model

# The classifiers and regressors (a generative arch, noise in and images out, has its
# gradcheck below and its other cases in test_gan.py).
ARCHS = [
    arch
    for arch in registry.model_names()
    if getattr(registry.model_module(arch), "TASK", None) != "generative"
]
IMAGE_ARCHS = [a for a in ARCHS if "image" in registry.arch_inputs(a)]
TABULAR_ARCHS = [a for a in ARCHS if "tabular" in registry.arch_inputs(a)]


def small_shape(arch: str) -> tuple[int, ...]:
    """A small input the arch takes: an 8x8 grey image, or 10 features."""
    return (1, 8, 8) if arch in IMAGE_ARCHS else (10,)


def spec(arch: str, shape: tuple[int, ...], n_out: int = 10) -> ModelSpec:
    c = shape[0]
    return ModelSpec(
        arch=arch, options={}, input_shape=shape, n_outputs=n_out, mean=[0.5] * c, std=[0.25] * c
    )


@pytest.mark.parametrize("arch", IMAGE_ARCHS)
@pytest.mark.parametrize("shape", [(1, 8, 8), (1, 28, 28), (3, 32, 32)])
def test_forward_shapes(arch: str, shape: tuple[int, ...]) -> None:
    torch.manual_seed(0)
    model = build_model(spec(arch, shape)).eval()
    assert model(torch.rand(2, *shape) * 16).shape == (2, 10)


@pytest.mark.parametrize("arch", TABULAR_ARCHS)
def test_tabular_forward_shapes_and_regression_output_scale(arch: str) -> None:
    torch.manual_seed(0)
    shape = (10,)
    plain = build_model(spec(arch, shape, n_out=1)).eval()
    assert plain(torch.rand(4, 10)).shape == (4, 1)
    scaled = ModelSpec(arch, {}, shape, 1, [0.5] * 10, [0.25] * 10, target_scale=(5.0, 2.0))
    model = build_model(scaled).eval()
    model.load_state_dict(plain.state_dict() | {"2.mean": model[2].mean, "2.std": model[2].std})
    x = torch.rand(4, 10)
    assert torch.allclose(model(x), plain(x) * 2.0 + 5.0)  # the core learns a standardised target
    assert ModelSpec.from_json(scaled.to_json()) == scaled


def test_conv_archs_refuse_feature_rows() -> None:
    from reprolab.models import tabular_mlp

    assert "tabular" not in registry.arch_inputs("lenet")
    with pytest.raises(ValueError, match="feature rows"):
        tabular_mlp.build(tabular_mlp.Options(), (1, 8, 8), 1)


def test_tabular_mlp_is_xavier_initialised() -> None:
    from reprolab.models import tabular_mlp

    torch.manual_seed(0)
    net = tabular_mlp.build(tabular_mlp.Options(hidden=[400]), (300,), 1)
    weight = net[0].weight
    bound = (6 / (300 + 400)) ** 0.5  # Xavier uniform: U(-b, b), b = sqrt(6 / (fan_in + fan_out))
    assert weight.abs().max() <= bound and weight.abs().max() > 0.95 * bound
    assert torch.count_nonzero(net[0].bias) == 0


@pytest.mark.parametrize("arch", ARCHS)
def test_gradcheck_in_float64(arch: str) -> None:
    torch.manual_seed(0)
    shape = small_shape(arch)
    model = build_model(spec(arch, shape, n_out=3)).double().eval()  # eval: dropout off
    x = torch.rand(2, *shape, dtype=torch.float64, requires_grad=True)
    # fast_mode checks a random projection of the Jacobian: one backward instead of one per
    # input element, so even ResNet18 checks in seconds.
    assert torch.autograd.gradcheck(model, (x,), eps=1e-6, atol=1e-4, fast_mode=True)


def test_dcgan_gradcheck_in_float64() -> None:
    from reprolab.models import dcgan

    torch.manual_seed(0)
    options = dcgan.Options(latent=4, ngf=4, ndf=4)
    model = dcgan.build(options, (1, 8, 8), 10).double().eval()  # eval: BatchNorm fixed
    noise = torch.randn(2, 4, 1, 1, dtype=torch.float64, requires_grad=True)
    images = torch.rand(2, 1, 8, 8, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(model.generator, (noise,), eps=1e-6, atol=1e-4)
    assert torch.autograd.gradcheck(model.discriminator, (images,), eps=1e-6, atol=1e-4)


@pytest.mark.parametrize("arch", ARCHS)
def test_same_seed_same_weights(arch: str) -> None:
    torch.manual_seed(3)
    a = build_model(spec(arch, small_shape(arch))).state_dict()
    torch.manual_seed(3)
    b = build_model(spec(arch, small_shape(arch))).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def resnet(options: dict, shape: tuple[int, ...] = (1, 8, 8)) -> torch.nn.Module:
    c = shape[0]
    return build_model(ModelSpec("resnet18", options, shape, 10, [0.0] * c, [1.0] * c))


def test_resnet18_freeze_trains_only_the_head() -> None:
    model = resnet({"freeze": "all_but_head"})
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable == ["1.fc.weight", "1.fc.bias"]


def test_resnet18_backbone_gets_a_smaller_learning_rate() -> None:
    from reprolab.core.schema import ModelSpec as Spec
    from reprolab.learn.engine import make_optimizer

    options = {"freeze": "none", "backbone_lr_factor": 0.1}
    model = resnet(options)
    opt = make_optimizer(model, Spec(arch="resnet18", options=options), lr=0.01, weight_decay=0.0)
    assert [round(g["lr"], 6) for g in opt.param_groups] == [0.01, 0.001]
    assert sum(len(g["params"]) for g in opt.param_groups) == len(list(model.parameters()))


def test_resnet18_loads_a_local_pth_with_rgb_filters_summed_for_grey(tmp_path, monkeypatch) -> None:
    from torchvision.models import resnet18

    from reprolab.learn.checkpoints import load_model, save_model
    from reprolab.models._base import ModelSpec

    (tmp_path / ".dvc").mkdir()  # the workspace root
    (tmp_path / "models" / "pretrained").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    torch.manual_seed(1)
    reference = resnet18(weights=None)
    torch.save(reference.state_dict(), tmp_path / "models" / "pretrained" / "r18.pth")
    options = {"weights": "models/pretrained/r18.pth", "small_stem": False}
    model = resnet(options, (1, 32, 32))
    core = model[1]
    assert torch.equal(core.layer1[0].conv1.weight, reference.layer1[0].conv1.weight)
    assert torch.allclose(core.conv1.weight, reference.conv1.weight.sum(1, keepdim=True))
    assert core(torch.zeros(2, 1, 32, 32)).shape == (2, 10)
    # A saved model is rebuilt without its initial weights: the .pth may be gone (another
    # machine, a registry version), evaluate and predict still load it.
    spec = ModelSpec("resnet18", options, (1, 32, 32), 10, [0.0], [1.0])
    save_model(model, spec, tmp_path / "saved", {})
    (tmp_path / "models" / "pretrained" / "r18.pth").unlink()
    loaded, _ = load_model(tmp_path / "saved")
    assert torch.equal(loaded[1].conv1.weight, core.conv1.weight)


@pytest.mark.parametrize("where", ["missing", "absolute", "above"])
def test_resnet18_weights_must_be_a_file_in_the_workspace(tmp_path, monkeypatch, where) -> None:
    from reprolab.core.errors import ModelBuildError

    (tmp_path / "ws" / ".dvc").mkdir(parents=True)
    torch.save({}, tmp_path / "outside.pth")
    monkeypatch.chdir(tmp_path / "ws")
    weights, said = {
        "missing": ("nope.pth", "file 'nope.pth' does not exist"),
        "absolute": (str(tmp_path / "outside.pth"), "not a file path inside the workspace"),
        "above": ("../outside.pth", "not a file path inside the workspace"),
    }[where]
    with pytest.raises(ModelBuildError, match=f"options.weights: .*{said}"):
        resnet({"weights": weights})


@pytest.mark.parametrize("arch", IMAGE_ARCHS)
def test_each_arch_trains_briefly(arch: str) -> None:
    from reprolab.core.schema import ModelSpec as Spec
    from reprolab.core.schema import TrainParams
    from reprolab.learn.engine import fit, make_optimizer
    from reprolab.learn.tensors import TensorData

    g = torch.Generator().manual_seed(0)
    y = torch.arange(64) % 4
    x = torch.rand(64, 1, 8, 8, generator=g) * 4 + y.view(-1, 1, 1, 1) * 4  # separable levels
    data = TensorData(x=x, y=y)
    torch.manual_seed(0)
    model = build_model(spec(arch, (1, 8, 8), n_out=4))
    opt = make_optimizer(model, Spec(arch=arch), lr=1e-3, weight_decay=0.0)
    result = fit(
        model,
        data,
        data,
        optimizer=opt,
        train_params=TrainParams(max_epochs=3, patience=3),
        epochs=3,
        batch_size=32,
        seed=0,
    )
    losses = [row["train_loss"] for row in result.history]
    assert losses[-1] < losses[0], losses


@pytest.mark.parametrize("arch", TABULAR_ARCHS)
def test_each_tabular_arch_learns_a_regression_with_rmsle(arch: str) -> None:
    from reprolab.core.schema import ModelSpec as Spec
    from reprolab.core.schema import TrainParams
    from reprolab.learn.engine import evaluate_loss, fit, make_optimizer
    from reprolab.learn.tensors import TensorData

    g = torch.Generator().manual_seed(0)
    x = torch.rand(256, 10, generator=g)
    y = torch.expm1(3.0 + x[:, :3].sum(1))  # log1p(y) is linear in the features
    data = TensorData(x=x, y=y)
    log_y = torch.log1p(y)
    model_spec = ModelSpec(
        arch, {}, (10,), 1, [0.5] * 10, [0.29] * 10, (float(log_y.mean()), float(log_y.std()))
    )
    torch.manual_seed(0)
    model = build_model(model_spec)
    before, _ = evaluate_loss(model, data, task="regression")
    opt = make_optimizer(model, Spec(arch=arch), lr=3e-3, weight_decay=0.0)
    result = fit(
        model,
        data,
        data,
        optimizer=opt,
        train_params=TrainParams(max_epochs=30, patience=30),
        epochs=30,
        batch_size=32,
        seed=0,
        task="regression",
    )
    after, rmsle = evaluate_loss(model, data, task="regression")
    assert "val_rmsle" in result.history[0]
    assert after == rmsle < 0.5 * before, (before, after)
