"""The files service's contracts, content sniffing, file ids and route table, without servers."""

from __future__ import annotations

import msgspec
import pytest

from actors.files.actor import Files, _file_id
from actors.files.contracts import (
    ALLOWED_CONTENT_TYPES,
    MAX_FILE_SIZE,
    CreateUpload,
    FileInfo,
    FilesRequest,
    UploadTicket,
    content_matches,
    normalize_content_type,
)
from adapters.storage.iam import bucket_policy
from edge.api import ROUTES
from edge.routes_files import FILES_ROUTES
from runtime.codec import contract_tag, contract_types


def test_every_contract_is_frozen_kw_only_and_tagged_files() -> None:
    import actors.files.contracts as module

    structs = [
        value
        for value in vars(module).values()
        if isinstance(value, type) and issubclass(value, msgspec.Struct)
    ]
    assert len(structs) == 11  # 6 requests, 5 replies
    for struct in structs:
        config = struct.__struct_config__
        assert config.frozen, struct
        # kw_only: positional construction is refused.
        with pytest.raises(TypeError):
            struct(*range(len(struct.__struct_fields__)))
        assert contract_tag(struct) == f"files.{struct.__name__}"
    assert {contract_tag(t) for t in contract_types(FilesRequest)} == set(Files.handlers)


def test_create_upload_validates_its_fields() -> None:
    good = {"owner": "u", "name": "a.pdf", "content_type": "application/pdf", "size": 10}
    assert msgspec.convert(good, CreateUpload).size == 10
    for field, value in [
        ("size", 0),
        ("size", MAX_FILE_SIZE + 1),
        ("name", "../etc/passwd"),
        ("name", "a\nb"),
        ("name", ""),
        ("owner", ""),
    ]:
        with pytest.raises(msgspec.ValidationError, match=f"`\\$.{field}`"):
            msgspec.convert({**good, field: value}, CreateUpload)


@pytest.mark.parametrize(
    ("content_type", "head"),
    [
        ("image/png", b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR"),
        ("image/jpeg", b"\xff\xd8\xff\xe0\0\x10JFIF"),
        ("image/gif", b"GIF89a\x01\0"),
        ("image/webp", b"RIFF\x24\0\0\0WEBPVP8 "),
        ("application/pdf", b"%PDF-1.7\n"),
        ("text/plain", "hello, wörld\n\ttabbed\r\n".encode()),
        # A sample cut inside a multi-byte character is still text.
        ("text/plain", "ab€".encode()[:-1]),
    ],
)
def test_content_matches_recognises_each_allowed_type(content_type: str, head: bytes) -> None:
    assert content_type in ALLOWED_CONTENT_TYPES
    assert content_matches(content_type, head)


@pytest.mark.parametrize(
    ("content_type", "head"),
    [
        ("image/png", b"GIF89a"),
        ("application/pdf", b"MZ\x90\0"),
        ("text/plain", b"binary\0data"),
        ("text/plain", b"\xff\xfe\xfd\xfc\xfb"),
        ("image/webp", b"RIFF\0\0\0\0AVI "),
        ("application/x-msdownload", b"MZ"),
        ("image/png", b""),
    ],
)
def test_content_matches_refuses_what_does_not_fit(content_type: str, head: bytes) -> None:
    assert not content_matches(content_type, head)


def test_normalize_content_type() -> None:
    assert normalize_content_type("Text/Plain; charset=UTF-8") == "text/plain"
    assert normalize_content_type("") == ""


def test_file_ids_come_from_the_message_id() -> None:
    runtime_id = "0192f3a4b5c6d7e8f9a0b1c2d3e4f5a6"
    assert _file_id(runtime_id) == runtime_id
    other = _file_id("not a runtime id")
    assert other == _file_id("not a runtime id")
    assert len(other) == 32
    assert other != _file_id("another one")


def test_routes_act_for_the_token_subject_only() -> None:
    assert set(FILES_ROUTES) <= set(ROUTES)
    for route in FILES_ROUTES:
        assert route.auth
        assert route.subject_field == "owner"
        assert route.service == "files"
    create = next(r for r in FILES_ROUTES if r.path == "/files")
    assert create.status_code == 201
    assert create.reply_type is UploadTicket
    assert "owner" in create.server_fields


def test_bucket_policy_names_only_its_bucket() -> None:
    policy = bucket_policy("gr-files")
    (statement,) = policy["Statement"]
    assert statement["Resource"] == ["arn:aws:s3:::gr-files", "arn:aws:s3:::gr-files/*"]
    assert statement["Effect"] == "Allow"


def test_file_info_round_trips() -> None:
    info = FileInfo(
        file_id="f",
        owner="o",
        name="n",
        content_type="text/plain",
        size=1,
        state="ready",
        created_at="2026-01-01T00:00:00+00:00",
    )
    assert msgspec.json.decode(msgspec.json.encode(info), type=FileInfo) == info
