"""Evaluation engines: a checkpoint through a benchmark (`checkpoint_eval`, the `eval` stage) and
attention maps over the image (`attention`)."""
