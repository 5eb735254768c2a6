"""The backbone author's toolkit: greedy and CUDA-graph decoding (`decoding`), safetensors
checkpoint directories and tokenizers (`weights`), frame preprocessing (`images`) and prompt
layouts shared by a model family (`prompts`). Exported through `refine_core`."""
