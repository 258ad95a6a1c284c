"""TensorBoard logs: the event files a --tensorboard run writes hold every promised tag."""

from __future__ import annotations

import builtins
from pathlib import Path

import pytest
import torch

from mnist_cnn import tblog
from mnist_cnn.cli import main
from mnist_cnn.datasets import MNISTLike, Split
from mnist_cnn.errors import ConfigError
from mnist_cnn.train import preset_config, train


@pytest.fixture(scope="module")
def tiny(tiny_data) -> MNISTLike:
    """200 training, 20 validation and 20 test images of the generated data."""

    def part(split: Split, n: int) -> Split:
        return Split(split.name, split.images[:n].clone(), split.labels[:n].clone())

    return MNISTLike(
        name="mnist",
        classes=tiny_data.classes,
        train=part(tiny_data.train, 200),
        val=part(tiny_data.val, 20),
        test=part(tiny_data.test, 20),
    )


def _events(log_dir: Path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(log_dir), size_guidance={"scalars": 0, "images": 0})
    acc.Reload()
    return acc


def test_feature_map_grid_layout():
    maps = torch.arange(32 * 3 * 2, dtype=torch.float32).view(32, 3, 2)
    grid = tblog.feature_map_grid(maps)
    assert grid.shape == (1, 4 * 3 + 3, 8 * 2 + 7)
    assert grid.max() == 1.0 and grid.min() == 0.0
    # Map 9 (row 1, column 1) sits below map 1, after one gap row and one gap column.
    assert torch.equal(grid[0, 4:7, 3:5], maps[9] / maps.max())
    assert torch.all(grid[0, 3, :] == 0.5)


def test_a_tensorboard_run_writes_scalars_and_feature_maps(tiny: MNISTLike, tmp_path: Path):
    config = preset_config(
        "seed", steps=6, batch_size=10, seed=0, device="cpu", log_every=2, tensorboard=True
    )
    run = tmp_path / "run"
    train(config, run, data=tiny, curves=False)
    acc = _events(run / tblog.TENSORBOARD_DIR)
    tags = acc.Tags()
    assert set(tblog.SCALAR_TAGS) <= set(tags["scalars"])
    assert tags["images"] == [tblog.TAG_FEATURE_MAPS]

    steps = [0, 2, 4, 6]
    assert [e.step for e in acc.Scalars(tblog.TAG_VAL_ACCURACY)] == steps
    assert [e.step for e in acc.Scalars(tblog.TAG_LOSS)] == steps[1:]  # no loss before step 1
    assert [e.step for e in acc.Scalars(tblog.TAG_SPEED)] == steps[1:]  # needs two records
    assert all(e.value > 0 for e in acc.Scalars(tblog.TAG_SPEED))
    assert [e.value for e in acc.Scalars(tblog.TAG_LR)] == pytest.approx([1e-4] * 4)
    images = acc.Images(tblog.TAG_FEATURE_MAPS)
    assert [e.step for e in images] == steps
    assert (images[0].height, images[0].width) == (4 * 28 + 3, 8 * 28 + 7)
    # The filters learn: the picture of the same digit changes between log steps.
    assert images[0].encoded_image_string != images[-1].encoded_image_string


def test_without_the_package_the_cli_says_what_to_install(
    monkeypatch, tmp_path: Path, capsys, tiny_root: Path
):
    real_import = builtins.__import__

    def no_tensorboard(name, *args, **kwargs):
        if name.startswith("torch.utils.tensorboard") or name.startswith("tensorboard"):
            raise ImportError(f"No module named {name!r}")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_tensorboard)
    with pytest.raises(ConfigError, match=r"pip install -e '\.\[tensorboard\]' in the project"):
        tblog.require_tensorboard()
    run = tmp_path / "run"
    args = ["train", "--tensorboard", "--steps", "1", "--data-dir", str(tiny_root)]
    assert main([*args, "--out", str(run)]) == 1
    err = capsys.readouterr().err
    # One line that names the flag and the extra to install, from the project's folder.
    assert err.count("\n") == 1 and err.startswith("mnist-cnn: error: ")
    assert "--tensorboard" in err and "pip install -e '.[tensorboard]'" in err
    assert not run.exists()  # nothing written
