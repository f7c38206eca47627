# Sourced by ablations.sh and retrain.sh: the `beagle train` arguments of each ablation variant, one per line
# (bench/gpu/ablations.py VARIANTS describes them). Uses regen, fixed (feature folders), EPOCHS1, EPOCHS2,
# KV_ALL, INIT_BEAGLE, INIT_EAGLE2 and LR_FT.
variant_args() {
    local epochs=(--epochs-stage1 "$EPOCHS1" --epochs-stage2 "$EPOCHS2")
    local args
    case $1 in
        beagle) args=(--arch beagle --features "$regen" "${epochs[@]}") ;;
        beagle-fixed) args=(--arch beagle --features "$fixed" "${epochs[@]}") ;;
        beagle-stage1) args=(--arch beagle --features "$regen" --epochs-stage1 $((EPOCHS1 + EPOCHS2)) --epochs-stage2 0) ;;
        beagle-window3) args=(--arch beagle --features "$regen" "${epochs[@]}" --window 3) ;;
        beagle-sim5) args=(--arch beagle --features "$regen" "${epochs[@]}" --sim-steps 5) ;;
        beagle-kv) args=(--arch beagle --features "$regen" "${epochs[@]}" --draft-kv-heads "$KV_ALL") ;;
        beagle-ft) args=(--arch beagle --features "$regen" "${epochs[@]}" --init-draft "$INIT_BEAGLE" --lr "$LR_FT") ;;
        eagle2) args=(--arch eagle2 --features "$regen" "${epochs[@]}") ;;
        eagle2-fixed) args=(--arch eagle2 --features "$fixed" "${epochs[@]}") ;;
        eagle2-ft) args=(--arch eagle2 --features "$regen" "${epochs[@]}" --init-draft "$INIT_EAGLE2" --lr "$LR_FT") ;;
        *) echo "unknown variant $1 (see bench/gpu/ablations.py VARIANTS)" >&2; return 2 ;;
    esac
    printf '%s\n' "${args[@]}"
}
