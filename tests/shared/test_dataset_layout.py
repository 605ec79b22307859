import os
from pathlib import Path

import pytest

from shared.datasets.layout import DatasetLayout, detect_layout, is_junk, scan_dataset_dir
from shared.errors import DatasetError


def _error(files: list[str], **kwargs) -> DatasetError:
    with pytest.raises(DatasetError) as info:
        detect_layout(files, **kwargs)
    return info.value


def _paths(layout: DatasetLayout, folder: str) -> list[str]:
    (subset,) = [s for s in layout.subsets if s.folder == folder]
    return [e.path for e in subset.images]


def test_kohya_img_and_reg_folders():
    layout = detect_layout(
        [
            "img/6_lisabp woman/002.png",
            "img/6_lisabp woman/001.jpg",
            "img/6_lisabp woman/001.txt",
            "reg/1_woman/r1.png",
            "reg/1_woman/r2.webp",
        ]
    )
    assert layout.kind == "kohya"
    assert [s.folder for s in layout.subsets] == ["img/6_lisabp woman", "reg/1_woman"]
    train, reg = layout.subsets
    assert (train.repeats, train.trigger, train.class_token, train.is_reg) == (6, "lisabp", "woman", False)
    assert [e.path for e in train.images] == ["img/6_lisabp woman/001.jpg", "img/6_lisabp woman/002.png"]
    assert train.images[0].caption_path == "img/6_lisabp woman/001.txt"
    assert train.images[1].caption_path is None
    assert train.default_caption == "lisabp woman"
    assert (reg.repeats, reg.trigger, reg.class_token, reg.is_reg) == (1, None, "woman", True)
    assert layout.train_subsets == (train,) and layout.reg_subsets == (reg,)


def test_kohya_folders_at_root_and_token_splitting():
    layout = detect_layout(["10_sks young  woman/a.png", "3_style/b.png"])
    assert layout.kind == "kohya"
    a, b = layout.subsets
    assert (a.folder, a.repeats, a.trigger, a.class_token) == (
        "10_sks young  woman",
        10,
        "sks",
        "young woman",
    )
    # a single word in a training folder is the trigger
    assert (b.folder, b.repeats, b.trigger, b.class_token) == ("3_style", 3, "style", None)


def test_reg_folder_keeps_all_words_as_class():
    layout = detect_layout(["img/2_x man/a.png", "reg/1_old man/r.png"])
    assert (layout.reg_subsets[0].trigger, layout.reg_subsets[0].class_token) == (None, "old man")


def test_nested_folders_belong_to_their_repeats_folder():
    layout = detect_layout(
        ["img/2_x man/a.png", "img/2_x man/sub/deeper/b.png", "img/2_x man/sub/deeper/b.txt"]
    )
    (subset,) = layout.subsets
    assert [e.path for e in subset.images] == ["img/2_x man/a.png", "img/2_x man/sub/deeper/b.png"]
    assert subset.images[1].caption_path == "img/2_x man/sub/deeper/b.txt"


def test_flat_layout_uses_arguments():
    layout = detect_layout(
        ["b.png", "a.jpeg", "a.caption", "sub/c.webp"], default_repeats=4, trigger="sks", class_token="dog"
    )
    assert layout.kind == "flat"
    (subset,) = layout.subsets
    assert (subset.folder, subset.repeats, subset.trigger, subset.class_token, subset.is_reg) == (
        "",
        4,
        "sks",
        "dog",
        False,
    )
    assert [e.path for e in subset.images] == ["a.jpeg", "b.png", "sub/c.webp"]
    assert subset.images[0].caption_path == "a.caption"


def test_wrapper_folder_is_looked_through_and_paths_stay_real():
    layout = detect_layout(
        ["my set/img/5_zz cat/1.png", "my set/reg/1_cat/r.png", "__MACOSX/my set/img/._1.png", "README.md"]
    )
    assert [s.folder for s in layout.subsets] == ["my set/img/5_zz cat", "my set/reg/1_cat"]
    assert _paths(layout, "my set/img/5_zz cat") == ["my set/img/5_zz cat/1.png"]

    flat = detect_layout(["photos/1.png", "photos/2.png"])
    assert flat.kind == "flat" and flat.subsets[0].folder == "photos"


def test_only_one_wrapper_is_stripped():
    layout = detect_layout(["outer/inner/img/1_a b/x.png"])
    # two wrappers: the inner folders are not looked through, so this is a flat dataset
    assert layout.kind == "flat" and layout.subsets[0].folder == "outer"


def test_single_top_repeats_folder_is_not_a_wrapper():
    layout = detect_layout(["7_x y/a.png", "7_x y/b.png"])
    assert layout.kind == "kohya" and layout.subsets[0].repeats == 7


def test_junk_and_unrelated_files_are_ignored():
    layout = detect_layout(
        [
            "a.png",
            ".DS_Store",
            "sub/Thumbs.db",
            "desktop.ini",
            ".hidden.png",
            "._a.png",
            ".git/x.png",
            "__MACOSX/a.png",
            "notes.md",
            "orphan.txt",
        ]
    )
    assert [e.path for e in layout.subsets[0].images] == ["a.png"]
    assert is_junk("__MACOSX/x/y.png") and is_junk("a/.DS_Store") and not is_junk("a/b.png")


def test_txt_caption_preferred_over_caption():
    layout = detect_layout(["a.png", "a.caption", "a.txt", "b.PNG", "b.TXT"])
    assert [e.caption_path for e in layout.subsets[0].images] == ["a.txt", "b.TXT"]


def test_caption_must_be_in_same_folder():
    layout = detect_layout(["img/1_a b/x.png", "img/x.txt"])
    assert layout.subsets[0].images[0].caption_path is None


@pytest.mark.parametrize("name", ["anim.gif", "scan.BMP", "x/photo.tiff", "p.avif"])
def test_unsupported_image_type(name):
    err = _error(["a.png", name])
    assert err.code == "unsupported_image_type" and err.details["entry"] == name
    assert err.status_code == 422
    assert "png" in err.message and "webp" in err.message


def test_unsupported_type_inside_junk_is_ignored():
    assert detect_layout(["a.png", "__MACOSX/b.gif"]).kind == "flat"


@pytest.mark.parametrize("folder", ["0_x y", "10001_x y"])
def test_invalid_repeats(folder):
    err = _error([f"img/{folder}/a.png"])
    assert err.code == "invalid_repeats" and err.details["entry"] == f"img/{folder}"
    assert "10000" in err.message


def test_max_repeats_is_allowed():
    assert detect_layout(["10000_x/a.png"]).subsets[0].repeats == 10000


@pytest.mark.parametrize("path", ["img/a.png", "reg/r.png", "img/lisabp woman/a.png"])
def test_missing_repeats_prefix(path):
    err = _error(["img/6_x y/ok.png", path])
    assert err.code == "missing_repeats_prefix" and err.details["entry"] == path
    assert "N_trigger class" in err.message


def test_img_folder_alone_is_not_a_wrapper():
    err = _error(["img/a.png", "img/b.png"])
    assert err.code == "missing_repeats_prefix" and err.details["entry"] == "img/a.png"


def test_mixed_layout_root_images_and_repeats_folders():
    err = _error(["6_x y/a.png", "stray.png", "zz.png"])
    assert err.code == "mixed_layout" and err.details["entry"] == "stray.png"


def test_mixed_layout_img_and_root_repeats_folders():
    err = _error(["img/6_x y/a.png", "2_z/b.png"])
    assert err.code == "mixed_layout" and err.details["entry"] == "2_z/b.png"


def test_root_repeats_folders_with_reg_folder_are_fine():
    layout = detect_layout(["6_x y/a.png", "reg/1_y/r.png"])
    assert [(s.folder, s.is_reg) for s in layout.subsets] == [("6_x y", False), ("reg/1_y", True)]


@pytest.mark.parametrize(
    "files", [[], ["readme.md", "a.txt"], ["__MACOSX/a.png", ".DS_Store"], ["reg/1_woman/r.png"]]
)
def test_no_images(files):
    err = _error(files)
    assert err.code == "no_images"


def test_deterministic_regardless_of_input_order():
    files = ["img/2_b c/2.png", "img/1_a b/1.png", "img/2_b c/1.png", "reg/1_c/z.png", "img/1_a b/0.png"]
    assert detect_layout(files) == detect_layout(list(reversed(files)))
    assert [s.folder for s in detect_layout(files).subsets] == ["img/1_a b", "img/2_b c", "reg/1_c"]


def test_scan_dataset_dir_skips_symlinks(tmp_path: Path):
    root = tmp_path / "ds"
    (root / "img" / "3_sks dog").mkdir(parents=True)
    (root / "img" / "3_sks dog" / "a.png").write_bytes(b"x")
    (root / "img" / "3_sks dog" / "a.txt").write_text("a dog")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.png").write_bytes(b"x")
    os.symlink(outside / "secret.png", root / "img" / "3_sks dog" / "link.png")
    os.symlink(outside, root / "img" / "3_sks dog" / "linkdir")

    layout = scan_dataset_dir(root, default_repeats=2)
    (subset,) = layout.subsets
    assert subset.folder == "img/3_sks dog" and subset.repeats == 3
    assert [(e.path, e.caption_path) for e in subset.images] == [
        ("img/3_sks dog/a.png", "img/3_sks dog/a.txt")
    ]


def test_scan_dataset_dir_flat_uses_kwargs(tmp_path: Path):
    (tmp_path / "a.png").write_bytes(b"x")
    layout = scan_dataset_dir(tmp_path, default_repeats=5, trigger="t", class_token="c")
    assert (
        layout.kind == "flat"
        and layout.subsets[0].repeats == 5
        and layout.subsets[0].default_caption == "t c"
    )


# --- loss masks: NAME_mask.png beside NAME.ext (masked_loss) ------------------------------------------------


def test_mask_file_is_the_mask_of_its_image_not_an_image():
    layout = detect_layout(
        ["img/2_sks toy/a.png", "img/2_sks toy/a_mask.png", "img/2_sks toy/b.jpg", "img/2_sks toy/b.txt"]
    )
    (subset,) = layout.subsets
    assert [e.path for e in subset.images] == ["img/2_sks toy/a.png", "img/2_sks toy/b.jpg"]
    assert [e.mask_path for e in subset.images] == ["img/2_sks toy/a_mask.png", None]
    assert layout.orphan_masks == layout.reg_masks == ()


def test_mask_without_image_and_reg_masks_are_listed_not_trained():
    layout = detect_layout(
        [
            "img/1_sks toy/a.png",
            "img/1_sks toy/gone_mask.png",  # no gone.* beside it
            "reg/1_toy/r.png",
            "reg/1_toy/r_mask.png",  # sd-scripts masks training subsets only
        ]
    )
    assert [e.path for s in layout.subsets for e in s.images] == ["img/1_sks toy/a.png", "reg/1_toy/r.png"]
    assert all(e.mask_path is None for s in layout.subsets for e in s.images)
    assert layout.orphan_masks == ("img/1_sks toy/gone_mask.png",)
    assert layout.reg_masks == ("reg/1_toy/r_mask.png",)


def test_only_masks_is_no_images():
    assert _error(["img/1_x/a_mask.png"]).code == "no_images"


def _zip(path: Path, files: dict[str, bytes]) -> Path:
    import zipfile

    with zipfile.ZipFile(path, "w") as archive:
        for name, blob in files.items():
            archive.writestr(name, blob)
    return path


def _png(size: tuple[int, int], mode: str = "RGB", value: int | tuple = 255) -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new(mode, size, value).save(buf, format="PNG")
    return buf.getvalue()


def test_report_lists_masks_checks_their_size_and_warns(tmp_path: Path):
    from shared.datasets.report import analyze_dataset_zip
    from shared.datasets.zipsafe import ZipLimits

    folder = "img/1_sks toy/"
    archive = _zip(
        tmp_path / "d.zip",
        {
            folder + "a.png": _png((64, 48), value=(200, 10, 10)),
            folder + "a_mask.png": _png((64, 48), "L", 255),  # same size
            folder + "b.png": _png((64, 48), value=(10, 200, 10)),
            folder + "b_mask.png": _png((32, 24), "L", 0),  # same aspect ratio: resized
            folder + "c.png": _png((64, 48), value=(10, 10, 200)),
            folder + "c_mask.png": _png((48, 48), "L", 0),  # wrong shape: rejected, c trains unmasked
            folder + "lost_mask.png": _png((64, 48), "L", 0),
        },
    )
    analysis = analyze_dataset_zip(archive, ZipLimits())
    outcomes = {f.path.rsplit("/", 1)[1]: f for f in analysis.files}
    assert [i.path.rsplit("/", 1)[1] for i in analysis.images] == [
        "a.png",
        "b.png",
        "c.png",
    ]  # masks not images
    assert outcomes["a_mask.png"].status == "mask" and outcomes["a_mask.png"].reason is None
    assert outcomes["b_mask.png"].status == "mask" and outcomes["b_mask.png"].conversions == [
        "resized to its image's 64x48"
    ]
    assert (outcomes["c_mask.png"].status, outcomes["c_mask.png"].reason) == (
        "rejected",
        "mask_size_mismatch",
    )
    assert (outcomes["lost_mask.png"].status, outcomes["lost_mask.png"].reason) == (
        "mask",
        "mask_without_image",
    )
    # identical all-black masks are masks, not duplicate images
    assert not any(f.reason == "duplicate_image" for f in analysis.files)
    masks = {e.path.rsplit("/", 1)[1]: e.mask_path for s in analysis.layout.subsets for e in s.images}
    assert masks == {"a.png": folder + "a_mask.png", "b.png": folder + "b_mask.png", "c.png": None}
    codes = {w["code"] for w in analysis.warnings}
    assert {"masks_rejected", "mask_without_image"} <= codes


def test_upload_with_a_job_refuses_a_mask_of_the_wrong_size(tmp_path: Path):
    from shared.config.spec import TrainingConfig
    from shared.datasets.intake import inspect_dataset_zip
    from shared.datasets.zipsafe import ZipLimits

    config = TrainingConfig(base_model="tiny", masked_loss=True)
    good = _zip(
        tmp_path / "good.zip", {"img/1_x/a.png": _png((64, 48)), "img/1_x/a_mask.png": _png((32, 24), "L")}
    )
    report = inspect_dataset_zip(good, config, ZipLimits())
    assert list(report.masks) == ["img/1_x/a_mask.png"] and list(report.images) == ["img/1_x/a.png"]
    bad = _zip(tmp_path / "bad.zip", {"img/1_x/a.png": _png((64, 48)), "img/1_x/a_mask.png": _png((64, 64))})
    with pytest.raises(DatasetError) as err:
        inspect_dataset_zip(bad, config, ZipLimits())
    assert err.value.code == "mask_size_mismatch" and err.value.details["entry"] == "img/1_x/a_mask.png"


def test_masks_survive_the_worker_folder_and_bad_ones_are_dropped(tmp_path: Path):
    from shared.datasets.zipsafe import ZipLimits
    from worker.jobs.dataset_prep import prepare_dataset_dir

    archive = _zip(
        tmp_path / "d.zip",
        {
            "img/1_x/a.webp": b"",  # replaced below by a real WEBP
            "img/1_x/a_mask.png": _png((64, 48), "L"),
            "img/1_x/b.png": _png((64, 48)),
            "img/1_x/b_mask.png": _png((10, 40), "L"),  # rejected at intake: removed here too
            "img/1_x/gone.png": _png((64, 48)),
            "img/1_x/gone_mask.png": _png((64, 48), "L"),
        },
    )
    import io
    import zipfile

    from PIL import Image

    webp = io.BytesIO()
    Image.new("RGB", (64, 48)).save(webp, format="WEBP")
    with zipfile.ZipFile(archive) as src, zipfile.ZipFile(tmp_path / "e.zip", "w") as dst:
        for name in src.namelist():
            dst.writestr(name, webp.getvalue() if name.endswith(".webp") else src.read(name))
    # a stored dataset's caption snapshot lists images only: "gone" was rejected at upload
    dest = prepare_dataset_dir(
        tmp_path / "e.zip",
        tmp_path / "out",
        ZipLimits(),
        captions={"img/1_x/a.webp": "x", "img/1_x/b.png": None},
    )
    layout = scan_dataset_dir(dest)
    masks = {e.path: e.mask_path for s in layout.subsets for e in s.images}
    assert masks == {"img/1_x/a.png": "img/1_x/a_mask.png", "img/1_x/b.png": None}  # a.webp became a.png
    assert layout.orphan_masks == ("img/1_x/gone_mask.png",)  # left over, never trained


def test_a_stored_datasets_rejected_types_leave_the_worker_folder(tmp_path: Path):
    """A .gif that the dataset upload listed as rejected is in the stored zip; training from the dataset's
    snapshot must not trip over it (it refused the whole job with unsupported_image_type)."""
    from shared.datasets.zipsafe import ZipLimits
    from worker.jobs.dataset_prep import prepare_dataset_dir

    archive = _zip(tmp_path / "d.zip", {"img/1_x/a.png": _png((64, 48)), "img/1_x/anim.gif": b"GIF89a"})
    dest = prepare_dataset_dir(archive, tmp_path / "out", ZipLimits(), captions={"img/1_x/a.png": "x"})
    assert [e.path for s in scan_dataset_dir(dest).subsets for e in s.images] == ["img/1_x/a.png"]
    assert not (dest / "img/1_x/anim.gif").exists()


def test_masked_loss_without_masks_warns_in_the_plan_and_trains_unmasked(tmp_path: Path):
    from shared.config.presets import plan_run
    from shared.config.spec import TrainingConfig
    from shared.datasets.intake import inspect_dataset_zip
    from shared.datasets.zipsafe import ZipLimits

    config = TrainingConfig(base_model="tiny", masked_loss=True, resolution=64, min_bucket_reso=64)
    plain = _zip(tmp_path / "plain.zip", {"img/1_x/a.png": _png((64, 64))})
    masked = _zip(tmp_path / "m.zip", {"img/1_x/a.png": _png((64, 64)), "img/1_x/a_mask.png": _png((64, 64))})
    for archive, warned in ((plain, True), (masked, False)):
        report = inspect_dataset_zip(archive, config, ZipLimits())
        run = plan_run(config, report.layout, report.image_sizes, report)
        no_masks = [w for w in run.warnings if w["code"] == "no_masks"]
        assert bool(no_masks) is warned
        assert all(w["field"] == "config.masked_loss" for w in no_masks)


def test_every_layout_problem_is_reported_at_once():
    files = ["img/6_x y/ok.png", "img/a.png", "img/0_z w/b.png", "c.gif", "img/6_x y/e.TIFF", "img/b.png"]
    err = _error(files)
    assert (err.code, err.details["entry"]) == ("unsupported_image_type", "c.gif")  # the first, as before
    assert [(p["file"], p["code"]) for p in err.details["problems"]] == [
        ("c.gif", "unsupported_image_type"),
        ("img/6_x y/e.TIFF", "unsupported_image_type"),
        ("img/a.png", "missing_repeats_prefix"),
        ("img/b.png", "missing_repeats_prefix"),
        ("img/0_z w", "invalid_repeats"),
    ]


def test_every_stray_of_a_mixed_layout_is_named():
    err = _error(["6_x y/a.png", "stray.png", "zz.png"])
    assert [p["file"] for p in err.details["problems"]] == ["stray.png", "zz.png"]


def _broken_zip(path: Path) -> Path:
    """Two good images, two that do not decode, and (rejected per file by a stored dataset) a GIF and a
    4x4 image."""
    folder = "img/2_x y/"
    return _zip(
        path,
        {
            folder + "a.png": _png((64, 64), value=(200, 10, 10)),
            folder + "b.png": b"\x89PNG\r\n\x1a\nnot really",
            folder + "c.png": _png((64, 64), value=(10, 200, 10))[:60],  # truncated
            folder + "d.png": _png((64, 64), value=(10, 10, 200)),
            folder + "anim.gif": b"GIF89a" + b"\0" * 20,
            folder + "tiny.png": _png((4, 4)),
        },
    )


def test_both_uploads_refuse_every_corrupt_image_the_same_way(tmp_path: Path):
    """A corrupt image refuses the zip on both routes (issue 15), each naming every corrupt file; what a
    stored dataset rejects per file (the GIF, the tiny image) the job upload refuses too, in the same list."""
    from shared.config.spec import TrainingConfig
    from shared.datasets.intake import inspect_dataset_zip
    from shared.datasets.report import analyze_dataset_zip
    from shared.datasets.zipsafe import ZipLimits

    archive = _broken_zip(tmp_path / "broken.zip")
    with pytest.raises(DatasetError) as stored:
        analyze_dataset_zip(archive, ZipLimits())
    with pytest.raises(DatasetError) as job:
        inspect_dataset_zip(archive, TrainingConfig(base_model="tiny"), ZipLimits())

    def corrupt(err: DatasetError) -> list[str | None]:
        return [p["file"] for p in err.details["problems"] if p["code"] == "corrupt_image"]

    assert corrupt(stored.value) == corrupt(job.value) == ["img/2_x y/b.png", "img/2_x y/c.png"]
    assert (stored.value.code, stored.value.details["entry"]) == ("corrupt_image", "img/2_x y/b.png")
    assert "img/2_x y/b.png" in stored.value.message and "img/2_x y/c.png" in stored.value.message
    assert {p["code"] for p in job.value.details["problems"]} == {
        "corrupt_image",
        "unsupported_image_type",
        "image_too_small",
    }


def test_a_stored_dataset_warns_of_the_images_it_rejects(tmp_path: Path):
    from shared.datasets.report import analyze_dataset_zip
    from shared.datasets.zipsafe import ZipLimits

    archive = _broken_zip(tmp_path / "broken.zip")
    fixed = _zip(
        tmp_path / "fixed.zip",
        {n: d for n, d in _read_zip(archive).items() if not n.endswith(("b.png", "c.png"))},
    )
    analysis = analyze_dataset_zip(fixed, ZipLimits())
    (warning,) = [w for w in analysis.warnings if w["code"] == "images_rejected"]
    assert warning["count"] == 2
    assert sorted(warning["examples"]) == ["img/2_x y/anim.gif", "img/2_x y/tiny.png"]


def _read_zip(path: Path) -> dict[str, bytes]:
    import zipfile

    with zipfile.ZipFile(path) as archive:
        return {name: archive.read(name) for name in archive.namelist()}


def test_an_image_damaged_in_the_zip_is_refused_on_both_routes_not_a_crash(tmp_path: Path):
    """A stored image whose bytes fail the zip's CRC: zipfile raises BadZipFile, which was a 500."""
    from shared.config.spec import TrainingConfig
    from shared.datasets.intake import inspect_dataset_zip
    from shared.datasets.report import analyze_dataset_zip
    from shared.datasets.zipsafe import ZipLimits

    archive = _zip(tmp_path / "crc.zip", {"img/1_x/a.png": _png((64, 64)), "img/1_x/b.png": _png((64, 64))})
    data = bytearray(archive.read_bytes())
    data[data.index(b"IDAT") + 8] ^= 0xFF  # the first image's pixels, stored uncompressed
    archive.write_bytes(bytes(data))
    for inspect in (
        lambda: analyze_dataset_zip(archive, ZipLimits()),
        lambda: inspect_dataset_zip(archive, TrainingConfig(base_model="tiny"), ZipLimits()),
    ):
        with pytest.raises(DatasetError) as err:
            inspect()
        assert (err.value.code, err.value.details["entry"]) == ("corrupt_entry", "img/1_x/a.png")
