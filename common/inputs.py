"""What one input of a pipeline is: a file, folder, glob or URI of documents, its format,
encoding and fields. Read by `common.readers` (the pipeline's first stage, and the trainer's
held-out text), validated with the YAML path of a bad key like every config.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from common.yamlconf import Strict, parse_size


class InputSpec(Strict):
    path: str
    format: Literal["auto", "jsonl", "txt", "parquet", "warc", "html"] = "auto"
    source: str | None = None
    text_field: str = "text"
    id_field: str | None = None
    url_field: str | None = "url"
    lang: str | None = Field(None, description="declared language of every document, if known")
    txt_mode: Literal["lines", "paragraphs", "file"] = "lines"
    on_decode_error: Literal["reject", "replace"] = "reject"
    encoding: str | None = Field(None, description="codec of the input's bytes (utf-8, gbk, gb18030, big5, "
                                 "shift_jis, ...) or `auto` (BOM, UTF-8, declared charset, detection); "
                                 "default utf-8, and auto for WARC and HTML")
    html_field: str | None = Field(None, description="jsonl/parquet: the field holding a page's HTML; "
                                   "it becomes the document text, for html_extract (instead of text_field)")
    max_doc_bytes: int = Field(16 << 20, description="larger documents are rejected as too_large")
    keep_meta: bool = Field(True, description="other fields travel as a JSON `meta` column")

    @field_validator("max_doc_bytes", mode="before")
    @classmethod
    def _size(cls, v: Any) -> Any:
        return parse_size(v)

    @field_validator("encoding")
    @classmethod
    def _known_encoding(cls, v: str | None) -> str | None:
        from common.decoding import AUTO, codec_name

        if v is not None and v != AUTO and codec_name(v) is None:
            raise ValueError(f"unknown encoding {v!r}: use a Python codec name (utf-8, gbk, gb18030, big5, "
                             "shift_jis, windows-1252, ...) or auto")
        return v

    @model_validator(mode="after")
    def _lines_need_ascii_newlines(self) -> InputSpec:
        from common.decoding import codec_name

        wide = (codec_name(self.encoding) or "").startswith(("utf-16", "utf-32"))
        if wide and self.format in ("auto", "jsonl", "txt") and self.txt_mode != "file":
            raise ValueError(f"encoding {self.encoding}: such files cannot be split into lines; "
                             "read them whole with format: txt, txt_mode: file")
        return self
