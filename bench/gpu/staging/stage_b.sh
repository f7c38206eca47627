#!/usr/bin/env bash
# GPU call 2 (carry .stage/b, within ~30 s of call 1): keep GGUF piece 1.
set -euo pipefail
if [ ! -f /tmp/beagle-stage/smollm2.gguf.part-0 ]; then
    echo "piece 0 of the GGUF is not on this machine (the machine was not warm): run bench/gpu/staging/stage_a.sh first" >&2
    exit 3
fi
cp .stage/b/smollm2.gguf.part-1 /tmp/beagle-stage/
ls -la /tmp/beagle-stage
