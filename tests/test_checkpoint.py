import dataclasses
import json

import pytest
import torch

from mnist_cnn.checkpoint import (
    load_model,
    load_training_state,
    save_model,
    save_training_state,
)
from mnist_cnn.errors import CheckpointError
from mnist_cnn.model import DeepMNIST, ModelConfig


def test_model_round_trip(tmp_path):
    torch.manual_seed(0)
    model = DeepMNIST()
    save_model(tmp_path / "m.safetensors", model)
    rng = torch.get_rng_state()
    loaded, meta = load_model(tmp_path / "m.safetensors")
    # Loading draws no random numbers (no initialisation the file's weights would replace): a
    # notebook's random stream is where it was.
    assert torch.equal(torch.get_rng_state(), rng)
    assert meta["model"] == model.config.to_dict()
    assert not loaded.training
    for (k, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items(), strict=True):
        assert torch.equal(a, b), k
        assert b.device.type == "cpu" and b.untyped_storage().nbytes() == b.nbytes, k  # its own
    assert all(p.requires_grad for p in loaded.parameters())  # trainable further
    assert not list(tmp_path.glob(".*tmp*")), "temp files left behind"


def test_training_state_round_trip_restores_optimizer_and_rng(tmp_path):
    torch.manual_seed(0)
    model = DeepMNIST()
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    model(torch.rand(2, 1, 28, 28)).sum().backward()
    opt.step()
    save_training_state(tmp_path, model, opt, {"step": 7})
    expected_draw = torch.rand(3)

    torch.manual_seed(123)
    model2 = DeepMNIST()
    opt2 = torch.optim.Adam(model2.parameters(), lr=1e-4)
    meta = load_training_state(tmp_path, model2, opt2)
    assert meta["step"] == 7
    assert torch.equal(torch.rand(3), expected_draw)  # the RNG continues where it was saved
    s1, s2 = opt.state_dict(), opt2.state_dict()
    for idx in s1["state"]:
        for key, value in s1["state"][idx].items():
            assert torch.equal(torch.as_tensor(value), torch.as_tensor(s2["state"][idx][key]))
    assert s1["param_groups"][0]["lr"] == s2["param_groups"][0]["lr"]


def test_damaged_file_is_refused(tmp_path):
    path = tmp_path / "m.safetensors"
    save_model(path, DeepMNIST())
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="damaged"):
        load_model(path)
    path.write_bytes(b"\x80\x04\x95pickle")  # a pickle is not a safetensors file, never unpickled
    with pytest.raises(CheckpointError, match="damaged or not a safetensors"):
        load_model(path)


def test_other_architecture_is_refused(tmp_path):
    wider = DeepMNIST(ModelConfig(hidden=512))
    path = tmp_path / "m.safetensors"
    save_model(path, wider)
    # Edit the description so it claims to be the seed network: the shapes give it away.
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(path))
    meta = {
        "format": "mnist-cnn",
        "version": "1",
        "meta": json.dumps({"model": dataclasses.asdict(ModelConfig())}),
    }
    save_file(tensors, str(path), metadata=meta)
    with pytest.raises(CheckpointError, match=r"fc1\.(weight|bias) has shape"):
        load_model(path)


def test_foreign_safetensors_file_is_refused(tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "x.safetensors"
    save_file({"w": torch.zeros(2)}, str(path))
    with pytest.raises(CheckpointError, match="not an mnist-cnn checkpoint"):
        load_model(path)


def test_missing_run_is_a_clear_error(tmp_path):
    with pytest.raises(CheckpointError, match="no such run folder"):
        load_model(tmp_path / "nope")
    with pytest.raises(CheckpointError, match="no model.safetensors"):
        load_model(tmp_path)
