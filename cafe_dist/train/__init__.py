"""Training: the per-worker loop (``worker``) and the driver that launches it on Ray (``launcher``)."""
