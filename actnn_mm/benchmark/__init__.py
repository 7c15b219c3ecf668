"""Memory and speed benchmark of exact, checkpointed and ActNN training (``tools/bench_memory.py``).

Kept apart from the library API: nothing here is imported by ``import actnn_mm``. Modules:
``methods`` (what each method changes in a model), ``workloads`` (ResNet-50, Faster R-CNN),
``measure`` (one configuration: memory as ActNN measured it, throughput), ``search`` (largest
batch that fits), ``report`` (JSON, table, plot), ``cli`` (the command line), ``gpu_summary``
(the table ``tools/gpu_check.sh`` prints last).
"""
