"""The one evaluator: from a model and a dataset split to per-case scores, summaries and figures.

Training's ``metrics.json``, ``kseg.evaluate``'s ``summary.json``, the post-processing choice and the
benchmarks all score through ``cases.collect_cases`` -> ``cases.masks_for`` -> ``cases.score_cases``, so
there is one route from logits to masks (``kseg.tasks.postprocess.final_mask``), as in nnU-Net's single evaluator.
"""
