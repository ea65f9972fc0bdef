"""Test setup: 8 simulated CPU devices, CPU platform, fixtures path."""
import os
import pathlib

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import pytest  # noqa: E402

FIXTURES = pathlib.Path(__file__).parent / "fixtures"


class ShapeOnlySource:
  """A `convert.common.TensorSource` stand-in over a {key: shape} manifest: `get` returns stride-0 zero
  arrays, so a real checkpoint's key/shape manifest runs through a converter without its memory."""

  def __init__(self, shapes, path="<real manifest>"):
    self.shapes, self.path = shapes, path

  def get(self, key):
    import numpy as np

    shape = self.shapes[key]
    return np.lib.stride_tricks.as_strided(np.zeros(1, np.float32), shape, (0,) * len(shape))


@pytest.fixture(scope="session")
def fixtures_dir():
  return FIXTURES


@pytest.fixture
def shape_only_source():
  return ShapeOnlySource
