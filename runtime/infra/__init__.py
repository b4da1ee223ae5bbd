"""Embedded development infrastructure: real servers started as child processes on 127.0.0.1.

Nothing here is imported by the runtime's hot path; ``greenroom up``, ``greenroom infra up`` and the
test suite use it to run Tansu (Kafka protocol), SeaweedFS (S3) and, when no URL is configured,
Postgres and Redis, without Docker.
"""
