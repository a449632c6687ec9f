"""All-or-nothing directory outputs: write beside the target, rename into place."""

from __future__ import annotations

import contextlib
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def staged_directory(target: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary sibling of ``target`` to write into.

    When the ``with`` block succeeds the staged directory takes ``target``'s
    place (an existing ``target`` is moved aside first and deleted after);
    when it fails the staged directory is removed and ``target`` is left as
    it was. Readers never see a half-written ``target``.
    """
    target = Path(os.fspath(target))
    tag = uuid.uuid4().hex[:12]
    staging = target.with_name(f".{target.name}.tmp-{tag}")
    try:
        yield staging
        if target.exists() or target.is_symlink():
            aside = target.with_name(f".{target.name}.old-{tag}")
            os.rename(target, aside)
            try:
                os.rename(staging, target)
            except BaseException:
                os.rename(aside, target)
                raise
            if aside.is_dir() and not aside.is_symlink():
                shutil.rmtree(aside, ignore_errors=True)
            else:
                aside.unlink()
        else:
            os.rename(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
