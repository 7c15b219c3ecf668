"""What the command-line tools share, kept out of the installed ``actnn_mm`` package.

``benchmark`` (``tools/bench_memory.py``), ``demo_data`` (``tools/make_demo_data.py``: synthetic
COCO / Cityscapes / ImageNet) and ``runner`` (config loading and runner construction for
``tools/train.py``, ``tools/test.py``, ``tools/demo.py``). Importable with ``tools/`` on
``sys.path``, which a script in ``tools/`` has as its own folder.
"""
