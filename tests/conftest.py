"""Fixtures for every test: ``gate`` (runners whose evaluations the test holds), ``agent`` and
``ray_cluster`` (a real local Ray for the module)."""

from tests.gates import agent, gate, ray_cluster  # noqa: F401 (fixtures, found here by pytest)
