import io
import os
import warnings
import zipfile
from pathlib import Path

import pytest

from shared.datasets.zipsafe import MiB, ZipLimits, copy_limited, extract_zip, inspect_zip
from shared.errors import DatasetError

LIMITS = ZipLimits()


def _zip(path: Path, entries: list[tuple[str | zipfile.ZipInfo, bytes]], **kwargs) -> Path:
    with warnings.catch_warnings():
        # zipfile warns on the duplicate names we write on purpose
        warnings.simplefilter("ignore", UserWarning)
        with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED, **kwargs) as zf:
            for name, data in entries:
                zf.writestr(name, data)
    return path


def _error(path: Path, limits: ZipLimits = LIMITS) -> DatasetError:
    with pytest.raises(DatasetError) as info:
        inspect_zip(path, limits)
    return info.value


def test_inspect_lists_files_without_dirs_or_junk(tmp_path: Path):
    path = _zip(
        tmp_path / "ok.zip",
        [
            ("set/", b""),
            ("set/img/6_x y/a.png", b"png"),
            ("set/img/6_x y/a.txt", b"x y"),
            ("__MACOSX/set/img/6_x y/._a.png", b"meta"),
            ("set/.DS_Store", b"meta"),
        ],
    )
    assert inspect_zip(path, LIMITS) == ["set/img/6_x y/a.png", "set/img/6_x y/a.txt"]


def test_extract_writes_files_and_skips_junk(tmp_path: Path):
    path = _zip(
        tmp_path / "ok.zip",
        [("img/1_a b/x.png", b"x" * 3000), ("img/1_a b/x.txt", b"cap"), ("__MACOSX/._x", b"j")],
    )
    dest = tmp_path / "out"
    assert extract_zip(path, dest, LIMITS) == ["img/1_a b/x.png", "img/1_a b/x.txt"]
    assert (dest / "img/1_a b/x.png").read_bytes() == b"x" * 3000
    assert not (dest / "__MACOSX").exists()


@pytest.mark.parametrize(
    "name",
    [
        "../evil.png",
        "a/../../evil.png",
        "/etc/x",
        "C:/x.png",
        "c:evil.png",
        "a\\..\\evil.png",
        "a\x01b.png",
        "./a.png",
        "a//b.png",
    ],
)
def test_unsafe_paths(tmp_path: Path, name: str):
    path = _zip(tmp_path / "bad.zip", [("ok.png", b"x"), (name, b"x")])
    err = _error(path)
    assert err.code == "unsafe_path" and err.details["entry"] == name and err.status_code == 422
    dest = tmp_path / "out"
    with pytest.raises(DatasetError):
        extract_zip(path, dest, LIMITS)
    assert not (tmp_path / "evil.png").exists()
    assert list(dest.iterdir()) == []  # nothing extracted before the archive was judged


def test_nul_in_name_is_seen_despite_zipfile_truncation(tmp_path: Path):
    path = _zip(tmp_path / "nul.zip", [("aXb.png", b"x")])
    data = path.read_bytes().replace(b"aXb.png", b"a\x00b.png")  # local header and central directory
    path.write_bytes(data)
    err = _error(path)
    assert err.code == "unsafe_path" and err.details["entry"] == "a\x00b.png"


def test_symlink_entry(tmp_path: Path):
    link = zipfile.ZipInfo("img/1_a b/link.png")
    link.external_attr = 0o120777 << 16
    link.create_system = 3
    path = _zip(tmp_path / "link.zip", [("img/1_a b/x.png", b"x"), (link, b"/etc/passwd")])
    err = _error(path)
    assert err.code == "symlink_entry" and err.details["entry"] == "img/1_a b/link.png"
    with pytest.raises(DatasetError):
        extract_zip(path, tmp_path / "out", LIMITS)
    assert not (tmp_path / "out/img/1_a b/link.png").exists()


def test_encrypted_entry(tmp_path: Path):
    path = tmp_path / "enc.zip"
    with zipfile.ZipFile(path, "w") as zf:
        info = zipfile.ZipInfo("secret.png")
        zf.writestr(info, b"x")
        info.flag_bits |= 0x1  # written to the central directory on close
    err = _error(path)
    assert err.code == "encrypted_entry" and err.details["entry"] == "secret.png"


@pytest.mark.parametrize(("first", "second"), [("a.png", "a.png"), ("caf\u00e9.png", "cafe\u0301.png")])
def test_duplicate_entry(tmp_path: Path, first: str, second: str):
    path = _zip(tmp_path / "dup.zip", [(first, b"1"), (second, b"2")])
    err = _error(path)
    assert err.code == "duplicate_entry" and err.details["entry"] == second


def test_duplicate_names_differing_in_case_are_distinct(tmp_path: Path):
    path = _zip(tmp_path / "case.zip", [("a.png", b"1"), ("A.png", b"2")])
    assert inspect_zip(path, LIMITS) == ["a.png", "A.png"]


def test_file_that_is_also_a_folder(tmp_path: Path):
    path = _zip(tmp_path / "clash.zip", [("a", b"1"), ("a/b.png", b"2")])
    err = _error(path)
    assert err.code == "duplicate_entry" and err.details["entry"] == "a"


def test_too_many_entries(tmp_path: Path):
    path = _zip(tmp_path / "many.zip", [(f"{i}.png", b"x") for i in range(6)])
    err = _error(path, ZipLimits(max_entries=5))
    assert err.code == "too_many_entries" and err.status_code == 413 and "5" in err.message
    assert inspect_zip(path, ZipLimits(max_entries=6))


def _zeros_zip(path: Path, name: str, size: int) -> Path:
    """A deflated member of `size` zeros, streamed so the test never holds it in memory."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf, zf.open(name, "w") as member:
        chunk = bytes(MiB)
        for _ in range(size // MiB):
            member.write(chunk)
    return path


def test_real_zip_bomb_by_ratio(tmp_path: Path):
    path = _zeros_zip(tmp_path / "bomb.zip", "img/1_a b/zeros.png", 50 * MiB)
    assert path.stat().st_size < 200_000  # ~1000:1
    err = _error(path)
    assert err.code == "zip_bomb" and err.status_code == 413
    assert err.details["entry"] == "img/1_a b/zeros.png" and "100x" in err.message
    dest = tmp_path / "out"
    with pytest.raises(DatasetError):
        extract_zip(path, dest, LIMITS)
    assert list(dest.rglob("*")) == []


def test_entry_and_total_size_limits(tmp_path: Path):
    path = _zip(tmp_path / "big.zip", [("a.png", os.urandom(3000)), ("b.png", os.urandom(3000))])
    err = _error(path, ZipLimits(max_entry_uncompressed=2000))
    assert err.code == "zip_bomb" and err.details["entry"] == "a.png" and "2000" in err.message
    err = _error(path, ZipLimits(max_total_uncompressed=5000))
    assert err.code == "zip_bomb" and err.details["entry"] == "b.png" and "5000" in err.message


def test_overall_ratio(tmp_path: Path):
    # each member is under the per-entry ratio threshold size, together they expand far too much
    entries = [(f"{i}.png", bytes(MiB - 1)) for i in range(3)]
    path = _zip(tmp_path / "many-small.zip", entries)
    err = _error(path)
    assert err.code == "zip_bomb" and "entry" not in err.details


def test_not_a_zip(tmp_path: Path):
    path = tmp_path / "x.zip"
    path.write_bytes(b"this is not a zip at all" * 10)
    err = _error(path)
    assert err.code == "not_a_zip" and err.status_code == 422


def test_truncated_central_directory(tmp_path: Path):
    path = _zip(tmp_path / "t.zip", [("a.png", b"x" * 100)])
    path.write_bytes(path.read_bytes()[:-30])
    assert _error(path).code == "not_a_zip"


def test_header_lies_about_size(tmp_path: Path):
    """Declared 100 bytes, holds 2 MiB: extraction never writes more than declared and fails the member."""
    path = tmp_path / "liar.zip"
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        info = zipfile.ZipInfo("img/1_a b/liar.png")
        info.compress_type = zipfile.ZIP_DEFLATED
        zf.writestr(info, os.urandom(2 * MiB))
        info.file_size = 100  # central directory lies; the local header keeps the truth
    assert inspect_zip(path, LIMITS) == ["img/1_a b/liar.png"]
    dest = tmp_path / "out"
    with pytest.raises(DatasetError) as exc:
        extract_zip(path, dest, LIMITS)
    # zipfile stops reading at the declared size, so the lie surfaces as a CRC mismatch; copy_limited's own
    # count (tested below) is the second line of defence should a reader ever hand over more.
    assert exc.value.code == "corrupt_entry"
    assert exc.value.details["entry"] == "img/1_a b/liar.png"
    assert not (dest / "img/1_a b/liar.png").exists()  # partial file removed


def test_copy_limited_stops_at_declared_size():
    out = io.BytesIO()
    with pytest.raises(DatasetError) as exc:
        copy_limited(
            iter([b"a" * 60, b"b" * 60]), out, declared=100, budget=10_000, entry="x.png", limits=LIMITS
        )
    assert exc.value.code == "zip_bomb" and exc.value.details["entry"] == "x.png"
    assert out.getvalue() == b"a" * 60  # the chunk that crossed the line was never written


def test_copy_limited_stops_at_budget():
    out = io.BytesIO()
    with pytest.raises(DatasetError) as exc:
        copy_limited(
            iter([b"a" * 60, b"b" * 60]), out, declared=1000, budget=100, entry="x.png", limits=LIMITS
        )
    assert exc.value.code == "zip_bomb" and exc.value.status_code == 413


def test_extract_refuses_existing_symlink_in_dest(tmp_path: Path):
    path = _zip(tmp_path / "ok.zip", [("sub/x.png", b"x")])
    dest = tmp_path / "out"
    dest.mkdir()
    outside = tmp_path / "outside"
    outside.mkdir()
    os.symlink(outside, dest / "sub")
    with pytest.raises(DatasetError) as exc:
        extract_zip(path, dest, LIMITS)
    assert exc.value.code == "unsafe_path" and exc.value.details["entry"] == "sub/x.png"
    assert list(outside.iterdir()) == []


def test_every_problem_is_reported_at_once_keeping_the_first(tmp_path: Path):
    """One upload tells every entry at fault (issue 15): the first's code and entry stay where clients read
    them, the rest are listed in details.problems and spelled out in the message."""
    link = zipfile.ZipInfo("img/1_a b/link.png")
    link.external_attr = 0o120777 << 16
    entries = [
        ("img/1_a b/ok.png", b"x"),
        ("../evil.png", b"x"),
        (link, b"/etc/passwd"),
        ("img/1_a b/ok.png", b"again"),
        ("a", b"file"),
        ("a/b.png", b"under a file"),
    ]
    path = _zip(tmp_path / "many.zip", entries)
    err = _error(path)
    assert (err.code, err.details["entry"], err.status_code) == ("unsafe_path", "../evil.png", 422)
    problems = [(p["file"], p["code"]) for p in err.details["problems"]]
    assert problems == [
        ("../evil.png", "unsafe_path"),
        ("img/1_a b/link.png", "symlink_entry"),
        ("img/1_a b/ok.png", "duplicate_entry"),
        ("a", "duplicate_entry"),
    ]
    assert err.details["more_problems"] == 0
    assert err.message.startswith("The zip has 4 problems:")
    assert all(p["problem"] in err.message for p in err.details["problems"])
    with pytest.raises(DatasetError) as extracted:
        extract_zip(path, tmp_path / "out", LIMITS)
    assert len(extracted.value.details["problems"]) == 4
    assert not (tmp_path / "out").exists() or list((tmp_path / "out").iterdir()) == []


def test_problems_are_bounded_saying_how_many_more(tmp_path: Path):
    path = _zip(tmp_path / "bad.zip", [(f"../{i}.png", b"x") for i in range(120)])
    err = _error(path)
    assert len(err.details["problems"]) == 50 and err.details["more_problems"] == 70
    assert "The zip has 120 problems" in err.message and "and 110 more" in err.message
    assert "'../10.png'" not in err.message  # the message spells out the first 10 only
    assert len(err.message) < 2000


def test_a_bomb_stops_the_look_at_the_rest(tmp_path: Path):
    path = _zip(tmp_path / "big.zip", [("../a.png", b"x"), ("b.png", os.urandom(3000)), ("../c.png", b"x")])
    err = _error(path, ZipLimits(max_total_uncompressed=2000))
    assert [p["code"] for p in err.details["problems"]] == ["unsafe_path", "zip_bomb"]
