"""Model zoo from the DiverseFL paper (Sec. 4, supp. B.2 Table 1, supp. C Table 2).

Every model takes an image batch ``[B, C, H, W]`` and returns logits ``[B, num_classes]``.
They are built from plain ``nn`` layers without in-place ops or data-dependent control flow,
so they work with ``torch.func.functional_call`` and ``torch.func.vmap``. Models containing
dropout (``vgg11_gn``) need ``vmap(..., randomness="different")`` (or ``"same"``) in train mode.
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch import nn

from diversefl.registry import Registry

__all__ = ["MODELS", "VGG11_CONFIG", "build_model"]

# Standard VGG11 layout ("M" = 2x2 max pool, stride 2). See ``vgg11_gn`` for why pools follow
# this layout rather than the paper's literal "max pool after each conv".
# fmt: off
VGG11_CONFIG: tuple[int | str, ...] = (
    64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M",
)
# fmt: on
GN_CHANNELS_PER_GROUP = 16


def _flat_features(input_shape: tuple[int, ...]) -> int:
    """Number of features of one flattened input, for the first Linear of flat models."""
    return math.prod(input_shape)


def _glorot_conv_zero_bias(module: nn.Module) -> None:
    """Glorot-uniform weights and zero biases for every Conv2d, as the paper prescribes."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


def _zero_all_biases(module: nn.Module) -> None:
    """Zero every layer bias ("All biases are initialized to 0" in supp. B.2 and C)."""
    for m in module.modules():
        bias = getattr(m, "bias", None)
        if isinstance(bias, nn.Parameter):
            nn.init.zeros_(bias)


def _check_image_shape(input_shape: tuple[int, ...], name: str) -> tuple[int, int, int]:
    """Validate a ``(C, H, W)`` shape so conv models fail early with a clear message."""
    if len(input_shape) != 3:
        raise ValueError(f"model {name!r} needs input_shape (C, H, W), got {tuple(input_shape)}")
    c, h, w = (int(s) for s in input_shape)
    return c, h, w


def softmax_regression(
    input_shape: tuple[int, ...], num_classes: int, *, zero_init: bool = True
) -> nn.Module:
    """Multinomial logistic regression (Sec. 4.1); zero init as the paper states."""
    model = nn.Sequential(nn.Flatten(), nn.Linear(_flat_features(input_shape), num_classes))
    if zero_init:
        with torch.no_grad():
            for p in model.parameters():
                p.zero_()
    return model


def mlp(
    input_shape: tuple[int, ...], num_classes: int, *, hidden: int | Sequence[int] = 200
) -> nn.Module:
    """Fully connected ReLU network; ``hidden`` is the width of each hidden layer (a list), or
    one width for the MNIST net of Sec. 4.2 (two layers of ``hidden`` units); default init."""
    widths = [hidden, hidden] if isinstance(hidden, int) else [int(h) for h in hidden]
    if any(w < 1 for w in widths):
        raise ValueError(f"model.hidden: layer widths must be >= 1, got {widths}")
    layers: list[nn.Module] = [nn.Flatten()]
    previous = _flat_features(input_shape)
    for width in widths:
        layers += [nn.Linear(previous, width), nn.ReLU()]
        previous = width
    layers.append(nn.Linear(previous, num_classes))
    return nn.Sequential(*layers)


def cifar_cnn(input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """Small CIFAR CNN of supp. C Table 2 (used to compare with Bulyan); flatten size inferred."""
    c, h, w = _check_image_shape(input_shape, "cifar_cnn")
    features = nn.Sequential(
        nn.Conv2d(c, 16, kernel_size=3, stride=1, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(kernel_size=3, stride=3),
        nn.Conv2d(16, 64, kernel_size=4, stride=1, padding=0),
        nn.ReLU(),
        nn.MaxPool2d(kernel_size=4, stride=4),
        nn.Flatten(),
    )
    with torch.no_grad():
        flat = features(torch.zeros(1, c, h, w)).shape[1]  # 64 on 32x32 input
    model = nn.Sequential(
        *features,
        nn.Linear(flat, 384),
        nn.ReLU(),
        nn.Linear(384, 192),
        nn.ReLU(),
        nn.Linear(192, num_classes),
    )
    _glorot_conv_zero_bias(model)
    _zero_all_biases(model)
    return model


def vgg11_gn(
    input_shape: tuple[int, ...],
    num_classes: int,
    *,
    fc_hidden: int = 4096,
    conv_dropout: float = 0.2,
    fc_dropout: float = 0.5,
) -> nn.Module:
    """VGG11 with GroupNorm (supp. B.2 Table 1), the CIFAR10/100 model of Sec. 4.2.

    Each of the 8 3x3 convs is followed by GroupNorm (16 channels per group), ReLU and
    Dropout(``conv_dropout``). Deviation: the paper says every conv is also followed by a 2x2
    max pool, but 8 halvings of a 32x32 input reach 0, so pools follow the standard VGG11
    layout ``VGG11_CONFIG`` (5 pools). Then AdaptiveAvgPool2d(1) and three Linear layers
    512 -> fc_hidden -> fc_hidden -> num_classes with ReLU + Dropout(``fc_dropout``) after the
    first two (Table 1: 28,149,514 parameters for CIFAR10). ``fc_hidden=0`` gives the compact
    single Linear(512, num_classes) head of common CIFAR VGG11 ports (9,231,114 for CIFAR10).
    Init: Glorot-uniform conv weights, GroupNorm weights 1, all biases 0, default Linear weights.
    """
    c, _, _ = _check_image_shape(input_shape, "vgg11_gn")
    layers: list[nn.Module] = []
    in_ch = c
    for item in VGG11_CONFIG:
        if item == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            continue
        out_ch = int(item)
        layers += [
            nn.Conv2d(in_ch, out_ch, kernel_size=3, stride=1, padding=1),
            nn.GroupNorm(out_ch // GN_CHANNELS_PER_GROUP, out_ch),
            nn.ReLU(),
            nn.Dropout(conv_dropout),
        ]
        in_ch = out_ch
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
    if fc_hidden > 0:
        layers += [
            nn.Linear(in_ch, fc_hidden),
            nn.ReLU(),
            nn.Dropout(fc_dropout),
            nn.Linear(fc_hidden, fc_hidden),
            nn.ReLU(),
            nn.Dropout(fc_dropout),
            nn.Linear(fc_hidden, num_classes),
        ]
    else:
        layers.append(nn.Linear(in_ch, num_classes))
    model = nn.Sequential(*layers)
    _glorot_conv_zero_bias(model)
    for m in model.modules():
        if isinstance(m, nn.GroupNorm):
            nn.init.ones_(m.weight)
    _zero_all_biases(model)
    return model


#: name -> factory ``(input_shape, num_classes, **settings) -> nn.Module``
MODELS: Registry[Callable[..., nn.Module]] = Registry(
    "model",
    {"softmax": softmax_regression, "mlp": mlp, "cifar_cnn": cifar_cnn, "vgg11_gn": vgg11_gn},
)


def build_model(
    name: str, input_shape: tuple[int, ...], num_classes: int, **kwargs: object
) -> nn.Module:
    """Build a registered model by name, so configs can select architectures by string."""
    return MODELS.lookup(name)(tuple(input_shape), num_classes, **kwargs)


ModelFactory = Callable[[tuple[int, ...], int], nn.Module]


def load_factory(spec: str) -> ModelFactory:
    """The function named by ``"package.module:function"`` (``model.factory``). Importing the
    module runs its code: name only code you trust, as you would in ``import``."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"model.factory: expected 'package.module:function', got {spec!r}")
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise ValueError(
            f"model.factory: cannot import {module_name!r} ({err}); {_import_hint(module_name)}"
        ) from None
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise ValueError(f"model.factory: {module_name!r} has no function {attr!r}")
    return factory


def _import_hint(module_name: str) -> str:
    """What to do when a factory's module is not importable: a file of that name in the
    current folder is not on the import path of the ``diversefl`` command."""
    here = Path.cwd() / (module_name.replace(".", "/") + ".py")
    if here.is_file():
        return (
            f"{here.name} is in this folder, which is not on the command's import path: run "
            "PYTHONPATH=. diversefl ..."
        )
    return "the module must be installed or in a folder on PYTHONPATH"


def per_batch_state(module: nn.Module) -> list[str]:
    """Names of the layers whose output depends on the other examples of the batch (batch
    norm): the batched engine takes every client's gradient in one call over all clients'
    examples, so such a layer would mix clients and give every client wrong gradients."""
    batch_norms = (nn.modules.batchnorm._BatchNorm, nn.SyncBatchNorm)
    return [
        name or type(m).__name__ for name, m in module.named_modules() if isinstance(m, batch_norms)
    ]


def check_user_model(module: nn.Module, name: str) -> nn.Module:
    """Refuse what the engine cannot take per-client gradients of (:func:`per_batch_state`)."""
    if not isinstance(module, nn.Module):
        raise ValueError(
            f"{name}: the model factory must return a torch.nn.Module, got {type(module).__name__}"
        )
    bad = per_batch_state(module)
    if bad:
        raise ValueError(
            f"{name}: layers {bad} normalise over the batch (BatchNorm), which would mix "
            "clients' examples in the batched per-client gradients; use GroupNorm or LayerNorm"
        )
    return module
