"""Test setup: 8 fake CPU devices and the persistent compilation cache, before JAX initialises."""
import os
import pathlib

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")

import jax  # noqa: E402  (must come after XLA_FLAGS)

# SSL_JAX_TEST_CACHE=<empty dir> measures the suite as a fresh clone (CI) sees it.
_CACHE = os.environ.get("SSL_JAX_TEST_CACHE") or pathlib.Path(__file__).resolve().parent.parent / ".jax_cache"
jax.config.update("jax_compilation_cache_dir", str(_CACHE))
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
