"""The S3 backend (AWS or any S3-compatible server): boto3, parallel multipart transfers.

Requests are retried by `cache_action.stores.retry`'s policy inside botocore's loop (one
request at a time, so one part of a multipart transfer, not the whole file); a full bucket
(see `cache_action.stores.full`) is a StoreFullError that says what to free.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import boto3
from boto3.exceptions import Boto3Error
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from cache_action.storage.digests import Digest
from cache_action.stores.base import StoreError
from cache_action.stores.content import StoredObject
from cache_action.stores.full import S3_ADVICE, full_error, is_full
from cache_action.stores.retry import (
    TRANSFER_POLICY,
    Retry,
    RetryPolicy,
    botocore_config,
    botocore_retry_handler,
    retry_call,
)
from cache_action.stores.spec import S3Spec

PART_BYTES = 64 * 1024 * 1024


def _fail(action: str, error: Exception) -> StoreError:
    answer = _client_error(error)
    if answer is not None:
        details = answer.response.get("Error", {})
        code = str(details.get("Code") or "")
        status = answer.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        message = str(details.get("Message") or "")
        if is_full(status, code, message):
            return full_error(f"S3 {action} failed", S3_ADVICE, f"HTTP {status} {code}: {message}")
    return StoreError(f"S3 {action} failed: {error}")


def _client_error(error: BaseException | None) -> ClientError | None:
    """The server's answer behind a boto3 error: boto3's transfer errors wrap the ClientError
    of the request that failed (as the exception they were raised from)."""
    seen = 0
    while error is not None and seen < 5:
        if isinstance(error, ClientError):
            return error
        error = getattr(error, "last_exception", None) or error.__cause__ or error.__context__
        seen += 1
    return None


class S3Backend:
    def __init__(
        self, settings: S3Spec, workers: int = 8, policy: RetryPolicy = TRANSFER_POLICY
    ) -> None:
        self.settings = settings
        self.policy = policy
        self.description = f"s3://{settings.bucket}/{settings.prefix}"
        self.client: Any = boto3.session.Session().client(
            "s3",
            region_name=settings.region,
            endpoint_url=settings.endpoint_url,
            aws_access_key_id=settings.access_key_id,
            aws_secret_access_key=settings.secret_access_key,
            aws_session_token=settings.session_token,
            config=Config(
                # A silent endpoint gives up in minutes, not ten: 5 tries of 30 s reads.
                **botocore_config(policy),
                max_pool_connections=max(10, workers * 4),
            ),
        )
        self.client.meta.events.register("needs-retry.s3", botocore_retry_handler(policy))
        self.transfer = TransferConfig(
            multipart_threshold=PART_BYTES,
            multipart_chunksize=PART_BYTES,
            max_concurrency=4,
            num_download_attempts=policy.attempts,  # a body that broke after the answer
        )

    def _key(self, key: str) -> str:
        return self.settings.prefix + key

    def _blob_key(self, digest: Digest) -> str:
        return self._key(f"blobs/{digest.algorithm}/{digest.hex}")

    def missing_blobs(self, digests: Sequence[str]) -> set[str]:
        """One listing of blobs/ instead of a HEAD per blob."""
        present = {
            stored.key.removeprefix("blobs/").replace("/", ":", 1)
            for stored in self.list_objects("blobs/")
        }
        return set(digests) - present

    def put_blob(self, digest: Digest, source: Path) -> None:
        try:
            self.client.upload_file(
                str(source), self.settings.bucket, self._blob_key(digest), Config=self.transfer
            )
        except (BotoCoreError, ClientError, Boto3Error) as error:  # S3UploadFailedError: Boto3's
            raise _fail(f"upload of {digest}", error) from None

    def get_blob(self, digest: Digest, target: Path) -> None:
        try:
            self.client.download_file(
                self.settings.bucket, self._blob_key(digest), str(target), Config=self.transfer
            )
        except (BotoCoreError, ClientError, Boto3Error) as error:  # RetriesExceededError too
            raise _fail(f"download of {digest}", error) from None

    def stream_blob(self, digest: Digest, write: Callable[[bytes], object]) -> int:
        """The blob's bytes to `write`, in order, as they arrive (a lazy restore's fetch); a
        body that breaks is resumed from where it stopped, by the retry policy. Its size."""
        position = 0

        def attempt() -> None:
            nonlocal position
            response = self.client.get_object(
                Bucket=self.settings.bucket,
                Key=self._blob_key(digest),
                **({"Range": f"bytes={position}-"} if position else {}),
            )
            try:
                for chunk in response["Body"].iter_chunks(1 << 20):
                    write(chunk)
                    position += len(chunk)
            except (BotoCoreError, OSError) as error:
                raise Retry(f"the body broke at byte {position}: {error}") from None

        try:
            retry_call(f"S3 read of {digest}", attempt, self.policy)
        except ClientError as error:
            raise _fail(f"read of {digest}", error) from None
        except BotoCoreError as error:
            raise _fail(f"read of {digest}", error) from None
        return position

    def put_object(self, key: str, data: bytes) -> None:
        try:
            self.client.put_object(Bucket=self.settings.bucket, Key=self._key(key), Body=data)
        except (BotoCoreError, ClientError) as error:
            raise _fail(f"write of {key}", error) from None

    def get_object(self, key: str) -> bytes | None:
        try:
            response = self.client.get_object(Bucket=self.settings.bucket, Key=self._key(key))
            return bytes(response["Body"].read())
        except ClientError as error:
            if error.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                return None
            raise _fail(f"read of {key}", error) from None
        except BotoCoreError as error:
            raise _fail(f"read of {key}", error) from None

    def list_objects(self, prefix: str) -> list[StoredObject]:
        found = []
        try:
            pages = self.client.get_paginator("list_objects_v2").paginate(
                Bucket=self.settings.bucket, Prefix=self._key(prefix)
            )
            for page in pages:
                for item in page.get("Contents", []):
                    key = item["Key"][len(self.settings.prefix) :]
                    modified = item["LastModified"].timestamp()
                    found.append(StoredObject(key, int(item["Size"]), modified))
        except (BotoCoreError, ClientError) as error:
            raise _fail(f"listing of {prefix}", error) from None
        return found

    def delete_object(self, key: str) -> None:
        try:
            self.client.delete_object(Bucket=self.settings.bucket, Key=self._key(key))
        except (BotoCoreError, ClientError) as error:
            raise _fail(f"delete of {key}", error) from None
