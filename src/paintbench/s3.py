"""Cell Painting Gallery transfers over S3: the `s3` image source (one plate's selected fields), its precomputed
illumination functions, and the resumable, atomic download every Gallery file goes through.

Layout (bucket `cellpainting-gallery`, prefix `cpg0000-jump-pilot/source_4`):
`{prefix}/images/{batch}/images/{plate}__{timestamp}-Measurement1/Images/rRRcCCfFFp01-chNsk1fk1fl1.tiff`.
The timestamp differs per plate, so the plate folder is discovered by listing.

Files land flat in `dest_dir` under their names in the bucket; the keys are read with the run's image pattern
(paintbench.image_pattern; the default is the Gallery's Phenix layout). Each is written to `.tmp-<name>.<random>`
beside its target and renamed only when its size equals the listing's, so a killed job never
leaves a partial file under a final name, and a rerun skips every file already complete.

The Gallery has holes (10 of CPJUMP1's 51 plates lack some images): a requested image the bucket does not
have is recorded (`DownloadSummary.missing`, QC records naming plate, well, site, channel) and its field is
left out, the field's other channels are not fetched, and the rest of the plate completes.

The same resumable, atomic transfer fetches the Gallery's precomputed illumination functions
(`fetch_gallery_illum`, illum.source: gallery) and, for paintbench.published, its published profiles.
"""

from __future__ import annotations

import logging
import os
import random
import sys
import tempfile
import threading
import time
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import boto3
import urllib3.exceptions
from botocore import UNSIGNED
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError
from tqdm import tqdm

from paintbench.image_pattern import DEFAULT_IMAGE_PATTERN, compile_pattern, is_field_image, parse_image_name
from paintbench.layout import parse_well
from paintbench.paths import illum_filename
from paintbench.qc import record

log = logging.getLogger(__name__)

TMP_PREFIX = ".tmp-"
CHUNK_BYTES = 1 << 20
# Backoff of the per-object retry: RETRY_BASE_SECONDS * 2**(attempt-1), capped, with jitter.
RETRY_BASE_SECONDS = 0.5
RETRY_MAX_SECONDS = 20.0
# Failures of a transfer that a fresh attempt may cure: dropped connections, bodies cut short,
# timeouts. botocore's own retry (throttling, 5xx) happens inside get_object before these.
_TRANSIENT = (BotoCoreError, urllib3.exceptions.HTTPError, ConnectionError, TimeoutError)


class DownloadError(RuntimeError):
    """A plate's images could not be fetched; the message names plate, key or prefix."""


class _SizeMismatch(Exception):
    """A body ended before (or after) the size the listing announced."""


@dataclass
class DownloadSummary:
    n_listed: int  # objects under the plate's Images/ prefix
    n_selected: int  # of those, the requested (well, site, channel) files
    n_downloaded: int  # fetched in this run
    n_skipped_complete: int  # already present with the listed size
    bytes_downloaded: int
    folder_key: str  # the plate folder, '.../{plate}__{timestamp}-Measurement1/'
    missing: list[dict]  # QC records of requested images the bucket does not have


@dataclass(frozen=True)
class RemoteObject:
    key: str
    size: int


def make_client(endpoint_url: str | None = None, anonymous: bool = True, max_attempts: int = 6, workers: int = 8):
    """An S3 client: unsigned when anonymous, botocore retries (throttling, 5xx) in standard mode."""
    config = Config(
        signature_version=UNSIGNED if anonymous else None,
        retries={"mode": "standard", "max_attempts": max(1, max_attempts)},
        max_pool_connections=max(10, workers),
        connect_timeout=20,
        read_timeout=60,
    )
    return boto3.session.Session().client("s3", endpoint_url=endpoint_url, region_name="us-east-1", config=config)


def plate_search_prefix(gallery_prefix: str, batch: str, plate: str) -> str:
    """The listing prefix that finds a plate's folder(s): '{prefix}/images/{batch}/images/{plate}__'."""
    return f"{gallery_prefix.strip('/')}/images/{batch}/images/{plate}__"


def find_plate_folder(client, bucket: str, gallery_prefix: str, batch: str, plate: str) -> str:
    """The key of the plate's '{plate}__{timestamp}-Measurement1/' folder; the latest name if several."""
    prefix = plate_search_prefix(gallery_prefix, batch, plate)
    folders: list[str] = []
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix, Delimiter="/")
    try:
        for page in pages:
            folders.extend(entry["Prefix"] for entry in page.get("CommonPrefixes", []))
    except (ClientError, *_TRANSIENT) as exc:
        raise DownloadError(f"plate {plate}: listing s3://{bucket}/{prefix} failed: {exc}") from exc
    if not folders:
        raise DownloadError(
            f"plate {plate}: no plate folder under s3://{bucket}/{prefix} (the prefix is empty: "
            f"check the plate barcode and batch {batch!r})"
        )
    folders.sort()
    if len(folders) > 1:
        log.warning("plate %s: %d folders under s3://%s/%s, using the latest: %s", plate, len(folders), bucket, prefix, folders[-1])
    return folders[-1]


def list_objects(client, bucket: str, prefix: str, page_size: int = 1000) -> list[RemoteObject]:
    """Every object under `prefix` (all pages of `page_size` keys)."""
    objects = []
    pages = client.get_paginator("list_objects_v2").paginate(
        Bucket=bucket, Prefix=prefix, PaginationConfig={"PageSize": page_size}
    )
    try:
        for page in pages:
            objects.extend(RemoteObject(entry["Key"], int(entry["Size"])) for entry in page.get("Contents", []))
    except (ClientError, *_TRANSIENT) as exc:
        raise DownloadError(f"listing s3://{bucket}/{prefix} failed: {exc}") from exc
    return objects


def local_path(dest_dir: str | os.PathLike, images_prefix: str, key: str) -> Path:
    """Where `key` lands: dest_dir/<name after images_prefix>; refuses names that leave dest_dir.

    The name must be one plain path component: no '/', '\\', '..', '.', absolute path or NUL.
    """
    name = key[len(images_prefix):] if key.startswith(images_prefix) else None
    unsafe = (
        not name
        or name in (".", "..")
        or any(sep in name for sep in ("/", "\\", "\0"))
        or os.path.isabs(name)
    )
    if not unsafe:
        folder = Path(dest_dir).resolve()
        target = (folder / name).resolve()
        unsafe = target.parent != folder
    if unsafe:
        raise DownloadError(
            f"refusing key {key!r}: its file name would not be a plain file inside {dest_dir} "
            f"(expected one name under {images_prefix!r})"
        )
    return Path(dest_dir).resolve() / name


def select_objects(
    objects: list[RemoteObject],
    images_prefix: str,
    wells: list[str],
    sites: list[int],
    channels: list[int],
    dest_dir: str | os.PathLike = ".",
    plate: str = "",
    image_pattern: str = DEFAULT_IMAGE_PATTERN,
) -> dict[tuple[str, int, int], tuple[str, RemoteObject]]:
    """The listed objects that are requested fields: (well, site, channel) -> (file name, object), plane 1 only.

    Keys are read with `image_pattern`; names it does not match, or matches with an impossible well, are not
    fields (a plate folder also holds e.g. Index.idx.xml). Directory markers (keys ending in '/') are skipped; any
    other key that is not a plain name under the prefix is refused (`local_path`).
    """
    pattern = compile_pattern(image_pattern)
    wanted = {(w, int(s), int(c)) for w in wells for s in sites for c in channels}
    selected: dict[tuple[str, int, int], tuple[str, RemoteObject]] = {}
    for obj in objects:
        if obj.key.endswith("/"):
            continue
        name = local_path(dest_dir, images_prefix, obj.key).name
        try:
            parsed = parse_image_name(name, pattern)
        except ValueError:
            continue
        if parsed is None or not is_field_image(parsed, plate or parsed.plate):
            continue
        key = (parsed.well, parsed.site, parsed.channel)
        if key not in wanted:
            continue
        if key in selected:
            raise DownloadError(f"plate {plate}: s3 keys {selected[key][1].key} and {obj.key} are both well "
                                f"{key[0]}, site {key[1]}, channel {key[2]} under the image pattern '{image_pattern}'")
        selected[key] = (name, obj)
    return selected


def download_file(
    client,
    bucket: str,
    obj: RemoteObject,
    target: Path,
    max_attempts: int = 6,
    on_bytes: Callable[[int], None] | None = None,
) -> int:
    """Fetch one object to `target` via a temporary file; retry cut-off transfers with backoff.

    Returns the size written. A body shorter or longer than `obj.size` counts as a failed attempt.
    """
    on_bytes = on_bytes or (lambda n: None)
    last: BaseException | None = None
    for attempt in range(1, max(1, max_attempts) + 1):
        fd, tmp_name = tempfile.mkstemp(prefix=f"{TMP_PREFIX}{target.name}.", dir=target.parent)
        tmp = Path(tmp_name)
        written = 0
        try:
            with os.fdopen(fd, "wb") as handle:
                body = client.get_object(Bucket=bucket, Key=obj.key)["Body"]
                try:
                    for chunk in body.iter_chunks(CHUNK_BYTES):
                        handle.write(chunk)
                        written += len(chunk)
                        on_bytes(len(chunk))
                finally:
                    body.close()
            if written != obj.size:
                raise _SizeMismatch(f"got {written} bytes, the listing says {obj.size}")
            os.replace(tmp, target)
            return written
        except ClientError as exc:
            # botocore has already retried throttling and 5xx; 403/404 will not improve.
            raise DownloadError(f"s3://{bucket}/{obj.key}: {exc}") from exc
        except (*_TRANSIENT, _SizeMismatch) as exc:
            last = exc
            on_bytes(-written)
            if attempt < max_attempts:
                delay = min(RETRY_MAX_SECONDS, RETRY_BASE_SECONDS * 2 ** (attempt - 1)) * random.uniform(0.5, 1.0)
                log.info("s3://%s/%s: attempt %d failed (%s); retrying in %.2f s", bucket, obj.key, attempt, exc, delay)
                time.sleep(delay)
        finally:
            tmp.unlink(missing_ok=True)
    raise DownloadError(f"s3://{bucket}/{obj.key}: failed after {max_attempts} attempts: {last}") from last


def _clean_temp_files(dest: Path, names: set[str]) -> int:
    """Remove `.tmp-<name>.*` leftovers of earlier, killed runs for the given file names."""
    removed = 0
    for path in dest.glob(f"{TMP_PREFIX}*"):
        stem = path.name[len(TMP_PREFIX):]
        if path.is_file() and stem.rsplit(".", 1)[0] in names:
            path.unlink(missing_ok=True)
            removed += 1
    return removed


def download_plate(
    plate: str,
    batch: str,
    wells: list[str],
    sites: list[int],
    channel_numbers: list[int],
    dest_dir: str | os.PathLike,
    bucket: str,
    gallery_prefix: str,
    endpoint_url: str | None = None,
    workers: int = 8,
    max_attempts: int = 6,
    anonymous: bool = True,
    progress: bool = True,
    image_pattern: str = DEFAULT_IMAGE_PATTERN,
) -> DownloadSummary:
    """Download the requested wells x sites x channels of one plate flat into `dest_dir`.

    Files already present with the listed size are skipped. A requested image that is not in the bucket is
    recorded in the summary's `missing` and its whole field is skipped. Raises DownloadError when the plate
    folder is missing, a key is unsafe, or a transfer keeps failing.
    """
    if not wells or not sites or not channel_numbers:
        raise DownloadError(f"plate {plate}: nothing selected (wells={wells!r}, sites={sites!r}, channels={channel_numbers!r})")
    for well in wells:
        try:
            parse_well(well)
        except ValueError as exc:
            raise DownloadError(f"plate {plate}: {exc}") from exc
    dest = Path(dest_dir)
    dest.mkdir(parents=True, exist_ok=True)
    dest = dest.resolve()
    client = make_client(endpoint_url, anonymous=anonymous, max_attempts=max_attempts, workers=workers)

    folder = find_plate_folder(client, bucket, gallery_prefix, batch, plate)
    images_prefix = f"{folder}Images/"
    listed = list_objects(client, bucket, images_prefix)
    by_field = select_objects(listed, images_prefix, wells, sites, channel_numbers, dest, plate, image_pattern)

    missing = [(w, s, c) for w in wells for s in sites for c in channel_numbers if (w, s, c) not in by_field]
    incomplete = {(w, s) for w, s, _ in missing}
    if missing:
        log.warning("plate %s: %d requested image(s) of %d field(s) not in s3://%s/%s: those fields are left out",
                    plate, len(missing), len(incomplete), bucket, images_prefix)
    reason = f"not in s3://{bucket}/{images_prefix}"
    records = [record(plate, w, s, "download", reason, channel=f"ch{c}") for w, s, c in missing]
    selected = {name: obj for (well, site, _), (name, obj) in by_field.items() if (well, site) not in incomplete}

    _clean_temp_files(dest, set(selected))
    todo = []
    for name, obj in sorted(selected.items()):
        target = local_path(dest, images_prefix, obj.key)
        if target.is_file() and target.stat().st_size == obj.size:
            continue
        todo.append((obj, target))
    n_skipped = len(selected) - len(todo)
    log.info("plate %s: %d listed, %d selected, %d already complete, %d to fetch from s3://%s/%s",
             plate, len(listed), len(selected), n_skipped, len(todo), bucket, images_prefix)

    lock = threading.Lock()
    total = sum(obj.size for obj, _ in todo)
    with tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=plate, file=sys.stderr,
              disable=not progress, leave=False) as bar:

        def on_bytes(n: int) -> None:
            with lock:
                bar.update(n)

        fetched = 0
        executor = ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix=f"s3-{plate}")
        try:
            futures = [executor.submit(download_file, client, bucket, obj, target, max_attempts, on_bytes)
                       for obj, target in todo]
            done, pending = wait(futures, return_when=FIRST_EXCEPTION)
            for future in pending:
                future.cancel()
            for future in futures:
                if future.done() and not future.cancelled() and future.exception() is None:
                    fetched += future.result()
            for future in done:
                if future.exception() is not None:
                    raise future.exception()
        finally:
            executor.shutdown(wait=True, cancel_futures=True)

    return DownloadSummary(
        n_listed=len(listed),
        n_selected=len(selected),
        n_downloaded=len(todo),
        n_skipped_complete=n_skipped,
        bytes_downloaded=fetched,
        folder_key=folder,
        missing=records,
    )


def fetch_gallery_illum(plate: str, batch: str, channels: list[str], out_dir: Path, bucket: str, gallery_prefix: str,
                        endpoint_url: str | None = None, anonymous: bool = True, max_attempts: int = 6) -> dict[str, Path]:
    """The consortium's precomputed functions: images/<batch>/illum/<plate>/<plate>_Illum<Channel>.npy."""
    client = make_client(endpoint_url, anonymous, max_attempts, workers=2)
    prefix = f"{gallery_prefix}/images/{batch}/illum/{plate}/"
    listed = {obj.key.rsplit("/", 1)[-1]: obj for obj in list_objects(client, bucket, prefix)}
    out_dir.mkdir(parents=True, exist_ok=True)
    written = {}
    for channel in channels:
        name = illum_filename(plate, channel)
        if name not in listed:
            raise DownloadError(f"plate {plate}: no precomputed illumination function s3://{bucket}/{prefix}{name} "
                                f"(found: {sorted(listed) or 'nothing'})")
        obj: RemoteObject = listed[name]
        download_file(client, bucket, obj, out_dir / name, max_attempts)
        written[channel] = out_dir / name
    return written
