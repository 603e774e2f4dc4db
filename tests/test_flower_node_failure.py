"""A SuperNode that dies mid-round: the round completes with the rest and the run goes on."""

import pytest
from flower_federation import Federation


@pytest.mark.slow
def test_a_supernode_killed_mid_round_is_left_out_and_the_run_goes_on(digits_artifact, tmp_path):
    timeout = 60  # above a healthy round's training on a busy 2-core machine (~30 s)
    out = tmp_path / "run"
    with Federation(tmp_path) as federation:
        federation.start(num_nodes=3)
        run = federation.launch({
            "artifact": str(digits_artifact), "num-server-rounds": 2, "local-steps": 2, "setskel-steps": 1,
            "min-nodes": 3, "round-timeout": timeout, "out": str(out),
        })
        federation.wait_for_clientapp(2, timeout=180)
        killed = federation.node_id(2)
        federation.kill_node(2)
        first, second = federation.finish(run, out, timeout=420)["rounds"]

    assert first["accepted"] == [0, 1]
    # the SuperLink's "Node Unavailable" (heartbeat expired) or, if that comes later, our round timeout
    [dropped] = first["dropped"]
    assert dropped["node"] == killed
    assert dropped["reason"] == "no reply within the round timeout" or dropped["reason"].startswith("error reply, code 5: ")
    assert first["global_accuracy"] is not None and first["local_accuracy"][2] is None  # the dead node was not evaluated
    assert second["accepted"] == [0, 1] and second["loss"] is not None
