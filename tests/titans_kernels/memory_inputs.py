"""Random inputs for the memory op at a given shape, shared by the kernel tests."""

import torch


def make_inputs(B, T, H, d, depth, expansion=2, dtype=torch.float64, carried=False, seed=0,
                lr_max=0.1, requires_grad=False):
    """q, k (L2-normalised as in the memory layer), v, gates and init weights (or a carried state)."""
    g = torch.Generator().manual_seed(seed)

    def rand(*shape):
        return torch.randn(*shape, generator=g, dtype=torch.float64)

    q, k = (torch.nn.functional.normalize(rand(B, T, H, d), dim=-1) for _ in range(2))
    v = rand(B, T, H, d)
    lr = lr_max * torch.rand(B, T, H, generator=g, dtype=torch.float64)
    momentum = torch.rand(B, T, H, generator=g, dtype=torch.float64)
    forget = 0.3 * torch.rand(B, T, H, generator=g, dtype=torch.float64)
    dims = [d] + [expansion * d] * (depth - 1) + [d]
    lead = (B, H) if carried else (H,)
    weights = tuple(rand(*lead, dims[i], dims[i + 1]) / dims[i] ** 0.5 for i in range(depth))
    momenta = tuple(0.1 * rand(B, H, dims[i], dims[i + 1]) for i in range(depth)) if carried else None
    tensors = dict(q=q, k=k, v=v, lr=lr, momentum=momentum, forget=forget, weights=weights, momenta=momenta)
    out = {}
    for name, x in tensors.items():
        if x is None:
            out[name] = None
        elif isinstance(x, tuple):
            out[name] = tuple(t.to(dtype).requires_grad_(requires_grad) for t in x)
        else:
            out[name] = x.to(dtype).requires_grad_(requires_grad)
    return out


def leaves(inputs):
    """Every tensor of an input dict, flattened in a fixed order."""
    flat = []
    for x in inputs.values():
        if isinstance(x, tuple):
            flat.extend(x)
        elif x is not None:
            flat.append(x)
    return flat


def random_shape(seed, chunk_size):
    """A small random (B, T, H, d) with B, H > 1 likely and T not a multiple of the chunk."""
    g = torch.Generator().manual_seed(seed)

    def pick(lo, hi):
        return int(torch.randint(lo, hi + 1, (1,), generator=g))

    T = pick(2, 3) * chunk_size + pick(1, max(1, chunk_size - 1)) if chunk_size > 1 else pick(5, 29)
    return pick(2, 3), T, pick(2, 3), pick(3, 8)


def run_with_loss(inputs, backend, chunk_size, seed=1):
    """Run the op and backprop a random linear function of every output; returns (out, state, grads)."""
    from titans_kernels import neural_memory

    out, (weights_T, momenta_T) = neural_memory(**inputs, chunk_size=chunk_size, backend=backend)
    g = torch.Generator().manual_seed(seed)
    loss = 0.0
    for t in (out, *weights_T, *momenta_T):
        loss = loss + (t * torch.randn(t.shape, generator=g, dtype=torch.float64).to(t.device, t.dtype)).sum()
    loss.backward()
    return out.detach(), [t.detach() for t in (*weights_T, *momenta_T)], [x.grad for x in leaves(inputs)]
