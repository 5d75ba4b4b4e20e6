"""Configuration of a DeciLM / `nemotron-nas` model for transformers 5 (written by hubprune).

A Llama-style model whose blocks may differ: `block_configs` holds one entry per block with
`attention` (`no_op`: the block has no attention; `n_heads_in_group`: query heads per KV head)
and `ffn` (`no_op`: no MLP; `ffn_mult`: intermediate size = the multiple of 256 at or above
int(2 * ffn_mult * hidden_size / 3), the rule vLLM's `DeciLMForCausalLM` uses). The schema is
NVIDIA's (`nvidia/Llama-3_1-Nemotron-51B-Instruct`); this file is a fresh implementation that
runs on transformers 5, where NVIDIA's copy does not load.

Entries are dictionaries that also allow attribute access (`config.block_configs[3].ffn.no_op`),
so the config stays plain JSON and vLLM's loader can read it as it reads NVIDIA's.
"""

from __future__ import annotations

from typing import Any

from transformers.models.llama.configuration_llama import LlamaConfig


class _AttrDict(dict):
    """A dict whose keys are also attributes; nested dicts become _AttrDicts."""

    def __init__(self, data: dict[str, Any] | None = None, **kwargs: Any) -> None:
        super().__init__()
        for key, value in {**(data or {}), **kwargs}.items():
            self[key] = _AttrDict(value) if isinstance(value, dict) else value

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None


def ffn_mult_to_intermediate_size(ffn_mult: float, hidden_size: int) -> int:
    """DeciLM's rule (vLLM `nemotron_nas.py`): int(2*mult*hidden/3) rounded up to a multiple of 256."""
    size = int(2 * ffn_mult * hidden_size / 3)
    return size if size % 256 == 0 else size + 256 - size % 256


def block_config(entry: dict[str, Any]) -> _AttrDict:
    """Normalise one `block_configs` entry (missing keys take NVIDIA's defaults)."""
    attention = {
        "no_op": False,
        "replace_with_linear": False,
        "n_heads_in_group": None,
        **entry.get("attention", {}),
    }
    ffn = {"no_op": False, "replace_with_linear": False, "ffn_mult": None, **entry.get("ffn", {})}
    if attention["replace_with_linear"] or ffn["replace_with_linear"]:
        raise ValueError("replace_with_linear blocks are not supported by this implementation")
    return _AttrDict({"attention": attention, "ffn": ffn})


class DeciLMConfig(LlamaConfig):
    """LlamaConfig plus per-block `block_configs` (see the module docstring)."""

    model_type = "nemotron-nas"

    block_configs: list | None = None

    def __post_init__(self, **kwargs: Any) -> None:
        entries = self.block_configs or [{} for _ in range(self.num_hidden_layers)]
        self.block_configs = [block_config(dict(entry)) for entry in entries]
        if len(self.block_configs) != self.num_hidden_layers:
            raise ValueError(
                f"block_configs has {len(self.block_configs)} entries for {self.num_hidden_layers} layers"
            )
        super().__post_init__(**kwargs)

    def intermediate_size_of(self, layer_idx: int) -> int:
        """The MLP width of block `layer_idx` (0 when it has no MLP)."""
        ffn = self.block_configs[layer_idx].ffn
        if ffn.no_op:
            return 0
        if ffn.get("intermediate_size") is not None:
            return int(ffn.intermediate_size)
        return ffn_mult_to_intermediate_size(ffn.ffn_mult, self.hidden_size)

    def num_key_value_heads_of(self, layer_idx: int) -> int:
        """The KV heads of block `layer_idx` (0 when it has no attention)."""
        attention = self.block_configs[layer_idx].attention
        if attention.no_op:
            return 0
        return self.num_attention_heads // attention.n_heads_in_group


__all__ = ["DeciLMConfig"]
