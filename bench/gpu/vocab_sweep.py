"""Draft vocabulary sweep on a GPU: bench/cpu/vocab_sweep.py with GPU defaults (bf16, both shipped drafts,
the GPU trees 5/10/60 and 4/8/32, 12 MT-Bench questions, 128 new tokens). Any flag of that script may follow
and overrides these. The vocabularies are built the same way as on the CPU: the first 6000 ShareGPT training
conversations (the staged subset, bench/gpu/staging/), never the benchmark prompts.

    PYTHONPATH=src python3 bench/gpu/vocab_sweep.py --out $OUT/vocab-sweep/            # after staging
    PYTHONPATH=src python3 bench/gpu/vocab_sweep.py --repeats 2 --out docs/results/vocab-sweep-h200/
"""

from __future__ import annotations

import runpy
import sys
from pathlib import Path

GPU_DEFAULTS = ["--device", "cuda", "--dtype", "bfloat16", "--drafts", "smollm2-beagle,smollm2-eagle2",
                "--trees", "5/10/60,4/8/32", "--questions", "12", "--max-new-tokens", "128"]

if __name__ == "__main__":
    sys.argv = [sys.argv[0], *GPU_DEFAULTS, *sys.argv[1:]]  # argparse: a later flag wins
    runpy.run_path(str(Path(__file__).resolve().parents[1] / "cpu" / "vocab_sweep.py"), run_name="__main__")
