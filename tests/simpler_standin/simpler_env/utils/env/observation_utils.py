def get_image_from_maniskill2_obs_dict(env, obs, camera_name=None):
    """The policy's image: the overhead camera on the Google Robot, the 3rd-view one on WidowX."""
    if camera_name is None:
        camera_name = "overhead_camera" if "google_robot" in env.robot_uid else "3rd_view_camera"
    return obs["image"][camera_name]["rgb"]
