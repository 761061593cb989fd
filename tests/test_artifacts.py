"""Atomic writes: a failure mid-write leaves the previous artifact intact and no temporary behind."""

import json

import numpy as np
import pytest

from ppt_core.run import artifacts


def test_exception_mid_write_keeps_the_old_file(tmp_path):
    path = tmp_path / "metrics.json"
    artifacts.write_json(path, {"ppl": 12.5})
    with pytest.raises(RuntimeError):
        with artifacts.atomic_path(path) as tmp:
            tmp.write_text('{"ppl": 1')  # half a file
            raise RuntimeError("interrupted")
    assert json.loads(path.read_text()) == {"ppl": 12.5}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.json"]


def test_unserialisable_value_keeps_the_old_file(tmp_path):
    path = tmp_path / "metrics.json"
    artifacts.write_json(path, {"ppl": 12.5})
    with pytest.raises(TypeError):
        artifacts.write_json(path, {"ppl": object()})
    assert artifacts.read_json(path) == {"ppl": 12.5}


def test_failed_model_save_keeps_the_old_model(tmp_path, tiny):
    model, tokenizer = tiny
    folder = artifacts.save_model(model, tokenizer, tmp_path / "model")
    before = sorted(p.name for p in folder.iterdir())

    class Broken:
        def save_pretrained(self, path):
            (path / "model.safetensors").write_bytes(b"partial")
            raise OSError("disk full")

    with pytest.raises(OSError):
        artifacts.save_model(Broken(), None, folder)
    assert sorted(p.name for p in folder.iterdir()) == before
    assert [p.name for p in tmp_path.iterdir()] == ["model"]


def test_results_keep_other_stages(tmp_path):
    paths = artifacts.RunPaths(tmp_path)
    artifacts.update_results(paths, "data", {"n": 1})
    artifacts.update_results(paths, "pruning", {"ppl": np.float32(3.5)})
    artifacts.update_results(paths, "data", {"n": 2})
    assert artifacts.read_results(paths) == {"data": {"n": 2}, "pruning": {"ppl": 3.5}}


def test_npz_and_csv_round_trip(tmp_path):
    import pandas as pd

    artifacts.write_npz(tmp_path / "s.npz", similarity=np.eye(3))
    assert np.array_equal(np.load(tmp_path / "s.npz")["similarity"], np.eye(3))
    artifacts.write_csv(tmp_path / "t.csv", pd.DataFrame({"a": [1, 2]}))
    assert pd.read_csv(tmp_path / "t.csv")["a"].tolist() == [1, 2]


@pytest.mark.parametrize("umask, file_mode, folder_mode", [(0o022, 0o644, 0o755), (0o077, 0o600, 0o700),
                                                           (0o002, 0o664, 0o775)])
def test_artifacts_get_the_users_umask(tmp_path, tiny, umask, file_mode, folder_mode):
    """Written files and model folders are as readable as any file the user creates (mkstemp alone gives 0600)."""
    import os
    import stat

    old = os.umask(umask)
    try:
        artifacts.write_json(tmp_path / "results.json", {"a": 1})
        artifacts.write_npz(tmp_path / "s.npz", x=np.zeros(2))
        folder = artifacts.save_model(tiny[0], tiny[1], tmp_path / "model")
    finally:
        os.umask(old)
    for path in (tmp_path / "results.json", tmp_path / "s.npz", folder / "config.json"):
        assert stat.S_IMODE(path.stat().st_mode) == file_mode, path
    assert stat.S_IMODE(folder.stat().st_mode) == folder_mode
