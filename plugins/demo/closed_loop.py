"""`demo-sim` as a refine benchmark: the trained model (in each reasoning mode), the baselines and
the scripted expert act in the demo simulator (`vla_benchmark.DemoSimBenchmark`), run by vla-eval's
orchestrator through refine's policy server."""
from __future__ import annotations

from typing import Any

from refine_core import ClosedLoopBenchmark


class DemoSimClosedLoop(ClosedLoopBenchmark):
    name = "demo-sim"
    vla_benchmark = "refine_plugins.demo.vla_benchmark:DemoSimBenchmark"
    camera = "image_0"

    def params(self, policy: str) -> dict[str, Any]:
        params = {"seed": self.options.seed, "pick_only_fraction": self.options.pick_only_fraction}
        if policy == "expert":  # only the expert sees the scene's state
            params["send_privileged"] = True
        return params

    def policies(self, context: Any) -> list[tuple[str, str | None, Any]]:
        from .expert import DemoExpertPolicy

        reference = [("expert", None, DemoExpertPolicy())] if self.options.expert else []
        return super().policies(context) + reference
