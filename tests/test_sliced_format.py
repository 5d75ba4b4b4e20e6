"""The heterogeneous format with a rotated, sliced residual stream (SliceGPT).

The rotated models are built here by hand from tiny dense ones, as the format's contract says:
each norm's scale folded into the layers that read it (the final norm into `lm_head`), one random
orthogonal basis per point of the residual stream, readers' columns and writers' rows rotated and
cut to the width there, shortcut matrices between consecutive bases. At full width the export is
exactly the dense model, which checks the modeling code family by family; below it, the export
must reload (stock transformers and hubprune) as the model it was checked against.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from huggingface_hub.errors import StrictDataclassClassValidationError
from transformers import AutoModelForCausalLM

from hubprune.errors import ExportError, UnsupportedArchitectureError
from hubprune.export_hetero import hetero_config, load_hetero, remote_code, write_hetero
from hubprune.formats import _load_hetero, _write_hetero
from tests.tiny import tiny_model

ROTATABLE = ("llama", "mistral", "qwen2", "qwen3", "phi3")
SEQ = 20  # longer than the tiny models' sliding window (8)
DENSE = 64  # the tiny models' hidden_size
WIDTHS, FINAL = [48, 56, 40, 64], 48
# The linear layers that read each block norm's output (Phi-3 fuses them).
READERS = {
    "input_layernorm": ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.qkv_proj"),
    "post_attention_layernorm": ("mlp.gate_proj", "mlp.up_proj", "mlp.gate_up_proj"),
}


def _orthogonal(n: int, seed: int) -> torch.Tensor:
    q, _ = torch.linalg.qr(
        torch.randn(n, n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    )
    return q


def _rotate(
    model, widths: list[int], final: int, seed: int = 0, shared: bool = False
) -> tuple[dict, list[dict], dict]:
    """The rotated, sliced tensors of `model` (the format's contract), its `layers` and `residual`.

    Point p of the residual stream (2i: entering block i, 2i + 1: between its attention and MLP,
    2L: after the last block) has the basis Q_p[:, :width]; `shared`: the same Q everywhere."""
    config = model.config
    blocks = config.num_hidden_layers
    dense = {k: v.double() for k, v in model.state_dict().items()}
    sizes = [w for w in widths for _ in range(2)] + [final]
    bases = [_orthogonal(DENSE, seed if shared else seed + p)[:, :size] for p, size in enumerate(sizes)]
    state = {"model.embed_tokens.weight": dense["model.embed_tokens.weight"] @ bases[0]}
    for i in range(blocks):
        pre = f"model.layers.{i}."
        for point, (norm, readers) in enumerate(READERS.items(), start=2 * i):
            scale = dense[f"{pre}{norm}.weight"]
            for reader in readers:
                if f"{pre}{reader}.weight" in dense:
                    state[f"{pre}{reader}.weight"] = dense[f"{pre}{reader}.weight"] * scale @ bases[point]
        state[f"{pre}self_attn.o_proj.weight"] = bases[2 * i + 1].T @ dense[f"{pre}self_attn.o_proj.weight"]
        state[f"{pre}mlp.down_proj.weight"] = bases[2 * i + 2].T @ dense[f"{pre}mlp.down_proj.weight"]
        state[f"{pre}attn_shortcut.weight"] = bases[2 * i + 1].T @ bases[2 * i]
        state[f"{pre}mlp_shortcut.weight"] = bases[2 * i + 2].T @ bases[2 * i + 1]
        for key, tensor in dense.items():  # biases of q/k/v, Qwen3's per-head q/k norms
            if key.startswith(pre) and key not in state and not key.endswith("layernorm.weight"):
                state[key] = tensor
    head = model.lm_head.weight.double() * dense["model.norm.weight"]
    state["lm_head.weight"] = head @ bases[-1]
    heads, kv_heads = config.num_attention_heads, config.num_key_value_heads
    layers = [
        dict(
            attention=True,
            num_attention_heads=heads,
            num_key_value_heads=kv_heads,
            mlp=True,
            intermediate_size=config.intermediate_size,
            hidden_size=width,
        )
        for width in widths
    ]
    return {k: v.float().contiguous() for k, v in state.items()}, layers, {"final_hidden_size": final}


def _ids(seed: int = 1) -> torch.Tensor:
    return torch.randint(4, 100, (2, SEQ), generator=torch.Generator().manual_seed(seed))


def _load_stock(folder: Path):
    return AutoModelForCausalLM.from_pretrained(
        folder, trust_remote_code=True, attn_implementation="eager", dtype=torch.float32
    ).eval()


def _export(family: str, folder: Path, widths: list[int], final: int) -> tuple[dict, dict, object]:
    model = tiny_model(family)
    state, layers, residual = _rotate(model, widths, final)
    folder.mkdir(exist_ok=True)
    record = write_hetero(state, model.config, layers, folder, dtype=torch.float32, residual=residual)
    return record, state, model


@pytest.mark.parametrize("family", ROTATABLE)
def test_rotation_at_full_width_is_the_dense_model(tmp_path: Path, family: str) -> None:
    record, _, model = _export(family, tmp_path, [DENSE] * 4, DENSE)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["rotated_residual"] and config["per_layer_config"] == {}
    ids = _ids()
    with torch.no_grad():
        expected = model(ids).logits
        for loaded in (record["_model"], _load_stock(tmp_path), load_hetero(tmp_path, dtype=torch.float32)):
            torch.testing.assert_close(loaded(ids).logits, expected, atol=1e-4, rtol=0)


@pytest.mark.parametrize("family", ROTATABLE)
def test_sliced_model_is_the_dense_model_with_a_projected_residual(tmp_path: Path, family: str) -> None:
    """With one basis Q for every point, slicing to width d is the dense model whose residual
    stream is projected onto Q[:, :d] after the embedding, each attention and each block (the
    norms still dividing by the dense width): an independent reference for the sliced forward."""
    model = tiny_model(family)
    state, layers, residual = _rotate(model, WIDTHS, FINAL, shared=True)
    write_hetero(state, model.config, layers, tmp_path, dtype=torch.float32, residual=residual)
    basis = _orthogonal(DENSE, 0).float()

    def project(width: int):
        def hook(module, args, out):
            tensor = out[0] if isinstance(out, tuple) else out
            projected = tensor @ basis[:, :width] @ basis[:, :width].T
            return (projected, *out[1:]) if isinstance(out, tuple) else projected

        return hook

    model.model.embed_tokens.register_forward_hook(project(WIDTHS[0]))
    for i, layer in enumerate(model.model.layers):
        layer.self_attn.register_forward_hook(project(WIDTHS[i]))
        layer.register_forward_hook(project(([*WIDTHS, FINAL])[i + 1]))
    ids = _ids()
    with torch.no_grad():
        torch.testing.assert_close(
            load_hetero(tmp_path, dtype=torch.float32)(ids).logits, model(ids).logits, atol=1e-4, rtol=0
        )


@pytest.mark.parametrize("family", ROTATABLE)
def test_sliced_export_reloads_as_written(tmp_path: Path, family: str) -> None:
    record, state, model = _export(family, tmp_path, WIDTHS, FINAL)
    ids = _ids()
    stock, ours = _load_stock(tmp_path), load_hetero(tmp_path, dtype=torch.float32)
    with torch.no_grad():
        expected = record["_model"](ids).logits
        assert not torch.allclose(expected, model(ids).logits, atol=1e-3)  # the slicing does something
        for loaded in (stock, ours):
            torch.testing.assert_close(loaded(ids).logits, expected, atol=1e-5, rtol=0)

    # config.json: dense hidden_size globally, the sliced widths per block, an untied head.
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["hidden_size"] == DENSE and config["final_hidden_size"] == FINAL
    assert config["rotated_residual"] is True and config["tie_word_embeddings"] is False
    assert {k: v["hidden_size"] for k, v in config["per_layer_config"].items()} == {"0": 48, "1": 56, "2": 40}
    assert (
        record["rotated_residual"]
        and record["hidden_sizes"] == WIDTHS
        and record["final_hidden_size"] == FINAL
    )

    # Tensors: no norm weights, shortcuts at the contract's shapes, the MLP writes the next width.
    saved = stock.state_dict()
    assert not any("norm.weight" in k and "q_norm" not in k and "k_norm" not in k for k in saved)
    assert saved["model.layers.0.attn_shortcut.weight"].shape == (48, 48)
    assert saved["model.layers.2.mlp_shortcut.weight"].shape == (64, 40)
    assert saved["model.layers.2.mlp.down_proj.weight"].shape == (64, 96)
    assert saved["model.layers.3.mlp.down_proj.weight"].shape == (FINAL, 96)
    assert saved["lm_head.weight"].shape == (128, FINAL) and saved["model.embed_tokens.weight"].shape == (
        128,
        48,
    )
    assert stock.lm_head.weight is not stock.model.embed_tokens.weight
    assert set(saved) == set(state)
    assert sum(p.numel() for p in stock.parameters()) == sum(t.numel() for t in state.values())

    # KV cache: greedy decoding with the cache equals decoding without it.
    with torch.no_grad():
        cached = stock.generate(ids, max_new_tokens=6, do_sample=False, use_cache=True)
        uncached = stock.generate(ids, max_new_tokens=6, do_sample=False, use_cache=False)
    assert torch.equal(cached, uncached)


def test_recovery_round_trip_keeps_the_residual_stream(tmp_path: Path) -> None:
    """What recovery does: load the folder, train (here: nudge the shortcuts), write it again."""
    _export("qwen2", tmp_path / "a", WIDTHS, FINAL)
    loaded = _load_hetero(tmp_path / "a", dtype=torch.float32, device="cpu")
    with torch.no_grad():
        loaded.model.layers[1].mlp_shortcut.weight.mul_(1.1)
    (tmp_path / "b").mkdir()
    record = _write_hetero(loaded, None, None, tmp_path / "b")
    before, after = (json.loads((tmp_path / f / "config.json").read_text()) for f in "ab")
    for key in (
        "per_layer_config",
        "rotated_residual",
        "final_hidden_size",
        "tie_word_embeddings",
        "hidden_size",
    ):
        assert after[key] == before[key], key
    assert record["hidden_sizes"] == WIDTHS and record["final_hidden_size"] == FINAL
    ids = _ids(3)
    with torch.no_grad():
        expected = loaded(ids).logits
        for again in (_load_stock(tmp_path / "b"), load_hetero(tmp_path / "b", dtype=torch.float32)):
            torch.testing.assert_close(again(ids).logits, expected, atol=1e-5, rtol=0)


def test_rotated_model_trains(tmp_path: Path) -> None:
    """Recovery trains through the folded norms and the shortcuts (gradient checkpointing on)."""
    _export("llama", tmp_path, WIDTHS, FINAL)
    model = load_hetero(tmp_path, dtype=torch.float32).train()
    model.activation_checkpointing_enable()
    ids = _ids()
    model(ids, labels=ids).loss.backward()
    assert model.model.layers[0].attn_shortcut.weight.grad.abs().sum() > 0
    assert model.model.layers[3].mlp.down_proj.weight.grad.abs().sum() > 0


def _written(family: str = "llama") -> dict:
    model = tiny_model(family)
    _, layers, residual = _rotate(model, WIDTHS, FINAL)
    return hetero_config(model.config, layers, residual)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"per_layer_config": {"1": {"skip": ["mlp"]}}}, "a rotated residual stream needs every sublayer"),
        ({"per_layer_config": {"2": {"hidden_size": 65}}}, r"residual width of 65, outside \[1, 64\]"),
        ({"per_layer_config": {"2": {"hidden_size": 0}}}, r"residual width of 0, outside \[1, 64\]"),
        ({"final_hidden_size": None}, "needs final_hidden_size in"),
        ({"final_hidden_size": 80}, "needs final_hidden_size in"),
        ({"tie_word_embeddings": True}, "needs tie_word_embeddings false"),
        ({"rotated_residual": False}, "a per-block hidden_size needs rotated_residual"),
        ({"base_model_type": "gemma2"}, "scales its norms by 1 \\+ weight"),
    ],
)
def test_config_refuses_what_cannot_be_rotated(change: dict, message: str) -> None:
    written = _written()
    assert remote_code().HubpruneConfig(**written).residual_width(2) == 40
    with pytest.raises(StrictDataclassClassValidationError, match=message):
        remote_code().HubpruneConfig(**{**written, **change})


def test_writer_refuses_what_cannot_be_rotated() -> None:
    gemma = tiny_model("gemma2")
    _, layers, residual = _rotate(tiny_model("llama"), WIDTHS, FINAL)
    with pytest.raises(UnsupportedArchitectureError, match="Gemma normalises each sublayer's output"):
        hetero_config(gemma.config, layers, residual)
    llama = tiny_model("llama").config
    skipping = [dict(layers[0], mlp=False, intermediate_size=0), *layers[1:]]
    with pytest.raises(ExportError, match="block 0 removes a sublayer"):
        hetero_config(llama, skipping, residual)
    with pytest.raises(ExportError, match="final_hidden_size 65 is outside"):
        hetero_config(llama, layers, {"final_hidden_size": 65})
    with pytest.raises(ExportError, match="only a rotated residual stream is sliced"):
        hetero_config(llama, layers)
