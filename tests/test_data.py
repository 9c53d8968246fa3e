import json
import os
import random
import warnings

import numpy
import pytest
import torch
from PIL import Image

from agcn_pyg.data.datasets import CocoMultiLabel, ListFileMultiLabel, collate_skip_corrupt
from agcn_pyg.data.synthetic import make_synthetic_coco
from agcn_pyg.data.transforms import build_transforms


def _save(path, mode="RGB", size=(16, 12), color=None):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    if color is None:
        color = {"L": 128, "RGBA": (10, 20, 30, 128), "P": 3}.get(mode, (200, 100, 50))
    img = Image.new(mode, size, color)
    img.save(path)


def _write_coco(root, images, anns, cats, files=None):
    """Writes a COCO json; `images` is a list of (id, file_name), `anns` (image_id, cat_id)."""
    img_dir = os.path.join(root, "images")
    os.makedirs(img_dir, exist_ok=True)
    for _, name in images if files is None else files:
        _save(os.path.join(img_dir, name))
    data = {
        "images": [{"id": i, "file_name": n, "width": 16, "height": 12} for i, n in images],
        "annotations": [
            {
                "id": k + 1,
                "image_id": i,
                "category_id": c,
                "bbox": [0, 0, 4, 4],
                "area": 16.0,
                "iscrowd": 0,
                "segmentation": [[0, 0, 4, 0, 4, 4, 0, 4]],
            }
            for k, (i, c) in enumerate(anns)
        ],
        "categories": [{"id": c, "name": n, "supercategory": "x"} for c, n in cats],
    }
    ann_file = os.path.join(root, "ann.json")
    with open(ann_file, "w") as f:
        json.dump(data, f)
    return ann_file, img_dir


# Categories listed out of id order, with gaps; label order must be 3, 7, 12.
CATS = [(12, "zebra"), (3, "cat"), (7, "apple")]
IMAGES = [(5, "a.jpg"), (2, "b.jpg"), (9, "c.jpg"), (4, "empty.jpg")]
ANNS = [(5, 12), (5, 3), (5, 3), (2, 7), (9, 3), (9, 7)]


def test_coco_label_order_and_labels(tmp_path):
    ann_file, img_dir = _write_coco(str(tmp_path), IMAGES, ANNS, CATS)
    ds = CocoMultiLabel(ann_file, img_dir)
    assert ds.label_names == ["cat", "apple", "zebra"]
    assert ds.category_ids == [3, 7, 12]
    # Images sorted by id; the unannotated image 4 is dropped by default.
    assert ds.image_ids == [2, 5, 9]
    assert ds.image_paths == [os.path.join(img_dir, n) for n in ("b.jpg", "a.jpg", "c.jpg")]
    expected = torch.tensor([[0, 1, 0], [1, 0, 1], [1, 1, 0]], dtype=torch.bool)
    assert ds.labels.dtype == torch.bool
    assert torch.equal(ds.labels, expected)

    img, target, index = ds[1]
    assert isinstance(img, Image.Image) and img.mode == "RGB"
    assert target.dtype == torch.float32
    assert torch.equal(target, torch.tensor([1.0, 0.0, 1.0]))
    assert index == 1


def test_coco_keep_empty(tmp_path):
    ann_file, img_dir = _write_coco(str(tmp_path), IMAGES, ANNS, CATS)
    ds = CocoMultiLabel(ann_file, img_dir, keep_empty=True)
    assert ds.image_ids == [2, 4, 5, 9]
    assert ds.labels[1].sum() == 0
    assert len(ds) == 4


def test_coco_missing_paths(tmp_path):
    ann_file, img_dir = _write_coco(str(tmp_path), IMAGES, ANNS, CATS)
    with pytest.raises(FileNotFoundError, match="ann_file.*nope.json"):
        CocoMultiLabel(str(tmp_path / "nope.json"), img_dir)
    with pytest.raises(FileNotFoundError, match="image_dir.*nodir"):
        CocoMultiLabel(ann_file, str(tmp_path / "nodir"))


def test_coco_missing_image_file_dropped(tmp_path):
    files = [f for f in IMAGES if f[1] != "a.jpg"]
    ann_file, img_dir = _write_coco(str(tmp_path), IMAGES, ANNS, CATS, files=files)
    with pytest.warns(UserWarning) as record:
        ds = CocoMultiLabel(ann_file, img_dir)
    messages = [str(w.message) for w in record]
    assert any("1 of 3 images" in m and "a.jpg" in m for m in messages)
    # a.jpg was the only "zebra" image: the label stays, with its own warning.
    assert any("zebra" in m for m in messages)
    assert ds.label_names == ["cat", "apple", "zebra"]
    assert ds.image_ids == [2, 9]
    assert torch.equal(ds.labels, torch.tensor([[0, 1, 0], [1, 1, 0]], dtype=torch.bool))


def test_coco_category_without_images_warns(tmp_path):
    cats = CATS + [(40, "unicorn")]
    ann_file, img_dir = _write_coco(str(tmp_path), IMAGES, ANNS, cats)
    with pytest.warns(UserWarning, match="unicorn"):
        ds = CocoMultiLabel(ann_file, img_dir)
    assert ds.label_names[-1] == "unicorn"
    assert ds.labels[:, -1].sum() == 0


def test_coco_empty_dataset(tmp_path):
    ann_file, img_dir = _write_coco(str(tmp_path), IMAGES, [], CATS)
    with pytest.raises(ValueError, match="empty.*annotation.*keep_empty"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            CocoMultiLabel(ann_file, img_dir)
    # All image files missing.
    ann_file, img_dir = _write_coco(str(tmp_path / "b"), IMAGES, ANNS, CATS, files=[])
    with pytest.raises(ValueError, match="missing"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            CocoMultiLabel(ann_file, img_dir)


def test_corrupt_and_truncated_images(tmp_path):
    ann_file, img_dir = _write_coco(str(tmp_path), IMAGES, ANNS, CATS)
    with open(os.path.join(img_dir, "b.jpg"), "wb") as f:
        f.write(b"this is not a jpeg" * 10)
    # A real, larger JPEG cut in half.
    big = os.path.join(img_dir, "c.jpg")
    Image.effect_noise((128, 128), 50).convert("RGB").save(big, quality=95)
    with open(big, "rb") as f:
        data = f.read()
    with open(big, "wb") as f:
        f.write(data[: len(data) // 2])

    ds = CocoMultiLabel(
        ann_file,
        img_dir,
        transform=build_transforms({"mean": (0, 0, 0), "std": (1, 1, 1)}, img_size=8, train=False),
    )
    with pytest.warns(UserWarning, match=r"b\.jpg"):
        assert ds[0] is None
    with pytest.warns(UserWarning, match=r"c\.jpg"):
        assert ds[2] is None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        batch = collate_skip_corrupt([ds[i] for i in range(3)])
        assert collate_skip_corrupt([ds[0], ds[2]]) is None
    images, targets, indices = batch
    assert images.shape == (1, 3, 8, 8)
    assert torch.equal(targets, torch.tensor([[1.0, 0.0, 1.0]]))
    assert indices.tolist() == [1]


@pytest.mark.parametrize("mode", ["L", "RGBA", "P", "CMYK"])
def test_any_mode_loads_as_rgb(tmp_path, mode):
    name = "img.jpg" if mode in ("L", "CMYK") else "img.png"
    _save(os.path.join(tmp_path, "images", name), mode=mode)
    ann_file, img_dir = _write_coco(str(tmp_path), [(1, name)], [(1, 3)], CATS[1:2], files=[])
    ds = CocoMultiLabel(
        ann_file,
        img_dir,
        transform=build_transforms({"mean": (0, 0, 0), "std": (1, 1, 1)}, img_size=10, train=False),
    )
    img, _, _ = ds[0]
    assert img.shape == (3, 10, 10)


def test_synthetic_coco(tmp_path):
    paths = make_synthetic_coco(str(tmp_path), num_train=40, num_val=10, num_labels=6)
    with open(paths.train_ann_file) as f:
        raw = json.load(f)
    cat_ids = sorted(c["id"] for c in raw["categories"])
    assert cat_ids != list(range(1, len(cat_ids) + 1))  # gaps, like COCO

    ds = CocoMultiLabel(paths.train_ann_file, paths.train_image_dir)
    assert len(ds) == 40 and ds.num_labels == 6
    assert ds.label_names == list(paths.label_names)
    # Independent multi-hot from the raw JSON.
    by_id = {c["id"]: c["name"] for c in raw["categories"]}
    for row, img_id in enumerate(ds.image_ids):
        names = {by_id[a["category_id"]] for a in raw["annotations"] if a["image_id"] == img_id}
        assert {ds.label_names[k] for k in ds.labels[row].nonzero().flatten().tolist()} == names
    img, target, _ = ds[0]
    assert img.size == (64, 64) and target.shape == (6,)

    val = CocoMultiLabel(paths.val_ann_file, paths.val_image_dir)
    assert len(val) == 10

    # Correlated labels: some pair co-occurs far more often than independence predicts.
    big = make_synthetic_coco(str(tmp_path / "big"), num_train=400, num_val=1, num_labels=8)
    labels = CocoMultiLabel(big.train_ann_file, big.train_image_dir).labels.float()
    p = labels.mean(0)
    joint = labels.T @ labels / len(labels)
    lift = joint / (p[:, None] * p[None, :])
    lift.fill_diagonal_(0)
    assert lift.max() > 1.5


def test_synthetic_deterministic(tmp_path):
    a = make_synthetic_coco(str(tmp_path / "a"), num_train=5, num_val=2, seed=3)
    b = make_synthetic_coco(str(tmp_path / "b"), num_train=5, num_val=2, seed=3)
    c = make_synthetic_coco(str(tmp_path / "c"), num_train=5, num_val=2, seed=4)
    read = lambda p: open(p).read()  # noqa: E731
    assert read(a.train_ann_file) == read(b.train_ann_file)
    assert read(a.train_ann_file) != read(c.train_ann_file)
    name = sorted(os.listdir(a.train_image_dir))[0]
    with open(os.path.join(a.train_image_dir, name), "rb") as fa:
        with open(os.path.join(b.train_image_dir, name), "rb") as fb:
            assert fa.read() == fb.read()


def _write_list_dataset(root, lines, names_file_name, names_content):
    img_root = os.path.join(root, "imgs")
    for rel in ("x/1.jpg", "x/2.jpg", "y/3.png"):
        _save(os.path.join(img_root, rel))
    list_file = os.path.join(root, "list.txt")
    with open(list_file, "w") as f:
        f.write("\n".join(lines) + "\n")
    names_file = os.path.join(root, names_file_name)
    with open(names_file, "w") as f:
        f.write(names_content)
    return list_file, img_root, names_file


def test_list_file_int_labels_txt_names(tmp_path):
    lines = ["# comment", "x/1.jpg 0 2", "", "x/2.jpg\t1", "y/3.png"]
    lf, root, nf = _write_list_dataset(str(tmp_path), lines, "names.txt", "car\nperson\ndog\n")
    ds = ListFileMultiLabel(lf, root, nf)
    assert ds.label_names == ["car", "person", "dog"]
    assert ds.image_paths == [os.path.join(root, p) for p in ("x/1.jpg", "x/2.jpg", "y/3.png")]
    assert torch.equal(ds.labels, torch.tensor([[1, 0, 1], [0, 1, 0], [0, 0, 0]], dtype=torch.bool))
    img, target, index = ds[2]
    assert img.mode == "RGB" and target.sum() == 0 and index == 2


def test_list_file_name_labels_json_dict(tmp_path):
    lines = ["x/1.jpg dog car", "x/2.jpg person", "missing.jpg dog"]
    names = json.dumps({"dog": 2, "car": 0, "person": 1, "tree": 3})
    lf, root, nf = _write_list_dataset(str(tmp_path), lines, "names.json", names)
    with pytest.warns(UserWarning) as record:
        ds = ListFileMultiLabel(lf, root, nf)
    messages = " ".join(str(w.message) for w in record)
    assert "missing.jpg" in messages and "tree" in messages
    assert ds.label_names == ["car", "person", "dog", "tree"]
    assert torch.equal(ds.labels, torch.tensor([[1, 0, 1, 0], [0, 1, 0, 0]], dtype=torch.bool))


def test_list_file_json_list_and_errors(tmp_path):
    lf, root, nf = _write_list_dataset(
        str(tmp_path), ["x/1.jpg 1", "x/2.jpg 0"], "names.json", json.dumps(["a", "b"])
    )
    ds = ListFileMultiLabel(lf, root, nf)
    assert torch.equal(ds.labels, torch.tensor([[0, 1], [1, 0]], dtype=torch.bool))

    with pytest.raises(FileNotFoundError, match="list_file"):
        ListFileMultiLabel(str(tmp_path / "no.txt"), root, nf)
    with pytest.raises(FileNotFoundError, match="image_root"):
        ListFileMultiLabel(lf, str(tmp_path / "nodir"), nf)
    with pytest.raises(FileNotFoundError, match="label_names_file"):
        ListFileMultiLabel(lf, root, str(tmp_path / "no.json"))

    bad, _, _ = _write_list_dataset(str(tmp_path / "c"), ["x/1.jpg 5"], "n.txt", "a\nb\n")
    with pytest.raises(ValueError, match="line 1.*5"):
        ListFileMultiLabel(bad, root, nf)
    bad, _, _ = _write_list_dataset(str(tmp_path / "d"), ["x/1.jpg a", "x/2.jpg zz"], "n.txt", "")
    with pytest.raises(ValueError, match="line 2.*zz"):
        ListFileMultiLabel(bad, root, nf)


TRESNET_CFG = {"mean": (0.0, 0.0, 0.0), "std": (1.0, 1.0, 1.0), "interpolation": "bilinear"}
IMAGENET_CFG = {
    "mean": (0.485, 0.456, 0.406),
    "std": (0.229, 0.224, 0.225),
    "interpolation": "bicubic",
}


def _photo():
    return Image.effect_noise((40, 30), 60).convert("RGB")


def test_transforms_tresnet_range():
    img = _photo()
    random.seed(0)
    for train in (True, False):
        t = build_transforms(TRESNET_CFG, img_size=32, train=train)
        for _ in range(5):
            x = t(img)
            assert x.shape == (3, 32, 32) and x.dtype == torch.float32
            assert x.min() >= 0.0 and x.max() <= 1.0


def test_transforms_imagenet_normalised():
    img = Image.new("RGB", (40, 30), (255, 0, 128))
    x = build_transforms(IMAGENET_CFG, img_size=16, train=False)(img)
    assert x.shape == (3, 16, 16)
    mean, std = torch.tensor(IMAGENET_CFG["mean"]), torch.tensor(IMAGENET_CFG["std"])
    expected = (torch.tensor([1.0, 0.0, 128 / 255]) - mean) / std
    torch.testing.assert_close(x[:, 5, 5], expected)


def test_transforms_from_timm_model():
    timm = pytest.importorskip("timm")
    model = timm.create_model("tresnet_m", pretrained=False, num_classes=0)
    t = build_transforms(model, img_size=24, train=False)
    img = _photo()
    x = t(img)
    assert x.shape == (3, 24, 24) and x.min() >= 0 and x.max() <= 1
    # TResNet takes [0, 1] inputs: the eval transform is resize + ToTensor only.
    expected = torch.from_numpy(numpy.array(img.resize((24, 24), Image.BILINEAR)))
    torch.testing.assert_close(x, expected.permute(2, 0, 1).float() / 255)


def test_train_random_eval_deterministic():
    img = _photo()
    random.seed(0)
    ev = build_transforms(IMAGENET_CFG, img_size=32, train=False)
    assert torch.equal(ev(img), ev(img))
    tr = build_transforms(IMAGENET_CFG, img_size=32, train=True)
    outs = [tr(img) for _ in range(8)]
    assert any(not torch.equal(outs[0], o) for o in outs[1:])
    assert any(not torch.equal(ev(img), o) for o in outs)
    # Disabling both augmentations makes training deterministic.
    plain = build_transforms(IMAGENET_CFG, img_size=32, train=True, randaugment=None, cutout=0)
    assert torch.equal(plain(img), ev(img))


def test_transforms_bad_config():
    with pytest.raises(ValueError, match="mean"):
        build_transforms({"std": (1, 1, 1)})
    with pytest.raises(TypeError, match="model_or_data_config"):
        build_transforms("tresnet_m")


def test_list_file_ssgrl_vg500_layout(tmp_path):
    """SSGRL / C-Tran's VG-500 files: bare image names, labels in {image: [indices]}."""
    vg = tmp_path / "VG_100K"
    for name in ("2360596.jpg", "2368334.jpg", "10.jpg"):
        _save(str(vg / name))
    (tmp_path / "train_list_500.txt").write_text("2360596.jpg\n2368334.jpg\n10.jpg\n")
    index = {"2360596.jpg": [3, 499], "2368334.jpg": [0], "10.jpg": [], "other.jpg": [7]}
    (tmp_path / "vg_category_500_labels_index.json").write_text(json.dumps(index))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # most of the 500 labels have no image here
        ds = ListFileMultiLabel(
            str(tmp_path / "train_list_500.txt"), str(vg),
            image_labels_file=str(tmp_path / "vg_category_500_labels_index.json"),
            num_labels=500,
        )
    assert ds.num_labels == 500 and ds.label_names[:3] == ["0", "1", "2"]
    expected = torch.zeros(3, 500, dtype=torch.bool)
    expected[0, [3, 499]] = True
    expected[1, 0] = True
    assert torch.equal(ds.labels, expected)
    # Given as a names file by mistake, it is named, not read as names.
    with pytest.raises(ValueError, match="image_labels_file"):
        ListFileMultiLabel(str(tmp_path / "train_list_500.txt"), str(vg),
                           str(tmp_path / "vg_category_500_labels_index.json"))


def test_labels_are_stored_per_image_not_as_a_dense_matrix(tmp_path):
    """A million labels: the dataset keeps each image's label indices (CSR), the targets and
    the sparse matrix come from them, and the dense matrix only on access."""
    for name in ("a.jpg", "b.jpg", "c.jpg"):
        _save(str(tmp_path / name))
    (tmp_path / "list.txt").write_text("a.jpg 999999 5 5\nb.jpg\nc.jpg 7 3\n")
    (tmp_path / "index.json").write_text(json.dumps({"b.jpg": [12]}))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # almost every label has no image
        ds = ListFileMultiLabel(str(tmp_path / "list.txt"), str(tmp_path),
                                image_labels_file=str(tmp_path / "index.json"),
                                num_labels=10**6)
    assert "labels" not in vars(ds)
    assert ds.label_ptr.tolist() == [0, 2, 3, 5]
    assert ds.label_index.tolist() == [5, 999999, 12, 3, 7]  # sorted, repeats dropped
    target = ds.target(2)
    assert target.shape == (10**6,) and target.nonzero().flatten().tolist() == [3, 7]
    matrix = ds.label_matrix()
    assert matrix.shape == (3, 10**6) and matrix._nnz() == 5
    assert matrix.indices().tolist() == [[0, 0, 1, 2, 2], [5, 999999, 12, 3, 7]]
