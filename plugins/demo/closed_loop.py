"""`demo-sim` as a refine benchmark: the trained model (in each reasoning mode) and the baselines
act in the demo simulator (`vla_benchmark.DemoSimBenchmark`), run by vla-eval's orchestrator."""
from __future__ import annotations

from typing import Any

from refine_core import ClosedLoopBenchmark


class DemoSimClosedLoop(ClosedLoopBenchmark):
    name = "demo-sim"
    vla_benchmark = "refine_plugins.demo.vla_benchmark:DemoSimBenchmark"
    camera = "image_0"

    def params(self) -> dict[str, Any]:
        return {"seed": self.options.seed, "pick_only_fraction": self.options.pick_only_fraction}
