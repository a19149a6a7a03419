"""Image helpers for the image tests: Pillow-made images of every awkward kind, data URIs,
and reading back what the upstream received."""

from __future__ import annotations

import base64
import io
import json
import re
import struct
import zlib
from pathlib import Path

from PIL import Image

PHOTOS = Path("/usr/share/backgrounds/mate")  # Debian's mate-backgrounds (scripts/install-deps.sh)
PHOTO_2560x1920 = PHOTOS / "nature" / "Wood.jpg"  # baseline JPEG
PHOTO_3840x2160 = PHOTOS / "abstract" / "Elephants_3840x2160.jpg"  # progressive JPEG, 8 MB


def encode(im: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    return buf.getvalue()


def gradient(w: int, h: int, mode: str = "RGB") -> Image.Image:
    """A picture with content everywhere (so resizing and orientation can be checked)."""
    im = Image.linear_gradient("L").resize((w, h))
    if mode == "L":
        return im
    rgb = Image.merge("RGB", (im, im.transpose(Image.Transpose.FLIP_LEFT_RIGHT), Image.new("L", (w, h), 90)))
    return rgb.convert(mode) if mode != "RGB" else rgb


def jpeg(w: int, h: int, **kw) -> bytes:
    return encode(gradient(w, h), "JPEG", quality=85, **kw)


def png(w: int, h: int, mode: str = "RGB") -> bytes:
    return encode(gradient(w, h, "RGB").convert(mode) if mode not in ("RGB", "L") else gradient(w, h, mode), "PNG")


def data_uri(data: bytes, mime: str = "image/jpeg") -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


def image_part(url: str, **extra) -> dict:
    return {"type": "image_url", "image_url": {"url": url, **extra}}


def user(*parts: dict, text: str = "What is in this image?") -> list[dict]:
    return [{"role": "user", "content": [{"type": "text", "text": text}, *parts]}]


def sent_urls(body: bytes) -> list[str]:
    """Every image URL in a request body, in order."""
    out = []
    for m in json.loads(body)["messages"]:
        content = m.get("content")
        if isinstance(content, list):
            for p in content:
                if p.get("type") == "image_url":
                    iu = p["image_url"]
                    out.append(iu if isinstance(iu, str) else iu["url"])
    return out


def decode_data_uri(url: str) -> tuple[str, bytes]:
    m = re.fullmatch(r"data:([^;,]+);base64,(.*)", url, re.S)
    assert m, f"not a base64 data URI: {url[:60]}"
    return m.group(1), base64.b64decode(m.group(2), validate=True)


def opened(data: bytes) -> Image.Image:
    im = Image.open(io.BytesIO(data))
    im.load()
    return im


def png_bomb(w: int = 30000, h: int = 30000) -> bytes:
    """A small, valid PNG whose header declares w x h 1-bit pixels (all zero)."""
    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    row = b"\0" * (1 + (w + 7) // 8)
    comp = zlib.compressobj(9)
    idat = b"".join(comp.compress(row) for _ in range(h)) + comp.flush()
    ihdr = struct.pack(">IIBBBBB", w, h, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")
