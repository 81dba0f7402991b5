"""Bad input gets a clear error naming the argument, never a crash, a hang or a silently wrong result."""
import math

import numpy as np
import pytest
import torch

import restore_ext
from conftest import run_isolated

f32 = torch.float32


def q_k_v(b=1, lq=4, lk=6, h=4, hkv=2, dh=8, dtype=f32):
    return torch.randn(b, lq, h, dh, dtype=dtype), torch.randn(b, lk, hkv, dh, dtype=dtype), torch.randn(b, lk, hkv, dh, dtype=dtype)


def pos(b=1, lq=4, lk=6):
    return torch.arange(lq).expand(b, lq), torch.arange(lk).expand(b, lk), torch.zeros(8)


Q, K, V = q_k_v()
QP, KP, TB = pos()
S = torch.randn(2, 10)
X = torch.randn(2, 10, 4)

CASES = [
    # (call, exception, words the message must contain)
    (lambda: restore_ext.topk_indices(torch.randn(10), 2), RuntimeError, ["scores", "2-D"]),
    (lambda: restore_ext.topk_indices(S.double(), 2), RuntimeError, ["scores", "float16", "Double"]),
    (lambda: restore_ext.topk_indices(S.long(), 2), RuntimeError, ["scores", "Long"]),
    (lambda: restore_ext.topk_indices(S, 0), RuntimeError, ["k must satisfy", "got k = 0"]),
    (lambda: restore_ext.topk_indices(S, 11), RuntimeError, ["k must satisfy", "N = 10", "got k = 11"]),
    (lambda: restore_ext.topk_indices(torch.randn(2, 0), 1), RuntimeError, ["k must satisfy", "N = 0"]),
    (lambda: restore_ext.anchor_merge(torch.randn(10, 4), 2), RuntimeError, ["x", "3-D"]),
    (lambda: restore_ext.anchor_merge(X.int(), 2), RuntimeError, ["x", "float16", "Int"]),
    (lambda: restore_ext.anchor_merge(X, 0), RuntimeError, ["num_anchors", "got num_anchors = 0"]),
    (lambda: restore_ext.anchor_merge(X, 11), RuntimeError, ["num_anchors", "N = 10"]),
    (lambda: restore_ext.anchor_merge(torch.randn(2, 10, 0), 2), RuntimeError, ["x", "D >= 1"]),
    (lambda: restore_ext.anchor_merge(X, 2, "median"), RuntimeError, ["rule", "reference", "dpc", "median"]),
    (lambda: restore_ext.calibrated_attention(Q[0], K, V), RuntimeError, ["q", "4-D"]),
    (lambda: restore_ext.calibrated_attention(Q, K.half(), V), RuntimeError, ["one dtype", "Half"]),
    (lambda: restore_ext.calibrated_attention(Q.double(), K.double(), V.double()), RuntimeError, ["q", "Double"]),
    (lambda: restore_ext.calibrated_attention(*q_k_v(h=4, hkv=3)), RuntimeError, ["3 heads", "does not divide", "4"]),
    (lambda: restore_ext.calibrated_attention(Q, K[..., :4], V[..., :4]), RuntimeError, ["head dim", "4", "8"]),
    (lambda: restore_ext.calibrated_attention(Q, K, V[:, :5]), RuntimeError, ["v", "shape"]),
    (lambda: restore_ext.calibrated_attention(Q, K, V, torch.zeros(1, 5)), RuntimeError, ["log_size", "(B, Lk)"]),
    (lambda: restore_ext.calibrated_attention(Q, K, V, torch.zeros(1, 6).double()), RuntimeError, ["log_size", "float32"]),
    (lambda: restore_ext.calibrated_attention(Q, K, V, None, QP, KP, None), RuntimeError, ["together", "table None"]),
    (lambda: restore_ext.calibrated_attention(Q, K, V, None, QP.float(), KP, TB), RuntimeError, ["q_pos", "int32 or int64"]),
    (lambda: restore_ext.calibrated_attention(Q, K, V, None, QP, KP[:, :5], TB), RuntimeError, ["k_pos", "Lk"]),
    (lambda: restore_ext.calibrated_attention(Q, K, V, None, QP, KP, TB[None]), RuntimeError, ["table", "1-D"]),
    (lambda: restore_ext.calibrated_attention(Q, K, V, None, QP, KP, TB[:0]), RuntimeError, ["table", "at least one"]),
    (lambda: restore_ext.calibrated_attention(Q, K, V, None, QP, KP, TB.double()), RuntimeError, ["table", "float32"]),
    (lambda: restore_ext.calibrated_attention(Q, K, V, scale=math.nan), RuntimeError, ["scale", "finite"]),
    (lambda: restore_ext.calibrated_attention(Q, torch.randn(1, 6, 8, 2).transpose(2, 3), V), RuntimeError,
     ["k", "contiguous last dimension"]),
    (lambda: restore_ext.calibrated_attention(torch.randn(2, 4, 4, 8), K, V), RuntimeError, ["batch"]),
    (lambda: restore_ext.restore_reduce(X[0], torch.zeros(2, 1, dtype=torch.long), 3), ValueError, ["features", "3-D"]),
    (lambda: restore_ext.restore_reduce(X, torch.zeros(3, 1, dtype=torch.long), 3), ValueError, ["retained", "(B, R)"]),
    (lambda: restore_ext.restore_reduce(X, torch.zeros(2, 1), 3), ValueError, ["retained", "int"]),
    (lambda: restore_ext.restore_reduce(X, torch.tensor([[0, 1], [2, 3]]), 2), ValueError, ["num_out", "R = 2"]),
    (lambda: restore_ext.restore_reduce(X, torch.tensor([[0], [2]]), 11), ValueError, ["num_out", "N = 10"]),
    (lambda: restore_ext.restore_reduce(X, torch.tensor([[0, 0], [1, 2]]), 4), ValueError, ["retained", "distinct"]),
    (lambda: restore_ext.restore_reduce(X, torch.tensor([[0, 10], [1, 2]]), 4), ValueError, ["retained", "[0, N = 10)"]),
    (lambda: restore_ext.distance_bias_table(0, torch.ones(4)), ValueError, ["max_distance", ">= 1"]),
    (lambda: restore_ext.distance_bias_table(5, torch.ones(2, 2)), ValueError, ["inv_freq", "1-D"]),
    (lambda: restore_ext.distance_bias_table(5, torch.arange(4)), ValueError, ["inv_freq", "floating"]),
    # An int the dispatcher cannot carry (outside int64) or a non-integer: the op wrapper words the error itself
    # instead of the dispatcher's "Expected a value of type 'int' ... found type 'int'".
    (lambda: restore_ext.topk_indices(S, 2**63), RuntimeError, ["topk_indices", "k must satisfy 1 <= k <= N = 10", str(2**63)]),
    (lambda: restore_ext.topk_indices(S, -(2**63) - 1), RuntimeError, ["topk_indices", "k must satisfy", "int64"]),
    (lambda: restore_ext.topk_indices(S, 2.5), RuntimeError, ["topk_indices", "k must be an int", "float 2.5"]),
    (lambda: restore_ext.topk_indices(torch.randn(10), 2**64), RuntimeError, ["topk_indices", "k must satisfy 1 <= k <= N,"]),
    (lambda: restore_ext.divprune_indices(X, 2**63), RuntimeError, ["divprune_indices", "k must satisfy 1 <= k <= N = 10"]),
    (lambda: restore_ext.divprune_indices(X, None), RuntimeError, ["divprune_indices", "k must be an int", "NoneType"]),
    (lambda: restore_ext.anchor_merge(X, 2**63), RuntimeError, ["anchor_merge", "num_anchors must satisfy 1 <= K <= N = 10"]),
    (lambda: restore_ext.anchor_merge(X, "3"), RuntimeError, ["anchor_merge", "num_anchors must be an int", "str '3'"]),
    (lambda: restore_ext.distance_bias_table(3.7, torch.ones(4)), ValueError, ["max_distance", "an int >= 1", "3.7"]),
]


@pytest.mark.parametrize("case", range(len(CASES)))
def test_bad_input_message_names_the_argument(case):
    call, exc, words = CASES[case]
    with pytest.raises(exc) as info:
        call()
    for w in words:
        assert w in str(info.value), f"message {str(info.value)!r} lacks {w!r}"


def test_int_arguments_the_dispatcher_takes_still_pass_through():
    """The wrappers' own int check refuses only what the dispatcher cannot carry; integer types it takes (numpy
    ints, 0-d integer tensors, and bool, which it reads as 0 / 1) reach the op unchanged."""
    want = restore_ext.topk_indices(S, 2)
    for k in (np.int64(2), torch.tensor(2)):
        assert torch.equal(restore_ext.topk_indices(S, k), want)
        assert restore_ext.anchor_merge(X, k).merged.shape == (2, 2, 4)
        assert restore_ext.divprune_indices(X, k).shape == (2, 2)
    assert restore_ext.topk_indices(S, True).shape == (2, 1)


def test_nastiest_inputs_do_not_crash_the_process():
    """Inputs that would index out of bounds or overflow in a careless kernel, run in a child process so a
    segfault or abort fails this test instead of killing pytest."""
    result = run_isolated(
        """
        import math, torch, restore_ext
        bad = [
            lambda: restore_ext.topk_indices(torch.randn(2, 5), 2**62),
            lambda: restore_ext.topk_indices(torch.randn(2, 5), -(2**62)),
            lambda: restore_ext.anchor_merge(torch.randn(1, 5, 3), 2**40),
            lambda: restore_ext.anchor_merge(torch.randn(1, 0, 3), 1),
            lambda: restore_ext.calibrated_attention(torch.randn(1, 2, 4, 8), torch.randn(1, 3, 0, 8), torch.randn(1, 3, 0, 8)),
            lambda: restore_ext.calibrated_attention(torch.randn(1, 2, 2, 8), torch.randn(1, 3, 2, 8), torch.randn(1, 3, 2, 8),
                                                     None, torch.zeros(1, 2, dtype=torch.long), torch.zeros(1, 3, dtype=torch.long), torch.zeros(0)),
        ]
        for call in bad:
            try:
                call()
            except (RuntimeError, ValueError):
                pass
            else:
                raise SystemExit("accepted a bad input")
        # Extreme but valid: positions far outside the table clamp; all-masked keys give zeros, not NaN.
        q = torch.randn(1, 3, 2, 8); k = torch.randn(1, 4, 2, 8)
        out = restore_ext.calibrated_attention(q, k, k, torch.full((1, 4), -math.inf),
            torch.tensor([[2**62, -2**62, 0]]), torch.tensor([[-2**62, 2**62, 5, 7]]), torch.zeros(3))
        assert not out.isnan().any() and (out == 0).all()
        out = restore_ext.calibrated_attention(q, k, k, None, torch.tensor([[2**40, -2**40, 0]]),
            torch.tensor([[-2**40, 2**40, 5, 7]]), torch.randn(3), causal=False)
        assert out.isfinite().all()
        print("survived")
        """
    )
    assert result.returncode == 0 and "survived" in result.stdout, result.stdout + result.stderr


def test_backward_through_the_ops_raises_instead_of_silent_zero_gradients():
    q = torch.randn(1, 4, 2, 8, requires_grad=True)
    out = restore_ext.calibrated_attention(q, q.detach(), q.detach())
    with pytest.raises(RuntimeError, match="calibrated_attention has no backward"):
        out.sum().backward()
    x = torch.randn(1, 6, 4, requires_grad=True)
    with pytest.raises(RuntimeError, match="anchor_merge has no backward"):
        restore_ext.anchor_merge(x, 2).merged.sum().backward()
    with torch.no_grad():  # the normal inference path is unaffected
        assert restore_ext.calibrated_attention(q, q, q).shape == q.shape
