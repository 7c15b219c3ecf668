"""Completeness and ownership of a generated dataset, recorded in a small manifest.

The manifest lets a second run skip work (idempotence) and, more importantly, tells a synthetic
tree from a real dataset: files are only ever deleted under a root that carries our manifest.
"""
from __future__ import annotations

import json
import os
import shutil
from typing import Dict, Iterable, List, Optional

MANIFEST = '.actnn_mm_synthetic.json'
FORMAT_VERSION = 1


def read_manifest(root: str) -> Optional[dict]:
    """The manifest under ``root``, or None when there is none (or it is unreadable)."""
    path = os.path.join(root, MANIFEST)
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def is_complete(root: str, kind: str, params: Dict) -> bool:
    """True when ``root`` holds a finished synthetic ``kind`` dataset made with ``params``."""
    man = read_manifest(root)
    if not man or man.get('kind') != kind or man.get('version') != FORMAT_VERSION:
        return False
    if man.get('params') != params:
        return False
    return all(os.path.isfile(os.path.join(root, p)) for p in man.get('files', []))


def has_foreign_data(root: str, owned_dirs: Iterable[str]) -> bool:
    """True when ``root`` has data we did not make (no manifest, but some dataset folder exists)."""
    if read_manifest(root) is not None:
        return False
    return any(os.path.exists(os.path.join(root, d)) for d in owned_dirs)


def clear_previous(root: str, owned_dirs: Iterable[str]) -> None:
    """Delete an older synthetic tree (only under a root that carries our manifest)."""
    if read_manifest(root) is None:
        return
    os.remove(os.path.join(root, MANIFEST))
    for d in owned_dirs:
        path = os.path.join(root, d)
        if os.path.isdir(path):
            shutil.rmtree(path)
        elif os.path.isfile(path):
            os.remove(path)


def write_manifest(root: str, kind: str, params: Dict, files: List[str]) -> None:
    """Record a finished dataset; written last, so an interrupted run is never 'complete'."""
    man = dict(generator='actnn_tools.demo_data', version=FORMAT_VERSION, kind=kind, params=params,
               files=sorted(files))
    with open(os.path.join(root, MANIFEST), 'w') as f:
        json.dump(man, f, indent=1)


def prepare_root(root: str, kind: str, params: Dict, owned_dirs: Iterable[str],
                 force: bool) -> bool:
    """Make ``root`` ready for a new ``kind`` data set; False when one with ``params`` is there.

    Refuses (``FileExistsError``) to write over data that actnn_mm did not make, unless ``force``.
    """
    if not force and is_complete(root, kind, params):
        return False
    if not force and has_foreign_data(root, owned_dirs):
        raise FileExistsError(f'{root} already holds a dataset that actnn_mm did not make; '
                              'refusing to write into it (use --force to do so anyway)')
    clear_previous(root, owned_dirs)
    return True
