"""The coordinate std the attacks use, and the allocator setting ``diversefl.run`` applies."""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest
import torch

from diversefl.attacks.statistics import coordinate_std


@pytest.mark.parametrize("k,d", [(1, 5), (2, 3), (18, 1000), (7, 70_001), (18, 199_210)])
def test_coordinate_std_is_torch_population_std(k, d):
    g = torch.Generator().manual_seed(k * d)
    x = torch.randn(k, d, generator=g) * torch.logspace(-4, 2, d) + 3.0
    got = coordinate_std(x)
    assert got.dtype == x.dtype and got.shape == (d,)
    assert torch.equal(got, torch.std(x, dim=0, correction=0))


def test_coordinate_std_by_hand():
    x = torch.tensor([[1.0, 0.0], [3.0, 0.0], [5.0, 6.0]])
    # column 0: mean 3, deviations -2 0 2 -> var 8/3; column 1: mean 2, dev -2 -2 4 -> var 8
    want = torch.tensor([(8.0 / 3.0) ** 0.5, 8.0**0.5])
    torch.testing.assert_close(coordinate_std(x), want)


_PROBE = "from diversefl.engine.allocator import retain_freed_memory as r; print(r(), r())"


@pytest.mark.skipif(
    not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc",
    reason="mallopt thresholds are a glibc feature",
)
@pytest.mark.parametrize("env,want", [("1", "True True"), ("0", "False False")])
def test_retain_freed_memory_applies_once_and_can_be_turned_off(env, want):
    out = subprocess.run(
        [sys.executable, "-c", _PROBE],
        env={**os.environ, "DIVERSEFL_RETAIN_MEMORY": env},
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.strip() == want
