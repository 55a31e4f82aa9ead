"""One routing through a dispatcher and the experts at a given dtype, with gradients: the tool the packed-path
tests (CPU and GPU) use to compare dispatchers and precisions on exactly the same routing."""
import torch
from torch.func import functional_call

EXPERT_PARAMS = ["fc1_weight", "fc1_bias", "fc2_weight", "fc2_bias"]


class PackedExperts(torch.nn.Module):
    """`Experts.forward_packed` as a module call, so `functional_call` can swap in copies of the weights."""

    def __init__(self, experts):
        super().__init__()
        self.experts = experts

    def forward(self, buf, rows):
        return self.experts.forward_packed(buf, rows)


def outputs_and_grads(layer, dispatcher, groups, dtype, loss):
    """[output, grad of the tokens, grads of the expert parameters], all float32, for `loss(output)` with the
    layer's experts cast to `dtype`."""
    params = {n: getattr(layer.experts, n).detach().to(dtype).requires_grad_(True) for n in EXPERT_PARAMS}
    x = groups.to(dtype).clone().requires_grad_(True)
    buf = dispatcher.dispatch(x)
    if dispatcher.packed:
        out = functional_call(PackedExperts(layer.experts), {f"experts.{n}": v for n, v in params.items()},
                              (buf, dispatcher.rows))
    else:
        out = functional_call(layer.experts, params, (buf,))
    y = dispatcher.combine(out)
    loss(y).backward()
    return [y.detach().float(), x.grad.float()] + [params[n].grad.float() for n in EXPERT_PARAMS]
