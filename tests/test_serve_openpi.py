"""`--protocol openpi`: openpi-client's real WebsocketClientPolicy drives a refine policy.

openpi-client pins numpy<2, which TensorFlow's numpy 2 excludes from one environment; its code
runs on numpy 2, so it is installed here without dependencies into its own folder, and the
client runs in a subprocess that sees that folder."""
from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import textwrap
import threading

import numpy as np
import pytest

from refine_core.policy import Policy, PolicySettings
from tiny_policies import tiny_backbone
from refine_core.serve.openpi import OpenPIPolicyServer


@pytest.fixture(scope="module")
def openpi_client(tmp_path_factory):
    target = tmp_path_factory.mktemp("openpi-client")
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps",
                    "--disable-pip-version-check",
                    "--target", str(target), "openpi-client==0.1.2"], check=True, capture_output=True,
                   timeout=300)
    return target


@pytest.fixture(scope="module")
def served():
    policy = Policy(tiny_backbone("hf_vlm"), PolicySettings(reasoning="every_k", every=2,
                                                            max_reasoning_tokens=8))
    server = OpenPIPolicyServer(policy)
    ready = threading.Event()
    port: list[int] = []
    loop = asyncio.new_event_loop()
    stop = asyncio.Event()

    def run():
        asyncio.set_event_loop(loop)
        loop.run_until_complete(server.serve("127.0.0.1", 0, ready=lambda p: (port.append(p), ready.set()),
                                             stop=stop))

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    assert ready.wait(60)
    yield policy, port[0]
    loop.call_soon_threadsafe(stop.set)
    thread.join(30)


CLIENT = textwrap.dedent("""
    import json, sys
    import numpy as np
    from openpi_client.websocket_client_policy import WebsocketClientPolicy

    client = WebsocketClientPolicy("127.0.0.1", int(sys.argv[1]))
    metadata = client.get_server_metadata()
    frame = np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    out = {"metadata": metadata, "answers": []}
    for key in ("observation/image", "image", "image"):
        answer = client.infer({key: frame, "prompt": "put the cup on the plate"})
        out["answers"].append({"shape": list(answer["actions"].shape), "dtype": str(answer["actions"].dtype),
                               "actions": answer["actions"].tolist(), "reasoning": answer["reasoning"]})
    try:
        client.infer({"prompt": "put the cup on the plate"})
    except RuntimeError as exc:
        out["error"] = str(exc)
    again = client.infer({"image": frame, "prompt": "put the cup on the plate"})
    out["after_error"] = again["actions"].tolist()
    print(json.dumps(out))
""")


def test_openpi_client_drives_a_refine_policy(served, openpi_client):
    policy, port = served
    env = {**os.environ, "PYTHONPATH": str(openpi_client)}
    result = subprocess.run([sys.executable, "-c", CLIENT, str(port)], capture_output=True, text=True,
                            env=env,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert out["metadata"]["server"] == "refine" and out["metadata"]["reasoning"] == "every_k"
    assert out["metadata"]["backbone"] == "hf_vlm" and out["metadata"]["codec"] == "bins"
    answers = out["answers"]
    assert [a["shape"] for a in answers] == [[1, 7]] * 3 and {a["dtype"] for a in answers} == {"float32"}
    # one session per connection: every_k with K=2 reasons, reuses, reasons again
    assert answers[0]["reasoning"] and answers[1]["reasoning"] == answers[0]["reasoning"]
    # what the policy itself answers for the same frame and prompt
    frame = np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    expected = policy.act(policy.reset("put the cup on the plate"), frame).actions
    np.testing.assert_allclose(np.array(answers[0]["actions"]), expected, rtol=0, atol=0)
    assert out["error"].startswith("Error in inference server:\nrefine: bad observation: the observation has "
                                   "no image: send it as 'observation/image' or 'image'")
    assert len(out["after_error"]) == 1  # the connection keeps serving after a bad observation
