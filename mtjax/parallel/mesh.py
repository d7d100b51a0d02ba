"""Device mesh construction: one mesh with axes `data`, `fsdp`, `tensor`."""

from __future__ import annotations

import math

import jax
import numpy as np

from mtjax import errors

AXES = ("data", "fsdp", "tensor")


def resolve_shape(data: int = -1, fsdp: int = 1, tensor: int = 1,
                  num_devices: int | None = None) -> tuple[int, int, int]:
  """Fills one `-1` axis so the product equals the device count; validates the rest."""
  n = jax.device_count() if num_devices is None else num_devices
  sizes = [data, fsdp, tensor]
  unknown = [i for i, s in enumerate(sizes) if s == -1]
  if len(unknown) > 1:
    raise errors.ConfigError(f"mesh: at most one axis may be -1, got mesh.data={data} "
                             f"mesh.fsdp={fsdp} mesh.tensor={tensor}")
  known = math.prod(s for s in sizes if s != -1)
  if any(s == 0 or s < -1 for s in sizes) or n % known:
    raise errors.ConfigError(f"mesh.data={data} mesh.fsdp={fsdp} mesh.tensor={tensor} does not "
                             f"fit {n} devices")
  if unknown:
    sizes[unknown[0]] = n // known
  if math.prod(sizes) != n:
    raise errors.ConfigError(f"mesh {dict(zip(AXES, sizes))} uses {math.prod(sizes)} devices, "
                             f"but {n} are available (use -1 on one mesh.* axis to fill)")
  return tuple(sizes)


def make_mesh(data: int = -1, fsdp: int = 1, tensor: int = 1,
              devices=None) -> jax.sharding.Mesh:
  """A mesh over all (or the given) devices; Auto axis types so GSPMD propagates shardings."""
  devices = jax.devices() if devices is None else list(devices)
  shape = resolve_shape(data, fsdp, tensor, num_devices=len(devices))
  auto = (jax.sharding.AxisType.Auto,) * len(AXES)
  if len(devices) == jax.device_count():
    return jax.make_mesh(shape, AXES, axis_types=auto)
  return jax.sharding.Mesh(np.asarray(devices).reshape(shape), AXES, axis_types=auto)
