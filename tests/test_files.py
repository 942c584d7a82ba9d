"""Reading files the same way in every task: paths confined to the data root, image headers, drafts."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from vigil.core.errors import DataError
from vigil.core.files import image_size, open_image, resolve_under, resolved_root


def test_the_data_root_is_resolved_once_for_every_record(tmp_path: Path):
    (tmp_path / "images").mkdir()
    resolved_root.cache_clear()
    paths = [resolve_under(tmp_path, f"images/{index}.jpg", "file", index) for index in range(200)]
    assert paths[7] == (tmp_path / "images" / "7.jpg").resolve()
    assert resolved_root.cache_info().misses == 1


def test_a_path_escaping_the_root_is_still_refused_with_the_root_cached(tmp_path: Path):
    resolve_under(tmp_path, "a.jpg", "file", 0)
    with pytest.raises(DataError, match="escapes the data root"):
        resolve_under(tmp_path, "../outside.jpg", "split.json", "train[1]")


def test_image_size_reads_the_header_and_names_a_file_that_is_no_image(tmp_path: Path):
    Image.new("RGB", (62, 53)).save(tmp_path / "a.jpg")
    assert image_size(tmp_path / "a.jpg") == (62, 53)
    (tmp_path / "b.jpg").write_bytes(b"not an image")
    with pytest.raises(DataError, match=r"b\.jpg.*cannot be decoded as an image"):
        image_size(tmp_path / "b.jpg")


def test_a_draft_decodes_a_jpeg_at_a_reduced_scale_no_smaller_than_asked(tmp_path: Path):
    Image.new("RGB", (640, 480), (200, 30, 30)).save(tmp_path / "a.jpg")
    drafted = open_image(tmp_path / "a.jpg", draft=(100, 70))
    assert drafted.size == (160, 120)
    assert open_image(tmp_path / "a.jpg").size == (640, 480)
    assert drafted.getpixel((80, 60))[0] > 150
