"""JSON text already encoded, carried inside an event to be written as it is, and the encoders that make it.

A test's phases are the same for every run of its function: their text is
made once (most of it when the module is transformed) rather than encoded
from dicts at each ``test_start``. ``channel.encode_flat`` splices a
``RawJSON`` value verbatim; the engine decodes one only for a host that
does not say it takes them (``raw_json = True``) or when it needs the data.
"""

from __future__ import annotations

import json

_loads = json.loads

#: Compact JSON of any value (no spaces), as the kernel reads it.
encode_compact = json.JSONEncoder(separators=(",", ":")).encode
try:
    #: A JSON string literal of ``str`` (ASCII, as ``json.dumps`` writes it).
    from json.encoder import encode_basestring_ascii as encode_string
except ImportError:  # pragma: no cover - an interpreter without _json
    encode_string = encode_compact
#: Seconds as events write them: microseconds, several times cheaper than the shortest ``repr``.
encode_seconds = "%.6f".__mod__


class RawJSON(str):
    """A JSON text (an array or object) to be written unchanged."""

    __slots__ = ()

    def decode(self):
        """The value the text encodes."""
        return _loads(self)
