#!/usr/bin/env bash
# GPU call (after stage_c.sh, while the machine is warm): the shipped drafts (drafts/smollm2-{beagle,eagle2})
# against our AR decoding on SmolLM2-135M-Instruct, bf16, TOKENS new tokens, the default GPU tree (depth 5,
# top-k 10, 60 tokens), every method interleaved per prompt, on the fast path with CUDA graphs (--no-compile, as
# bench_drafts.sh's HumanEval / ShareGPT / T=1 runs). RUNS names the runs, each T<temperature>-<prompt set>
# (t0-mt-bench, t1-humaneval, t1-sharegpt, ...; sets: mt-bench, humaneval, sharegpt = the held-out split);
# T=1 runs use seed 0. Outputs: $OUT/bench-shipped.tar.gz (one folder per run: results.json, results.md, PNGs)
# and $OUT/bench-shipped.log.
#
# CPU smoke test (tests/test_gpu_recipes.py): OUT=/tmp/out BEAGLE_CACHE=~/.cache/beagle TOKENS=8 BUDGET=1 LIMIT=2 \
#     DEVICE=cpu RUNS=t1-humaneval bash bench/gpu/bench_shipped.sh
set -uo pipefail
: "${OUT:?set OUT to the folder that comes back}"
export BEAGLE_CACHE=${BEAGLE_CACHE:-/tmp/beagle-cache} PYTHONPATH=src PYTHONUNBUFFERED=1
RESULTS=${RESULTS:-/tmp/beagle-bench-shipped} TOKENS=${TOKENS:-128} LIMIT=${LIMIT:-80} BUDGET=${BUDGET:-35}
RUNS=${RUNS:-t1-humaneval t1-sharegpt}
device=(); [ -n "${DEVICE:-}" ] && device=(--device "$DEVICE")
mkdir -p "$RESULTS" "$OUT"
{
    status=0
    for run in $RUNS; do
        temperature=${run%%-*} prompts=${run#*-}
        temperature=${temperature#t}
        [ "$prompts" = sharegpt ] && prompts=sharegpt-heldout
        seed=(); [ "$temperature" != 0 ] && seed=(--seed 0)
        echo "== $run (T=$temperature, $prompts, budget ${BUDGET}s) $(date -u +%H:%M:%S)"
        python3 -m beagle.cli.main bench --target smollm2 --no-noconcat --no-progress --no-compile \
            --max-new-tokens "$TOKENS" --time-budget "$BUDGET" --prompts "$prompts" --limit "$LIMIT" \
            --temperature "$temperature" "${seed[@]}" "${device[@]}" --draft smollm2-beagle --draft-name beagle \
            --draft smollm2-eagle2 --draft-name eagle2 --methods ar,beagle,eagle2 --out "$RESULTS/$run" || status=$?
    done
    exit "$status"
} 2>&1 | tee "$OUT/bench-shipped.log"
status=$?
tar -czf "$OUT/bench-shipped.tar.gz" -C "$RESULTS" .
exit "$status"
