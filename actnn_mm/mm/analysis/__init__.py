"""Memory analysis of any mmdet / mmseg / mmpretrain config: what ActNN saves, and what fits.

``tools/analyze_memory.py`` is the command line; these modules hold its parts, each with one
job: load and build the model without data or downloads (``model_build``), read the training
input size and batch (``input_size``), make a synthetic training batch (``synthetic``), run and
measure one level in its own process (``level_run``, with ``transient`` and ``process_memory``),
estimate peaks and batches (``estimate``), run them all (``analyze``) and write the report
(``report``).
"""
from .analyze import DEFAULT_LEVELS, analyze, check_levels
from .report import format_text, write_json, write_png

__all__ = ['analyze', 'check_levels', 'DEFAULT_LEVELS', 'format_text', 'write_json',
           'write_png']
