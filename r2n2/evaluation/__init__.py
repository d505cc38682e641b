"""Scoring reconstructions: the IoU metric (``metrics``), F-score@1% (``fscore``, batched on a device in
``fscore_device``), the papers' protocols and the streaming scorer (``scoring``), the baselines that
see no image (``baselines``) or answer with a training shape (``recognition``), the tables of
``r2n2-eval`` (``report``) and the one-line verdict of a run (``headline``)."""
