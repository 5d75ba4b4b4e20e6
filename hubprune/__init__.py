"""hubprune: prune a causal LM from the Hugging Face Hub, heal it, evaluate it, publish it.

Each step is a function; a run folder (weights plus ``hubprune.json``) carries the result from one
to the next:

* :func:`hubprune.pipeline.load`, :func:`~hubprune.pipeline.score` and
  :func:`~hubprune.pipeline.prune`: load a model, score its blocks or sublayers with a method
  (``hubprune.methods``), remove what the budget allows and export the run folder.
* :func:`hubprune.recover.recover`: heal the pruned model (partial fine-tuning or LoRA).
* :func:`hubprune.evaluation.evaluate_run`: benchmarks, perplexity, cost and speed against the base.
* :func:`hubprune.card.render_card` and :func:`hubprune.publish.publish`: the model card, and the
  push to the Hub.
* :func:`hubprune.run.run_recipe`: all of the above from one YAML recipe, resumable.

Every user mistake raises a :class:`hubprune.errors.HubpruneError` with a one-sentence message.
The ``hubprune`` command wraps the same functions.
"""

__version__ = "0.1.0"
