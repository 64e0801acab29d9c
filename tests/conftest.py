"""Test setup: 8 simulated CPU devices, set before jax is imported anywhere, and absl flags marked parsed.

grain's mp_prefetch reads an absl flag, which raises under pytest unless the flags count as parsed.
"""
import os

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

from absl import flags  # noqa: E402

flags.FLAGS.mark_as_parsed()

import jax  # noqa: E402

assert jax.device_count() == 8, "conftest must run before jax initialises its backend"
