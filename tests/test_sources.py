"""Dataset root indexing: class discovery, the validation split, errors, class lists."""

from pathlib import Path

import numpy as np
import pytest

from camjax.data import sources


def touch(root: Path, *rel: str) -> None:
    for r in rel:
        p = root / r
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"x")  # indexing never decodes


def files(cls: str, n: int, ext: str = ".jpg") -> list[str]:
    return [f"train/{cls}/{cls}_{i:03d}{ext}" for i in range(n)]


def test_classes_canonical_and_ordered(tmp_path):
    touch(
        tmp_path,
        "train/sony_nex_7/a.JPG",
        "train/HTC-1-M7/b.png",
        "train/zz-cam/c.tif",
        "train/Another/d.tiff",
        "train/IPHONE-4S/e.jpeg",
        "train/IPHONE-4S/notes.txt",
        "train/IPHONE-4S/.hidden.jpg",
        "train/.cache/f.jpg",
    )
    index = sources.scan_root(tmp_path, val_fraction=0)
    assert index.classes == ("HTC-1-M7", "iPhone-4s", "Sony-NEX-7", "Another", "zz-cam")
    by_name = {Path(r.path).name: r for r in index.train}
    assert sorted(by_name) == ["a.JPG", "b.png", "c.tif", "d.tiff", "e.jpeg"]
    assert by_name["a.JPG"].class_name == "Sony-NEX-7" and by_name["a.JPG"].label == 2
    assert all(index.classes[r.label] == r.class_name for r in index.train)
    assert index.val == []


def test_split_deterministic_stratified_disjoint(tmp_path):
    touch(tmp_path, *files("HTC-1-M7", 40), *files("iPhone-6", 10), *files("Motorola-X", 2), *files("Sony-NEX-7", 1))
    a = sources.scan_root(tmp_path, val_fraction=0.2, seed=3)
    b = sources.scan_root(tmp_path, val_fraction=0.2, seed=3)
    assert a == b
    train, val = {r.path for r in a.train}, {r.path for r in a.val}
    assert not train & val and len(train | val) == 53
    val_per_class = np.bincount([r.label for r in a.val], minlength=4)
    assert val_per_class.tolist() == [8, 2, 1, 0]  # >= 1 when a class has >= 2 files; none from 1
    c = sources.scan_root(tmp_path, val_fraction=0.2, seed=4)
    assert {r.path for r in c.val} != val
    assert len(c.val) == len(val)


def test_split_stable_when_other_classes_grow(tmp_path):
    touch(tmp_path, *files("HTC-1-M7", 30), *files("iPhone-6", 30))
    before = {r.path for r in sources.scan_root(tmp_path, val_fraction=0.1).val if r.class_name == "HTC-1-M7"}
    touch(tmp_path, *[f"train/iPhone-6/extra_{i}.jpg" for i in range(50)], *files("LG-Nexus-5x", 7))
    after = sources.scan_root(tmp_path, val_fraction=0.1)
    assert {r.path for r in after.val if r.class_name == "HTC-1-M7"} == before
    assert after.classes == ("HTC-1-M7", "iPhone-6", "LG-Nexus-5x")


def test_val_folder_is_used(tmp_path):
    touch(tmp_path, *files("HTC-1-M7", 5), *files("iPhone-6", 5), "val/htc_1_m7/v0.jpg", "val/iPhone-6/v1.jpg")
    index = sources.scan_root(tmp_path, val_fraction=0.5)
    assert len(index.train) == 10
    assert sorted((Path(r.path).name, r.class_name, r.label) for r in index.val) == [
        ("v0.jpg", "HTC-1-M7", 0),
        ("v1.jpg", "iPhone-6", 1),
    ]


def test_test_files_sorted_images_only(tmp_path):
    touch(
        tmp_path,
        *files("HTC-1-M7", 1),
        *files("iPhone-6", 1),
        "test/img_b_manip.tif",
        "test/img_a_unalt.tif",
        "test/img_c.jpg",
        "test/readme.txt",
    )
    index = sources.scan_root(tmp_path)
    assert [Path(p).name for p in index.test] == ["img_a_unalt.tif", "img_b_manip.tif", "img_c.jpg"]
    assert sources.list_test_files(tmp_path) == index.test


def test_missing_test_folder_is_an_error_only_when_required(tmp_path):
    touch(tmp_path, *files("HTC-1-M7", 1), *files("iPhone-6", 1))
    assert sources.scan_root(tmp_path).test == []
    with pytest.raises(FileNotFoundError, match="test"):
        sources.list_test_files(tmp_path)


@pytest.mark.parametrize(
    "layout, error, words",
    [
        (None, FileNotFoundError, ["does not exist"]),
        ([], FileNotFoundError, ["no train/ folder"]),
        (files("HTC-1-M7", 3), ValueError, ["at least 2 class folders"]),
        (
            files("HTC-1-M7", 3) + ["train/iPhone-6/notes.txt", "train/Sony-NEX-7/x.gif"],
            ValueError,
            ["without images", "iPhone-6", "Sony-NEX-7"],
        ),
        (files("HTC-1-M7", 3) + files("htc_1_m7", 2), ValueError, ["both name class", "HTC-1-M7"]),
        (files("HTC-1-M7", 3) + files("iPhone-6", 3) + ["val/Motorola-X/a.jpg"], ValueError, ["Motorola-X"]),
    ],
)
def test_errors_name_the_problem(tmp_path, layout, error, words):
    root = tmp_path / "root"
    if layout is not None:
        root.mkdir()
        touch(root, *layout)
    with pytest.raises(error) as info:
        sources.scan_root(root)
    assert str(root) in str(info.value)
    for w in words:
        assert w in str(info.value)


def test_class_weights_balance_the_loss(tmp_path):
    touch(tmp_path, *files("HTC-1-M7", 30), *files("iPhone-6", 10))
    index = sources.scan_root(tmp_path, val_fraction=0)
    w = sources.class_weights(index)
    np.testing.assert_allclose(w, [40 / 60, 40 / 20])
    counts = np.array([30, 10])
    assert np.isclose((w * counts).sum() / counts.sum(), 1.0)  # mean sample weight 1
    assert np.isclose(w[0] * 30, w[1] * 10)  # each class carries the same total weight
