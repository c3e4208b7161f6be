"""camjax: high-throughput JAX/Flax camera-model identification."""

__version__ = "0.1.0"
