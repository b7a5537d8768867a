"""A ``multipart/form-data`` upload, parsed as it arrives: text fields in memory (small, bounded), the
``file`` part spooled to an anonymous temporary file, never held in memory.

:class:`FormParser` is fed the request body piece by piece (:meth:`FormParser.feed`) and raises
:class:`~brogue.server.openai.errors.ApiError` as soon as something is wrong: the file passes
``max_file_bytes`` (413, while it streams in: nothing past the limit is written), a field is too
long or there are too many (400), a second file, a part that is not form data, a body that ends
before its closing boundary (400). The parsing itself is ``python-multipart``'s streaming parser.
:func:`boundary_of` reads the boundary from the request's ``Content-Type``.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field

from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, MultipartState, parse_options_header

from brogue.errors import ErrorCode

from .errors import ApiError

__all__ = ["Form", "FormParser", "UploadLimits", "boundary_of"]

MB = 1000 * 1000


@dataclass(frozen=True)
class UploadLimits:
    max_file_bytes: int = 200 * MB  # `brogue serve --max-upload-mb`
    max_field_bytes: int = 64 << 10  # a text field (a long prompt fits)
    max_fields: int = 64
    idle_seconds: float = 30.0  # no body bytes for this long ends the request (408)
    spool_dir: str | None = None  # where uploads are spooled; None: the system's temporary folder

    @property
    def max_body_bytes(self) -> int:
        """A request body longer than this (its Content-Length) is refused before it is read: the
        file and every field at their limits, with room for the multipart framing."""
        return self.max_file_bytes + self.max_fields * (self.max_field_bytes + 1024)


def boundary_of(content_type: str | None) -> bytes:
    """The multipart boundary of a ``Content-Type`` header; ApiError (400) if it is not form data."""
    ctype, params = parse_options_header(content_type or "")
    if ctype != b"multipart/form-data":
        raise ApiError(ErrorCode.BAD_REQUEST, f"Content-Type must be multipart/form-data, not "
                                              f"{(content_type or 'none')[:80]!r}")
    boundary = params.get(b"boundary")
    if not boundary or len(boundary) > 70:
        raise ApiError(ErrorCode.BAD_REQUEST, "multipart/form-data needs a boundary of 1-70 characters")
    return boundary


@dataclass
class Form:
    """The parsed upload: text fields by name (a repeated name keeps every value, in order), and the
    ``file`` part: a temporary file at position 0, or None. :meth:`close` deletes the file."""

    fields: dict[str, list[str]] = field(default_factory=dict)
    file: object | None = None
    filename: str = ""
    file_bytes: int = 0

    def get(self, name: str, default: str | None = None) -> str | None:
        values = self.fields.get(name)
        return values[-1] if values else default

    def close(self) -> None:
        if self.file is not None:
            self.file.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class FormParser:
    """See the module docstring. ``file_field`` names the file part; ``on_file`` is called with the
    form so far (the fields before the file) when the file part starts, so that a bad request is
    refused before its upload."""

    def __init__(self, boundary: bytes, limits: UploadLimits = UploadLimits(), *, file_field: str = "file",
                 on_file: Callable[[Form], None] | None = None):
        self.limits, self.file_field, self.on_file = limits, file_field, on_file
        self.form = Form()
        self._headers: dict[str, str] = {}
        self._hname = bytearray()
        self._hvalue = bytearray()
        self._name: str | None = None
        self._is_file = False
        self._value = bytearray()
        self._count = 0
        self._ended = False
        try:
            self._parser = MultipartParser(boundary, {
                "on_part_begin": self._part_begin, "on_header_field": self._header_field,
                "on_header_value": self._header_value, "on_header_end": self._header_end,
                "on_headers_finished": self._headers_finished, "on_part_data": self._part_data,
                "on_part_end": self._part_end, "on_end": self._end})
        except FormParserError as e:
            raise ApiError(ErrorCode.BAD_REQUEST, f"bad multipart boundary: {e}") from None

    def feed(self, data: bytes) -> None:
        try:
            self._parser.write(data)
        except FormParserError as e:  # MultipartParseError and the like
            self.form.close()
            raise ApiError(ErrorCode.BAD_REQUEST, f"malformed multipart/form-data body: {e}") from None
        except ApiError:
            self.form.close()
            raise

    def finish(self) -> Form:
        """The body has ended: the form (the caller closes it), or ApiError if the body was cut short."""
        if not self._ended or self._parser.state != MultipartState.END:
            self.form.close()
            raise ApiError(ErrorCode.BAD_REQUEST, "the multipart/form-data body ended before its closing boundary")
        if self.form.file is not None:
            self.form.file.seek(0)
        return self.form

    # -- python-multipart callbacks --------------------------------------------------------------

    def _part_begin(self) -> None:
        self._count += 1
        if self._count > self.limits.max_fields:
            raise ApiError(ErrorCode.BAD_REQUEST, f"more than {self.limits.max_fields} form fields")
        self._headers, self._name, self._is_file = {}, None, False
        self._value = bytearray()

    def _header_field(self, data: bytes, start: int, end: int) -> None:
        self._hname += data[start:end]

    def _header_value(self, data: bytes, start: int, end: int) -> None:
        self._hvalue += data[start:end]

    def _header_end(self) -> None:
        self._headers[self._hname.decode("latin-1").strip().lower()] = self._hvalue.decode("latin-1").strip()
        self._hname, self._hvalue = bytearray(), bytearray()

    def _headers_finished(self) -> None:
        disposition, params = parse_options_header(self._headers.get("content-disposition"))
        name = params.get(b"name")
        if disposition != b"form-data" or name is None:
            raise ApiError(ErrorCode.BAD_REQUEST, "every part must have Content-Disposition: form-data with a name")
        self._name = name.decode("utf-8", "replace")
        filename = params.get(b"filename")
        if self._name == self.file_field:
            if self.form.file is not None:
                raise ApiError(ErrorCode.BAD_REQUEST, f"more than one {self.file_field!r} part", param=self.file_field)
            if self.on_file is not None:
                self.on_file(self.form)
            self._is_file = True
            self.form.filename = (filename or b"").decode("utf-8", "replace")
            self.form.file = tempfile.TemporaryFile(prefix="brogue-upload-", dir=self.limits.spool_dir)
        elif filename is not None:
            raise ApiError(ErrorCode.BAD_REQUEST, f"unexpected file in field {self._name!r}; send the audio as "
                                                  f"{self.file_field!r}", param=self._name)

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        n = end - start
        if self._is_file:
            if self.form.file_bytes + n > self.limits.max_file_bytes:
                raise ApiError(ErrorCode.TOO_LARGE, f"the file is over the gateway's upload limit of "
                                                    f"{self.limits.max_file_bytes / MB:g} MB", param=self.file_field)
            self.form.file.write(memoryview(data)[start:end])
            self.form.file_bytes += n
        else:
            if len(self._value) + n > self.limits.max_field_bytes:
                raise ApiError(ErrorCode.BAD_REQUEST, f"field {self._name!r} is over "
                                                      f"{self.limits.max_field_bytes} bytes", param=self._name)
            self._value += data[start:end]

    def _part_end(self) -> None:
        if self._is_file or self._name is None:
            return
        try:
            value = self._value.decode("utf-8")
        except UnicodeDecodeError:
            raise ApiError(ErrorCode.BAD_REQUEST, f"field {self._name!r} is not UTF-8 text", param=self._name) from None
        self.form.fields.setdefault(self._name, []).append(value)

    def _end(self) -> None:
        self._ended = True
