"""Hard-link torch, torchvision and what they require from this venv into another site-packages.

The wheel smoke test's fresh venv would otherwise hold a second copy of the CUDA build of torch
(about 5 GB). Links are the same files pip installed here; pip then sees them as installed.
Exits non-zero, linking nothing more, where a link cannot be made (another disk): the caller then
lets pip install them.
"""

import importlib.metadata as metadata
import os
import re
import shutil
import sys
from pathlib import Path


def closure(names: list[str]) -> list[metadata.Distribution]:
    found: dict[str, metadata.Distribution] = {}
    while names:
        name = names.pop()
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:  # a requirement whose marker excluded it here
            continue
        key = re.sub(r"[-_.]+", "-", dist.metadata["Name"]).lower()
        if key in found:
            continue
        found[key] = dist
        for requirement in dist.requires or []:
            if "extra ==" not in requirement:
                names.append(re.match(r"[A-Za-z0-9._-]+", requirement).group(0))
    return list(found.values())


def main(target: Path) -> int:
    before = set(target.iterdir())
    linked = 0
    try:
        for dist in closure(["torch", "torchvision"]):
            for file in dist.files or []:
                if file.parts[0] == "..":  # scripts in bin/: the smoke test needs none
                    continue
                source = Path(dist.locate_file(file))
                # a file two packages share (a namespace's __init__.py) is linked once
                if source.is_file() and not (target / file).exists():
                    (target / file).parent.mkdir(parents=True, exist_ok=True)
                    os.link(source, target / file)
                    linked += 1
    except OSError as error:
        for path in set(target.iterdir()) - before:  # no half-linked package for pip to trust
            shutil.rmtree(path) if path.is_dir() else path.unlink()
        print(f"torch not linked ({error.strerror}): pip installs it")
        return 1
    print(f"linked {linked} files of torch and what it requires")
    return 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1])))
