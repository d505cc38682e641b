"""A training run: the LightningModule (``module``) and its step (``step``, ``losses``), the main job
``train.py`` runs (``run``), resume and checkpoints (``resume``, ``checkpoint``, ``checkpoint_io``,
``fit_record``), callbacks (``callbacks``, ``run_callbacks``), the device and precision
(``accelerator``), clusters and many processes (``cluster``, ``distributed``), sweeps (``sweep``),
and the process set-up (``extras``, ``malloc``)."""
