"""The names of the training recipe's string options, without the code that implements them.

The option spec (``config.py``) takes its choices from these tables, and the job contracts and the API are
built from that spec: keeping the tables here, free of torch, keeps a gateway that only checks jobs from
loading torch (a second of start-up). Each implementing module imports its table from here.
"""

from __future__ import annotations

EMA_EXPORT = ("ema", "raw")  # ema.py
LOSSES = ("l2", "huber", "smooth_l1")  # losses.py
MASKED_LOSS = ("off", "alpha", "face")  # masks.py
QUANTIZE_MODES = ("none", "int8", "fp8", "nf4")  # quantize.py
TIMESTEP_SAMPLING = ("shift", "uniform", "sigmoid", "logit_normal")  # weighting.py
FLOW_LOSS_WEIGHTING = ("none", "sigma_sqrt", "cosmap")  # weighting.py
