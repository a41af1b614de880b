"""3M-Pose's student-teacher RDM loss (search/teacher.py): RDMs, Pearson, the max-over-students
loss and its gradient, and the frozen teacher from a module or a checkpoint of this project."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from posenas.arch import build_model
from posenas.checkpoint import save_checkpoint
from posenas.codecs import AssociativeEmbeddingCodec
from posenas.errors import PosenasError
from posenas.search.teacher import Teacher, pearson, rdm, rdm_loss

pytestmark = pytest.mark.usefixtures("one_thread")

TINY_AE = {"space": "simplebaseline", "backbone": "resnet18", "width_mult": 0.125,
           "head": {"widths": [16, 16, 16], "kernels": [4, 4, 4]}, "tags": True}


def test_rdm_is_the_upper_triangle_of_euclidean_distances_in_order():
    points = torch.tensor([[0.0, 0.0], [3.0, 4.0], [6.0, 0.0]])
    assert torch.allclose(rdm(points), torch.tensor([5.0, 6.0, 5.0]))  # (0,1), (0,2), (1,2)
    # (N, C, H, W) flattens per sample: the same points as 1x1x2 maps, far from the origin (float32
    # squares of 1e4 lose the 25 of a distance unless the batch is centred first)
    maps = (points + 1e4).reshape(3, 1, 1, 2)
    assert torch.allclose(rdm(maps), torch.tensor([5.0, 6.0, 5.0]), atol=1e-4)
    four = torch.tensor([[0.0], [1.0], [3.0], [7.0]])
    assert rdm(four).tolist() == [1.0, 3.0, 7.0, 2.0, 6.0, 4.0]  # (0,1),(0,2),(0,3),(1,2),(1,3),(2,3)


def test_rdm_is_float32_under_bf16_autocast_and_its_zero_distances_have_finite_gradients():
    torch.manual_seed(0)
    x = torch.randn(4, 8, 5, 5)
    w = torch.randn(8, 8, 1, 1)
    exact = rdm(nn.functional.conv2d(x, w))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = nn.functional.conv2d(x, w)  # bf16 under autocast
        assert y.dtype == torch.bfloat16
        got = rdm(y)
    assert got.dtype == torch.float32
    assert torch.allclose(got, exact, rtol=2e-2)  # only the input's bf16 rounding, not a bf16 Gram matrix
    same = torch.tensor([[1.0, 2.0], [1.0, 2.0], [0.0, 5.0]], requires_grad=True)
    assert rdm(same)[0] == 0
    rdm(same).sum().backward()
    assert torch.isfinite(same.grad).all()


def test_rdm_needs_three_images():
    with pytest.raises(PosenasError, match="the teacher loss needs a batch of at least 3 images"):
        rdm(torch.zeros(2, 4, 8, 8))
    with pytest.raises(PosenasError, match="at least 3 images"):
        rdm_loss([torch.zeros(2, 4)], [torch.zeros(2, 4)])


def test_pearson_matches_a_hand_computation_and_numpy():
    a, b = [1.0, 2.0, 3.0, 4.0], [2.0, 1.0, 4.0, 3.0]
    # means 2.5: deviations (-1.5,-0.5,0.5,1.5) and (-0.5,-1.5,1.5,0.5);
    # products 0.75 each: cov 3; both sums of squares 5
    got = pearson(torch.tensor(a), torch.tensor(b))
    assert got.item() == pytest.approx(3.0 / 5.0, abs=1e-6)
    assert got.item() == pytest.approx(np.corrcoef(a, b)[0, 1], abs=1e-6)
    assert pearson(torch.tensor(a), torch.tensor(a)).item() == pytest.approx(1.0, abs=1e-6)
    assert pearson(torch.tensor(a), -torch.tensor(a)).item() == pytest.approx(-1.0, abs=1e-6)
    const = torch.full((4,), 3.0, requires_grad=True)
    value = pearson(const, torch.tensor(b))
    assert value.item() == 0.0
    value.backward()
    assert torch.isfinite(const.grad).all()
    with pytest.raises(PosenasError, match="same length"):
        pearson(torch.zeros(3), torch.zeros(6))


def test_rdm_loss_is_zero_for_identical_and_scaled_representations():
    torch.manual_seed(0)
    teacher = [torch.randn(5, 4, 6, 6), torch.randn(5, 8, 3, 3)]
    other = torch.randn(5, 2, 6, 6)
    assert rdm_loss([other, *teacher], teacher).item() == pytest.approx(0.0, abs=1e-6)
    # distances scale with a representation, Pearson does not change
    assert rdm_loss([other, 3.0 * teacher[0], 0.01 * teacher[1]], teacher).item() == pytest.approx(0.0, abs=1e-6)
    assert rdm_loss([other], teacher).item() > 1e-2  # a different representation does cost


def test_rdm_loss_takes_the_best_student_tensor_per_teacher_tensor():
    # three images as 1-D points; RDMs by hand: teacher (1, 3, 2), good (2, 5, 3), bad (3, 2, 1)
    teacher = torch.tensor([[0.0], [1.0], [3.0]])
    good = torch.tensor([[0.0], [2.0], [5.0]])  # distances (2, 5, 3)
    bad = torch.tensor([[0.0], [3.0], [2.0]])  # distances (3, 2, 1)

    def corr(u, v):
        mu, mv = sum(u) / 3, sum(v) / 3
        cov = sum((p - mu) * (q - mv) for p, q in zip(u, v))
        return cov / math.sqrt(sum((p - mu) ** 2 for p in u) * sum((q - mv) ** 2 for q in v))

    t = [1.0, 3.0, 2.0]
    r_good, r_bad = corr(t, [2.0, 5.0, 3.0]), corr(t, [3.0, 2.0, 1.0])
    assert r_good > r_bad
    expected = 1.0 - max(r_good, r_bad)
    assert rdm_loss([bad, good], [teacher]).item() == pytest.approx(expected, abs=1e-6)
    assert rdm_loss([good, bad], [teacher]).item() == pytest.approx(expected, abs=1e-6)
    assert rdm_loss([bad], [teacher]).item() == pytest.approx(1.0 - r_bad, abs=1e-6)
    # two teacher tensors: the mean of their best similarities
    assert rdm_loss([bad, good], [teacher, bad]).item() == pytest.approx(1.0 - (r_good + 1.0) / 2, abs=1e-6)


def test_rdm_loss_gradient_reaches_the_student_not_the_teacher():
    torch.manual_seed(1)
    student = torch.randn(4, 3, 5, 5, requires_grad=True)
    teacher = torch.randn(4, 6, 5, 5, requires_grad=True)
    loss = rdm_loss([student], [teacher])
    loss.backward()
    assert student.grad is not None and student.grad.abs().sum() > 0 and torch.isfinite(student.grad).all()
    assert teacher.grad is None
    # a step against the gradient brings the student's RDM closer to the teacher's
    with torch.no_grad():
        after = rdm_loss([student - 0.05 * student.grad / student.grad.norm()], [teacher])
    assert after < loss


def _tiny_sequential() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(inplace=True),
                         nn.Conv2d(4, 2, 1))


def test_teacher_returns_the_named_layer_output_frozen():
    model = _tiny_sequential()
    teacher = Teacher(model, layers=["1", "3"])
    assert not model.training and not any(p.requires_grad for p in model.parameters())
    x = torch.randn(3, 3, 8, 8)
    got = teacher.representations(x)
    with torch.no_grad():
        bn = model[1](model[0](x))  # negative values too: what the layer gave, before the in-place ReLU
        out = model(x)
    assert len(got) == 2 and torch.equal(got[0], bn) and torch.equal(got[1], out)
    assert (got[0] < 0).any() and not got[0].requires_grad
    model.train()  # batch statistics, running stats updated: not a teacher's
    assert torch.equal(teacher.representations(x)[1], out)  # runs in eval whatever was set meanwhile
    # default: the model's output tensors
    (default,) = Teacher(model).representations(x)
    assert torch.equal(default, out)


def test_teacher_takes_each_tensor_of_a_tuple_output():
    class Branches(nn.Module):
        def forward(self, x):
            return x, x[:, :, ::2, ::2] * 2

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.split = Branches()

        def forward(self, x):
            a, b = self.split(x)
            return a.mean() + b.mean()

    x = torch.randn(3, 2, 4, 4)
    got = Teacher(Net(), ["split"]).representations(x)
    assert [t.shape for t in got] == [(3, 2, 4, 4), (3, 2, 2, 2)] and torch.equal(got[1], x[:, :, ::2, ::2] * 2)


def test_teacher_unknown_layer_names_the_layer_and_valid_names():
    with pytest.raises(PosenasError,
                       match=r"teacher layer 'conv9' is no module of the model; module names include: 0, 1, 2, 3"):
        Teacher(_tiny_sequential(), ["0", "conv9"])


def _tiny_bottomup_checkpoint(path) -> nn.Module:
    torch.manual_seed(0)
    model = build_model(TINY_AE, 17)
    codec = AssociativeEmbeddingCodec(input_size=(64, 64), heatmap_sizes=((16, 16),))
    save_checkpoint(path, {"arch": TINY_AE, "schema": "coco17", "codec": codec.to_dict(),
                           "state_dict": model.state_dict()})
    return model.eval()


def test_teacher_from_checkpoint_reads_back_the_saved_model(tmp_path):
    path = tmp_path / "teacher.pt"
    model = _tiny_bottomup_checkpoint(path)
    x = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        expected = model(x)
    (out,) = Teacher.from_checkpoint(path).representations(x)  # default: the model's outputs
    assert out.shape == (3, 34, 16, 16) and torch.allclose(out, expected, atol=1e-6)

    name = next(n for n, m in model.named_modules() if isinstance(m, nn.Conv2d))
    teacher = Teacher.from_checkpoint(path, layers=[name])
    assert not any(p.requires_grad for p in teacher.model.parameters())
    with torch.no_grad():
        direct = dict(model.named_modules())[name]
        captured = []
        handle = direct.register_forward_hook(lambda m, i, o: captured.append(o.clone()))
        model(x)
        handle.remove()
    assert torch.allclose(teacher.representations(x)[0], captured[0], atol=1e-6)

    with pytest.raises(PosenasError, match=rf"{path.name}: teacher layer 'nope' is no module"):
        Teacher.from_checkpoint(path, layers=["nope"])
    with pytest.raises(PosenasError, match="no such checkpoint file"):
        Teacher.from_checkpoint(tmp_path / "missing.pt")
