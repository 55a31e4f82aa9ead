"""Packed dispatch for sparse routings: every kept (token, expert) assignment is one row of a single [R, D]
buffer, rows sorted by expert, and each expert matmul is one grouped GEMM (`torch._grouped_mm`).

Why: `IndexDispatcher` pads every expert to G*C rows, so the expert matmuls run on E*G*C rows whatever the
routing kept. With one 196-token image per group (E in {8, 32}, k in {1, 2}) that is 6-31% more rows than token
choices at capacity factor 1.0 (ceil, then a multiple of 4) and 31% more at 1.25, plus the choices the router
dropped. Here only kept rows are computed.

Layout (built from a `Routing` without any host sync: fixed sizes, data-dependent values only):
- R = G*A rows, A = assignments per group (S*k for top-k, E*C for expert choice). Kept assignments come first,
  sorted by expert, then by group, then by slot (the router's buffer order); `offsets[e]` (int32, on the device)
  is the end of expert e's rows. Dropped assignments fill rows offsets[-1]..R-1, the *tail*.
- Row positions come from the router's slots (slot c of expert e in group g is row start[e] + kept rows of e in
  groups before g + c), so packing is a few cumsums and scatters, no sort.

`torch._grouped_mm` leaves the tail rows of its output *uninitialised*, in the forward and in the input gradient
it computes in the backward (any bit pattern, NaN included; 0 * NaN = NaN, so a zero combine weight is no
protection). Every consumer here therefore selects instead of multiplying: the combine reads kept rows and fills
dropped ones with 0 (`masked_fill`), the dispatch backward does the same, and bias gradients are segment sums
restricted to each expert's rows (a grouped GEMM with a ones matrix). The padded-bmm fallback fills the tail
with NaN on purpose, so the CPU tests catch any consumer that reads it.

Fast path: `torch._grouped_mm` on CUDA in bf16 on compute capability 9.x / 10.x (elsewhere torch's own fallback
loops over experts and copies the offsets to the host, a sync), and on CPU in float32 / bf16 / fp16; all matrix
strides must be multiples of 16 bytes (D and H multiples of 8 in bf16, of 4 in float32). Otherwise
`grouped_linear` runs the same function as padded batched matmuls over [E, G*C] rows (exact in any dtype,
float64 included, and without host syncs), which is what the float64 tests exercise.
"""
from __future__ import annotations

import functools

import torch

from .routers import Routing

FAST_CUDA_MAJORS = (9, 10)  # torch's CUTLASS grouped GEMM: Hopper and datacenter Blackwell


def _gmm(a: torch.Tensor, b: torch.Tensor, offs: torch.Tensor) -> torch.Tensor:
    """The one call site of `torch._grouped_mm` (tests patch it to poison the undefined rows)."""
    return torch._grouped_mm(a, b, offs=offs)


@functools.lru_cache(maxsize=None)
def _cpu_grouped_mm_works(dtype: torch.dtype) -> bool:
    # Older torch releases only have the CUDA kernel.
    try:
        a = torch.ones(4, 8, dtype=dtype)
        b = torch.ones(2, 8, 8, dtype=dtype)
        out = torch._grouped_mm(a, b, offs=torch.tensor([2, 4], dtype=torch.int32))
        return bool(out[0, 0] == 8)
    except (RuntimeError, NotImplementedError, AttributeError):
        return False


def grouped_mm_usable(x: torch.Tensor, *weights: torch.Tensor) -> bool:
    """Whether `torch._grouped_mm` runs natively (no host sync, no per-expert loop on GPU) for these operands:
    x [R, K] and weights [E, K, N], all contiguous, 16-byte aligned, with K and N multiples of 16 bytes."""
    if not hasattr(torch, "_grouped_mm"):
        return False
    dtype = x.dtype
    if any(w.dtype != dtype for w in weights):
        return False
    if x.device.type == "cuda":
        if torch.version.hip or dtype != torch.bfloat16:
            return False
        if torch.cuda.get_device_capability(x.device)[0] not in FAST_CUDA_MAJORS:
            return False
    elif x.device.type == "cpu":
        if torch.compiler.is_compiling():
            # The traced op's shape rules accept bf16 only; the eager probe cannot run inside a trace.
            if dtype != torch.bfloat16:
                return False
        elif dtype not in (torch.float32, torch.bfloat16, torch.float16) or not _cpu_grouped_mm_works(dtype):
            return False
    else:
        return False
    align = 16 // x.element_size()
    tensors = (x, *weights)
    # Traced tensors have no address; the compiler's buffers are aligned, and views here start at offset 0.
    aligned = torch.compiler.is_compiling() or all(t.data_ptr() % 16 == 0 for t in tensors)
    return (aligned and all(t.is_contiguous() for t in tensors) and x.shape[-1] % align == 0
            and all(w.shape[-1] % align == 0 and w.shape[-2] % align == 0 for w in weights))


def kept_rows(y: torch.Tensor, row_of_assignment: torch.Tensor, kept: torch.Tensor) -> torch.Tensor:
    """[A, D]: the row of `y` each assignment points at, 0 for dropped assignments (selected, not multiplied:
    their rows may hold NaN)."""
    return y.index_select(0, row_of_assignment).masked_fill_(~kept[:, None], 0)


def sum_per_token(values: torch.Tensor, num_tokens: int, choices_per_token: int | None,
                  token_of_assignment: torch.Tensor) -> torch.Tensor:
    """[A, D] per-assignment values -> [num_tokens, D] sums. Token-major assignments (k adjacent per token,
    `choices_per_token` = k) are summed by a reshape; otherwise (expert choice) scattered with index_add."""
    k, d = choices_per_token, values.shape[-1]
    if k is not None:
        return values.view(num_tokens, k, d).sum(1) if k > 1 else values
    return values.new_zeros(num_tokens, d).index_add_(0, token_of_assignment, values)


class PackedRows:
    """Which expert owns each packed row, with the index maps the expert matmuls need (see module docstring)."""

    def __init__(self, offsets: torch.Tensor, expert_of_row: torch.Tensor, num_experts: int, max_rows: int):
        self.offsets = offsets  # [E] int32: end of each expert's rows
        self.expert_of_row = expert_of_row  # [R] long, num_experts for tail rows
        self.num_experts = num_experts
        self.max_rows = max_rows  # static bound on any expert's rows (G*C), sizes the padded fallback
        self.num_rows = expert_of_row.shape[0]
        self._one_hot: dict[torch.dtype, torch.Tensor] = {}
        self._padded_slots: tuple[torch.Tensor, torch.Tensor] | None = None

    def one_hot(self, dtype: torch.dtype) -> torch.Tensor:
        """[R, E] 0/1 in `dtype`, all-zero tail rows: `y.addmm_(one_hot, bias)` adds each row's expert bias (one
        pass over y, as the padded path's baddbmm). Small: E columns, not E x capacity."""
        if dtype not in self._one_hot:
            r, e = self.num_rows, self.num_experts
            hot = torch.zeros(r, e + 1, dtype=dtype, device=self.expert_of_row.device)
            self._one_hot[dtype] = hot.scatter_(1, self.expert_of_row[:, None], 1)[:, :e].contiguous()
        return self._one_hot[dtype]

    @property
    def padded_slots(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(slot of each row in [E*M] padded buffers, E*M = spare for tail rows; row of each slot, R = empty)."""
        if self._padded_slots is None:  # cached by hand: functools.cached_property's lock stops torch.compile
            self._padded_slots = self._compute_padded_slots()
        return self._padded_slots

    def _compute_padded_slots(self) -> tuple[torch.Tensor, torch.Tensor]:
        e, m, r = self.num_experts, self.max_rows, self.num_rows
        ends = self.offsets.long()
        starts = torch.cat([ends - torch.diff(ends, prepend=ends.new_zeros(1)), ends.new_zeros(1)])
        rows = torch.arange(r, device=ends.device)
        slot_of_row = torch.where(self.expert_of_row < e,
                                  self.expert_of_row * m + rows - starts[self.expert_of_row],
                                  torch.full_like(rows, e * m))
        row_of_slot = torch.full((e * m + 1,), r, dtype=torch.long, device=ends.device)
        row_of_slot = row_of_slot.scatter_(0, slot_of_row, rows)[: e * m]  # only the spare slot gets duplicates
        return slot_of_row, row_of_slot


class _GroupedLinear(torch.autograd.Function):
    """y = x @ w[e(r)] + b[e(r)] for every row r < offsets[-1]; rows past it are undefined (forward and the
    returned input gradient). Gradients of w and b only sum rows inside their expert's range."""

    @staticmethod
    def forward(ctx, x, w, b, offsets, one_hot):
        y = _gmm(x, w, offsets)
        if b is not None:
            y.addmm_(one_hot, b)  # tail rows: undefined + 0, still never read
        ctx.save_for_backward(x, w, offsets)
        ctx.has_bias = b is not None
        return y

    @staticmethod
    def backward(ctx, dy):
        x, w, offsets = ctx.saved_tensors
        dy = dy.contiguous()
        dx = dw = db = None
        if ctx.needs_input_grad[0]:
            dx = _gmm(dy, w.transpose(-2, -1), offsets)
        if ctx.needs_input_grad[1]:
            dw = _gmm(x.t(), dy, offsets)  # per-expert x_e^T dy_e over the expert's rows only
        if ctx.has_bias and ctx.needs_input_grad[2]:
            # Segment sum of dy over each expert's rows, as a grouped GEMM with ones (a plain reduction over all
            # rows would read the undefined tail, and index_add would serialise on E rows of atomics).
            ones = dy.new_ones(dy.shape[0], 16 // dy.element_size())
            db = _gmm(ones.t(), dy, offsets)[:, 0]
        return dx, dw, db, None, None


def _padded_linear(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None, rows: PackedRows) -> torch.Tensor:
    """The same function as `_GroupedLinear` with batched matmuls over [E, max_rows] padded buffers; tail rows
    come out NaN (standing in for "undefined")."""
    e, m = rows.num_experts, rows.max_rows
    slot_of_row, row_of_slot = rows.padded_slots
    k, n = w.shape[-2], w.shape[-1]
    x_pad = torch.cat([x, x.new_zeros(1, k)]).index_select(0, row_of_slot).view(e, m, k)
    y_pad = torch.bmm(x_pad, w) if b is None else torch.baddbmm(b[:, None, :], x_pad, w)
    undefined = y_pad.new_full((1, n), float("nan"))
    return torch.cat([y_pad.reshape(e * m, n), undefined]).index_select(0, slot_of_row)


def grouped_linear(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None, rows: PackedRows) -> torch.Tensor:
    """[R, K] packed rows -> [R, N]: row r times its expert's w [E, K, N] plus bias b [E, N]. Rows past
    `rows.offsets[-1]` are undefined. Uses `torch._grouped_mm` where `grouped_mm_usable`, else padded bmm."""
    if grouped_mm_usable(x, w):
        return _GroupedLinear.apply(x, w, b, rows.offsets, rows.one_hot(x.dtype) if b is not None else None)
    return _padded_linear(x, w, b, rows)


class _PackRows(torch.autograd.Function):
    """packed[r] = x[token_of_row[r]]. Backward: each token sums the gradients of its *kept* rows only (the tail
    of the incoming gradient is undefined)."""

    @staticmethod
    def forward(ctx, x, token_of_row, row_of_assignment, kept, token_of_assignment, choices_per_token):
        ctx.save_for_backward(row_of_assignment, kept, token_of_assignment)
        ctx.num_tokens, ctx.choices_per_token = x.shape[0], choices_per_token
        return x.index_select(0, token_of_row)

    @staticmethod
    def backward(ctx, d_packed):
        row, kept, token = ctx.saved_tensors
        if not ctx.needs_input_grad[0]:
            return None, None, None, None, None, None
        dx = sum_per_token(kept_rows(d_packed, row, kept), ctx.num_tokens, ctx.choices_per_token, token)
        return dx, None, None, None, None, None


class _CombineRows(torch.autograd.Function):
    """out[t] = sum over kept assignments a of token t of weight[a] * y[row[a]]; dropped assignments add 0 even
    when their row holds NaN. Differentiable in y and in the routing weights."""

    @staticmethod
    def forward(ctx, y, weight, row_of_assignment, kept, token_of_assignment, token_of_row, weight_of_row,
                num_tokens, choices_per_token):
        ctx.save_for_backward(y, weight, row_of_assignment, kept, token_of_assignment, token_of_row, weight_of_row)
        ctx.num_tokens, ctx.choices_per_token = num_tokens, choices_per_token
        weighted = kept_rows(y, row_of_assignment, kept).mul_(weight.to(y.dtype)[:, None])
        return sum_per_token(weighted, num_tokens, choices_per_token, token_of_assignment)

    @staticmethod
    def backward(ctx, d_out):
        y, weight, row, kept, token, token_of_row, weight_of_row = ctx.saved_tensors
        d_y = d_w = None
        if ctx.needs_input_grad[0]:
            # Packed order directly (a gather, no scatter): tail rows get weight 0 times a finite gradient.
            d_y = d_out.index_select(0, token_of_row).mul_(weight_of_row.to(d_out.dtype)[:, None])
        if ctx.needs_input_grad[1]:
            picked = kept_rows(y, row, kept)
            k, d = ctx.choices_per_token, y.shape[-1]
            if k is not None:
                d_w = (picked.view(ctx.num_tokens, k, d) * d_out[:, None, :]).sum(-1).reshape(-1)
            else:
                d_w = (picked * d_out.index_select(0, token)).sum(-1)
            d_w = d_w.to(weight.dtype)
        return d_y, d_w, None, None, None, None, None, None, None


class PackedDispatcher:
    """Dispatch / combine for the packed layout: `dispatch(x [G, S, D]) -> [R, D]`, `combine(y [R, D']) ->
    [G, S, D']`, with `rows` (a `PackedRows`) for `Experts.forward_packed`. Sparse routings only."""

    packed = True

    def __init__(self, routing: Routing, group_size: int):
        if routing.is_dense:
            raise ValueError("PackedDispatcher needs a sparse routing (top-k or expert-choice); soft routing is "
                             "dense, use DenseDispatcher")
        expert = routing.expert_index
        g, a = expert.shape
        e, c = routing.num_experts, routing.capacity
        device = expert.device
        self.num_groups, self.group_size = g, group_size
        self.choices_per_token = routing.choices_per_token
        kept = routing.slot_index >= 0
        # Kept assignments per (group, expert); slots of a (group, expert) are 0..count-1, so positions are dense.
        bucket = torch.where(kept, expert, torch.full_like(expert, e))
        counts = torch.zeros(g, e + 1, dtype=torch.long, device=device)
        counts = counts.scatter_add_(1, bucket, torch.ones_like(bucket))[:, :e]
        per_expert = counts.sum(0)
        ends = per_expert.cumsum(0)
        before = counts.cumsum(0) - counts  # kept rows of the same expert in earlier groups
        kept_row = (ends - per_expert).index_select(0, expert.reshape(-1)).view(g, a)
        kept_row = kept_row + before.gather(1, expert) + routing.slot_index
        kept = kept.reshape(-1)
        dropped_rank = torch.cumsum(~kept, 0) - 1
        row = torch.where(kept, kept_row.reshape(-1), ends[-1] + dropped_rank)  # a permutation of 0..R-1
        token = (torch.arange(g, device=device)[:, None] * group_size + routing.token_index).reshape(-1)
        weight = torch.where(kept, routing.combine_weight.reshape(-1), torch.zeros_like(routing.combine_weight)
                             .reshape(-1))
        self.row_of_assignment, self.kept, self.token_of_assignment, self.weight = row, kept, token, weight
        self.token_of_row = torch.empty_like(token).scatter_(0, row, token)
        self.weight_of_row = torch.empty_like(weight).scatter_(0, row, weight.detach())
        expert_of_row = torch.empty_like(row).scatter_(0, row, bucket.reshape(-1))
        self.rows = PackedRows(ends.to(torch.int32), expert_of_row, e, max_rows=g * c)

    def dispatch(self, x: torch.Tensor) -> torch.Tensor:
        d = x.shape[-1]
        return _PackRows.apply(x.reshape(-1, d), self.token_of_row, self.row_of_assignment, self.kept,
                               self.token_of_assignment, self.choices_per_token)

    def combine(self, y: torch.Tensor) -> torch.Tensor:
        n = self.num_groups * self.group_size
        out = _CombineRows.apply(y, self.weight, self.row_of_assignment, self.kept, self.token_of_assignment,
                                 self.token_of_row, self.weight_of_row, n, self.choices_per_token)
        return out.view(self.num_groups, self.group_size, y.shape[-1])
