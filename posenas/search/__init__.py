"""Search strategies and their runs: one-shot supernet training with the sandwich rule
(:mod:`~posenas.search.sandwich`), candidate evaluation with BN re-calibration
(:mod:`~posenas.search.candidates`), constrained random and evolutionary search
(:mod:`~posenas.search.strategies`) and the `posenas search` run (:mod:`~posenas.search.run`).
"""
