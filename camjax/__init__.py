"""camjax: high-throughput JAX/Flax camera-model identification."""

import sys

__version__ = "0.1.0"

if sys.argv[:1] == ["-m"]:  # `python -m camjax.<command>`, while Python locates the command
    from camjax import hostmem

    hostmem.reexec_with_huge_pages()
