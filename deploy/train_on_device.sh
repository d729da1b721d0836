#!/usr/bin/env bash
# Train the reference model on a lent GPU machine (the `device` tool), then ship its weights.
#
# The device machine has CUDA PyTorch, numpy, pillow and safetensors but no pymupdf and no
# network, starts bare, keeps files only while it is held (30 minutes at most, given back ~30 s
# after the last call ends) and runs one command for at most 10 minutes. So a run is:
#
#   here:    deploy/train_on_device.sh pack
#            packs data/devpack/ (~26 MB): pymupdf for the device's Python and the DejaVu
#            fonts (the data engine draws fonts from what it finds: the device must find the
#            same ones, or the same seed would render another page)
#   device:  run(command="deploy/train_on_device.sh start 18", carry=["data/devpack"])
#            installs the pack, renders the pool (~2 min on 16 cores), starts training in its
#            own process session bound to 18 minutes of training (the lease is 30 minutes,
#            machine start and pool included), follows the log for ~9 min
#   device:  run(command="deploy/train_on_device.sh follow")       # again within 30 s, ~9 min
#   device:  run(command="deploy/train_on_device.sh finish")
#            waits for the end, exports fp16 weights to $OUT/reference.safetensors (+ .sha256,
#            ~14 MB, under the 16 MB a file may bring back), the log and the eval history
#   here:    cp <files_at>/reference.safetensors kb/model/reference/weights/ && the .sha256 beside it
#            (or: deploy/train_on_device.sh install <files_at>), then check ReferenceBackend()
#
# Each call must follow the last within ~30 s or the machine (and the run on it) is given back.
# The checkpoint with its optimizer state (~90 MB) is too big to bring back, so a GPU run is one
# lease long; `finish` may be called early (it stops the run at its next step and exports).
set -euo pipefail
cd "$(dirname "$0")/.."

PACK=data/devpack
RUN=data/train/gpu
PY=${PY:-python3}

pack() {
    mkdir -p "$PACK/fonts"
    local tmp
    tmp=$(mktemp -d)
    # pymupdf ships abi3 wheels (CPython >= 3.11) that fit the device's 3.12; the wheel is 69 MB,
    # over the 64 MiB a call may carry, so only what Story layout and rendering need is packed:
    # the ONNX layout models (pymupdf/layout, 50 MB), pymupdf4llm and the C headers stay behind.
    "${HOST_PY:-.venv/bin/python}" -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
        --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
        --platform manylinux2014_x86_64 -d "$tmp" pymupdf==2.0
    mkdir "$tmp/site"
    "${HOST_PY:-.venv/bin/python}" -m zipfile -e "$tmp"/pymupdf-*.whl "$tmp/site"
    rm -rf "$tmp/site/pymupdf/layout" "$tmp/site/pymupdf4llm" "$tmp/site/pymupdf/mupdf-devel"
    tar -C "$tmp/site" -cf - . | xz -6 -T2 >"$PACK/pymupdf.tar.xz"  # ~20 MB
    rm -rf "$tmp"
    cp /usr/share/fonts/truetype/dejavu/DejaVuSans*.ttf \
       /usr/share/fonts/truetype/dejavu/DejaVuSerif*.ttf "$PACK/fonts/"
    du -sh "$PACK"
}

setup() {
    test -d "$PACK" || { echo "no $PACK: run 'deploy/train_on_device.sh pack' here and carry it"; exit 2; }
    mkdir -p /tmp/site
    $PY -m tarfile -e "$PACK/pymupdf.tar.xz" /tmp/site
    chmod +x /tmp/site/pymupdf/*.so* || true
    mkdir -p /usr/share/fonts/truetype/dejavu
    cp "$PACK"/fonts/*.ttf /usr/share/fonts/truetype/dejavu/
    export PYTHONPATH="/tmp/site:$PWD"
    nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
}

follow() {  # print the log until the run ends or $1 seconds pass
    local until=$((SECONDS + $1))
    while [ $SECONDS -lt $until ]; do
        if ! kill -0 "$(cat $RUN.pid)" 2>/dev/null; then echo "run ended"; return 0; fi
        sleep 20
    done
    tail -n 5 "$RUN.out"
}

case "${1:-}" in
    pack)
        pack
        ;;
    start)
        minutes=${2:-20}
        setup
        mkdir -p "$(dirname $RUN)"
        PYTHONUNBUFFERED=1 setsid nohup $PY -m lab.train_optical --config gpu \
            --max_time_s $((minutes * 60)) --data_dir /tmp/kb-synth >"$RUN.out" 2>&1 &
        echo $! >"$RUN.pid"
        follow 530
        tail -n 20 "$RUN.out"
        ;;
    follow)
        export PYTHONPATH="/tmp/site:$PWD"
        follow 560
        tail -n 20 "$RUN.out"
        ;;
    finish)
        export PYTHONPATH="/tmp/site:$PWD"
        if [ "${2:-}" = "now" ] && kill -0 "$(cat $RUN.pid)" 2>/dev/null; then
            kill -TERM "$(cat $RUN.pid)"  # train.py stops after the step, checkpoints, evaluates
        fi
        follow 540
        $PY -m lab.train_optical --out_dir $RUN --export --export_path "$OUT/reference.safetensors"
        cp "$RUN.out" "$OUT/train.log"
        $PY - "$RUN/ckpt.pt" "$OUT/history.json" <<'EOF'
import json, sys, torch
ckpt = torch.load(sys.argv[1], map_location="cpu", weights_only=False)
json.dump({"step": ckpt["step"], "history": ckpt["history"]}, open(sys.argv[2], "w"), indent=1)
EOF
        ;;
    install)  # here: the weights brought back by `finish` -> the shipped weights
        src=${2:?usage: train_on_device.sh install FILES_AT}
        cp "$src/reference.safetensors" kb/model/reference/weights/reference.safetensors
        cp "$src/reference.sha256" kb/model/reference/weights/reference.sha256
        .venv/bin/python -c "from kb.model.reference.backend import ReferenceBackend as B; b = B(); \
print(b.version, 'trained' if b.trained else 'UNTRAINED', b.metadata.get('step'))"
        ;;
    *)
        sed -n '2,/^set -euo/p' "$0" | sed '$d'
        exit 2
        ;;
esac
