#!/usr/bin/env bash
# GPU call (after stage_c.sh, in the same command; about 9 minutes on one H200): the ablations of issue #14
# "Drafts that match their target", one table, every run on equal terms.
#
#  1. regenerate (`beagle regenerate`, bf16): the first HELDOUT of the staged held-out ShareGPT conversations,
#     then the TRAIN training ones; answers of at most REGEN_TOKENS tokens, the first REGEN_TURNS assistant turns,
#     conversations up to MAXLEN tokens, REGEN_BATCH rows refilled every 64 tokens; no new conversation after
#     REGEN_BUDGET s (the held-out ones come first, so only training ones can be left out) -> $WORK/regenerated.jsonl
#     (kept when it exists: an earlier call made it). REGEN_ONLY=1 stops here, returning $OUT/regenerated.jsonl.gz
#     and $OUT/regenerate-report.json (a full regeneration takes most of a call; the next call goes on from $WORK).
#     REGENERATED=FILE.jsonl.gz (a file an earlier call returned, carried in .stage/) seeds $WORK/regenerated.jsonl
#     on a fresh machine.
#  2. target features once (`beagle datagen`, one process per set at once): the regenerated training conversations
#     (the first ABLATION_TRAIN of them when set), the same conversations with ShareGPT's answers (the fixed data),
#     the regenerated held-out conversations; with ABLATION_TRAIN also every regenerated training conversation
#     (regen-train-all, for bench/gpu/retrain.sh). FEATURES_ONLY=1 makes only regen-train-all and regen-heldout
#     (what retrain.sh needs) and stops here.
#  3. train VARIANTS side by side, one process each (see bench/gpu/ablations.py VARIANTS), all with MAX_STEPS steps
#     of TRAIN_BATCH sequences, lr LR after WARMUP steps, seed 0, MAXLEN tokens, evaluated after every epoch and at
#     MAX_STEPS on the same regenerated held-out conversations (--eval-data); at most LIMIT s per process (a run cut
#     by it keeps its last epoch's checkpoint; the table marks it incomplete). Base run `beagle`: regenerated data,
#     stage 1 for EPOCHS1 epochs then stage 2 (window 5, sim-steps 4), the target's KV heads.
#     beagle-ft / eagle2-ft fine-tune the shipped drafts (INIT_BEAGLE, INIT_EAGLE2) on the regenerated data at
#     LR_FT (their first stage-1 epoch refits them to the answers, then stage 2 as the base run).
#  4. $OUT/ablations.{json,md}; the best Beagle run and the EAGLE-2 run as bf16 drafts in $OUT/{beagle,eagle2}/;
#     $OUT/regenerated.jsonl.gz (also kept in $WORK for later calls while the machine stays warm); $OUT/logs.tar.gz
#     (logs, the regeneration report, each run's config.json with its evaluation history, GPU samples).
#
# CPU smoke test (tests/test_gpu_recipes.py): TARGET=<tiny chat model folder> SOURCE=<tiny .jsonl.gz> TRAIN=12
#   HELDOUT=3 MAXLEN=64 REGEN_BATCH=4 REGEN_TOKENS=6 MAX_STEPS=8 TRAIN_BATCH=2 WARMUP=1 KV_ALL=4 DEVICE=cpu OUT=... WORK=...
set -uo pipefail
: "${OUT:?set OUT to the folder that comes back}"
export BEAGLE_CACHE=${BEAGLE_CACHE:-/tmp/beagle-cache} PYTHONPATH=src PYTHONUNBUFFERED=1
TARGET=${TARGET:-smollm2} SOURCE=${SOURCE:-/tmp/beagle-stage/sharegpt.jsonl.gz} WORK=${WORK:-/tmp/beagle-ablations}
TRAIN=${TRAIN:-6000} HELDOUT=${HELDOUT:-256} MAXLEN=${MAXLEN:-1024}
REGEN_BATCH=${REGEN_BATCH:-512} REGEN_TOKENS=${REGEN_TOKENS:-256} REGEN_TURNS=${REGEN_TURNS:-2}
REGEN_BUDGET=${REGEN_BUDGET:-150} REGEN_ONLY=${REGEN_ONLY:-0} ABLATION_TRAIN=${ABLATION_TRAIN:-}
REGENERATED=${REGENERATED:-} FEATURES_ONLY=${FEATURES_ONLY:-0}
MAX_STEPS=${MAX_STEPS:-600} EPOCHS1=${EPOCHS1:-1} EPOCHS2=${EPOCHS2:-9} TRAIN_BATCH=${TRAIN_BATCH:-16}
LR=${LR:-5e-4} WARMUP=${WARMUP:-100} LIMIT=${LIMIT:-240} KV_ALL=${KV_ALL:-9}
VARIANTS=${VARIANTS:-beagle beagle-fixed beagle-stage1 beagle-window3 beagle-sim5 beagle-kv eagle2 beagle-ft eagle2-ft}
INIT_BEAGLE=${INIT_BEAGLE:-smollm2-beagle} INIT_EAGLE2=${INIT_EAGLE2:-smollm2-eagle2} LR_FT=${LR_FT:-1e-4}
device=(); [ -n "${DEVICE:-}" ] && device=(--device "$DEVICE")
start=$(date +%s)
stamp() { echo "== $1 at $(date -u +%H:%M:%S), +$(( $(date +%s) - start )) s"; }
mkdir -p "$WORK/logs" "$OUT"
beagle() { python3 -m beagle.cli.main "$@"; }
source bench/gpu/variants.sh

stamp "1. regenerate"
if [ ! -f "$WORK/conversations.jsonl" ]; then
    python3 bench/gpu/ablations.py prepare "$SOURCE" "$TRAIN" "$HELDOUT" "$WORK" || exit 3
fi
if [ -n "$REGENERATED" ] && [ ! -f "$WORK/regenerated.jsonl" ]; then
    gunzip -c "$REGENERATED" > "$WORK/regenerated.jsonl.tmp" && mv "$WORK/regenerated.jsonl.tmp" "$WORK/regenerated.jsonl" \
        || exit 4
    [ -f "$(dirname "$REGENERATED")/regenerate-report.json" ] && cp "$(dirname "$REGENERATED")/regenerate-report.json" "$WORK/"
fi
if [ -f "$WORK/regenerated.jsonl" ]; then
    echo "$WORK/regenerated.jsonl exists (an earlier call): kept"
else
    beagle regenerate --target "$TARGET" --data "$WORK/conversations.jsonl" --out "$WORK/regenerated.jsonl" \
        --batch-size "$REGEN_BATCH" --max-new-tokens "$REGEN_TOKENS" --max-turns "$REGEN_TURNS" \
        --max-length "$MAXLEN" --time-budget "$REGEN_BUDGET" --report "$WORK/regenerate-report.json" --no-progress \
        "${device[@]}" 2>&1 | tee "$WORK/logs/regenerate.log"
    [ "${PIPESTATUS[0]}" -eq 0 ] || exit 4
fi
if [ "$REGEN_ONLY" = 1 ]; then
    gzip -c "$WORK/regenerated.jsonl" > "$OUT/regenerated.jsonl.gz"
    cp "$WORK/regenerate-report.json" "$WORK/sources.json" "$OUT/"
    ls -la "$OUT"
    stamp "done (REGEN_ONLY)"
    exit 0
fi

stamp "2. features"
sets="regen-train fixed-train regen-heldout" fixed=fixed
[ -n "$ABLATION_TRAIN" ] && sets="$sets regen-train-all"
[ "$FEATURES_ONLY" = 1 ] && sets="regen-heldout regen-train-all" fixed=nofixed
python3 bench/gpu/ablations.py split "$WORK" "$ABLATION_TRAIN" "$fixed" || exit 5
pids=()
for set in $sets; do
    beagle datagen --target "$TARGET" --data "$WORK/$set.jsonl" --out "$WORK/features/$set" --max-length "$MAXLEN" \
        --batch-tokens 65536 --no-progress "${device[@]}" > "$WORK/logs/datagen-$set.log" 2>&1 &
    pids+=($!)
done
for pid in "${pids[@]}"; do wait "$pid" || { tail -5 "$WORK"/logs/datagen-*.log; exit 6; }; done
tail -n 3 "$WORK"/logs/datagen-*.log
if [ "$FEATURES_ONLY" = 1 ]; then
    stamp "done (FEATURES_ONLY)"
    exit 0
fi

stamp "3. train: $VARIANTS"
rm -rf "$WORK/runs" "$WORK/status.txt"
regen=$WORK/features/regen-train fixed=$WORK/features/fixed-train
common=(--target "$TARGET" --max-length "$MAXLEN" --batch-size "$TRAIN_BATCH" --lr "$LR" --warmup "$WARMUP" --seed 0
        --max-steps "$MAX_STEPS" --eval-data "$WORK/features/regen-heldout" --no-progress --no-tensorboard
        "${device[@]}")
pids=()
for name in $VARIANTS; do
    readarray -t args < <(variant_args "$name")
    [ "${#args[@]}" -gt 0 ] || exit 2
    (
        begun=$(date +%s)
        OMP_NUM_THREADS=2 timeout "$LIMIT" python3 -m beagle.cli.main train "${common[@]}" "${args[@]}" \
            --out "$WORK/runs/$name" > "$WORK/logs/train-$name.log" 2>&1
        echo "$name $? $(( $(date +%s) - begun ))" >> "$WORK/status.txt"
    ) &
    pids+=($!)
done
if command -v nvidia-smi > /dev/null; then
    (while sleep 20; do nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader; done) \
        > "$WORK/logs/gpu.log" 2>&1 &
    sampler=$!
fi
for pid in "${pids[@]}"; do wait "$pid"; done
[ -n "${sampler:-}" ] && kill "$sampler" 2> /dev/null
cat "$WORK/status.txt"

stamp "4. summary"
python3 bench/gpu/ablations.py summarize "$WORK" "$MAX_STEPS" "$OUT"
cp "$OUT/ablations.json" "$WORK/ablations.json"  # for bench/gpu/retrain.sh in the next call
python3 bench/gpu/ablations.py export "$WORK" "$MAX_STEPS" "$OUT"
gzip -c "$WORK/regenerated.jsonl" > "$OUT/regenerated.jsonl.gz"
if [ "$(stat -c %s "$OUT/regenerated.jsonl.gz")" -gt $((16 * 1024 * 1024)) ]; then
    echo "regenerated.jsonl.gz is over 16 MiB: not returned (kept in $WORK)"
    rm "$OUT/regenerated.jsonl.gz"
fi
(cd "$WORK" && tar -czf "$OUT/logs.tar.gz" logs status.txt sources.json regenerate-report.json runs/*/config.json \
    features/*/manifest.json)
ls -la "$OUT" "$OUT"/*/
stamp "done"
