import numpy as np
import pytest
import torch

from mnist_cnn.checkpoint import load_model
from mnist_cnn.device import measure_peak_memory
from mnist_cnn.evaluate import evaluate
from mnist_cnn.model import DeepMNIST, ModelConfig


def test_accuracy_is_identical_for_every_batch_size(tiny_run, tiny_root):
    """Batch size 1 over 303 images (neither 7 nor 100 divides it) counts as a single batch does."""
    from mnist_cnn.datasets import load_dataset

    model, _ = load_model(tiny_run)
    train = load_dataset("mnist", tiny_root, download=False).train
    images, labels = train.images[:303], train.labels[:303]
    results = {bs: evaluate(model, images, labels, batch_size=bs) for bs in (1, 7, 100, 303)}
    correct = {bs: r.correct for bs, r in results.items()}
    assert len(set(correct.values())) == 1, correct
    assert 0 < correct[1] < 303  # neither trivially right nor trivially wrong
    assert all(r.total == 303 for r in results.values())
    assert results[1].confusion == results[303].confusion
    # At batch size 100 the last batch holds 3 images; averaging per-batch accuracies (the
    # seed's way) would weigh them like 100. Counting gives the plain ratio.
    assert results[100].accuracy == results[100].correct / 303


def test_per_class_accuracy_is_each_true_class_row(tiny_run, tiny_data):
    model, _ = load_model(tiny_run)
    images, labels = tiny_data.val.images, tiny_data.val.labels
    result = evaluate(model, images, labels, batch_size=100)
    confusion = np.array(result.confusion)
    # Rows are true classes: their sums are the label counts (not the prediction counts).
    assert confusion.sum(1).tolist() == torch.bincount(labels, minlength=10).tolist()
    predicted = model(images.float().div(255).unsqueeze(1)).argmax(1)
    assert confusion.sum(0).tolist() == torch.bincount(predicted, minlength=10).tolist()
    expected = confusion.diagonal() / confusion.sum(1)
    np.testing.assert_allclose(result.per_class_accuracy, expected, rtol=1e-12)
    assert len(set(result.per_class_accuracy)) > 1  # not one figure copied to every class


def test_peak_memory_sees_a_short_lived_allocation():
    """A 64 MiB block allocated and freed inside the measured block shows up in the peak.

    The block is mapped from the kernel (anonymous mmap) and written to, so its pages are new
    to the process: a malloc'd block could reuse memory the process already holds, and then
    its resident set would rightly not grow.
    """
    import mmap

    block = 64 * 1024 * 1024
    with measure_peak_memory(torch.device("cpu")) as memory:
        data = mmap.mmap(-1, block)
        np.frombuffer(data, dtype=np.uint8)[:] = 1  # written to: resident, not just reserved
        data.close()
    assert memory.peak_rss_growth is not None
    assert memory.peak_rss_growth >= 0.9 * block, memory.peak_rss_growth
    assert "MiB" in memory.summary()


SMALL = ModelConfig(conv1_channels=4, conv2_channels=8, hidden=16)  # where size is moot


def test_evaluate_restores_training_mode():
    model = DeepMNIST(SMALL).train()
    evaluate(model, torch.zeros(3, 28, 28, dtype=torch.uint8), torch.zeros(3, dtype=torch.long))
    assert model.training


class _OOMAbove(torch.nn.Module):
    """Wraps a model and raises CUDA's out-of-memory error for batches over a limit."""

    def __init__(self, inner, limit):
        super().__init__()
        self.inner, self.limit, self.sizes = inner, limit, []

    def forward(self, x):
        self.sizes.append(len(x))
        if len(x) > self.limit:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 8.7 GiB")
        return self.inner(x)


def test_out_of_memory_halves_the_batch_and_retries():
    torch.manual_seed(0)
    inner = DeepMNIST(SMALL)
    images = torch.randint(0, 256, (400, 28, 28), dtype=torch.uint8)
    labels = torch.randint(0, 10, (400,))
    reference = evaluate(inner, images, labels, batch_size=400)
    wrapped = _OOMAbove(inner, limit=150)
    result = evaluate(wrapped, images, labels, batch_size=400)
    assert result.batch_size == 100
    assert wrapped.sizes[:3] == [400, 200, 100]
    assert result.correct == reference.correct and result.total == 400
    assert len(result.notes) == 2 and "retrying at 200" in result.notes[0]


def test_other_errors_are_not_swallowed():
    class Broken(torch.nn.Module):
        def forward(self, x):
            raise ValueError("boom")

    with pytest.raises(ValueError, match="boom"):
        evaluate(
            Broken(), torch.zeros(2, 28, 28, dtype=torch.uint8), torch.zeros(2).long(), device="cpu"
        )
