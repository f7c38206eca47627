#!/usr/bin/env bash
# Is the fast path's grouped attention faster on the GPU? Random weights, no staging needed; one call.
#   bash bench/gpu/grouped_attention.sh SHAPE:LAYERS $OUT      (e.g. smollm2:30 or llama-3.1-8b:32)
# The attention alone (bench/gpu/attention_decode.py), then fast_path.py's AR step and rounds with
# --fast-attention sdpa and grouped, one process each (same shape, same prompt), each bounded so both finish
# inside the device's 10 minutes.
set -uo pipefail
shape="$1"; out="$2"; name="${shape%%:*}"
export PYTHONPATH=src
methods=ar-fast,beagle-fast,eagle2-fast,beagle-fast-t1
if [ "${ATTENTION_ALONE:-1}" = 1 ]; then
    timeout 60 python3 bench/gpu/attention_decode.py --shapes "$name" --out "$out/attention_decode_$name.json" \
        > "$out/attention_decode_$name.log" 2>&1
fi
# The fp32 check (fast tokens == eager tokens) runs with the grouped attention only: it is the new one.
for attention in sdpa grouped; do
    if [ "$attention" = sdpa ]; then check=--no-fp32-check; limit="${SDPA_S:-220}"; else check=; limit="${GROUPED_S:-300}"; fi
    timeout "$limit" python3 bench/gpu/fast_path.py --shapes "$shape" --no-hf --repeats 3 $check \
        --fast-attention "$attention" --methods "$methods" --out "$out/fast_path_${name}_$attention.json" \
        > "$out/fast_path_${name}_$attention.log" 2>&1
    echo "$attention rc=$?"; grep -h '"unit"\|"check"' "$out/fast_path_${name}_$attention.log"
done
