"""Fixtures for every test: ``gate`` (runners whose evaluations the test holds), ``agent``,
``ray_cluster`` (a real local Ray for the module) and the ``torch.compile`` guards."""

from __future__ import annotations

import os
import platform
import shutil

import pytest

from tests.gates import agent, gate, ray_cluster  # noqa: F401 (fixtures, found here by pytest)


@pytest.fixture(scope="session")
def dynamo() -> None:
    """Skip a test where ``torch.compile`` cannot even wrap a module here, saying why; loaded
    only for the tests that ask (importing TorchDynamo takes seconds)."""
    import torch._dynamo

    if not torch._dynamo.is_dynamo_supported():
        pytest.skip(f"torch.compile (TorchDynamo) does not support Python "
                    f"{platform.python_version()} with torch {torch.__version__}")


@pytest.fixture(scope="session")
def torch_compile(dynamo: None) -> None:
    """Skip a test that runs compiled code where torch.compile's default backend cannot."""
    # Inductor compiles C++ for the CPU.
    if not (os.environ.get("CXX") or any(map(shutil.which, ("g++", "c++", "clang++")))):
        pytest.skip("torch.compile's CPU backend (Inductor) needs a C++ compiler, and none "
                    "($CXX, g++, c++, clang++) is on PATH")
