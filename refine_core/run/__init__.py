"""Orchestration: `refine run`'s stages in one resumable run directory (`stages`) and ablation
grids of runs (`sweep`)."""
