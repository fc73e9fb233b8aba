"""The FLOP model of the memory op (stated, not counted), shared by the benchmarks and the MFU log."""


def memory_forward_flops(d: int, depth: int, expansion: int, chunk: int) -> float:
    """Model FLOPs of the memory's forward per token and head: the matmuls of the dual form, per layer
    of the memory MLP (d_in x d_out): the key pass (2 d_in d_out, and as much again to carry the error
    back for every layer but the first), the query pass against [W | S] (4 d_in d_out), the end-of-chunk
    update of [W | S] (4 d_in d_out), and the C x C scores against the keys' inputs and errors
    (2 C (d_in + d_out)). Depth 2, E = expansion: 22 E d^2 + (4 + 4 E) C d; depth 1: 10 d^2 + 4 C d.
    Forward + backward is 3x forward."""
    dims = [d] + [expansion * d] * (depth - 1) + [d]
    flops = 0
    for layer, (d_in, d_out) in enumerate(zip(dims, dims[1:])):
        flops += (10 + (2 if layer else 0)) * d_in * d_out + 2 * chunk * (d_in + d_out)
    return flops
