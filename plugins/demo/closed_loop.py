"""`demo-sim` as a refine benchmark: the trained model (in each reasoning mode), the baselines and
the scripted expert act in the demo simulator (`vla_benchmark.DemoSimBenchmark`), run by vla-eval's
orchestrator through refine's policy server. The hierarchical mode's `verifier=scripted` is
`verifier.DemoSubtaskVerifier`, which reads the scene state the run then sends."""
from __future__ import annotations

from typing import Any

from refine_core import ClosedLoopBenchmark


class DemoSimClosedLoop(ClosedLoopBenchmark):
    name = "demo-sim"
    vla_benchmark = "refine_plugins.demo.vla_benchmark:DemoSimBenchmark"
    camera = "image_0"

    def params(self, policy: str) -> dict[str, Any]:
        params = {"seed": self.options.seed, "pick_only_fraction": self.options.pick_only_fraction}
        # only the expert, and the hierarchical model's scripted verifier, see the scene's state
        if policy == "expert" or (policy == "model-hierarchical" and self.verifier_name() == "scripted"):
            params["send_privileged"] = True
        return params

    def verifier(self, name: str) -> Any:
        if name == "scripted":
            from .verifier import DemoSubtaskVerifier

            return DemoSubtaskVerifier()
        return super().verifier(name)

    def policies(self, context: Any) -> list[tuple[str, str | None, Any]]:
        from .expert import DemoExpertPolicy

        reference = [("expert", None, DemoExpertPolicy())] if self.options.expert else []
        return super().policies(context) + reference
