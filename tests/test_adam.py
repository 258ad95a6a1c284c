"""The fast path's CPU Adam against ``torch.optim.Adam(fused=True)``: the same numbers (compared
with ``torch.equal``, exact), the same ``state_dict``, and no ``torch._dynamo`` import."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mnist_cnn.adam import FusedAdam


def _params(seed: int = 0) -> list[torch.nn.Parameter]:
    gen = torch.Generator().manual_seed(seed)
    conv = torch.randn(8, 4, 5, 5, generator=gen).contiguous(memory_format=torch.channels_last)
    return [
        torch.nn.Parameter(conv),
        torch.nn.Parameter(torch.randn(32, 40, generator=gen)),
        torch.nn.Parameter(torch.randn(32, generator=gen)),
        torch.nn.Parameter(torch.randn(3, generator=gen)),  # only some steps give it a gradient
    ]


def _twins(**settings) -> tuple[list, torch.optim.Adam, list, FusedAdam]:
    a, b = _params(), _params()
    return a, torch.optim.Adam(a, fused=True, **settings), b, FusedAdam(b, **settings)


def _steps(pairs, n: int, start: int = 0) -> None:
    """``n`` steps of each (params, optimizer) pair on the same gradients."""
    for i in range(start, start + n):
        gen = torch.Generator().manual_seed(100 + i)
        grads = [torch.randn(p.shape, generator=gen) for p in pairs[0][0]]
        for params, opt in pairs:
            opt.zero_grad(set_to_none=True)
            for j, (p, g) in enumerate(zip(params, grads, strict=True)):
                if j == 3 and i % 3:
                    continue  # no gradient this step: Adam leaves it and its state alone
                p.grad = torch.empty_like(p).copy_(g)  # the layout backward gives it
            opt.param_groups[0]["lr"] = 1e-3 * (1 + i % 4)  # a schedule between steps
            opt.step()


def _same(a: list, opt_a, b: list, opt_b) -> None:
    for p, q in zip(a, b, strict=True):
        assert torch.equal(p, q)
        assert p.stride() == q.stride()
        sa, sb = opt_a.state[p], opt_b.state[q]
        assert set(sa) == set(sb) == {"step", "exp_avg", "exp_avg_sq"}
        for key in sa:
            assert torch.equal(sa[key], sb[key]), key
            assert sa[key].dtype == sb[key].dtype and sa[key].stride() == sb[key].stride(), key


@pytest.mark.parametrize(
    "settings",
    [{"lr": 1e-4}, {"lr": 3e-3, "betas": (0.8, 0.99), "eps": 1e-6, "weight_decay": 0.01}],
)
def test_the_same_update_as_torch_fused_adam(settings) -> None:
    """Bit for bit over 7 steps, with a schedule, weight decay, channels-last weights and a
    parameter that misses gradients. Catches any change to the update: the step counted after
    the kernel instead of before (bias correction off by one), betas swapped, decay dropped."""
    a, opt_a, b, opt_b = _twins(**settings)
    _steps([(a, opt_a), (b, opt_b)], 7)
    _same(a, opt_a, b, opt_b)
    assert opt_b.state[b[3]]["step"].item() == 3  # steps 0, 3, 6 gave it a gradient
    assert not torch.equal(a[0], _params()[0])  # it did update


def test_state_dict_is_torch_adams_and_loads_both_ways() -> None:
    """A checkpoint written with one optimizer resumes with the other: the plain step's
    torch.optim.Adam and the fast path's FusedAdam continue alike from either's state_dict."""
    a, opt_a, b, opt_b = _twins(lr=1e-3)
    _steps([(a, opt_a), (b, opt_b)], 4)
    saved_a, saved_b = opt_a.state_dict(), opt_b.state_dict()
    assert saved_b["param_groups"] == saved_a["param_groups"]  # keys, values and their types
    assert saved_b["state"].keys() == saved_a["state"].keys()
    for n, values in saved_a["state"].items():
        for key, value in values.items():
            assert torch.equal(saved_b["state"][n][key], value)

    # Crossed: torch's state into FusedAdam, FusedAdam's into torch.optim.Adam.
    c = [torch.nn.Parameter(p.detach().clone()) for p in a]
    d = [torch.nn.Parameter(p.detach().clone()) for p in b]
    opt_c, opt_d = FusedAdam(c, lr=5.0), torch.optim.Adam(d, lr=5.0, fused=True)
    opt_c.load_state_dict(saved_a)
    opt_d.load_state_dict(saved_b)
    assert opt_c.param_groups[0]["lr"] == opt_a.param_groups[0]["lr"]  # settings from the file
    _steps([(a, opt_a), (c, opt_c), (d, opt_d)], 3, start=4)
    _same(a, opt_a, c, opt_c)
    _same(a, opt_a, d, opt_d)


def test_loaded_state_is_a_copy() -> None:
    """Changing the dict a state was loaded from (a file's tensors) does not reach the optimizer."""
    a, opt_a, b, opt_b = _twins(lr=1e-3)
    _steps([(a, opt_a)], 2)
    saved = opt_a.state_dict()
    opt_b.load_state_dict(saved)
    before = opt_b.state[b[1]]["exp_avg"].clone()
    saved["state"][1]["exp_avg"].add_(1.0)
    assert torch.equal(opt_b.state[b[1]]["exp_avg"], before)


@pytest.mark.parametrize(
    "make",
    [
        lambda: FusedAdam([], lr=1e-3),
        lambda: FusedAdam(_params(), lr=-1.0),
        lambda: FusedAdam(_params(), lr=1e-3, betas=(0.9, 1.0)),
        lambda: FusedAdam([torch.nn.Parameter(torch.zeros(2, dtype=torch.complex64))]),
    ],
    ids=["no parameters", "negative lr", "beta 1", "complex"],
)
def test_settings_adam_is_not_defined_for_are_refused(make) -> None:
    with pytest.raises(ValueError):
        make()


@pytest.mark.slow
def test_a_cpu_training_process_never_imports_dynamo(tiny_root: Path, tmp_path: Path) -> None:
    """torch.optim imports torch._dynamo on an optimizer's first use: 1.2–2 s of each training
    command's start on two cores. The fast path's CPU training, checkpoint and resume included,
    does without it (a regression here costs every `mnist-cnn train` those seconds)."""
    code = (
        "import sys\n"
        "from mnist_cnn.cli import main\n"
        "args = ['--data-dir', sys.argv[1], '--device', 'cpu', '--eval-batch-size', '1000']\n"
        "out = sys.argv[2]\n"
        "assert main(['train', *args, '--preset', 'fast', '--schedule', 'constant',\n"
        "             '--steps', '2', '--checkpoint-every', '1', '--out', out]) == 0\n"
        "assert main(['train', '--resume', out, '--steps', '3']) == 0\n"
        "print('dynamo imported:', 'torch._dynamo' in sys.modules)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, str(tiny_root), str(tmp_path / "run")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "trained 3 steps" in done.stdout, done.stdout
    assert done.stdout.strip().endswith("dynamo imported: False"), done.stdout[-500:]
