"""anchor_merge on CUDA (docs/ops.md §2) against the float64 reference and the CPU kernel. Skipped (with a
reason) where no GPU is visible."""
import pytest
import torch

import restore_ext
from restore_ext import reference

from conftest import CUDA_ONLY, DTYPES, run_isolated

pytestmark = CUDA_ONLY


def anchor_margin(x, k, rule):
    """Smallest float64 gap behind a discrete choice of anchor_merge: the K-th vs (K+1)-th score, and each
    token's best vs second-best anchor similarity. Above ~1e-4 float32 kernels cannot flip a choice."""
    sim, density, nearest, score = reference.anchor_scores(x, rule)
    gaps = []
    if k < x.shape[1]:
        top = score.topk(k + 1, dim=1).values
        gaps.append(float((top[:, k - 1] - top[:, k]).min()))
    anchors = reference.topk_indices(score, k)
    if k > 1:
        to_anchor = sim.gather(2, anchors[:, None, :].expand(-1, x.shape[1], k)).topk(2, dim=-1).values
        gaps.append(float((to_anchor[..., 0] - to_anchor[..., 1]).min()))
    return min(gaps, default=float("inf"))


def separated_features(b, n, d, k, rule, seed):
    for attempt in range(50):
        g = torch.Generator().manual_seed(seed * 100 + attempt)
        centres = torch.randn(b, 16, d, generator=g) * 3
        which = torch.randint(0, 16, (b, n), generator=g)
        x = centres.gather(1, which[:, :, None].expand(b, n, d)) + torch.randn(b, n, d, generator=g)
        if anchor_margin(x, k, rule) > 1e-4:
            return x
    pytest.fail("no well-separated sample found")


@pytest.mark.parametrize("rule", ["reference", "dpc"])
@pytest.mark.parametrize("n,k", [(1, 1), (2, 1), (2, 2), (576, 1), (576, 64), (576, 288), (2880, 192)])
def test_anchor_merge_cuda_matches_reference(rule, n, k):
    x = separated_features(2, n, 64, k, rule, seed=n + k)
    got = restore_ext.anchor_merge(x.cuda(), k, rule)
    want = reference.anchor_merge(x, k, rule)
    assert torch.equal(got.anchors.cpu(), want.anchors)
    assert torch.equal(got.assign.cpu(), want.assign)
    assert torch.equal(got.size.cpu(), want.size)
    torch.testing.assert_close(got.merged.cpu().double(), want.merged, rtol=1e-5, atol=1e-5)
    cpu = restore_ext.anchor_merge(x, k, rule)
    assert torch.equal(got.anchors.cpu(), cpu.anchors) and torch.equal(got.assign.cpu(), cpu.assign)


@pytest.mark.parametrize("dtype", DTYPES)
def test_anchor_merge_cuda_dtypes(dtype):
    x = separated_features(3, 300, 32, 40, "reference", seed=5).to(dtype)
    got = restore_ext.anchor_merge(x.cuda(), 40)
    want = reference.anchor_merge(x, 40)
    assert got.merged.dtype == dtype
    assert torch.equal(got.anchors.cpu(), want.anchors) and torch.equal(got.size.cpu(), want.size)
    torch.testing.assert_close(got.merged.cpu().double(), want.merged, rtol=1e-2, atol=1e-2)


def test_anchor_merge_cuda_duplicates_and_zeros():
    x = torch.randn(1, 40, 16)
    x[0, 20:] = x[0, :20]  # twins: bit-identical similarities, ties to the lower index / slot
    x[0, 5] = 0
    x[0, 25] = 0
    got = restore_ext.anchor_merge(x.cuda(), 10)
    cpu = restore_ext.anchor_merge(x, 10)
    for a, b in zip(got, cpu):
        torch.testing.assert_close(a.cpu(), b, rtol=1e-5, atol=1e-6)


def test_anchor_merge_cuda_large_n_no_n_by_n():
    x = torch.randn(1, 20000, 32, device="cuda")
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    out = restore_ext.anchor_merge(x, 128)
    torch.cuda.synchronize()
    assert torch.cuda.max_memory_allocated() - before < 20000 * 20000 * 4 // 8  # far below one N x N float
    assert int(out.size.sum()) == 20000


@pytest.mark.parametrize("dtype", ["float32", "float16"])
@pytest.mark.parametrize("poison", ["nan", "inf"])
def test_anchor_merge_cuda_nan_or_inf_token_does_not_crash(dtype, poison):
    """A token with a NaN or inf feature (an fp16 overflow) has NaN similarity to every anchor. The GPU
    argmax used to keep its initial slot INT64_MAX for such a token, and size.scatter_add_ then failed a
    device-side assert (a dead CUDA context). The CPU kernel and the reference give it slot 0; so must CUDA.
    Run in a fresh interpreter so a regression fails this test only, not every CUDA test after it."""
    proc = run_isolated(f"""
        import math, torch, restore_ext
        from restore_ext import reference
        g = torch.Generator().manual_seed(0)
        x = torch.zeros(2, 12, 8)
        for i in range(11):
            x[:, i, i % 4] = 1.0  # four clear clusters: tokens 0-3 and their noisy copies
        x[:, 4:11] += 0.1 * torch.randn(2, 7, 8, generator=g)
        x[:, 11] = torch.randn(2, 8, generator=g)
        x[0, 11, 5] = math.{poison}
        x[1, 11, 3] = math.{poison}
        x = x.to(torch.{dtype})
        got = restore_ext.anchor_merge(x.cuda(), 4)
        torch.cuda.synchronize()
        want = reference.anchor_merge(x, 4)
        cpu = restore_ext.anchor_merge(x, 4)
        for name in ("anchors", "assign", "size"):
            g_, w_, c_ = getattr(got, name).cpu(), getattr(want, name), getattr(cpu, name)
            assert torch.equal(g_, w_) and torch.equal(g_, c_), (name, g_, w_, c_)
        torch.testing.assert_close(got.merged.cpu(), cpu.merged, equal_nan=True, rtol=1e-3, atol=1e-3)
        print("ok")
    """)
    assert proc.returncode == 0 and "ok" in proc.stdout, proc.stdout + proc.stderr


def test_anchor_merge_cuda_opcheck():
    x = torch.randn(2, 50, 16, device="cuda")
    torch.library.opcheck(torch.ops.restore.anchor_merge.default, (x, 9, "reference"))


def test_anchor_merge_cuda_errors_name_arguments():
    x = torch.randn(2, 10, 4, device="cuda")
    with pytest.raises(RuntimeError, match="anchor_merge: num_anchors must satisfy"):
        restore_ext.anchor_merge(x, 11)
