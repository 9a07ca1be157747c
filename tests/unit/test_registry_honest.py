"""Registry rules without a job: references with aliases, tag syntax, the verification cache (a stamp per version:
the files' sizes and mtimes and the manifest's digest), the evaluation of the published step only, and a failed
write naming the registry file rather than the source it copied."""

import errno
import json
import os
from pathlib import Path
from types import SimpleNamespace

import pytest

from hpcft.errors import ConfigError
from hpcft.registry import files, names, verify
from hpcft.registry.labels import parse_tags


def test_references_name_a_version_or_an_alias():
    assert names.split_ref("m") == ("m", None, None)
    assert names.split_ref("m@3") == ("m", 3, None) == names.split_ref("m@v3")
    assert names.split_ref("m@champion") == ("m", None, "champion")
    for bad in ("m@0", "m@-x", "m@", "m@a b"):
        with pytest.raises(ConfigError, match="after @ comes a version"):
            names.split_ref(bad)
    with pytest.raises(ConfigError, match="name the version here"):
        names.parse_ref("m@champion")
    for alias in ("v2", "7", "-x", "a" * 65, "x/y"):
        with pytest.raises(ConfigError, match="an alias is 1-64"):
            names.check_alias(alias)
    assert names.check_alias("prod.2024-01_a") == "prod.2024-01_a"


def test_tags_are_key_value_pairs():
    assert parse_tags(["stage=prod", "note=a=b", "empty="]) == {"stage": "prod", "note": "a=b", "empty": ""}
    for bad in ("stage", "=x", "1st=x", "k=" + "x" * 201, "k=a\nb"):
        with pytest.raises(ConfigError, match="a tag is KEY=VALUE"):
            parse_tags([bad])


@pytest.fixture
def version(tmp_path, monkeypatch):
    """A version directory with its manifest, and a row recording the manifest's digest."""
    monkeypatch.setenv("HPCFT_HOME", str(tmp_path / "home"))
    d = tmp_path / "registry" / "m" / "v1"
    (d / "base").mkdir(parents=True)
    (d / "adapter_model.safetensors").write_bytes(os.urandom(4096))
    (d / "base" / "model.safetensors").write_bytes(os.urandom(8192))
    (d / "adapter_config.json").write_text("{}")
    files.write_manifest(d)
    return SimpleNamespace(path=str(d), name="m", version=1, ref="m@1", visibility="project",
                           meta={"manifest_sha256": files.sha256_file(d / files.MANIFEST)})


def _flip(p: Path, keep_mtime: bool = False) -> None:
    st = p.stat()
    data = bytearray(p.read_bytes())
    data[10] ^= 0xFF
    p.write_bytes(bytes(data))
    if keep_mtime:
        os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns))


def test_a_version_is_hashed_once_then_trusted_while_its_files_are_unchanged(version):
    assert verify.check(version) == ([], True)  # hashed, stamp written
    assert Path(version.path).parent.joinpath(".v1.verified.json").is_file()
    assert verify.check(version) == ([], False)  # the stamp: nothing hashed
    weights = Path(version.path) / "adapter_model.safetensors"
    _flip(weights, keep_mtime=True)  # same size and mtime: the cache cannot tell (a full check can)
    assert verify.check(version) == ([], False)
    assert verify.check(version, full=True) == (["adapter_model.safetensors: checksum differs"], True)
    _flip(weights)  # flipped back, with a new mtime: hashed again, intact
    assert verify.check(version) == ([], True)
    _flip(weights)  # a new mtime and a wrong byte
    assert verify.check(version) == (["adapter_model.safetensors: checksum differs"], True)


def test_the_stamp_falls_back_to_the_users_home_and_stale_stamps_do_not_count(version, tmp_path):
    stats = {"adapter_model.safetensors": (1, 1)}
    home_stamp = tmp_path / "home" / "registry-verified" / "m" / "v1.json"
    blocked = Path(version.path).parent / ".v1.verified.json"
    blocked.mkdir()  # the registry's stamp cannot be written (as a directory that is not this user's would be)
    assert verify.write_stamp(version, "abc", stats) == home_stamp
    assert json.loads(home_stamp.read_text())["manifest_sha256"] == "abc"
    assert verify.check(version) == ([], True)  # that stamp is for another manifest and other files
    assert verify.check(version) == ([], False)  # the one this check wrote (in the home) is not
    assert json.loads(home_stamp.read_text())["manifest_sha256"] == version.meta["manifest_sha256"]


def test_size_manifest_and_file_set_changes_are_found_without_hashing(version):
    d = Path(version.path)
    verify.check(version)
    (d / "extra.json").write_text("{}")
    assert verify.check(version) == (["extra.json: not in SHA256SUMS"], False)
    (d / "extra.json").unlink()
    (d / "base" / "model.safetensors").unlink()
    assert verify.check(version) == (["base/model.safetensors: missing"], False)
    with open(d / files.MANIFEST, "a") as f:
        f.write("0" * 64 + "  more.json\n")
    assert verify.check(version) == (["SHA256SUMS: differs from the one recorded at publish"], False)


def test_the_card_gives_the_evaluation_of_the_published_step_only(tmp_path):
    from hpcft.registry.card import _evals
    from hpcft.registry.stage import Source

    recs = [{"type": "train", "step": s, "loss": 1.0 / s} for s in range(1, 7)]
    recs += [{"type": "eval", "split": "validation", "step": 4, "epoch": 1, "loss": 0.5}]
    (tmp_path / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in recs) + "\n")
    job = SimpleNamespace(output_dir=str(tmp_path))
    assert _evals(job, Source("step-00000004", tmp_path, 4)) == ({"validation": {"loss": 0.5}}, 0.25, None)
    assert _evals(job, Source("step-00000002", tmp_path, 2)) == ({}, 0.5, "no evaluation at step 2")
    assert _evals(job, Source("final", tmp_path, 6)) == (
        {}, 1.0 / 6, "no evaluation at step 6 (the last before it was at step 4, of other weights)")


def test_a_failed_copy_names_the_registry_file_it_could_not_write(tmp_path):
    from hpcft.registry.publish import _failure

    root = tmp_path / "registry"
    e = OSError(errno.ENOSPC, "No space left on device", "/runs/1/final/model.safetensors", None,
                f"{root}/m/.v3.tmp-0123abcd/model.safetensors")
    assert _failure(e, root).startswith(f"cannot write {root}/m/v3/model.safetensors: No space left on device")
    e = OSError(errno.EACCES, "Permission denied", f"{root}/m")
    assert _failure(e, root).startswith(f"cannot write {root}/m: Permission denied")
