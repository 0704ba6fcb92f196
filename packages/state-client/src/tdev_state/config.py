"""Client configuration: one frozen object, read from the environment once, at the entry point.

Explicit arguments beat environment variables: `StateConfig(env="dev", ...)` for code,
`StateConfig.from_env()` for processes configured by their deployment.
"""

from __future__ import annotations

import os
import re
import types
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlparse

from tdev_state.exceptions import ConfigurationError
from tdev_state.models import AGENTS, RunPolicy
from tdev_state.schema import TableNames, validate_env_name

_REGION = re.compile(r"^[a-z]{2}(-[a-z]+)+-\d{1,2}$")
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1", "localstack", "host.docker.internal"})

#: The payload attributes client-side encryption can seal (docs/security.md).
ENCRYPTABLE_FIELDS = frozenset({"input_data", "output_data", "metadata"})

#: Where offloaded payloads go in the bucket; infra scopes the pipeline's S3 permissions to this prefix.
PAYLOAD_PREFIX = "payloads/"

#: Payload objects outlive the items that refer to them by this many days: an item's TTL counts from its
#: last write (a session's from the end of its run, up to a few days after its metadata was stored) and
#: DynamoDB deletes expired items up to 48 hours late, while S3 expires an object from its creation.
PAYLOAD_GRACE_DAYS = 7


def payload_expiry_days(retention_days: int) -> int:
    """Days the payload bucket keeps an object, for items kept `retention_days`: items never outlive their
    payloads. The one rule infra's bucket lifecycle and the clients' TTL share."""
    return retention_days + PAYLOAD_GRACE_DAYS


#: DynamoDB's item limit is 400 KB; we keep a margin for attribute names and the non-payload attributes.
DYNAMODB_ITEM_LIMIT = 400 * 1024


@dataclass(frozen=True, kw_only=True)
class StateConfig:
    """How a client reaches its tables and bucket, and how it stores payloads.

    Payload thresholds are byte counts of the JSON text (compression) or of the encoded payload (offload).
    """

    env: str
    region: str = "us-east-1"
    endpoint_url: str | None = None
    #: AWS profile the boto3 session uses for credentials (None: boto3's own chain, `AWS_PROFILE` included).
    profile: str | None = None
    #: Sign with LocalStack's test credentials instead of looking for real ones: set by the `local` target,
    #: so a developer's real credentials never sign a request meant for LocalStack (and none are needed).
    local_credentials: bool = False
    #: S3 bucket for payloads too large to keep in an item; None keeps everything in DynamoDB.
    payload_bucket: str | None = None
    payload_prefix: str = PAYLOAD_PREFIX
    #: JSON above this many bytes is zlib-compressed when that saves at least 10 %.
    compress_threshold: int = 1024
    #: With a bucket, an encoded payload above this goes to S3. 16 KB: a transactional write costs 2 write
    #: units per KB, an S3 PUT about 8 write units' price, so bigger payloads are cheaper in S3 (docs/).
    offload_threshold: int = 16 * 1024
    #: Offloaded payloads are split into content-addressed chunks: each subtree of at least this many bytes of
    #: JSON gets its own object, so one that recurs in the run (generated files in every later agent's
    #: accumulated input) is stored once. Smaller parts stay inside their parent's chunk: fewer PUTs.
    chunk_min_bytes: int = 64 * 1024
    #: The largest item we let DynamoDB see; PayloadTooLargeError above it when nothing can be offloaded.
    max_item_bytes: int = 380 * 1024
    #: Days until DynamoDB's TTL may delete finished sessions and executions; None keeps them.
    retention_days: int | None = None
    #: botocore standard-mode attempts per call (throttling and 5xx are retried with backoff).
    max_attempts: int = 8
    #: Our own bounded retries of a transaction cancelled by a concurrent transaction (not by a condition).
    transaction_conflict_retries: int = 6
    connect_timeout: float = 3.0
    read_timeout: float = 10.0
    #: HTTP connections per client (the blocking API may be shared by many threads).
    max_pool_connections: int = 64
    #: Threads running the async API's calls. Each one doing botocore/JSON work competes with the event loop
    #: for the GIL: measured with 50 concurrent runs, loop-lag p99 was 3.0-3.6 ms with 2 threads, 5-6 ms with
    #: 4, 8-12 ms with 8 and 24-46 ms with 64, for 13 % less throughput at 2 than at 64 (docs/benchmarks.md).
    async_threads: int = 2
    #: How stale the recovery index's liveness key (`stalled_at`) may get before a write refreshes it.
    #: Refreshing rewrites the index entry (4 write units inside a transaction), so it happens at most
    #: this often per session; stall thresholds must be well above it. `last_updated` is always exact.
    liveness_interval_seconds: float = 60.0
    #: Refuse plain-HTTP endpoints outside `local` unless the host is loopback (LocalStack on this machine).
    allow_insecure_endpoint: bool = False
    #: KMS key (id, ARN or alias) for client-side encryption of the payload fields named in `encrypt_fields`.
    kms_key_id: str | None = None
    #: Payload fields sealed before they leave the process (docs/security.md): "input_data", "output_data",
    #: "metadata", or one agent's field only, e.g. "generation.output_data".
    encrypt_fields: frozenset[str] = frozenset()
    #: Bounds on reusing one KMS data key: at most this many seconds and this many sealed fields.
    data_key_max_age_seconds: float = 300.0
    data_key_max_uses: int = 1000
    #: Which agents stop the run when they fail for good, and when a finished run counts as successful.
    run_policy: RunPolicy = field(default_factory=RunPolicy)
    #: The pipeline's own payload types: `{MyType: fn}`, where `fn(value)` returns what to store instead (any
    #: value the codec accepts). Looked up along the value's MRO before the built-in conversions
    #: (docs/data-model.md, "Plain Python values").
    encoders: Mapping[type, Callable[[Any], Any]] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        validate_env_name(self.env)
        for name in (
            "compress_threshold",
            "offload_threshold",
            "chunk_min_bytes",
            "max_item_bytes",
            "max_attempts",
            "async_threads",
        ):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigurationError(f"{name} must be a positive integer, got {value!r}")
        for name in ("connect_timeout", "read_timeout", "liveness_interval_seconds"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value < 86_400:
                raise ConfigurationError(
                    f"{name} must be a number of seconds above 0 (and below a day), got {value!r:.40}"
                )
        if not isinstance(self.region, str) or not _REGION.fullmatch(self.region):
            raise ConfigurationError(
                f"region {self.region!r:.40} is not an AWS region name such as us-east-1"
            )
        if self.payload_bucket is not None and (
            not isinstance(self.payload_bucket, str) or not _BUCKET.fullmatch(self.payload_bucket)
        ):
            raise ConfigurationError(
                f"payload_bucket {self.payload_bucket!r:.80} is not an S3 bucket name (3-63 lowercase "
                "letters, digits, dots, hyphens); leave it unset (None) to keep payloads in DynamoDB"
            )
        if self.max_item_bytes < 64 * 1024:
            raise ConfigurationError(
                f"max_item_bytes={self.max_item_bytes} leaves no room for payloads; use 64 KB to 400 KB"
            )
        if self.offload_threshold > (self.max_item_bytes - 8 * 1024) // 2:
            raise ConfigurationError(
                f"offload_threshold={self.offload_threshold} is above a payload's share of the item budget "
                f"({(self.max_item_bytes - 8 * 1024) // 2} bytes): such payloads could never be stored"
            )
        if self.max_item_bytes > DYNAMODB_ITEM_LIMIT:
            raise ConfigurationError(
                f"max_item_bytes={self.max_item_bytes} exceeds DynamoDB's item limit of "
                f"{DYNAMODB_ITEM_LIMIT} bytes (400 KB); lower it"
            )
        self._check_encryption()
        self._check_policy()
        self._check_encoders()
        days = self.retention_days
        if days is not None and (
            isinstance(days, bool) or not isinstance(days, int) or not 1 <= days <= 36_500
        ):
            raise ConfigurationError(
                "retention_days must be a whole number of days from 1 to 36500, or None to keep items "
                f"forever; got {days!r:.40}"
            )
        if self.endpoint_url:
            parsed = urlparse(self.endpoint_url)
            if parsed.scheme not in ("http", "https") or not parsed.hostname:
                raise ConfigurationError(
                    f"endpoint_url {self.endpoint_url!r} is not an http(s) URL; "
                    "use e.g. http://127.0.0.1:4566 for LocalStack, or leave it unset for AWS"
                )
            insecure_ok = (
                self.allow_insecure_endpoint or self.env == "local" or parsed.hostname in _LOOPBACK_HOSTS
            )
            if parsed.scheme == "http" and not insecure_ok:
                raise ConfigurationError(
                    f"refusing plain-HTTP endpoint {self.endpoint_url!r} for env {self.env!r}: state data "
                    "must travel over TLS outside `local`; use https, or a loopback LocalStack endpoint"
                )

    def _check_encryption(self) -> None:
        fields: object = self.encrypt_fields
        if not isinstance(fields, set | frozenset | list | tuple) or not all(
            isinstance(f, str) for f in fields
        ):
            raise ConfigurationError(
                f"encrypt_fields must be a set of field names, got {fields!r}; e.g. "
                "{'output_data', 'metadata'} or {'generation.output_data'}"
            )
        object.__setattr__(self, "encrypt_fields", frozenset(fields))
        for entry in self.encrypt_fields:
            agent, _, name = entry.rpartition(".")
            if name not in ENCRYPTABLE_FIELDS or (agent and (agent not in AGENTS or name == "metadata")):
                raise ConfigurationError(
                    f"encrypt_fields entry {entry!r} names no payload field: use one of "
                    f"{sorted(ENCRYPTABLE_FIELDS)}, or an agent's input_data/output_data such as "
                    "'generation.output_data' (agents: " + ", ".join(AGENTS) + ")"
                )
        if self.encrypt_fields and not self.kms_key_id:
            raise ConfigurationError(
                "encrypt_fields is set but kms_key_id is not: give the KMS key to seal them with "
                "(TDEV_KMS_KEY_ID, e.g. alias/t-developer-dev-state from the infra stack)"
            )
        if not (self.data_key_max_age_seconds > 0 and 0 < self.data_key_max_uses <= 2**20):
            raise ConfigurationError(
                "data_key_max_age_seconds must be > 0 and data_key_max_uses in 1..1048576 (AES-GCM with "
                "random nonces must stay far below 2^32 messages per key)"
            )

    def _check_policy(self) -> None:
        policy = self.run_policy
        if not isinstance(policy, RunPolicy):
            raise ConfigurationError(f"run_policy must be a RunPolicy, got {type(policy).__name__}")
        unknown = sorted(set(policy.critical_agents) - set(AGENTS))
        if unknown:
            raise ConfigurationError(
                f"run_policy names unknown critical agent(s) {', '.join(map(repr, unknown))}; agents are: "
                + ", ".join(AGENTS)
            )
        for name, value in (("min_succeeded", policy.min_succeeded), ("max_failures", policy.max_failures)):
            if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= len(AGENTS):
                raise ConfigurationError(f"run_policy.{name} must be a whole number 0..{len(AGENTS)}")

    def _check_encoders(self) -> None:
        encoders: object = self.encoders
        if not isinstance(encoders, Mapping) or not all(
            isinstance(kind, type) and callable(fn) for kind, fn in encoders.items()
        ):
            raise ConfigurationError(
                "encoders must map types to functions, e.g. {Money: lambda m: str(m)}; got "
                f"{encoders!r:.80}"
            )
        object.__setattr__(self, "encoders", types.MappingProxyType(dict(encoders)))

    def should_encrypt(self, field: str, agent: str | None = None) -> bool:
        """Whether payload `field` (of `agent`'s execution, if any) is sealed before it is stored."""
        return field in self.encrypt_fields or (
            agent is not None and f"{agent}.{field}" in self.encrypt_fields
        )

    @property
    def tables(self) -> TableNames:
        """Physical table names for this environment."""
        return TableNames(self.env)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: object) -> StateConfig:
        """Build from `TDEV_ENV`, `TDEV_TARGET`, `AWS_ENDPOINT_URL`, `AWS_REGION`/`AWS_DEFAULT_REGION`,
        `AWS_PROFILE`, `TDEV_PAYLOAD_BUCKET`, `TDEV_RETENTION_DAYS`, `TDEV_ASYNC_THREADS`, `TDEV_KMS_KEY_ID`,
        `TDEV_ENCRYPT_FIELDS` (comma-separated), `TDEV_CRITICAL_AGENTS` (comma-separated, may be empty);
        keyword overrides win (`target` and `profile` included).

        The target says where the tables are: `local` is the LocalStack on this machine (`AWS_ENDPOINT_URL`,
        else http://127.0.0.1:4566, always signed with test credentials, never the shell's); `aws`
        is AWS with the credentials boto3 finds. It defaults to `local` for the `local` env — the env the
        local stack is deployed as — and to `aws` for any other. The region is resolved as boto3 resolves
        it: the variables, then the profile's configured region, then us-east-1.
        """
        env = os.environ if environ is None else environ
        overrides = dict(overrides)
        target = overrides.pop("target", None) or env.get("TDEV_TARGET") or None
        profile_given = overrides.pop("profile", None) or env.get("AWS_PROFILE") or None
        profile = None if profile_given is None else str(profile_given)
        tdev_env = overrides["env"] if "env" in overrides else env.get("TDEV_ENV", "local")
        if target is None:
            target = "local" if tdev_env == "local" else "aws"
        target = {"localstack": "local"}.get(str(target), target)
        if target not in ("local", "aws"):
            raise ConfigurationError(
                f"TDEV_TARGET={target!r:.40} is not a target: use local (LocalStack on this machine) or aws"
            )
        endpoint = env.get("AWS_ENDPOINT_URL") or None
        if target == "local" and endpoint is None:
            endpoint = f"http://127.0.0.1:{env.get('LOCALSTACK_PORT') or 4566}"
        values: dict[str, object] = {
            "env": tdev_env,
            "region": overrides.pop("region", None)
            or env.get("AWS_REGION")
            or env.get("AWS_DEFAULT_REGION")
            or _profile_region(profile if environ is not None else profile or "")
            or "us-east-1",
            "endpoint_url": endpoint,
            "profile": profile,
            # Always LocalStack's test credentials for the local target, whatever the shell exports:
            # real keys never sign a request meant for LocalStack (README's promise).
            "local_credentials": target == "local",
            "payload_bucket": env.get("TDEV_PAYLOAD_BUCKET") or None,
            "kms_key_id": env.get("TDEV_KMS_KEY_ID") or None,
            "encrypt_fields": frozenset(
                f.strip() for f in (env.get("TDEV_ENCRYPT_FIELDS") or "").split(",") if f.strip()
            ),
        }
        threads = env.get("TDEV_ASYNC_THREADS")
        if threads:
            try:
                values["async_threads"] = int(threads)
            except ValueError:
                raise ConfigurationError(f"TDEV_ASYNC_THREADS={threads!r} is not a whole number") from None
        retention = env.get("TDEV_RETENTION_DAYS")
        if retention:
            try:
                values["retention_days"] = int(retention)
            except ValueError:
                raise ConfigurationError(
                    f"TDEV_RETENTION_DAYS={retention!r} is not a whole number of days"
                ) from None
        critical = env.get("TDEV_CRITICAL_AGENTS")
        if critical is not None:
            values["run_policy"] = RunPolicy(
                critical_agents=frozenset(a.strip() for a in critical.split(",") if a.strip())
            )
        values.update(overrides)
        return cls(**values)  # type: ignore[arg-type]


def _profile_region(profile: str | None) -> str | None:
    """The region configured for `profile` in the AWS config file, as boto3 would resolve it ("" means the
    ambient profile; None means do not look: an explicit environment mapping without a profile)."""
    if profile is None:
        return None
    import botocore.exceptions
    import botocore.session

    try:
        region = botocore.session.Session(profile=profile or None).get_config_variable("region")
    except botocore.exceptions.ProfileNotFound:
        raise profile_not_found(profile) from None
    except botocore.exceptions.BotoCoreError as exc:
        raise ConfigurationError(f"cannot read the AWS config files: {exc}") from None
    return region if isinstance(region, str) and region else None


def profile_not_found(profile: str) -> ConfigurationError:
    """The one line for a profile boto3 cannot find, whichever check meets it first."""
    return ConfigurationError(
        f"AWS profile {profile!r:.60} is not in the AWS config files: run `aws configure --profile "
        f"{profile:.60}` or pick another with --profile / AWS_PROFILE"
    )
