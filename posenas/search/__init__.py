"""The searches, one entry module per method (:mod:`~posenas.search.vipnas` with its config in
:mod:`~posenas.search.vipnas_config`,
:mod:`~posenas.search.efficientpose`, :mod:`~posenas.search.pnfs`), dispatched by
:mod:`~posenas.search.methods`, beside the mechanisms they share, each named after the
mechanism: the sandwich rule (:mod:`~posenas.search.sandwich`), candidate evaluation with BN
re-calibration (:mod:`~posenas.search.candidates`), constrained random and evolutionary
search (:mod:`~posenas.search.strategies`), first-order DARTS (:mod:`~posenas.search.darts`),
cost lookup tables (:mod:`~posenas.search.cost_table`) and the run directory
(:mod:`~posenas.search.rundir`).
"""
