"""MultiWorkerMirroredStrategy: 2 worker processes on 127.0.0.1 train in lockstep."""

import json
import os
import socket
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import tifffile

WORKER = textwrap.dedent("""
    import json, sys
    import numpy as np
    from fusionnet_tf.training import config_from_dict, train

    mapping, weights_path = json.loads(sys.argv[1]), sys.argv[2]
    result = train(config_from_dict(mapping), verbose=0)
    model = result.model
    np.savez(weights_path, *[w.numpy() for w in model.trainable_weights],
             moving=np.concatenate([w.numpy().ravel() for w in model.non_trainable_weights]),
             iterations=model.optimizer.iterations.numpy())
    print("LOSS", json.dumps(result.history.get("loss", [])))
""")


def free_ports(count):
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


@pytest.mark.large
def test_two_workers_end_with_identical_weights(tmp_path):
    rng = np.random.default_rng(0)
    membrane = rng.random((3, 32, 32)) < 0.25
    image = np.where(membrane, 60, 190) + rng.normal(0, 10, membrane.shape)
    tifffile.imwrite(tmp_path / "img.tif", np.clip(image, 0, 255).astype(np.uint8))
    tifffile.imwrite(tmp_path / "lab.tif", np.where(membrane, 0, 255).astype(np.uint8))
    mapping = {
        "model": {"base_filters": 2, "depth": 1, "residual_convs": 1},
        "data": {"train_images": str(tmp_path / "img.tif"),
                 "train_labels": str(tmp_path / "lab.tif"), "tile_size": 16},
        "augment": False, "epochs": 2, "steps_per_epoch": 3, "batch_size": 2,
        "strategy": "multiworker", "checkpoint_monitor": "loss", "tensorboard": False,
        "output_dir": str(tmp_path / "run"), "backup_every_steps": 2,
    }
    workers = [f"127.0.0.1:{port}" for port in free_ports(2)]
    processes, logs = [], []
    for index in range(2):
        env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="-1",
                   TF_CONFIG=json.dumps({"cluster": {"worker": workers},
                                         "task": {"type": "worker", "index": index}}))
        log = open(tmp_path / f"worker{index}.log", "w+")
        logs.append(log)
        processes.append(subprocess.Popen(
            [sys.executable, "-c", WORKER, json.dumps(mapping), str(tmp_path / f"w{index}.npz")],
            env=env, stdout=log, stderr=subprocess.STDOUT, text=True))
    deadline = time.monotonic() + 400  # a hung collective fails the test instead of CI
    try:
        while any(p.poll() is None for p in processes) and time.monotonic() < deadline:
            if any(p.poll() not in (None, 0) for p in processes):
                break  # one worker failed: the other would wait for it forever
            time.sleep(0.5)
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()
    outputs = []
    for log in logs:
        log.seek(0)
        outputs.append(log.read())
        log.close()
    for index, process in enumerate(processes):
        assert process.returncode == 0, (f"worker {index} exited with {process.returncode} "
                                         "(-9: killed at the deadline):\n" + outputs[index][-4000:])

    first, second = np.load(tmp_path / "w0.npz"), np.load(tmp_path / "w1.npz")
    assert int(first["iterations"]) == int(second["iterations"]) == 6
    keys = [k for k in first.files if k not in ("iterations", "moving")]
    assert keys and keys == [k for k in second.files if k not in ("iterations", "moving")]
    # gradients are all-reduced every step: trainable weights are bit-identical
    for key in keys:
        np.testing.assert_array_equal(first[key], second[key], err_msg=key)
    # BN moving statistics are per-worker estimates (each sees its own shard)
    assert np.isfinite(first["moving"]).all() and np.isfinite(second["moving"]).all()
    # the chief (worker 0) wrote the run files; the other worker only its own backup
    run = tmp_path / "run"
    assert (run / "latest.keras").is_file() and (run / "log.csv").is_file()
    assert (run / "backup" / "state.json").is_file()
    assert (run / "backup_worker1" / "state.json").is_file()
    losses = json.loads(outputs[0].split("LOSS ", 1)[1].splitlines()[0])
    assert len(losses) == 2 and np.isfinite(losses).all()
