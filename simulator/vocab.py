"""The simulator's own names for what its dataset holds (its ground truth).

Deliberately not imported from the exporter: the fake and the adapter must be able to
disagree, or the tests that compare them could never catch a change on one side. The
strings match the exporter's measure names today so tests can compare totals directly.
"""

from __future__ import annotations

REQUESTS = "requests"
IMAGES = "images"
CHARACTERS = "characters"  # text-to-speech input characters
AUDIO_SECONDS = "audio_seconds"  # transcription seconds
SESSIONS = "sessions"  # code interpreter sessions
TOOL_CALLS = "tool_calls"  # file search / web search calls
STORAGE_BYTES = "storage_bytes"  # a level at the bucket, not an amount
COST = "cost"
