#!/usr/bin/env bash
# GPU call 4 (right after ablations.sh, while the machine is warm: it reads $WORK): train the best Beagle recipe
# and the best EAGLE-2 recipe of the ablation table (highest τ_sim, bench/gpu/ablations.py best) longer, side by
# side, on equal terms: the same regenerated training features, STEPS steps of TRAIN_BATCH sequences, the same
# evaluation set (--eval-data: the regenerated held-out conversations), at most LIMIT s per process.
# Outputs: $OUT/smollm2-{beagle,eagle2}/ (bf16 drafts with their training record; also $WORK/final-bf16 for
# bench_drafts.sh), $OUT/retrain.md (recipe, steps, τ_sim, wall time) and $OUT/retrain-logs.tar.gz.
#
# CPU smoke test (tests/test_gpu_recipes.py): after the ablations smoke test, with its WORK and TARGET and
#   STEPS=4 ABLATION_STEPS=8 TRAIN_BATCH=2 WARMUP=1 MAXLEN=64 KV_ALL=4 DEVICE=cpu INIT_BEAGLE=... INIT_EAGLE2=...
set -uo pipefail
: "${OUT:?set OUT to the folder that comes back}"
export BEAGLE_CACHE=${BEAGLE_CACHE:-/tmp/beagle-cache} PYTHONPATH=src PYTHONUNBUFFERED=1
TARGET=${TARGET:-smollm2} WORK=${WORK:-/tmp/beagle-ablations} MAXLEN=${MAXLEN:-1024}
ABLATION_STEPS=${ABLATION_STEPS:-600} STEPS=${STEPS:-2400} LIMIT=${LIMIT:-330}
EPOCHS1=${EPOCHS1:-1} EPOCHS2=${EPOCHS2:-999} TRAIN_BATCH=${TRAIN_BATCH:-16} LR=${LR:-5e-4} WARMUP=${WARMUP:-100}
KV_ALL=${KV_ALL:-9} INIT_BEAGLE=${INIT_BEAGLE:-smollm2-beagle} INIT_EAGLE2=${INIT_EAGLE2:-smollm2-eagle2}
LR_FT=${LR_FT:-1e-4} RECIPES=${RECIPES:-}  # RECIPES="beagle-ft eagle2-ft": these runs' recipes, no ablations.json
device=(); [ -n "${DEVICE:-}" ] && device=(--device "$DEVICE")
if { [ -z "$RECIPES" ] && [ ! -f "$WORK/ablations.json" ]; } || \
   { [ ! -d "$WORK/features/regen-train" ] && [ ! -d "$WORK/features/regen-train-all" ]; }; then
    echo "no ablation results or features in $WORK (run ablations.sh first, in a call right before this one)" >&2
    exit 3
fi
source bench/gpu/variants.sh
regen=$WORK/features/regen-train fixed=$WORK/features/fixed-train
[ -d "$WORK/features/regen-train-all" ] && regen=$WORK/features/regen-train-all
echo "training features: $regen"
common=(--target "$TARGET" --max-length "$MAXLEN" --batch-size "$TRAIN_BATCH" --lr "$LR" --warmup "$WARMUP" --seed 0
        --max-steps "$STEPS" --eval-data "$WORK/features/regen-heldout" --no-progress --no-tensorboard
        "${device[@]}")
rm -rf "$WORK/final" "$WORK/final-bf16" && mkdir -p "$WORK/final/logs" "$OUT"
start=$(date +%s)
pids=()
for arch in beagle eagle2; do
    if [ -n "$RECIPES" ]; then
        name=$(python3 bench/gpu/ablations.py arch-run "$arch" $RECIPES) || exit 4
    else
        name=$(python3 bench/gpu/ablations.py best "$WORK" "$ABLATION_STEPS" "$arch") || exit 4
    fi
    echo "$arch $name" >> "$WORK/final/recipes.txt"
    readarray -t args < <(variant_args "$name")
    (
        OMP_NUM_THREADS=4 timeout "$LIMIT" python3 -m beagle.cli.main train "${common[@]}" "${args[@]}" \
            --out "$WORK/final/$arch" > "$WORK/final/logs/train-$arch.log" 2>&1
        echo "$arch $? $(( $(date +%s) - start ))" >> "$WORK/final/status.txt"
    ) &
    pids+=($!)
done
for pid in "${pids[@]}"; do wait "$pid"; done
cat "$WORK/final/recipes.txt" "$WORK/final/status.txt"
python3 - "$WORK" "$OUT" <<'PY'
import json, sys
from pathlib import Path

import torch

from beagle.models.checkpoint import load_draft, save_draft

work, out = Path(sys.argv[1]), Path(sys.argv[2])
recipes = dict(line.split() for line in (work / "final" / "recipes.txt").read_text().splitlines())
status = {line.split()[0]: line.split()[1:] for line in (work / "final" / "status.txt").read_text().splitlines()}
lines = ["| draft | recipe (ablation run) | steps | epochs | τ_sim | acc@1..5 | exit | wall s |",
         "|---|---|---:|---:|---:|---|---:|---:|"]
for arch, run in recipes.items():
    source = work / "final" / arch
    if not (source / "config.json").is_file():
        lines.append(f"| {arch} | {run} | — | — | — | no checkpoint | {' | '.join(status.get(arch, ['—', '—']))} |")
        continue
    draft = load_draft(source, dtype=torch.float32)
    for folder in (out / f"smollm2-{arch}", work / "final-bf16" / f"smollm2-{arch}"):
        save_draft(draft, folder, extra={"recipe": run}, dtype=torch.bfloat16)
    training = draft.config.training
    last = (training.get("history") or [{}])[-1]
    acceptance = " ".join(f"{a:.2f}" for a in last.get("acceptance") or [])
    lines.append(f"| {arch} | {run} | {training.get('step')} | {last.get('epoch')} | {last.get('tau', 0):.3f} "
                 f"| {acceptance} | {' | '.join(status.get(arch, ['—', '—']))} |")
(out / "retrain.md").write_text("\n".join(lines) + "\n")
print("\n".join(lines))
PY
(cd "$WORK/final" && tar -czf "$OUT/retrain-logs.tar.gz" logs recipes.txt status.txt */config.json)
ls -la "$OUT" "$OUT"/*/
