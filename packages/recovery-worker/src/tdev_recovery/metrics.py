"""Prometheus metrics of one worker replica (its own registry, so tests and replicas never share one)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class WorkerMetrics:
    """What /metrics exposes: sweeps, candidates, claims, resumes by outcome, failures, detection lag."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.sweeps = Counter("tdev_recovery_sweeps", "Sweeps of the recovery index", registry=r)
        self.sweep_errors = Counter("tdev_recovery_sweep_errors", "Sweeps that failed", registry=r)
        self.malformed_items = Counter(
            "tdev_recovery_malformed_items",
            "Unreadable session items the sweep skipped (each logged with its key and attribute)",
            registry=r,
        )
        self.candidate_errors = Counter(
            "tdev_recovery_candidate_errors",
            "Candidates whose claim failed with an error (skipped; the sweep went on)",
            registry=r,
        )
        self.candidates = Counter(
            "tdev_recovery_candidates", "Failed or stalled runs seen by sweeps", registry=r
        )
        self.claims = Counter("tdev_recovery_claims", "Runs claimed by this replica", registry=r)
        self.claim_conflicts = Counter(
            "tdev_recovery_claim_conflicts", "Claims lost to another replica or a change", registry=r
        )
        self.confirming = Counter(
            "tdev_recovery_confirming",
            "Suspect runs left alone because this replica has not yet seen them unchanged long enough",
            registry=r,
        )
        self.resumes = Counter(
            "tdev_recovery_resumes", "Resumes finished, by outcome", ["outcome"], registry=r
        )
        self.failures = Counter(
            "tdev_recovery_resume_failures", "Resume attempts the pipeline refused or failed", registry=r
        )
        self.abandoned = Counter("tdev_recovery_abandoned", "Runs given up (ABANDONED)", registry=r)
        self.busy_waits = Counter(
            "tdev_recovery_busy_waits",
            "Resume requests the pipeline answered busy (429/503/timeout): rescheduled, no attempt used",
            registry=r,
        )
        self.backlog = Gauge(
            "tdev_recovery_backlog",
            "The recovery backlog at the last sweep: FAILED runs of any age and stalled runs",
            registry=r,
        )
        self.inflight = Gauge("tdev_recovery_inflight", "Resumes in progress", registry=r)
        self.detection_lag = Histogram(
            "tdev_recovery_detection_lag_seconds",
            "From a run becoming eligible (threshold passed) to its claim",
            buckets=(0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600),
            registry=r,
        )
