#!/usr/bin/env bash
# avbind-lite0 at 160 and 224 px beside avbind-s, each with its baselines, in one session.
set -euo pipefail
cd /work/main
mkdir -p runs/bench
python - <<'P'
from dataclasses import replace
from avbind.models.checkpoint import save_checkpoint
from avbind.models.config import get_config
from avbind.models.network import AVBindNet
from avbind.models.pretrained import init_pretrained_backbone
for size in (160, 224):
    c = get_config("avbind-lite0")
    m = AVBindNet(replace(c, video=replace(c.video, input_size=size)))
    init_pretrained_backbone(m.video)
    m.class_names = [f"event {i}" for i in range(m.config.heads.num_classes)]
    save_checkpoint(f"runs/bench/lite0-{size}.pt", m.eval())
P
S=$(python -c "from avbind.models.weights import default_onnx; print(default_onnx())")
for size in 224 160; do
  avbind export --checkpoint runs/bench/lite0-$size.pt --out runs/bench/lite0-$size.onnx
done
avbind bench --model runs/bench/lite0-224.onnx --checkpoint runs/bench/lite0-224.pt --compare "$S" --compare runs/bench/lite0-160.onnx --out tools/bench-lite0-cpu-2core-224.json
avbind bench --model runs/bench/lite0-160.onnx --checkpoint runs/bench/lite0-160.pt --compare "$S" --out tools/bench-lite0-cpu-2core-160.json
