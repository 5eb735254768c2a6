"""`fractal`: the RT-1 robot data as the `fractal20220817_data` RLDS builder."""
from __future__ import annotations

from refine_plugins.rlds import RldsCommonOptions
from refine_core import DatasetSpec, hookimpl


class FractalOptions(RldsCommonOptions):
    pass


@hookimpl
def refine_datasets():
    yield DatasetSpec(
        name="fractal",
        summary="RT-1 robot data (RLDS fractal20220817_data, Google robot, 3 Hz) converted as OpenVLA does",
        factory="refine_plugins.fractal.dataset:FractalDataset",
        options=FractalOptions,
    )
