#!/usr/bin/env bash
# GPU call 1 (carry .stage/a): keep GGUF piece 0 and the data outside the repository copy.
set -euo pipefail
mkdir -p /tmp/beagle-stage
cp .stage/a/* /tmp/beagle-stage/
ls -la /tmp/beagle-stage
python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__, torch.cuda.get_device_name())"
