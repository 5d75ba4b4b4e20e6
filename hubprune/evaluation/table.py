"""The before/after table printed by ``hubprune eval``."""

from __future__ import annotations

from typing import Any


def _fmt(value: Any, digits: int = 4) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}g}" if abs(value) >= 1000 else f"{value:.{digits}f}".rstrip("0").rstrip(".")
    return str(value)


def _human(n: Any) -> str:
    if n is None:
        return "-"
    for unit, size in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= size:
            return f"{n / size:.2f}{unit}"
    return str(n)


def format_table(report: dict[str, Any]) -> str:
    """A readable before/after table: tasks, perplexity, size and cost, speed."""
    roles = report["roles"]
    others = [r for r in roles if r != "base"]
    head = ["task", "metric", *roles]
    if "base" in roles:
        head += [f"delta {r}" if len(others) > 1 else "delta" for r in others]
        head += [f"retained {r}" if len(others) > 1 else "retained" for r in others]
    rows = []

    def add(task: str, metric: str, row: dict[str, Any]) -> None:
        line = [task, metric, *(_fmt(row.get(r)) for r in roles)]
        if "base" in roles:
            line += [_fmt(row["delta"].get(r)) for r in others]
            line += [
                "-" if row["retained_pct"].get(r) is None else f"{row['retained_pct'][r]:.1f}%"
                for r in others
            ]
        rows.append(line)

    for task, metrics in report["tasks"].items():
        for metric, row in metrics.items():
            add(task, metric, row)
    ppl = report.get("perplexity")
    if ppl:
        add(f"perplexity {ppl['data']['spec']}", f"ppl@{ppl['seq_len']}", ppl["metric"])
    widths = [max(len(str(x)) for x in col) for col in zip(head, *rows, strict=True)]
    lines = [
        "  ".join(str(x).ljust(w) for x, w in zip(line, widths, strict=True)).rstrip()
        for line in [head, *rows]
    ]
    cost = report.get("cost") or {}
    if cost:
        lines.append("")
        fields = [
            ("parameters", "params_total"),
            ("non-embedding parameters", "params_non_embedding"),
            ("weights on disk (bytes)", "bytes_on_disk"),
            ("FLOPs/token", "flops_per_token"),
            ("KV cache bytes/token", "kv_cache_bytes_per_token"),
        ]
        present = [r for r in roles if r in cost]
        lines.append("  ".join(["size and cost".ljust(26), *(r.rjust(10) for r in present)]))
        for label, key in fields:
            lines.append("  ".join([label.ljust(26), *(_human(cost[r].get(key)).rjust(10) for r in present)]))
        for r in present:
            if cost[r].get("zero_filled"):
                lines.append(f"note ({r}): {cost[r]['zero_filled']['note']}")
    speed = report.get("speed") or {}
    if speed:
        lines.append("")
        some = next(iter(speed.values()))
        lines.append(f"speed on {some['device_name']} ({some['dtype']}, median of {some['repeats']} runs)")
        for r, s in speed.items():
            lines.append(
                f"  {r:<10} prefill {s['prefill_tokens_per_s']:>10.1f} tok/s   decode {s['decode_tokens_per_s']:>8.1f} tok/s"
            )
    settings = report["settings"]
    lines.append("")
    lines.append(
        f"lm-eval {settings['lm_eval_version']}, limit {settings['limit']}, "
        f"n-shot {','.join(map(str, sorted(set(settings['n_shot'].values())))) or '-'}, "
        f"batch {settings['batch_size']}, {settings['dtype']} on {settings['device']}, seed {settings['seed']}"
    )
    return "\n".join(lines)
