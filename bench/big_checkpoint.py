"""`hubprune prune` on a synthetic Llama checkpoint larger than this machine's memory.

Writes a Llama-architecture checkpoint with random bfloat16 weights shard by shard (never the
whole model in memory), at least 1.2 x the RAM in /proc/meminfo by default, then runs
`hubprune prune` on it once per method, each in its own process, and reports wall time and
peak RSS (the process's VmHWM, which counts the memory-mapped shard pages it touched, beside the
same figure for a process that only imports torch, transformers and hubprune). Then it checks
the output: every tensor name and shape is what a model built on the meta device from the
output config holds, and several tensors equal the source's (kept blocks at their new indices).

    python bench/big_checkpoint.py                                # reverse-order, full size
    python bench/big_checkpoint.py --size-gb 2                    # a quick run
    python bench/big_checkpoint.py --methods reverse-order,block-influence --keep --out-dir /big
    python bench/big_checkpoint.py --methods block-influence --samples 2 --seq-len 64

Targets: peak RSS <= 2 output shards (2 x --max-shard-size) for reverse-order, which needs no
computation and is exported shard by shard; <= 0.25 x the checkpoint for block influence, which
hubprune streams on its own (the model does not fit): one block at a time is read and run on the
calibration batches (`--samples`, `--seq-len`), then the plan is exported shard by shard. A run that
loads the model anyway is stopped by the --rss-limit-gb watchdog, not the OOM killer. The tokenizer is
SmolLM2's (vocabulary 49152), from the bundled offline model; calibration is offline text.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BF16 = 2  # bytes
TOKENIZER_SOURCE = "offline:smollm2-135m-instruct"
CALIBRATION = ["--calibration", "offline:lee-background"]
#: (hidden, intermediate, heads, kv heads): 70B-like blocks at full size, smaller for quick runs.
BIG_DIMS = (8192, 28672, 64, 8)
SMALL_DIMS = (2048, 8192, 16, 4)


def mem_total() -> int:
    """Bytes of RAM, from /proc/meminfo."""
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) * 1024
    raise SystemExit("no MemTotal in /proc/meminfo")


def layout(size: int, vocab: int) -> tuple[dict, list[tuple[str, tuple[int, ...]]]]:
    """The config values and (name, shape) of every tensor, in save_pretrained's order, for a
    checkpoint of at least `size` bytes."""
    hidden, inter, heads, kv = BIG_DIMS if size >= 16e9 else SMALL_DIMS
    head_dim = hidden // heads
    block = [
        ("self_attn.q_proj.weight", (hidden, hidden)),
        ("self_attn.k_proj.weight", (kv * head_dim, hidden)),
        ("self_attn.v_proj.weight", (kv * head_dim, hidden)),
        ("self_attn.o_proj.weight", (hidden, hidden)),
        ("mlp.gate_proj.weight", (inter, hidden)),
        ("mlp.up_proj.weight", (inter, hidden)),
        ("mlp.down_proj.weight", (hidden, inter)),
        ("input_layernorm.weight", (hidden,)),
        ("post_attention_layernorm.weight", (hidden,)),
    ]
    per_block = sum(math.prod(s) for _, s in block) * BF16
    outside = (2 * vocab * hidden + hidden) * BF16  # untied embeddings and lm_head, final norm
    layers = max(4, math.ceil((size - outside) / per_block))
    names = [("model.embed_tokens.weight", (vocab, hidden))]
    names += [(f"model.layers.{i}.{n}", s) for i in range(layers) for n, s in block]
    names += [("model.norm.weight", (hidden,)), ("lm_head.weight", (vocab, hidden))]
    config = dict(
        hidden_size=hidden,
        intermediate_size=inter,
        num_attention_heads=heads,
        num_key_value_heads=kv,
        num_hidden_layers=layers,
        vocab_size=vocab,
        max_position_embeddings=8192,
        tie_word_embeddings=False,
    )
    return config, names


def write_checkpoint(folder: Path, size: int, shard_size: int) -> dict:
    """Config, tokenizer and random bf16 shards with an index; one shard in memory at a time."""
    import torch
    from safetensors.torch import save_file
    from transformers import AutoTokenizer, LlamaConfig

    from hubprune import offline

    torch.set_num_threads(max(1, (os.cpu_count() or 2) // 2))
    tokenizer = AutoTokenizer.from_pretrained(offline.model_folder(TOKENIZER_SOURCE)[0])
    values, names = layout(size, len(tokenizer))
    config = LlamaConfig(
        **values, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, dtype="bfloat16"
    )
    config.architectures = ["LlamaForCausalLM"]
    folder.mkdir(parents=True)
    config.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    shards: list[list[tuple[str, tuple[int, ...]]]] = [[]]
    used = 0
    for name, shape in names:
        nbytes = math.prod(shape) * BF16
        if shards[-1] and used + nbytes > shard_size:
            shards.append([])
            used = 0
        shards[-1].append((name, shape))
        used += nbytes
    generator = torch.Generator().manual_seed(0)
    weight_map, total = {}, 0
    for number, tensors in enumerate(shards, start=1):
        file = f"model-{number:05d}-of-{len(shards):05d}.safetensors"
        shard = {}
        for name, shape in tensors:
            tensor = torch.empty(shape, dtype=torch.bfloat16)
            shard[name] = tensor.normal_(0, 0.02, generator=generator) if len(shape) > 1 else tensor.fill_(1)
            weight_map[name] = file
            total += tensor.numel() * BF16
        save_file(shard, str(folder / file), metadata={"format": "pt"})
        del shard
        print(f"  wrote {file} ({number}/{len(shards)})", flush=True)
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
    return {"bytes": total, "layers": values["num_hidden_layers"], "shards": len(shards)}


#: What a prune process holds before touching any weight: Python, torch, transformers, hubprune.
BASELINE = "import torch, transformers, hubprune.pipeline, hubprune.shard_export"
#: Runs `code` and writes the process's VmHWM (peak RSS of its own address space) to argv[1] at
#: exit. ru_maxrss cannot be used: Linux folds the RSS of the parent that forked the child into
#: it (this script's, which has just written the checkpoint), so every child would report that.
_REPORT = (
    "import atexit, sys\n"
    "report = sys.argv.pop(1)\n"
    "def hwm():\n"
    "    with open('/proc/self/status') as status, open(report, 'w') as out:\n"
    "        out.write(next(l for l in status if l.startswith('VmHWM:')).split()[1])\n"
    "atexit.register(hwm)\n"
)
PRUNE = "import sys; sys.argv[0] = 'hubprune'; from hubprune.cli import entry; entry()"


def hwm(pid: int) -> int:
    """Peak resident bytes so far of process `pid` (0 once it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def measured(code: str, argv: list[str], limit: int) -> dict:
    """Run Python `code` with `argv` in its own process: wall time, peak RSS (VmHWM at exit,
    else the last one sampled), exit status; killed once its RSS passes `limit` bytes, to spare
    the machine (a method that loads a checkpoint larger than memory)."""
    with tempfile.NamedTemporaryFile("r", suffix=".hwm") as report:
        start = time.monotonic()
        child = subprocess.Popen([sys.executable, "-c", _REPORT + code, report.name, *argv])
        peak, killed = 0, False
        while child.poll() is None:
            peak = max(peak, hwm(child.pid))
            if peak > limit and not killed:
                killed = True
                child.kill()
            time.sleep(0.1)
        wall = time.monotonic() - start
        text = Path(report.name).read_text().strip()
    return {
        "wall_s": wall,
        "peak_rss": max(peak, int(text) * 1024 if text else 0),
        "exit": child.returncode,
        "killed_at_limit": killed,
    }


def check_output(source: Path, out: Path, spot: int = 8) -> str:
    """Names and shapes against the meta-device model of the output config; `spot` tensors
    (embeddings, lm_head, final norm, kept blocks) equal to the source's. Returns a summary."""
    import torch
    from safetensors import safe_open
    from transformers import AutoConfig, AutoModelForCausalLM

    from hubprune.plan import Manifest

    config = AutoConfig.from_pretrained(out)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    expected = {n: tuple(t.shape) for n, t in model.state_dict().items()}
    found: dict[str, tuple[tuple[int, ...], Path]] = {}
    for file in sorted(out.glob("*.safetensors")):
        with safe_open(str(file), framework="pt") as handle:
            for name in handle.keys():  # noqa: SIM118 (a safe_open handle is not iterable)
                found[name] = (tuple(handle.get_slice(name).get_shape()), file)
    if {n: s for n, (s, _) in found.items()} != expected:
        raise SystemExit(f"{out}: tensor names or shapes differ from the output config's model")
    removed = set(Manifest.load(out).plan.removed_blocks())
    kept = [i for i in range(AutoConfig.from_pretrained(source).num_hidden_layers) if i not in removed]
    source_files = json.loads((source / "model.safetensors.index.json").read_text())["weight_map"]
    new_indices = sorted({0, len(kept) // 2, len(kept) - 1})
    picks = ["model.embed_tokens.weight", "lm_head.weight", "model.norm.weight"]
    picks += [
        f"model.layers.{j}.{p}"
        for j in new_indices
        for p in ("mlp.down_proj.weight", "self_attn.k_proj.weight")
    ]
    for name in picks[:spot]:
        source_name = name
        if name.startswith("model.layers."):
            j, rest = name.removeprefix("model.layers.").split(".", 1)
            source_name = f"model.layers.{kept[int(j)]}.{rest}"
        with (
            safe_open(str(found[name][1]), framework="pt") as a,
            safe_open(str(source / source_files[source_name]), framework="pt") as b,
        ):
            if not torch.equal(a.get_tensor(name), b.get_tensor(source_name)):
                raise SystemExit(f"{out}: {name} differs from the source's {source_name}")
    return (
        f"{len(expected)} tensors match the config; {min(spot, len(picks))} spot-checked equal to the source"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-gb", type=float, default=None, help="checkpoint size (default: 1.2 x RAM)")
    parser.add_argument(
        "--out-dir", type=Path, default=None, help="where to write (default: a temporary folder)"
    )
    parser.add_argument(
        "--keep", action="store_true", help="keep the checkpoint and outputs; reuse a kept one"
    )
    parser.add_argument("--methods", default="reverse-order", help="comma-separated (default: reverse-order)")
    parser.add_argument("--amount", default="0.25", help="share of blocks to remove (default: 0.25)")
    parser.add_argument("--samples", default="8", help="calibration windows (default: 8)")
    parser.add_argument("--seq-len", default="128", help="tokens per calibration window (default: 128)")
    parser.add_argument("--source-shard-gb", type=float, default=5.0, help="source shard size (default: 5)")
    parser.add_argument("--max-shard-size", default="2GB", help="output shard size (default: 2GB)")
    parser.add_argument(
        "--rss-limit-gb", type=float, default=None, help="kill prune above this (default: 0.85 x RAM)"
    )
    args = parser.parse_args()
    from transformers.utils.hub import convert_file_size_to_int

    ram = mem_total()
    size = int(args.size_gb * 1e9) if args.size_gb else int(1.2 * ram)
    out_dir = args.out_dir or Path(tempfile.mkdtemp(prefix="hubprune-big-"))
    source = out_dir / "checkpoint"
    limit = int(args.rss_limit_gb * 1e9) if args.rss_limit_gb else int(0.85 * ram)
    out_shard = convert_file_size_to_int(args.max_shard_size)
    try:
        if (source / "model.safetensors.index.json").is_file():
            total = json.loads((source / "model.safetensors.index.json").read_text())["metadata"][
                "total_size"
            ]
            print(f"reusing {source} ({total / 1e9:.1f} GB)")
        else:
            print(f"writing a {size / 1e9:.1f} GB checkpoint into {source} (RAM {ram / 2**30:.1f} GiB)")
            start = time.monotonic()
            info = write_checkpoint(source, size, int(args.source_shard_gb * 1e9))
            total = info["bytes"]
            print(
                f"  {info['layers']} blocks, {info['shards']} shards, {total / 1e9:.1f} GB in {time.monotonic() - start:.0f} s"
            )
        print(f"checkpoint / RAM: {total / ram:.2f}")
        baseline = measured(BASELINE, [], limit)["peak_rss"]
        print(f"baseline RSS (imports only): {baseline / 2**30:.2f} GiB")
        for method in args.methods.split(","):
            out = out_dir / f"out-{method}"
            shutil.rmtree(out, ignore_errors=True)
            argv = ["prune", str(source), "--method", method, "--amount", args.amount, "--out", str(out)]
            argv += ["--max-shard-size", args.max_shard_size, *CALIBRATION]
            argv += ["--samples", args.samples, "--seq-len", args.seq_len]
            result = measured(PRUNE, argv, limit)
            print(
                f"\n{method}: exit {result['exit']}, wall {result['wall_s']:.1f} s, peak RSS {result['peak_rss'] / 2**30:.2f} GiB"
            )
            if result["killed_at_limit"]:
                print(f"  stopped at the RSS limit ({limit / 2**30:.1f} GiB): it loads the model")
            if method == "reverse-order":
                ratio = result["peak_rss"] / out_shard
                above = (result["peak_rss"] - baseline) / out_shard
                print(
                    f"  peak RSS / output shard: {ratio:.2f}  (target <= 2; {above:.2f} above the baseline)"
                )
            print(
                f"  peak RSS / checkpoint: {result['peak_rss'] / total:.3f}  (block influence target <= 0.25)"
            )
            if result["exit"] == 0:
                print(f"  output: {check_output(source, out)}")
            if not args.keep:
                shutil.rmtree(out, ignore_errors=True)
    finally:
        if not args.keep:
            shutil.rmtree(source, ignore_errors=True)
            if args.out_dir is None:
                shutil.rmtree(out_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
