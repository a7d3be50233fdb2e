"""A stand-in for a training script: reads its data, "trains", writes results under results/.

Standard library only, so it runs on any image. `make train` runs it here; `make on-ec2-train`
runs it on this directory's EC2 instance and brings results/ home.
"""

import json
import os
import platform
import sys
from pathlib import Path

epochs = int(os.environ.get("EPOCHS", "3"))
data = Path("data/sample.csv").read_text().splitlines()
loss = 1.0
for epoch in range(1, epochs + 1):
    loss /= 2
    print(f"epoch {epoch}/{epochs}: loss {loss:.4f}", flush=True)

results = Path("results")
results.mkdir(exist_ok=True)
(results / "metrics.json").write_text(
    json.dumps({"epochs": epochs, "rows": len(data), "loss": loss, "host": platform.node()}) + "\n"
)
print(f"wrote {results / 'metrics.json'}")
sys.exit(0 if loss < 0.5 else 1)
