"""Rotating and slicing the residual stream (SliceGPT, arXiv 2401.15024): the tensors of a sliced model.

An RMSNorm only rescales each token by its length, and a length does not change under an
orthogonal map. Once each norm's scale is folded into the linear layers that read its output (and
the final norm's into ``lm_head``), the whole residual stream can be expressed in any orthonormal
basis: the layers that read the stream get ``W Q``, the layers that write it ``Qᵀ W``, and where
two points of the stream use different bases the residual connection carries the change of basis
(a *shortcut* matrix). SliceGPT picks, at every point, the principal directions of the stream on
calibration text and keeps only the leading ones, so the stream becomes narrower.

Here a sliced model is described by its bases (:class:`Bases`): for a model of L blocks, the
basis of the stream entering each block (``inputs[i]``; ``inputs[L]`` is what the final norm and
``lm_head`` read) and between each block's attention and MLP (``mids[i]``), each a D x d matrix
holding the kept columns. Block i reads and writes width d_i = ``inputs[i].shape[1]``, its MLP
writes the next block's width. :func:`sliced_state_dict` turns a dense checkpoint and the bases
into the tensors of the heterogeneous format (``hubprune.export_hetero``): norms without weights,
``attn_shortcut`` / ``mlp_shortcut`` per block, embeddings and ``lm_head`` rotated and no longer tied.
With every d = D the sliced model computes exactly what the dense one does.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from hubprune.arch import ArchAdapter
from hubprune.arch.adapter import RESIDUAL
from hubprune.errors import ExportError, UnsupportedArchitectureError

if TYPE_CHECKING:
    from hubprune.shape import Shape

#: Plan tensor names of the bases: ``slicing.in.<i>`` (i = 0..L) and ``slicing.mid.<i>`` (i = 0..L-1).
IN, MID = "slicing.in", "slicing.mid"
ATTN_SHORTCUT, MLP_SHORTCUT = "attn_shortcut", "mlp_shortcut"


def check_rotatable(adapter: ArchAdapter) -> None:
    """Refuse, with the reason, a family whose norms do not commute with a rotation of the stream."""
    if adapter.rotation_note:
        raise UnsupportedArchitectureError(
            f"slicing cannot rotate family '{adapter.family}': {adapter.rotation_note}"
        )


@dataclass
class Bases:
    """Kept columns of the residual stream's basis at every point (each D x d, orthonormal columns)."""

    inputs: list[torch.Tensor]  # L + 1: entering block i; the last is the final norm's input
    mids: list[torch.Tensor]  # L: between block i's attention and its MLP

    def __post_init__(self) -> None:
        if len(self.inputs) != len(self.mids) + 1:
            raise ValueError(f"{len(self.inputs)} input bases for {len(self.mids)} blocks")
        for i, (q_in, q_mid) in enumerate(zip(self.inputs, self.mids, strict=False)):
            if q_in.shape[1] != q_mid.shape[1]:
                raise ValueError(f"block {i} reads width {q_in.shape[1]} but its MLP reads {q_mid.shape[1]}")

    def orthonormal(self) -> Bases:
        """The same bases in float64 with exactly orthonormal columns (the nearest such matrix,
        U Vᵀ of each SVD). Plan tensors are float32; rotating with slightly non-orthogonal bases
        would make a shortcut between two equal bases Qᵀ Q = I + O(1e-7) instead of I, which mixes
        a residual coordinate of thousands into every other one."""

        def fix(q: torch.Tensor) -> torch.Tensor:
            u, _, vh = torch.linalg.svd(q.double(), full_matrices=False)
            return u @ vh

        return Bases([fix(q) for q in self.inputs], [fix(q) for q in self.mids])

    @property
    def widths(self) -> list[int]:
        """d_i of every block."""
        return [int(q.shape[1]) for q in self.mids]

    @property
    def final_width(self) -> int:
        return int(self.inputs[-1].shape[1])

    def to_tensors(self) -> dict[str, torch.Tensor]:
        """The plan tensors (float32)."""
        out = {f"{IN}.{i}": q.float().contiguous() for i, q in enumerate(self.inputs)}
        out.update({f"{MID}.{i}": q.float().contiguous() for i, q in enumerate(self.mids)})
        return out

    @classmethod
    def from_tensors(cls, tensors: Mapping[str, torch.Tensor], num_blocks: int) -> Bases:
        """The bases a plan holds; an ExportError names the first one missing."""
        try:
            return cls(
                [tensors[f"{IN}.{i}"] for i in range(num_blocks + 1)],
                [tensors[f"{MID}.{i}"] for i in range(num_blocks)],
            )
        except KeyError as err:
            raise ExportError(
                f"the plan has no rotation {err.args[0]} (hubprune-plan.safetensors is missing or "
                "incomplete); re-run prune"
            ) from None


def principal_basis(covariance: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Eigenvalues (descending) and eigenvectors (columns, same order) of a symmetric D x D
    second-moment matrix, in float64. Each eigenvector's sign is fixed (largest entry positive)
    so that the same data always gives the same basis."""
    values, vectors = torch.linalg.eigh(covariance.double())
    order = torch.argsort(values, descending=True)
    values, vectors = values[order], vectors[:, order]
    peak = vectors.abs().argmax(dim=0)
    signs = torch.sign(vectors[peak, torch.arange(vectors.shape[1])])
    return values, vectors * torch.where(signs == 0, 1.0, signs)


def _name(adapter: ArchAdapter, block: int, module: str) -> str:
    return f"{adapter.layers}.{block}.{module}"


#: Rows of a reader rotated at a time: the float64 copy of a 49k-row embedding would be larger
#: than the float32 model's blocks together.
ROW_CHUNK = 4096


def _read(
    weight: torch.Tensor, scale: torch.Tensor | None, basis: torch.Tensor, dtype: torch.dtype
) -> torch.Tensor:
    """A reader of the stream (out x D) with its input columns scaled by a norm's weights (folded)
    and rotated onto `basis` (D x d), in float64, a slice of rows at a time."""
    if weight.device.type == "meta":
        return torch.empty(weight.shape[0], basis.shape[1], device="meta", dtype=dtype)
    out = torch.empty(weight.shape[0], basis.shape[1], dtype=dtype, device=weight.device)
    factor = None if scale is None else scale.double().unsqueeze(0)
    for start in range(0, weight.shape[0], ROW_CHUNK):
        rows = weight[start : start + ROW_CHUNK].double()
        out[start : start + ROW_CHUNK] = ((rows if factor is None else rows * factor) @ basis).to(dtype)
    return out


class SlicedWeights(Mapping[str, torch.Tensor]):
    """The tensors of the sliced model (the contract of the heterogeneous format's
    ``rotated_residual``), each computed from the dense model's `state_dict` (native names; a tied
    ``lm_head`` may be absent) and `bases` when it is asked for, so a writer that takes one at a
    time holds one sliced tensor, never the sliced model. Arithmetic is float64; results have the
    dense tensors' dtype."""

    def __init__(self, state_dict: Mapping[str, torch.Tensor], adapter: ArchAdapter, bases: Bases) -> None:
        check_rotatable(adapter)
        if bases.inputs[0].device.type != "meta":
            bases = bases.orthonormal()
        self._dense = state_dict
        embed_key = f"{adapter.embed}.weight"
        self._dtype = state_dict[embed_key].dtype
        self._recipes: dict[str, Callable[[], torch.Tensor]] = {}
        used: set[str] = set()

        def add(key: str, make: Callable[[], torch.Tensor], *sources: str) -> None:
            used.update(sources)
            self._recipes[key] = make

        for b in range(len(bases.mids)):
            q_in, q_mid, q_out = bases.inputs[b], bases.mids[b], bases.inputs[b + 1]
            scales = {
                "attn": _name(adapter, b, f"{adapter.attention_norms[0]}.weight"),
                "mlp": _name(adapter, b, f"{adapter.mlp_norms[0]}.weight"),
            }
            reads = {"attn": q_in, "mlp": q_mid}
            writes = {"attn": q_mid, "mlp": q_out}
            for p in adapter.projections:
                root = adapter.attention if p.sublayer == "attn" else adapter.mlp
                prefix = _name(adapter, b, f"{root}.{p.name}")
                weight, bias = f"{prefix}.weight", f"{prefix}.bias"
                has_bias = bias in state_dict
                if p.reads == RESIDUAL:
                    scale, basis = scales[p.sublayer], reads[p.sublayer]
                    add(weight, partial(self._reader, weight, scale, basis), weight, scale)
                    if has_bias:
                        add(bias, partial(self._dense.__getitem__, bias), bias)
                elif RESIDUAL in p.writes:
                    basis = writes[p.sublayer]
                    add(weight, partial(self._writer, weight, basis), weight)
                    if has_bias:
                        add(bias, partial(self._writer, bias, basis), bias)
                else:
                    raise ExportError(f"{prefix} neither reads nor writes the residual stream")
            add(f"{_name(adapter, b, ATTN_SHORTCUT)}.weight", partial(self._shortcut, q_mid, q_in))
            add(f"{_name(adapter, b, MLP_SHORTCUT)}.weight", partial(self._shortcut, q_out, q_mid))

        add(embed_key, partial(self._reader, embed_key, None, bases.inputs[0]), embed_key)
        head_key = f"{adapter.lm_head}.weight"
        head = head_key if head_key in state_dict and head_key not in used else embed_key
        final_scale = f"{adapter.final_norm}.weight"
        add(head_key, partial(self._reader, head, final_scale, bases.inputs[-1]), head, final_scale)

        # Whatever is left (Qwen3's per-head q/k norms, rotary buffers) does not touch the stream.
        for key in state_dict:
            if key in used or key in self._recipes:
                continue
            if _is_norm_weight(key, adapter):
                raise ExportError(f"{key} is a norm of the residual stream that slicing did not fold")
            add(key, partial(self._dense.__getitem__, key))

    def _reader(self, key: str, scale: str | None, basis: torch.Tensor) -> torch.Tensor:
        factor = None if scale is None else self._dense[scale]
        return _read(self._dense[key], factor, basis.double(), self._dtype)

    def _writer(self, key: str, basis: torch.Tensor) -> torch.Tensor:
        return (basis.double().T @ self._dense[key].double()).to(self._dtype)

    def _shortcut(self, to: torch.Tensor, source: torch.Tensor) -> torch.Tensor:
        return (to.double().T @ source.double()).to(self._dtype)

    def __getitem__(self, key: str) -> torch.Tensor:
        return self._recipes[key]()

    def __iter__(self) -> Iterator[str]:
        return iter(self._recipes)

    def __len__(self) -> int:
        return len(self._recipes)


def sliced_state_dict(
    state_dict: Mapping[str, torch.Tensor], adapter: ArchAdapter, bases: Bases
) -> dict[str, torch.Tensor]:
    """Every tensor of :class:`SlicedWeights` at once (the sliced model whole, in memory)."""
    weights = SlicedWeights(state_dict, adapter, bases)
    return {key: weights[key] for key in weights}


def _is_norm_weight(key: str, adapter: ArchAdapter) -> bool:
    module = key.rpartition(".")[0]
    last = module.rpartition(".")[2]
    return module == adapter.final_norm or last in adapter.attention_norms + adapter.mlp_norms


def sliced_shapes(
    named_shapes: Mapping[str, tuple[int, ...]], adapter: ArchAdapter, shape: Shape
) -> dict[str, tuple[int, ...]]:
    """The shape of every tensor of the sliced model that `shape` (rotated) describes, by name:
    :func:`sliced_state_dict` run on meta tensors, so the cost model and the export agree by
    construction."""
    dense = shape.dims.hidden_size
    meta = {name: torch.empty(dims, device="meta") for name, dims in named_shapes.items()}
    widths = shape.hidden_sizes()
    bases = Bases(
        [torch.empty(dense, w, device="meta") for w in (*widths, shape.final_hidden_size or dense)],
        [torch.empty(dense, w, device="meta") for w in widths],
    )
    return {name: tuple(t.shape) for name, t in sliced_state_dict(meta, adapter, bases).items()}


def _project_onto(x: torch.Tensor, basis: torch.Tensor) -> torch.Tensor:
    q = basis.to(device=x.device, dtype=x.dtype)
    return (x @ q) @ q.T


@contextmanager
def projected(model: nn.Module, adapter: ArchAdapter, bases: Bases) -> Iterator[None]:
    """Run the dense `model` as the sliced model computes, without touching a weight: the stream
    entering each block, between its attention and MLP, and entering the final norm is projected
    onto the span of that point's basis. An RMSNorm sees the same length in either basis, so the
    outputs are those of the sliced model (up to rounding): the reference the export is tested
    against, and how a search can measure a slicing before building it."""
    check_rotatable(adapter)
    entering: dict[int, torch.Tensor] = {}
    handles = []

    def block_input(index: int, basis: torch.Tensor):
        def hook(_m: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
            x = _project_onto(args[0] if args else kwargs["hidden_states"], basis)
            entering[index] = x
            if args:
                return (x, *args[1:]), kwargs
            return args, {**kwargs, "hidden_states": x}

        return hook

    def attention_output(index: int, basis: torch.Tensor):
        def hook(_m: nn.Module, _args: tuple, output: Any) -> Any:
            out = output[0] if isinstance(output, tuple) else output
            x = entering[index]
            # residual + returned = the projection of residual + attention output
            new = _project_onto(x + out, basis) - x
            return (new, *output[1:]) if isinstance(output, tuple) else new

        return hook

    try:
        for b, block in enumerate(adapter.blocks(model)):
            handles.append(block.register_forward_pre_hook(block_input(b, bases.inputs[b]), with_kwargs=True))
            attention = block.get_submodule(adapter.attention)
            handles.append(attention.register_forward_hook(attention_output(b, bases.mids[b])))
        final = model.get_submodule(adapter.final_norm)
        handles.append(
            final.register_forward_pre_hook(lambda _m, args: (_project_onto(args[0], bases.inputs[-1]),))
        )
        yield
    finally:
        for handle in handles:
            handle.remove()
        entering.clear()
