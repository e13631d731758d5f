"""Inputs of the learner tests: a tiny model's corpus, images as they travel, a free loopback port."""

import io
import socket

from PIL import Image

LOOPBACK = "127.0.0.1"
CORPUS = [
    "a red square on a blue background.",
    "the picture shows a happy family at the beach.",
    "what emotion does this image evoke?",
    "a dark stormy sky over an empty road.",
] * 8


def png(color, side):
    """Encoded PNG bytes: the ImageRef form images travel in."""
    buffer = io.BytesIO()
    Image.new("RGB", (side, side), color).save(buffer, format="PNG")
    return buffer.getvalue()


def free_port():
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        return s.getsockname()[1]
