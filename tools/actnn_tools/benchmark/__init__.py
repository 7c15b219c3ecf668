"""Memory and speed benchmark of exact, checkpointed and ActNN training (``tools/bench_memory.py``).

Not installed with the library. Modules: ``methods`` (what each method changes in a model),
``workloads`` (ResNet-50, Faster R-CNN), ``measure`` (one configuration: memory as ActNN
measured it, throughput), ``search`` (largest batch that fits), ``report`` (JSON, table, plot),
``cli`` (the command line).
"""
