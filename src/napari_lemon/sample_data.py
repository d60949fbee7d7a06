"""A small real H&E slide for demos and first steps.

``CMU-1-Small-Region.svs`` (OpenSlide test data, CC0): an Aperio SVS of
2967 x 2220 px at 0.499 um/px, about 2 MB. It is downloaded once into the user
cache, or taken from a folder that already holds it (``data_dir`` or the
``LEMON_DATA_DIR`` environment variable), always checked against its sha256.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

logger = logging.getLogger(__name__)

SAMPLE_NAME = "CMU-1-Small-Region.svs"
SAMPLE_URL = (
    "https://openslide.cs.cmu.edu/download/openslide-testdata/Aperio/" + SAMPLE_NAME
)
SAMPLE_SHA256 = "ed92d5a9f2e86df67640d6f92ce3e231419ce127131697fbbce42ad5e002c8a7"
DATA_DIR_ENV = "LEMON_DATA_DIR"
CACHE_NAME = "napari-lemon"


def _checked_local(folder: Path) -> Path:
    """The sample file in ``folder``, after checking its hash."""
    import pooch

    path = folder / SAMPLE_NAME
    if not path.is_file():
        raise FileNotFoundError(
            f"data_dir={str(folder)!r} does not hold {SAMPLE_NAME}; put the file "
            f"there, or leave --data-dir and {DATA_DIR_ENV} unset to download it"
        )
    digest = pooch.file_hash(str(path), alg="sha256")
    if digest != SAMPLE_SHA256:
        raise ValueError(
            f"{path} has sha256 {digest}, expected {SAMPLE_SHA256}: it is not the "
            f"sample slide or it is damaged; download it again from {SAMPLE_URL}"
        )
    return path


def fetch_sample(data_dir: str | Path | None = None) -> Path:
    """Path of the sample slide ``CMU-1-Small-Region.svs``.

    Parameters
    ----------
    data_dir : str or Path, optional
        A folder that already holds the file; default the ``LEMON_DATA_DIR``
        environment variable. When neither is set the file is downloaded (once)
        into the user cache folder of napari-lemon.

    Returns
    -------
    Path
        Local path of the checked file.
    """
    import pooch

    # a folder given by the user: no download
    folder = data_dir or os.environ.get(DATA_DIR_ENV)
    if folder:
        return _checked_local(Path(folder))

    # download into the cache, or find it there
    cache = pooch.os_cache(CACHE_NAME)
    try:
        path = pooch.retrieve(
            SAMPLE_URL,
            known_hash=f"sha256:{SAMPLE_SHA256}",
            fname=SAMPLE_NAME,
            path=cache,
        )
    except OSError as err:  # requests' connection errors are OSErrors
        raise ConnectionError(
            f"could not download {SAMPLE_NAME} from {SAMPLE_URL} ({err}); download "
            f"it by hand and set {DATA_DIR_ENV} (or --data-dir) to its folder"
        ) from err
    logger.debug("sample slide at %s", path)
    return Path(path)
