import pytest
import torch

from mnist_cnn.checkpoint import load_model
from mnist_cnn.evaluate import evaluate
from mnist_cnn.model import DeepMNIST


def test_accuracy_is_identical_for_every_batch_size(trained_run, mnist):
    model, _ = load_model(trained_run)
    results = {
        bs: evaluate(model, mnist.test.images, mnist.test.labels, batch_size=bs)
        for bs in (1, 7, 100, 10_000)
    }
    correct = {bs: r.correct for bs, r in results.items()}
    assert len(set(correct.values())) == 1, correct
    assert all(r.total == 10_000 for r in results.values())
    assert results[100].confusion == results[10_000].confusion
    # 7 does not divide 10,000: the last batch has 4 images; averaging per-batch accuracies
    # (the seed's way) would weigh those 4 like 7. Counting gives the plain ratio.
    assert results[7].accuracy == results[7].correct / 10_000


def test_per_class_and_memory(trained_run, mnist):
    model, _ = load_model(trained_run)
    result = evaluate(model, mnist.test.images, mnist.test.labels, batch_size=100)
    per_class = result.per_class_accuracy
    assert len(per_class) == 10 and all(0.8 < a <= 1.0 for a in per_class)
    counts = [sum(row) for row in result.confusion]
    assert counts == torch.bincount(mnist.test.labels, minlength=10).tolist()
    assert result.memory is not None and result.memory.peak_rss_growth is not None
    assert model.training is False


def test_evaluate_restores_training_mode():
    model = DeepMNIST().train()
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


def test_out_of_memory_halves_the_batch_and_retries(mnist):
    torch.manual_seed(0)
    inner = DeepMNIST()
    images, labels = mnist.test.images[:1000], mnist.test.labels[:1000]
    reference = evaluate(inner, images, labels, batch_size=1000)
    wrapped = _OOMAbove(inner, limit=300)
    result = evaluate(wrapped, images, labels, batch_size=1000)
    assert result.batch_size == 250
    assert wrapped.sizes[:3] == [1000, 500, 250]
    assert result.correct == reference.correct and result.total == 1000
    assert len(result.notes) == 2 and "retrying at 500" in result.notes[0]


def test_other_errors_are_not_swallowed():
    class Broken(torch.nn.Module):
        def forward(self, x):
            raise ValueError("boom")

    with pytest.raises(ValueError, match="boom"):
        evaluate(
            Broken(), torch.zeros(2, 28, 28, dtype=torch.uint8), torch.zeros(2).long(), device="cpu"
        )
