"""Weights fingerprints: new contents change them, unchanged files are not hashed again."""

from mathgrpo.evaluation.fingerprint import weights_fingerprint


def test_contents_change_the_fingerprint_and_digests_are_remembered(tmp_path):
    (tmp_path / "model.safetensors").write_bytes(b"a" * 1000)
    (tmp_path / "config.json").write_text("{}")
    known: dict = {}
    first = weights_fingerprint(str(tmp_path), 0, known)
    assert first.startswith("sha256:") and len(known) == 2
    assert weights_fingerprint(str(tmp_path), 0, known) == first
    (tmp_path / "model.safetensors").write_bytes(b"b" * 1000)  # same size, other weights
    assert weights_fingerprint(str(tmp_path), 0, known) != first


def test_adapter_includes_its_base_and_names_stand_for_themselves(tmp_path):
    base, adapter = tmp_path / "base", tmp_path / "adapter"
    base.mkdir()
    adapter.mkdir()
    (base / "model.safetensors").write_bytes(b"x")
    (adapter / "adapter_config.json").write_text(f'{{"base_model_name_or_path": "{base}"}}')
    before = weights_fingerprint(str(adapter), 0, {})
    assert before.startswith("adapter:") and "+sha256:" in before
    (base / "model.safetensors").write_bytes(b"y")
    assert weights_fingerprint(str(adapter), 0, {}) != before
    assert weights_fingerprint("tiny", 3, {}) == "tiny:seed=3"
    assert weights_fingerprint("nobody/none", 0, {}) == "hub:nobody/none@not-cached"
