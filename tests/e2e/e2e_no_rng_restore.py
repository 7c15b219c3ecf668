"""Test-only, imported by a resumed run through ``custom_imports``: turns ActNNHook's restore of
torch's RNG state into a no-op, to show what a resume without it does (tests/e2e/test_resume.py)."""
from actnn_mm.mm import hook

hook.set_rng_state = lambda state: None
