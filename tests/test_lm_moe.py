"""MoE: each token goes to exactly k experts, the sorted dispatch equals a per-token dense
computation, and the auxiliary loss matches the Switch/Mixtral formula computed independently."""
import pytest
import torch
import torch.nn.functional as F

from vscan.layers.moe import MoE, load_balancing_loss


def _dense_reference(moe: MoE, x):
    """Per token, sum of its top-k experts' outputs weighted by the router probabilities."""
    h = x.reshape(-1, x.shape[-1])
    probs = F.softmax(h @ moe.router.weight.T, dim=-1)
    out = torch.zeros_like(h)
    for t in range(h.shape[0]):
        w, idx = probs[t].topk(moe.top_k)
        if moe.normalize_weights:
            w = w / w.sum()
        for wj, e in zip(w, idx):
            g, u = (moe.gate_up_proj[e] @ h[t]).chunk(2)
            out[t] += wj * (moe.down_proj[e] @ (F.silu(g) * u))
    return out.reshape(x.shape)


@pytest.mark.parametrize("E,k,normalize", [(4, 2, False), (8, 1, False), (5, 3, True)])
def test_routing_and_outputs(E, k, normalize):
    torch.manual_seed(0)
    moe = MoE(12, 10, num_experts=E, top_k=k, normalize_weights=normalize, init_std=0.5)
    x = torch.randn(3, 7, 12)
    y = moe(x)
    T = 21
    _, w, idx = moe.route(x.reshape(T, 12))
    assert idx.shape == (T, k)
    assert all(len(set(row.tolist())) == k for row in idx)          # k distinct experts per token
    assert int(moe.expert_counts.sum()) == T * k                    # each token dispatched k times
    assert torch.equal(moe.expert_counts, torch.bincount(idx.reshape(-1), minlength=E))
    if normalize:
        torch.testing.assert_close(w.sum(-1), torch.ones(T))
    torch.testing.assert_close(y, _dense_reference(moe, x), atol=1e-5, rtol=1e-5)


def _aux_by_hand(logits, k):
    T, E = logits.shape
    p = logits.softmax(-1)
    chosen = torch.zeros(T, E)
    for t in range(T):
        for e in p[t].topk(k).indices:
            chosen[t, e] = 1.0
    f = chosen.sum(0) / T          # fraction of tokens routed to each expert (sums to k)
    P = p.sum(0) / T               # mean router probability per expert
    return E * sum(f[i] * P[i] for i in range(E))


def test_aux_loss_matches_formula():
    torch.manual_seed(1)
    moe = MoE(8, 6, num_experts=6, top_k=2, init_std=1.0)
    moe(torch.randn(5, 8))
    expected = _aux_by_hand(moe.router_logits.detach(), 2)
    torch.testing.assert_close(moe.aux_loss.detach(), expected)
    torch.testing.assert_close(load_balancing_loss(moe.router_logits.detach(), 2), expected)


def test_aux_loss_uniform_router_is_k_and_has_router_grad():
    moe = MoE(8, 6, num_experts=4, top_k=2)
    torch.nn.init.zeros_(moe.router.weight)
    moe(torch.randn(10, 8))
    torch.testing.assert_close(moe.aux_loss, torch.tensor(2.0))
    moe2 = MoE(8, 6, num_experts=4, top_k=2, init_std=1.0)
    moe2(torch.randn(10, 8))
    moe2.aux_loss.backward()
    assert moe2.router.weight.grad is not None and moe2.router.weight.grad.abs().sum() > 0


def test_moe_errors_name_the_field():
    with pytest.raises(ValueError, match="top_k"):
        MoE(8, 8, num_experts=2, top_k=3)
    with pytest.raises(ValueError, match="expert_parallel_size"):
        MoE(8, 8, num_experts=6, top_k=2, expert_parallel_size=4)
    with pytest.raises(ValueError, match="hidden_act"):
        MoE(8, 8, num_experts=2, top_k=1, hidden_act="tanhh")
