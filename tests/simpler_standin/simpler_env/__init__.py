"""Stand-in for SimplerEnv's `simpler_env` in refine's tests (see mani_skill2_real2sim here): `make`
with the prepackaged configs of the task names the tests use."""
import gymnasium as gym

import mani_skill2_real2sim  # noqa: F401 -- as upstream, importing simpler_env registers the envs

ENVIRONMENT_MAP = {
    "widowx_spoon_on_towel": ("PutSpoonOnTableClothInScene-v0", {}),
    "widowx_carrot_on_plate": ("PutCarrotOnPlateInScene-v0", {}),
    "widowx_stack_cube": ("StackGreenCubeOnYellowCubeBakedTexInScene-v0", {}),
    "widowx_put_eggplant_in_basket": ("PutEggplantInBasketScene-v0", {}),
}


def make(task_name, **kwargs):
    env_name, env_kwargs = ENVIRONMENT_MAP[task_name]
    return gym.make(env_name, **{**env_kwargs, "obs_mode": "rgbd", "prepackaged_config": True, **kwargs})
