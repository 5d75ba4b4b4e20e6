"""`measure_speed` against a model whose every forward pass takes a known (fake) time.

What this catches: constants or echoed arguments instead of measurements, a decode loop that runs
the wrong number of steps or without the cache, a prompt of the wrong shape, warm-up runs counted
in the result, or a mean reported as the median.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest

import hubprune.speed as speed
from tests.tiny import tiny_model

PREFILL_S = [9.0, 0.5, 0.25, 1.0]  # the warm-up run first: it must not count
DECODE_STEP_S = [9.0, 0.01, 0.04, 0.02]


def test_tokens_per_second_come_from_the_measured_times(monkeypatch):
    clock = SimpleNamespace(now=100.0)
    monkeypatch.setattr(speed, "time", SimpleNamespace(perf_counter=lambda: clock.now))
    model = tiny_model("llama", num_layers=2)
    calls: list[tuple[int, int, bool]] = []

    def advance(_module, args, kwargs):
        ids = kwargs["input_ids"]
        run = sum(1 for c in calls if c[1] > 1) - (ids.shape[1] == 1)  # index of the current run
        has_cache = kwargs.get("past_key_values", kwargs.get("cache")) is not None
        calls.append((ids.shape[0], ids.shape[1], has_cache))
        clock.now += PREFILL_S[run] if ids.shape[1] > 1 else DECODE_STEP_S[run]

    model.register_forward_pre_hook(advance, with_kwargs=True)
    result = speed.measure_speed(model, prompt_tokens=12, new_tokens=5, batch_size=2, warmup=1, repeats=3)

    prefill = [c for c in calls if c[1] == 12]
    decode = [c for c in calls if c[1] == 1]
    assert len(prefill) == 4 and len(decode) == 4 * 5 and len(calls) == 24
    assert all(c[0] == 2 for c in calls) and all(c[2] for c in decode) and not any(c[2] for c in prefill)
    assert result["prefill_samples"] == pytest.approx([2 * 12 / s for s in PREFILL_S[1:]])
    assert result["decode_samples"] == pytest.approx([2 * 5 / (5 * s) for s in DECODE_STEP_S[1:]])
    assert result["prefill_tokens_per_s"] == pytest.approx(2 * 12 / 0.5)  # the median, not the mean
    assert result["decode_tokens_per_s"] == pytest.approx(2 / 0.02)
    assert (result["prompt_tokens"], result["new_tokens"], result["batch_size"], result["repeats"]) == (
        12,
        5,
        2,
        3,
    )
