"""Which FFmpeg demuxer may open a file that someone else sent: single-file video containers only.

Left to itself, FFmpeg picks a demuxer by probing the file, and some demuxers open other files: an HLS playlist
(`.m3u8`) names segments that may be any path or URL on the machine that opens it, a concat list names files, an
image2 pattern globs for them, `subfile` reads part of another file. A server that opened uploads that way would
read its own disk for a client. So an upload is opened only as the demuxer its content (magic bytes) and its
extension agree on, from `SINGLE_FILE_DEMUXERS`: containers whose demuxers read nothing but the file itself. FFmpeg
is told that demuxer (no probing) and may open nothing but files (`protocol_whitelist`), and the QuickTime demuxer
is told not to follow external data references (`enable_drefs`, off by default, set explicitly).

Local files (`c3d predict`, `extract`, training) are opened as before, with FFmpeg's probing: a user may mean a
playlist. Opening one by a demuxer outside `PLAIN_DEMUXERS` is logged (`describe_demuxer`).
"""

from __future__ import annotations

from pathlib import Path

from c3dnet.data.records import LimitExceeded

SINGLE_FILE_DEMUXERS = frozenset({
    "mov", "matroska", "avi", "mpegts", "flv", "asf", "mxf", "ogg", "gif", "mpeg", "ivf", "yuv4mpegpipe", "dv",
    "h264", "hevc", "m4v", "mpegvideo",
})
"""Demuxers that read only the file they are given (FFmpeg names; `av.open(format=...)` takes them)."""

PLAIN_DEMUXERS = SINGLE_FILE_DEMUXERS
"""Containers that a local file opened by FFmpeg's probing may be without a log line."""

RAW_STREAMS = frozenset({"h264", "hevc", "m4v", "mpegvideo"})
"""Elementary streams: no container, so their content shows only start codes; the extension names the codec."""

EXTENSIONS: dict[str, frozenset[str]] = {
    ext: frozenset(names) for exts, names in [
        ((".mp4", ".mov", ".3gp", ".3g2", ".mj2", ".f4v", ".qt"), ("mov",)),
        ((".m4v",), ("mov", "m4v")),  # Apple's MP4, or a raw MPEG-4 Part 2 stream
        ((".mkv", ".webm", ".mk3d"), ("matroska",)),
        ((".avi", ".divx"), ("avi",)),
        ((".ts", ".mts", ".m2ts", ".m2t", ".trp"), ("mpegts",)),
        ((".flv",), ("flv",)),
        ((".wmv", ".asf"), ("asf",)),
        ((".mxf",), ("mxf",)),
        ((".ogv", ".ogg"), ("ogg",)),
        ((".gif",), ("gif",)),
        ((".mpg", ".mpeg", ".vob", ".m2p", ".ps"), ("mpeg", "mpegvideo")),
        ((".ivf",), ("ivf",)),
        ((".y4m",), ("yuv4mpegpipe",)),
        ((".dv", ".dif"), ("dv",)),
        ((".h264", ".264", ".avc", ".jsv"), ("h264",)),
        ((".hevc", ".h265", ".265"), ("hevc",)),
        ((".cmp", ".xvid"), ("m4v",)),
        ((".m1v", ".m2v", ".mpv"), ("mpegvideo",)),
    ] for ext in exts
}
"""File extension -> the demuxers a file so named may be opened as."""

NAMES = {"mov": "MP4/QuickTime", "matroska": "Matroska/WebM", "avi": "AVI", "mpegts": "MPEG transport stream",
         "flv": "FLV", "asf": "ASF/WMV", "mxf": "MXF", "ogg": "Ogg", "gif": "GIF", "mpeg": "MPEG program stream",
         "ivf": "IVF", "yuv4mpegpipe": "YUV4MPEG", "dv": "DV", "h264": "raw H.264", "hevc": "raw HEVC",
         "m4v": "raw MPEG-4", "mpegvideo": "raw MPEG-1/2 video"}

SNIFF_BYTES = 1024
"""How much of the file's start `sniff` reads."""

_MP4_BOXES = {b"ftyp", b"moov", b"mdat", b"free", b"skip", b"wide", b"pnot", b"uuid"}
_MXF_KEY = bytes.fromhex("060e2b34020501010d01020101")


class UnsupportedContainer(LimitExceeded):
    """A file that is not a single-file video container this policy opens (a playlist, a list, unknown bytes)."""


def _start_code(head: bytes) -> bool:
    return head.startswith(b"\x00\x00\x01") or head.startswith(b"\x00\x00\x00\x01")


def _transport_stream(head: bytes) -> bool:
    """188-byte packets starting with 0x47 (or 192-byte M2TS packets with a 4-byte time code before each)."""
    for offset, size in ((0, 188), (4, 192)):
        starts = range(offset, min(len(head), offset + 3 * size), size)
        if len(starts) >= 2 and all(head[i] == 0x47 for i in starts):
            return True
    return False


def content_demuxer(head: bytes) -> str | None:
    """The container the first bytes of a file show, by their magic numbers (None: none of the allowed ones).

    Raw elementary streams show only a start code and give "raw"; the extension then names the codec.
    """
    if len(head) >= 8 and head[4:8] in _MP4_BOXES:
        return "mov"
    checks = [
        (head.startswith(b"\x1a\x45\xdf\xa3"), "matroska"),
        (head.startswith(b"RIFF") and head[8:12] in (b"AVI ", b"AVIX"), "avi"),
        (head.startswith(b"FLV\x01"), "flv"),
        (head.startswith(bytes.fromhex("3026b2758e66cf11")), "asf"),
        (head.startswith(b"OggS"), "ogg"),
        (head.startswith(_MXF_KEY), "mxf"),
        (head.startswith((b"GIF87a", b"GIF89a")), "gif"),
        (head.startswith(b"DKIF"), "ivf"),
        (head.startswith(b"YUV4MPEG2"), "yuv4mpegpipe"),
        (head.startswith(b"\x00\x00\x01\xba"), "mpeg"),
        (len(head) >= 3 and head[0] == 0x1F and head[1] == 0x07 and head[2] == 0x00, "dv"),
        (_transport_stream(head), "mpegts"),
    ]
    for hit, name in checks:
        if hit:
            return name
    return "raw" if _start_code(head) else None


def choose_demuxer(path: Path, name: str) -> str:
    """The demuxer to open the uploaded file `path` (sent as `name`) with: the one its content and its name's
    extension agree on.

    Raises:
        UnsupportedContainer: the content is no allowed container (a playlist, a list, text, unknown bytes), or
            the extension names another container than the content shows.
    """
    with open(path, "rb") as f:
        head = f.read(SNIFF_BYTES)
    ext = Path(name).suffix.lower()
    by_name = EXTENSIONS.get(ext)
    found = content_demuxer(head)
    if found is None:
        raise UnsupportedContainer(
            f"{name}: not a video file this server opens (checked by its content, not its name; playlists, concat "
            "lists and image sequences are refused); send a single video file such as .mp4, .mov, .mkv, .webm, "
            ".avi or .ts")
    if found == "raw":
        raw = sorted(by_name & RAW_STREAMS) if by_name else []
        if not raw:
            raise UnsupportedContainer(
                f"{name}: a raw video stream without a container; name it by its codec (.h264, .hevc, .m4v, "
                ".m2v) or put it in a container (ffmpeg -i IN -c copy OUT.mp4)")
        return raw[0]
    if by_name is not None and found not in by_name:
        named = " or ".join(sorted(NAMES[d] for d in by_name))
        raise UnsupportedContainer(
            f"{name}: its content is {NAMES[found]} but its name says {named}; give it the extension of "
            "what it holds and send it again")
    return found


def open_options(demuxer: str | None) -> dict[str, str]:
    """FFmpeg options for opening a file as `demuxer` under the single-file policy (none: FFmpeg's defaults)."""
    if demuxer is None:
        return {}
    options = {"protocol_whitelist": "file"}
    if demuxer == "mov":
        options["enable_drefs"] = "0"
    return options


def describe_demuxer(format_name: str) -> str | None:
    """A note for a local file that FFmpeg opened with a demuxer that may read other files, else None."""
    names = set(format_name.split(","))
    if names & PLAIN_DEMUXERS:
        return None
    return (f"opened by FFmpeg's {format_name!r} demuxer, which is not a single-file container: it may read "
            "other files or URLs that this file names")
