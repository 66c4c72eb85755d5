"""Training. The driver (``launcher``) prepares the data, starts the services (local Ray, the
coordinator, the MLflow run) and fits; every Ray Train worker runs ``worker``, which builds a
``trainer.Trainer`` from the driver's ``spec.WorkerSpec``. The trainer's loop is short because each
job has a component: ``checkpointer`` (state and when to save it), ``metrics`` (throughput, phases,
console and MLflow), ``evaluator`` (AUC/logloss, target AUC) and ``faults`` (injected failures)."""
