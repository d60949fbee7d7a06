"""The sample slide: a local copy checked by hash, or a download into the cache."""

from __future__ import annotations

import pooch
import pytest
import requests

from napari_lemon import sample_data
from napari_lemon.sample_data import DATA_DIR_ENV, SAMPLE_NAME, fetch_sample


def test_data_dir_with_the_file_is_used_without_download(shared_data, monkeypatch):
    monkeypatch.setattr(pooch, "retrieve", pytest.fail)
    path = fetch_sample(shared_data / "wsi")
    assert path == shared_data / "wsi" / SAMPLE_NAME


def test_environment_variable_names_the_folder(shared_data, monkeypatch):
    monkeypatch.setenv(DATA_DIR_ENV, str(shared_data / "wsi"))
    monkeypatch.setattr(pooch, "retrieve", pytest.fail)
    assert fetch_sample().name == SAMPLE_NAME


def test_folder_without_the_file_says_where_it_looked(tmp_path):
    with pytest.raises(FileNotFoundError, match=f"does not hold {SAMPLE_NAME}"):
        fetch_sample(tmp_path)


def test_damaged_copy_is_refused_by_its_hash(tmp_path):
    (tmp_path / SAMPLE_NAME).write_bytes(b"not the slide")
    with pytest.raises(ValueError, match="has sha256 .* expected ed92d5a9"):
        fetch_sample(tmp_path)


def test_download_goes_to_the_cache_with_the_known_hash(tmp_path, monkeypatch):
    calls = {}

    def fake_retrieve(url, known_hash, fname, path):
        calls.update(url=url, known_hash=known_hash, fname=fname, path=path)
        return str(tmp_path / fname)

    monkeypatch.delenv(DATA_DIR_ENV, raising=False)
    monkeypatch.setattr(pooch, "retrieve", fake_retrieve)
    assert fetch_sample() == tmp_path / SAMPLE_NAME
    assert calls["url"].endswith("/Aperio/CMU-1-Small-Region.svs")
    assert calls["known_hash"] == f"sha256:{sample_data.SAMPLE_SHA256}"
    assert "napari-lemon" in str(calls["path"])


def test_network_failure_says_to_set_the_data_dir(monkeypatch):
    def offline(*args, **kwargs):
        raise requests.exceptions.ConnectionError("no route to host")

    monkeypatch.delenv(DATA_DIR_ENV, raising=False)
    monkeypatch.setattr(pooch, "retrieve", offline)
    with pytest.raises(ConnectionError, match=f"set {DATA_DIR_ENV} .*--data-dir"):
        fetch_sample()
