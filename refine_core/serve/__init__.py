"""Serving a policy to a simulator or a robot: vla-eval's model-server protocol
(`model_server`, what `refine serve` and the closed-loop benchmarks run) and openpi's (`openpi`)."""
