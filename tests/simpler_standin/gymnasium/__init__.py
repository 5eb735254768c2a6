"""Stand-in for the `gymnasium.make` SimplerEnv's envs are made with (refine's tests only)."""


def make(env_id: str, max_episode_steps: int | None = None, **kwargs):
    from mani_skill2_real2sim import StandInEnv

    return StandInEnv(env_id, max_episode_steps, **kwargs)
