"""Pure numpy math of the multimodal Gaussian mixture: no Spark, no I/O.

Everything the distributed layers need is here: validated row batches (:mod:`.batch`),
per-covariance-type log-densities (:mod:`.densities`), mixture parameters (:mod:`.params`),
EM sufficient statistics with an associative merge and the M-step (:mod:`.stats`),
initialisation (:mod:`.init`) and the EM loop itself (:mod:`.em`).
"""
