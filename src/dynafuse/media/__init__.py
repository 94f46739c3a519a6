"""From raw video or audio to features: decoding (PyAV) and frame-level feature extractors.

Nothing heavy is imported here: the media packages are optional (`pip install "dynafuse[media]"`).
"""

from .decode import INSTALL_HINT, Clip, MediaError, decode
from .extractors import (
           EXTRACTORS,
           Extractor,
           Frames,
           create_extractor,
           register_extractor,
)

__all__ = ["INSTALL_HINT", "Clip", "MediaError", "decode", "EXTRACTORS", "Extractor", "Frames",
           "create_extractor", "register_extractor"]
