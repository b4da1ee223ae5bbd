#!/usr/bin/env python3
"""Generate the secrets docker-compose.yml mounts, into deploy/secrets/ (git-ignored).

Writes random credentials once; an existing file is kept unless ``--force`` (rotation is a
deliberate act: rerun with ``--force``, then ``docker compose up -d`` to restart with them):

* ``postgres_admin_password``, ``redis_admin_password``, ``minio_root_user``,
  ``minio_root_password``: the servers' administrator credentials, read only by the servers and
  the init services;
* ``<service>.toml`` for each actor and ``edge.toml``: that service's GREENROOM_CONFIG file,
  holding only its own ``postgres_url``, ``redis_url`` and S3 keys;
* ``redis_users.acl``: Redis' aclfile (the admin and every service user, passwords hashed),
  built by the same rules as ``init_infra.py`` applies, so a Redis restart keeps them.

Files are mode 0644 inside a 0700 folder: compose bind-mounts file secrets with their host mode,
and the servers and Greenroom run as non-root users that must read them; the folder keeps other
host users out. Standard library only.
"""

from __future__ import annotations

import argparse
import secrets
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from init_infra import SERVICES, redis_acl_file_line  # a sibling script, found via sys.path above

DEFAULT_OUT = Path(__file__).resolve().parent.parent / "secrets"


def _password() -> str:
    # URL-safe, so it can sit in postgres_url / redis_url without escaping.
    return secrets.token_urlsafe(24)


def _write(path: Path, text: str, *, force: bool) -> bool:
    if path.exists() and not force:
        return False
    path.write_text(text)
    path.chmod(0o644)
    return True


def _read_or_new(path: Path, *, force: bool, make: str | None = None) -> str:
    if path.exists() and not force:
        return path.read_text().strip()
    value = make or _password()
    _write(path, value, force=True)
    return value


def service_toml(
    service: str,
    *,
    pg_password: str | None,
    redis_password: str,
    s3_secret: str | None,
    postgres: str,
    redis: str,
) -> str:
    lines = [f"# GREENROOM_CONFIG for {service}: its own credentials and nothing else."]
    if pg_password is not None:
        lines.append(f'postgres_url = "postgresql://{service}:{pg_password}@{postgres}"')
    lines.append(f'redis_url = "redis://{service}:{redis_password}@{redis}/0"')
    if s3_secret is not None:
        lines += [f's3_access_key = "{service}"', f's3_secret_key = "{s3_secret}"']
    return "\n".join(lines) + "\n"


def generate(out: Path, *, force: bool, postgres: str, redis: str) -> list[str]:
    """Write every secret file into ``out``; returns the names written."""
    out.mkdir(parents=True, exist_ok=True)
    out.chmod(0o700)
    written = []
    admin = {}
    for name in ("postgres_admin_password", "redis_admin_password", "minio_root_password"):
        existed = (out / name).exists()
        admin[name] = _read_or_new(out / name, force=force)
        written += [] if existed and not force else [name]
    if not (out / "minio_root_user").exists() or force:
        _write(out / "minio_root_user", "greenroom-admin", force=True)
        written.append("minio_root_user")
    acl = [f"user default on #{_sha(admin['redis_admin_password'])} ~* &* +@all"]
    for service in (*SERVICES, "edge"):
        path = out / f"{service}.toml"
        if path.exists() and not force:
            redis_password = _field(path, "redis_url").split(":", 2)[2].split("@")[0]
        else:
            redis_password = _password()
            is_actor = service != "edge"
            _write(
                path,
                service_toml(
                    service,
                    pg_password=_password() if is_actor else None,
                    redis_password=redis_password,
                    s3_secret=_password() if is_actor else None,
                    postgres=postgres,
                    redis=redis,
                ),
                force=True,
            )
            written.append(path.name)
        acl.append(redis_acl_file_line(service, redis_password, service))
    _write(out / "redis_users.acl", "\n".join(acl) + "\n", force=True)
    written.append("redis_users.acl")
    return written


def _sha(text: str) -> str:
    import hashlib

    return hashlib.sha256(text.encode()).hexdigest()


def _field(path: Path, key: str) -> str:
    import tomllib

    return str(tomllib.loads(path.read_text())[key])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--force", action="store_true", help="replace existing secrets (rotate)")
    parser.add_argument(
        "--postgres",
        default="postgres:5432/greenroom",
        help="host:port/database the services connect to",
    )
    parser.add_argument("--redis", default="redis:6379", help="host:port of Redis")
    args = parser.parse_args(argv)
    written = generate(args.out, force=args.force, postgres=args.postgres, redis=args.redis)
    print(f"{args.out}: wrote {', '.join(written) or 'nothing (all present)'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
