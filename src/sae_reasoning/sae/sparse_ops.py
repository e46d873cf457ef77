"""Sparse encoder/decoder products for SAE training, with hand-written backward passes.

A training step of a dense SAE costs five [batch, d_in] x [d_in, d_sae]-sized matmuls:
the encoder forward, the decoder forward, and in the backward dL/df, dW_dec and dW_enc.
Only the encoder forward has to be dense: every other product touches only the active
entries of the codes f (TopK: k per token; ReLU after training: L0 per token). Here the
active entries are a list (rows, cols) sorted by row, and

    decode            x_hat[b]    = sum_{n: rows=b} v_n W_dec[cols_n]     embedding_bag
    dL/dv             g_n         = dx_hat[rows_n] . W_dec[cols_n]        SDDMM (aten kernel
                                                                         of embedding_bag)
    dW_dec[i]         = sum_{n: cols=i} v_n dx_hat[rows_n]                embedding_bag by latent
    dW_enc[:, i]      = sum_{n: cols=i} g_pre_n x[rows_n]                 embedding_bag by latent

so their cost is nnz * d_in instead of batch * d_sae * d_in. `Codes` holds the entry
lists (and, once, their order by latent); `encode_at` and `decode` are autograd
Functions whose gradients equal the dense products' (tests/sae/test_architectures.py);
`dense=True` gives those dense products, the reference the sparse path is tested against.

Every autograd Function of the SAEs lives here: besides the sparse products, `encode_all`
(the dense regime), `encode_rows_topk` (AuxK's dead latents) and the JumpReLU
straight-through estimators `jumprelu_ste` and `step_ste` (Rajamanoharan et al. 2024).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.autograd import Function


def _argsort_small_ints(keys: torch.Tensor) -> torch.Tensor:
    """Stable argsort; through int32 when the keys fit (on CPU torch sorts int32 ~20x faster
    than int64 here: 13 ms vs 290 ms for 131k keys)."""
    if keys.numel() and int(keys.max()) < 2**31:
        keys = keys.int()
    return torch.sort(keys, stable=True).indices


def bag_offsets(sorted_keys: torch.Tensor, n_bags: int) -> torch.Tensor:
    """Start of each bag in a list sorted by bag id (empty bags allowed)."""
    counts = torch.bincount(sorted_keys, minlength=n_bags)
    return torch.cumsum(counts, 0) - counts


class Codes:
    """Active entries (rows[n], cols[n]) of a [n_rows, d_sae] code matrix, sorted by row."""

    def __init__(
        self,
        rows: torch.Tensor,
        cols: torch.Tensor,
        n_rows: int,
        d_sae: int,
        values: torch.Tensor | None = None,
    ):
        self.rows, self.cols = rows, cols
        self.values = values  # pre-activations at the entries, when the selection has them
        self.n_rows, self.d_sae = n_rows, d_sae
        self.row_offsets = bag_offsets(rows, n_rows)
        self._by_col: tuple[torch.Tensor, torch.Tensor] | None = None

    @classmethod
    def from_mask(cls, mask: torch.Tensor) -> Codes:
        rows, cols = mask.nonzero(as_tuple=True)  # row-major, so sorted by row
        return cls(rows, cols, mask.shape[0], mask.shape[1])

    @classmethod
    def from_topk(
        cls, indices: torch.Tensor, d_sae: int, values: torch.Tensor | None = None
    ) -> Codes:
        n, k = indices.shape
        rows = torch.arange(n, device=indices.device).repeat_interleave(k)
        return cls(
            rows, indices.reshape(-1), n, d_sae, None if values is None else values.reshape(-1)
        )

    @classmethod
    def from_flat(cls, flat: torch.Tensor, n_rows: int, d_sae: int) -> Codes:
        flat = flat[_argsort_small_ints(flat)]
        return cls(flat // d_sae, flat % d_sae, n_rows, d_sae)

    def subset(self, keep: torch.Tensor) -> Codes:
        return Codes(
            self.rows[keep],
            self.cols[keep],
            self.n_rows,
            self.d_sae,
            None if self.values is None else self.values[keep],
        )

    def gather(self, pre: torch.Tensor) -> torch.Tensor:
        """pre at the entries (a copy)."""
        if self.values is not None:
            return self.values.clone()
        return pre[self.rows, self.cols]

    @property
    def nnz(self) -> int:
        return self.rows.numel()

    def by_col(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(permutation sorting the entries by latent, offsets of each latent's bag)."""
        if self._by_col is None:
            perm = _argsort_small_ints(self.cols)
            self._by_col = perm, bag_offsets(self.cols[perm], self.d_sae)
        return self._by_col

    def to_dense(self, values: torch.Tensor) -> torch.Tensor:
        out = values.new_zeros(self.n_rows, self.d_sae)
        return out.index_put((self.rows, self.cols), values)

    def scatter_by_col(self, table: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """[d_sae, width]: row i = sum over the entries n of latent i of weights_n table[rows_n]."""
        perm, offsets = self.by_col()
        return F.embedding_bag(
            self.rows[perm], table, offsets, mode="sum", per_sample_weights=weights[perm]
        )


def sddmm(codes: Codes, a: torch.Tensor, W: torch.Tensor) -> torch.Tensor:
    """g_n = a[rows_n] . W[cols_n] for every entry (a: [n_rows, d], W: [d_sae, d])."""
    try:
        # embedding_bag's own per-sample-weight gradient: one dot product per entry, with
        # no [nnz, d] gather materialised.
        return torch.ops.aten._embedding_bag_per_sample_weights_backward(
            a, W, codes.cols, codes.row_offsets, codes.rows, 0, -1
        )
    except (RuntimeError, AttributeError):  # kernel missing for this device / dtype
        out = a.new_empty(codes.nnz)
        for s in range(0, codes.nnz, 8192):
            sl = slice(s, s + 8192)
            out[sl] = (W[codes.cols[sl]] * a[codes.rows[sl]]).sum(-1)
        return out


class _EncodeAt(Function):
    """pre[rows_n, cols_n] for pre = x @ W_enc + c, given pre (computed without grad)."""

    @staticmethod
    def forward(ctx, x, W_enc, c, pre, codes):
        ctx.save_for_backward(x)
        ctx.codes = codes
        return codes.gather(pre)

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        codes = ctx.codes
        grad_W_enc = grad_c = None
        if ctx.needs_input_grad[1]:
            grad_W_enc = codes.scatter_by_col(x, g).t().contiguous()
        if ctx.needs_input_grad[2]:
            grad_c = g.new_zeros(codes.d_sae).index_add_(0, codes.cols, g)
        if ctx.needs_input_grad[0]:
            raise RuntimeError("encode_at does not differentiate with respect to x")
        return None, grad_W_enc, grad_c, None, None


class _DenseEncodeAt(_EncodeAt):
    """Reference for `_EncodeAt`: the same values, gradients by dense matmuls."""

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        G = ctx.codes.to_dense(g)
        return None, x.T @ G, G.sum(0), None, None


class _Decode(Function):
    """sum over entries of v_n W_dec[cols_n] into row rows_n: [n_rows, d_in]."""

    @staticmethod
    def forward(ctx, values, W_dec, codes):
        ctx.save_for_backward(values, W_dec)
        ctx.codes = codes
        return F.embedding_bag(
            codes.cols, W_dec, codes.row_offsets, mode="sum", per_sample_weights=values
        )

    @staticmethod
    def backward(ctx, grad_out):
        values, W_dec = ctx.saved_tensors
        codes = ctx.codes
        grad_out = grad_out.contiguous()
        grad_v = sddmm(codes, grad_out, W_dec) if ctx.needs_input_grad[0] else None
        grad_W = codes.scatter_by_col(grad_out, values) if ctx.needs_input_grad[1] else None
        return grad_v, grad_W, None


def encode_at(
    x: torch.Tensor,
    W_enc: torch.Tensor,
    c: torch.Tensor,
    pre: torch.Tensor,
    codes: Codes,
    dense: bool = False,
) -> torch.Tensor:
    """Entries of x @ W_enc + c at `codes` (values taken from `pre`), differentiable in
    W_enc and c; the backward costs nnz * d_in (dense: batch * d_sae * d_in)."""
    if dense:
        return _DenseEncodeAt.apply(x, W_enc, c, pre, codes)
    if codes.nnz == 0:
        return pre.new_zeros(0) + 0 * (W_enc.sum() + c.sum())  # keeps the graph connected
    return _EncodeAt.apply(x, W_enc, c, pre, codes)


def decode(
    values: torch.Tensor, W_dec: torch.Tensor, codes: Codes, dense: bool = False
) -> torch.Tensor:
    """codes-with-values @ W_dec ([n_rows, d_in], no bias)."""
    if dense:
        return codes.to_dense(values) @ W_dec
    if codes.nnz == 0:
        return W_dec.new_zeros(codes.n_rows, W_dec.shape[1]) + 0 * (values.sum() + W_dec.sum())
    return _Decode.apply(values, W_dec, codes)


class _EncodeAll(Function):
    """x @ W_enc + c given its value `pre` (computed without grad): the forward is free."""

    @staticmethod
    def forward(ctx, x, W_enc, c, pre):
        ctx.save_for_backward(x)
        return pre.clone()

    @staticmethod
    def backward(ctx, G):
        (x,) = ctx.saved_tensors
        return None, x.T @ G, G.sum(0), None


def encode_all(
    x: torch.Tensor, W_enc: torch.Tensor, c: torch.Tensor, pre: torch.Tensor
) -> torch.Tensor:
    """All of x @ W_enc + c ([n, d_sae], a copy of `pre`), differentiable in W_enc and c."""
    return _EncodeAll.apply(x, W_enc, c, pre)


class _RowTopKEncode(Function):
    """values [n, k] of x @ W + c at columns idx [n, k] (given, computed without grad);
    gradients for W and c by one dense matmul."""

    @staticmethod
    def forward(ctx, x, W, c, values, idx):
        ctx.save_for_backward(x, idx)
        ctx.width = W.shape[1]
        return values.clone()

    @staticmethod
    def backward(ctx, g):
        x, idx = ctx.saved_tensors
        G = g.new_zeros(x.shape[0], ctx.width).scatter_(1, idx, g)
        return None, x.T @ G, G.sum(0), None, None


def encode_rows_topk(
    x: torch.Tensor, W: torch.Tensor, c: torch.Tensor, values: torch.Tensor, idx: torch.Tensor
) -> torch.Tensor:
    """x @ W + c at the per-row columns idx [n, k] (values given), differentiable in W, c."""
    return _RowTopKEncode.apply(x, W, c, values, idx)


class _JumpReLUSTE(Function):
    """v * H(v - t); d/dv = H(v - t), d/dt = -(t / eps) * rect((v - t) / eps)."""

    @staticmethod
    def forward(ctx, v, t, eps):
        ctx.save_for_backward(v, t)
        ctx.eps = eps
        return v * (v > t)

    @staticmethod
    def backward(ctx, g):
        v, t = ctx.saved_tensors
        eps = ctx.eps
        rect = ((v - t).abs() < eps / 2).to(g)
        return (v > t).to(g) * g, -(t / eps) * rect * g, None


class _StepSTE(Function):
    """H(v - t); d/dv = 0, d/dt = -(1 / eps) * rect((v - t) / eps) (Rajamanoharan et al.)."""

    @staticmethod
    def forward(ctx, v, t, eps):
        ctx.save_for_backward(v, t)
        ctx.eps = eps
        return (v > t).to(v)

    @staticmethod
    def backward(ctx, g):
        v, t = ctx.saved_tensors
        eps = ctx.eps
        rect = ((v - t).abs() < eps / 2).to(g)
        return torch.zeros_like(v), -(1.0 / eps) * rect * g, None


def jumprelu_ste(v: torch.Tensor, threshold: torch.Tensor, bandwidth: float) -> torch.Tensor:
    """JumpReLU v * H(v - threshold) with the straight-through gradient for the threshold."""
    return _JumpReLUSTE.apply(v, threshold, bandwidth)


def step_ste(v: torch.Tensor, threshold: torch.Tensor, bandwidth: float) -> torch.Tensor:
    """H(v - threshold) (the L0 count) with the straight-through gradient for the threshold."""
    return _StepSTE.apply(v, threshold, bandwidth)
