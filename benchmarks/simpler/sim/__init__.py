"""The SimplerEnv benchmark side (`refine_simpler_sim`), run by vla-eval's orchestrator in
SimplerEnv's own interpreter, where refine is not installed: refine puts this folder on that
interpreter's PYTHONPATH (or mounts it into vla-eval's Docker image) and names the module
`refine_simpler_sim:RefineSimplerBenchmark`. Nothing in this folder imports refine."""
