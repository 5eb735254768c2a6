"""`refine serve CHECKPOINT`: the real command serves a trained checkpoint on vla-eval's protocol."""
from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.request

import anyio
import numpy as np
import pytest

from conftest import run_refine
from train_toys import trained_checkpoint


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return trained_checkpoint(tmp_path_factory.mktemp("served"))


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_refine_serve_answers_health_and_acts(checkpoint):
    from vla_eval.connection import Connection

    port = free_port()
    server = subprocess.Popen([sys.executable, "-c", "from refine_core.cli import main; main()", "serve",
                               str(checkpoint), "--port", str(port), "--set", "policy.reasoning=never",
                               "--camera", "cam"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline, health = time.time() + 120, None
        while time.time() < deadline and health is None:
            try:
                health = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/health",
                                                           timeout=2).read())
            except OSError:
                assert server.poll() is None, server.stderr.read()
                time.sleep(0.2)
        assert health == {"status": "ok"}

        async def act():
            conn = Connection(f"ws://127.0.0.1:{port}", timeout=120)
            await conn.connect()
            await conn.start_episode({"task": {"name": "toy"}})
            frame = np.zeros((32, 32, 3), np.uint8)
            action = await conn.act({"images": {"cam": frame},
                                     "task_description": "put the red block in the bowl"})
            await conn.close()
            return action, conn.server_info

        action, info = anyio.run(act)
        assert np.asarray(action["actions"]).shape == (7,)
        described = json.loads(info["action_spec"]["refine"]["description"])
        assert described["reasoning"] == "never" and described["backbone"] == "hf_vlm"
        assert "cam" in info["observation_spec"]
    finally:
        server.terminate()
        server.wait(30)


@pytest.mark.parametrize("setting, message", [
    ("policy.reasoning=sometimes", "Invalid config value for 'policy.reasoning'"),
    ("policy.evry=3", "Unknown config key 'policy.evry'. Did you mean 'every'?"),
    ("train.lr=1", "refine serve takes --set policy.KEY=VALUE"),
])
def test_a_bad_policy_setting_is_one_line(checkpoint, setting, message):
    result = run_refine("serve", str(checkpoint), "--set", setting)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith(f"error: {message}")
    assert "Traceback" not in result.stderr
