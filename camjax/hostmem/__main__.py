"""`python -m camjax.hostmem`: this host's memory setup as a camjax command sees it, as JSON.

Started like any camjax command, so it first starts itself again with the huge-page tunable
unless `why_not` says otherwise; `faults_per_64mib_block` then shows whether that helps here
(16,384 with 4 KiB pages; a few hundred with huge pages), and `mapped_libraries` whether an
allocator preloaded in glibc's place (`ld_preload`) is the one running.
"""

import json
import os

from camjax import hostmem

print(
    json.dumps(
        {
            **hostmem.state(),
            "why_not": hostmem.why_not(),
            "pid": os.getpid(),
            "faults_per_64mib_block": hostmem.faults_per_block(),
            "mapped_libraries": hostmem.mapped_libraries(),
        }
    )
)
