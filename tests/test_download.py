"""The `s3` image source against a real S3-protocol server (moto) on loopback, with real boto3."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pandas as pd
import pytest

import paintbench
from paintbench import s3
from paintbench.s3 import DownloadError, RemoteObject, download_plate, find_plate_folder, local_path, make_client
from paintbench.layout import image_filename


@pytest.fixture(autouse=True)
def fast_retries(monkeypatch):
    monkeypatch.setattr(s3, "RETRY_BASE_SECONDS", 0.01)


def fetch(gallery, dest, plate=None, endpoint_url=None, **overrides):
    options = dict(
        plate=plate or gallery.plate,
        batch=gallery.batch,
        wells=gallery.wells,
        sites=gallery.sites,
        channel_numbers=gallery.channels,
        dest_dir=dest,
        bucket=gallery.bucket,
        gallery_prefix=gallery.prefix,
        endpoint_url=endpoint_url or gallery.endpoint_url,
        workers=4,
        progress=False,
    )
    options.update(overrides)
    return download_plate(**options)


def expected_files(gallery, wells=None, sites=None, channels=None) -> dict[str, bytes]:
    return {
        image_filename(w, s, c): gallery.objects[gallery.images_prefix + image_filename(w, s, c)]
        for w in wells or gallery.wells
        for s in sites or gallery.sites
        for c in channels or gallery.channels
    }


def assert_tree(dest: Path, expected: dict[str, bytes]) -> None:
    assert sorted(p.name for p in dest.iterdir()) == sorted(expected)
    for name, body in expected.items():
        assert (dest / name).read_bytes() == body, name


def test_subset_selection_lands_only_requested_files(s3_gallery, tmp_path):
    dest = tmp_path / "images"
    summary = fetch(s3_gallery, dest, wells=["A01", "P24"], sites=[2], channel_numbers=[1, 3, 5])
    expected = expected_files(s3_gallery, ["A01", "P24"], [2], [1, 3, 5])
    assert_tree(dest, expected)  # no Index.idx.xml, no plane-2 image, no temp files
    assert summary.n_listed == 3 * 2 * 5 + 2
    assert (summary.n_selected, summary.n_downloaded, summary.n_skipped_complete) == (6, 6, 0)
    assert summary.bytes_downloaded == sum(len(b) for b in expected.values())
    assert summary.folder_key == s3_gallery.folder


def test_folder_discovery_and_latest_of_several(s3_gallery, tmp_path, caplog):
    client = make_client(s3_gallery.endpoint_url)
    assert find_plate_folder(client, s3_gallery.bucket, s3_gallery.prefix, s3_gallery.batch, "BR00116991") == s3_gallery.folder
    assert find_plate_folder(client, s3_gallery.bucket, s3_gallery.prefix, s3_gallery.batch, "BR00116992").endswith(
        "/BR00116992__2020-11-06T01_02_03-Measurement1/"
    )
    with caplog.at_level(logging.WARNING, logger="paintbench.s3"):
        summary = fetch(s3_gallery, tmp_path, plate="BR00117000", wells=["A01"], sites=[1], channel_numbers=[1])
    latest = s3_gallery.plate_folder("BR00117000", "2020-12-01T08_30_00")
    assert summary.folder_key == latest
    assert "2 folders" in caplog.text and latest in caplog.text
    name = image_filename("A01", 1, 1)
    assert (tmp_path / name).read_bytes() == s3_gallery.objects[f"{latest}Images/{name}"]


def test_unknown_plate_names_the_empty_prefix(s3_gallery, tmp_path):
    with pytest.raises(DownloadError) as error:
        fetch(s3_gallery, tmp_path, plate="BR99999999")
    assert f"{s3_gallery.prefix}/images/{s3_gallery.batch}/images/BR99999999__" in str(error.value)
    with pytest.raises(DownloadError, match="images/2099_01_01_NOPE/images/BR00116991__"):
        fetch(s3_gallery, tmp_path, batch="2099_01_01_NOPE")
    assert list(tmp_path.iterdir()) == []


def test_missing_field_is_recorded_and_skipped(s3_gallery, tmp_path):
    """The Gallery has holes: a requested image the bucket lacks is recorded (plate, well, site, channel, where)
    and its whole field is left out; the rest of the plate is fetched."""
    summary = fetch(s3_gallery, tmp_path, wells=["B02"], sites=[1, 3], channel_numbers=[1, 2])
    assert [(r["Metadata_Plate"], r["Metadata_Well"], r["Metadata_Site"], r["channel"]) for r in summary.missing] == [
        ("BR00116991", "B02", 3, "ch1"), ("BR00116991", "B02", 3, "ch2")]
    assert all(r["stage"] == "download" and s3_gallery.images_prefix in r["reason"] for r in summary.missing)
    assert sorted(p.name for p in tmp_path.iterdir()) == [image_filename("B02", 1, 1), image_filename("B02", 1, 2)]
    with pytest.raises(DownloadError, match="bad well name"):
        fetch(s3_gallery, tmp_path, wells=["Z99"])


def test_resume_fetches_only_missing_or_wrong_files(s3_gallery, tmp_path):
    expected = expected_files(s3_gallery)
    first = fetch(s3_gallery, tmp_path)
    assert (first.n_downloaded, first.n_skipped_complete) == (30, 0)
    assert_tree(tmp_path, expected)

    old = time.time() - 3600  # an old mtime, so a rewrite would show even on coarse clocks
    for path in tmp_path.iterdir():
        os.utime(path, (old, old))
    names = sorted(expected)
    deleted, truncated = names[0], names[7]
    (tmp_path / deleted).unlink()
    with open(tmp_path / truncated, "r+b") as handle:
        handle.truncate(10)
    stray = tmp_path / f".tmp-{names[3]}.k1lled0"
    stray.write_bytes(b"partial")

    second = fetch(s3_gallery, tmp_path)
    assert (second.n_downloaded, second.n_skipped_complete, second.n_selected) == (2, 28, 30)
    assert second.bytes_downloaded == len(expected[deleted]) + len(expected[truncated])
    assert_tree(tmp_path, expected)  # stray temp file cleaned, truncated file whole again
    for name in names:
        touched = name in (deleted, truncated)
        assert (os.stat(tmp_path / name).st_mtime == old) is not touched, name

    third = fetch(s3_gallery, tmp_path)
    assert (third.n_downloaded, third.bytes_downloaded) == (0, 0)


def test_throttling_and_cut_bodies_are_retried(s3_gallery, tmp_path, fault_proxy):
    proxy = fault_proxy(fail_every=3, truncate_every=4)
    summary = fetch(s3_gallery, tmp_path, endpoint_url=proxy.url)
    assert_tree(tmp_path, expected_files(s3_gallery))
    assert summary.n_downloaded == 30
    assert proxy.counts["failed"] >= 5 and proxy.counts["truncated"] >= 5
    assert proxy.counts["object_gets"] > 30  # some objects needed a second attempt


def test_persistent_cut_bodies_give_up_without_partial_files(s3_gallery, tmp_path, fault_proxy):
    proxy = fault_proxy(truncate_every=1)
    with pytest.raises(DownloadError, match=r"failed after 2 attempts") as error:
        fetch(s3_gallery, tmp_path, endpoint_url=proxy.url, wells=["A01"], sites=[1], channel_numbers=[4], max_attempts=2)
    assert s3_gallery.images_prefix + image_filename("A01", 1, 4) in str(error.value)
    assert list(tmp_path.iterdir()) == []
    assert proxy.counts["object_gets"] == 2


def test_body_shorter_than_listing_is_never_kept(s3_gallery, tmp_path, fault_proxy):
    proxy = fault_proxy(truncate_every=1, announce_cut=True)  # a consistent but short response
    with pytest.raises(DownloadError, match=r"the listing says \d+"):
        fetch(s3_gallery, tmp_path, endpoint_url=proxy.url, wells=["A01"], sites=[1], channel_numbers=[4], max_attempts=2)
    assert list(tmp_path.iterdir()) == []


def test_progress_bar_goes_to_stderr(s3_gallery, tmp_path, capsys):
    fetch(s3_gallery, tmp_path, wells=["A01"], sites=[1], channel_numbers=[1], progress=True)
    captured = capsys.readouterr()
    assert s3_gallery.plate in captured.err and captured.out == ""
    fetch(s3_gallery, tmp_path / "quiet", wells=["A01"], sites=[1], channel_numbers=[1])
    assert capsys.readouterr().err == ""


KILL_SCRIPT = textwrap.dedent(
    """
    import sys
    from paintbench.s3 import download_plate
    endpoint, dest, bucket, prefix, batch, plate = sys.argv[1:7]
    download_plate(plate, batch, ["A01", "B02", "P24"], [1, 2], [1, 2, 3, 4, 5], dest, bucket, prefix,
                   endpoint_url=endpoint, workers=3, progress=False)
    """
)


def test_kill_mid_download_leaves_no_partial_final_file(s3_gallery, tmp_path, fault_proxy):
    proxy = fault_proxy(chunk_delay=0.05, chunk_bytes=128)  # ~0.4 s per file
    dest = tmp_path / "images"
    env = dict(os.environ, PYTHONPATH=str(Path(paintbench.__file__).resolve().parents[1]))
    args = [proxy.url, str(dest), s3_gallery.bucket, s3_gallery.prefix, s3_gallery.batch, s3_gallery.plate]
    child = subprocess.Popen([sys.executable, "-c", KILL_SCRIPT, *args], env=env)
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            names = [p.name for p in dest.iterdir()] if dest.exists() else []
            # some files complete and others in flight (the slow proxy is still serving them)
            if any(n.startswith(".tmp-") for n in names) and any(not n.startswith(".tmp-") for n in names):
                break
            assert child.poll() is None, "download finished before it could be killed"
            time.sleep(0.02)
        else:
            pytest.fail("no partial transfer seen")
        child.send_signal(signal.SIGKILL)
    finally:
        child.kill()
        child.wait(timeout=10)

    expected = expected_files(s3_gallery)
    finals = [p for p in dest.iterdir() if not p.name.startswith(".tmp-")]
    assert 0 < len(finals) < 30
    print(f"killed with {len(finals)} files complete")
    for path in finals:
        assert path.read_bytes() == expected[path.name], f"partial file under a final name: {path.name}"
    assert list(dest.glob(".tmp-*")), "the kill should have left a temp file behind"

    summary = fetch(s3_gallery, dest)
    assert summary.n_skipped_complete == len(finals) and summary.n_downloaded == 30 - len(finals)
    assert_tree(dest, expected)


def test_traversal_key_is_refused(s3_gallery, tmp_path):
    dest = tmp_path / "images"
    with pytest.raises(DownloadError, match=r"refusing key '.*BR00199999__.*/Images/\.\./\.\./evil\.tiff'"):
        fetch(s3_gallery, dest, plate="BR00199999", wells=["A01"], sites=[1], channel_numbers=[1])
    assert not list(tmp_path.rglob("*.tiff"))


@pytest.mark.parametrize(
    "name", ["../../evil.tiff", "..", ".", "", "/etc/passwd", "sub/r01c01f01p01-ch1sk1fk1fl1.tiff", "..\\evil.tiff", "a\0b"]
)
def test_local_path_refuses_names_leaving_dest(tmp_path, name):
    prefix = "p/Images/"
    with pytest.raises(DownloadError, match="refusing key"):
        local_path(tmp_path, prefix, prefix + name)


def test_local_path_accepts_plain_names_only_under_prefix(tmp_path):
    prefix = "p/Images/"
    assert local_path(tmp_path, prefix, prefix + "r01c01f01p01-ch1sk1fk1fl1.tiff") == tmp_path.resolve() / (
        "r01c01f01p01-ch1sk1fk1fl1.tiff"
    )
    with pytest.raises(DownloadError, match="refusing key"):
        local_path(tmp_path, prefix, "elsewhere/r01c01f01p01-ch1sk1fk1fl1.tiff")


def test_anonymous_access_sends_no_credentials(s3_gallery, tmp_path, fault_proxy, monkeypatch):
    for variable in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    proxy = fault_proxy()
    summary = fetch(s3_gallery, tmp_path / "images", plate="BR00116992", wells=["A01"], sites=[1], channel_numbers=[1, 2])
    assert summary.n_downloaded == 2
    fetch(s3_gallery, tmp_path / "via-proxy", plate="BR00116992", wells=["A01"], sites=[1], channel_numbers=[2],
          endpoint_url=proxy.url)
    assert proxy.counts["requests"] >= 3 and proxy.counts["signed"] == 0


def test_listing_follows_pages(s3_gallery):
    client = make_client(s3_gallery.endpoint_url)
    one_page = s3.list_objects(client, s3_gallery.bucket, s3_gallery.images_prefix)
    paged = s3.list_objects(client, s3_gallery.bucket, s3_gallery.images_prefix, page_size=7)
    assert len(one_page) == 32 and paged == one_page
    assert all(isinstance(obj, RemoteObject) and obj.size == len(s3_gallery.objects[obj.key]) for obj in paged)


@pytest.mark.slow
def test_s3_source_through_snakemake(s3_gallery, tmp_path):
    """The download rule, as a user runs it: `--config endpoint_url=...`, a subset, resumable."""
    from tests.helpers import REPO, snakemake

    import boto3

    from tests.conftest import _tiny_tiff

    # The pre-flight wants the two negative controls (DMSO in A02 and A09 of this plate) that normalization needs.
    admin = boto3.client("s3", endpoint_url=s3_gallery.endpoint_url, region_name="us-east-1",
                         aws_access_key_id="testing", aws_secret_access_key="testing")
    for n, well in enumerate(["A02", "A09"]):
        for channel in range(1, 6):
            key = f"{s3_gallery.images_prefix}{image_filename(well, 2, channel)}"
            s3_gallery.objects[key] = _tiny_tiff(2000 + 10 * n + channel)
            admin.put_object(Bucket=s3_gallery.bucket, Key=key, Body=s3_gallery.objects[key])
    target = tmp_path / "results" / "load_data" / "BR00116991.csv"
    args = [
        str(target), "--cores", "1", "--configfile", str(REPO / "config" / "config.yaml"),
        "--config", f"endpoint_url={s3_gallery.endpoint_url}", "plates=[BR00116991]", "wells=[A01,A02,A09,P24]",
        "sites=[2]", f"data_dir={tmp_path / 'data'}", f"results_dir={tmp_path / 'results'}",
    ]
    snakemake(args, cwd=tmp_path)
    table = pd.read_csv(target)
    assert table[["Metadata_Well", "Metadata_Site"]].values.tolist() == [["A01", 2], ["A02", 2], ["A09", 2], ["P24", 2]]
    images = sorted(p.name for p in (tmp_path / "data" / "images" / "BR00116991").iterdir())
    assert images == sorted(table[[f"FileName_Orig{c}" for c in ("DNA", "ER", "RNA", "AGP", "Mito")]].values.ravel())
    for name in images:
        key = f"{s3_gallery.images_prefix}{name}"
        assert (tmp_path / "data" / "images" / "BR00116991" / name).read_bytes() == s3_gallery.objects[key]
    log = (tmp_path / "results" / "logs" / "download" / "BR00116991.log").read_text()
    assert f"--endpoint-url {s3_gallery.endpoint_url}" in log and "20 fetched" in log
