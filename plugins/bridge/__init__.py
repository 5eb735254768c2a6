"""`bridge`: BridgeData V2 as the `bridge_dataset` RLDS builder (the one OpenVLA and Octo read)."""
from __future__ import annotations

from pydantic import Field

from refine_plugins.rlds import RldsCommonOptions
from refine_core import DatasetSpec, hookimpl


class BridgeOptions(RldsCommonOptions):
    relabel_actions: bool = Field(
        True,
        description="Movement from the reached state, as OpenVLA's bridge_orig transform (false: recorded "
                    "actions)."
    )
    drop_blank_cameras: bool = Field(True,
                                     description="Leave out image_1..3 where the robot had no such view.")


@hookimpl
def refine_datasets():
    yield DatasetSpec(
        name="bridge",
        summary="BridgeData V2 (RLDS bridge_dataset, WidowX, 5 Hz) converted as OpenVLA does",
        factory="refine_plugins.bridge.dataset:BridgeDataset",
        options=BridgeOptions,
    )
