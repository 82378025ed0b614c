"""uv.lock serves the machines infra/README.md uses: Linux (the image, the cluster) and macOS (the
client side: `ray job submit`, `vos promote`, the MLflow client on a Mac).

Read from the lock itself (tomllib), offline: that macOS is among its resolution markers, that
the packages the client side needs have wheels for Apple silicon there, and that the Mac adds no
second version of them (torch on macOS is PyPI's own 2.15.0 wheel, not another pin), while the
CUDA packages stay Linux only.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
LOCK = tomllib.loads((REPO_ROOT / "uv.lock").read_text())
PYTHONS = ("cp311", "cp312")  # requires-python >=3.11,<3.13
CLIENT_PACKAGES = ("ray", "mlflow", "torch", "torchvision")
LINUX = "sys_platform == 'linux'"
DARWIN = "sys_platform == 'darwin'"


def versions(name: str) -> list[dict]:
    return [package for package in LOCK["package"] if package["name"] == name]


def test_lock_resolves_for_linux_and_macos():
    assert {LINUX, DARWIN} <= set(LOCK["supported-markers"]), LOCK["supported-markers"]
    assert any(DARWIN in marker for marker in LOCK["resolution-markers"])


@pytest.mark.parametrize("name", CLIENT_PACKAGES)
def test_client_package_has_one_version_with_wheels_for_apple_silicon(name):
    (package,) = versions(name)  # one entry: Linux and macOS share the pin
    # A wheel's name ends in -<python tag>-<abi tag>-<platform tag>.whl.
    tags = [
        wheel["url"].rsplit("/", 1)[1][: -len(".whl")].split("-")[-3:]
        for wheel in package["wheels"]
    ]
    for python in PYTHONS:
        assert any(
            (python in py.split(".") or "py3" in py.split(".") or abi == "abi3")
            and (platform == "any" or re.fullmatch(r"macosx_\d+_\d+_(arm64|universal2)", platform))
            for py, abi, platform in tags
        ), f"uv.lock has no macOS arm64 wheel of {name} {package['version']} for {python}"


def test_cuda_packages_are_for_linux_only():
    """torch's CUDA dependencies carry a Linux marker: a Mac resolves without them."""
    (torch,) = versions("torch")
    cuda = [d for d in torch["dependencies"] if re.match(r"(nvidia-|cuda-|triton$)", d["name"])]
    assert cuda, "torch lists no CUDA dependency: is this still the CUDA build?"
    for dependency in cuda:
        assert dependency.get("marker") == LINUX, f"torch -> {dependency['name']}: not Linux only"
