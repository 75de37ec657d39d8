"""The store's tables (SQLAlchemy Core). Change them only together with a migration."""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    Float,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
)

metadata = MetaData()

artifacts = Table(
    "artifacts",
    metadata,
    Column("sha256", String(64), primary_key=True),
    Column("size", BigInteger, nullable=False),
    Column("kind", String(32), nullable=False),
    Column("created_at", Float, nullable=False),
)

model_versions = Table(
    "model_versions",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("service", String(64), nullable=False),
    Column("version", Integer, nullable=False),
    Column("uri", Text, nullable=False),
    Column("artifact_sha256", String(64), nullable=True),
    Column("flavor", String(32), nullable=False),
    Column("source", Text, nullable=False, default=""),
    Column("contract_sha256", String(64), nullable=False),
    Column("data_sha256", String(64), nullable=True),
    Column("reference_sha256", String(64), nullable=True),
    Column("params", JSON, nullable=False),
    Column("metrics", JSON, nullable=False),
    Column("reference", JSON, nullable=False),
    Column("note", Text, nullable=False, default=""),
    Column("created_by", String(128), nullable=False),
    Column("created_at", Float, nullable=False),
    UniqueConstraint("service", "version", name="uq_model_versions_service_version"),
)

decisions = Table(
    "decisions",
    metadata,
    Column(
        "seq", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    ),
    Column("id", String(36), nullable=False, unique=True),
    Column("ts", Float, nullable=False),
    Column("service", String(64), nullable=False),
    Column("model_version", Integer, nullable=True),
    Column("route", String(64), nullable=False),
    Column("inputs", Text, nullable=False),
    Column("output", Text, nullable=True),
    Column("confidence", Float, nullable=True),
    Column("latency_ms", Float, nullable=False),
    Column("caller", String(128), nullable=True),
    Column("error", Text, nullable=True),
    Column("reason", Text, nullable=True),
    Column("cost", Float, nullable=True),
    # the value of the contract's first role: id field (as the log holds it), for labels that
    # arrive keyed by a business id
    Column("label_key", String(128), nullable=True),
    # tokens a model endpoint billed for the decision (every attempt, invalid answers too)
    Column("prompt_tokens", Integer, nullable=True),
    Column("completion_tokens", Integer, nullable=True),
)
Index("ix_decisions_service_ts", decisions.c.service, decisions.c.ts)
Index("ix_decisions_service_key", decisions.c.service, decisions.c.label_key, decisions.c.ts)

#: Rows refused for breaking the contract: one row per violation, so data-quality figures
#: survive restarts and are shared by replicas. Values of personal fields are stored treated;
#: values of fields the contract does not have are not stored at all.
rejections = Table(
    "rejections",
    metadata,
    Column(
        "seq", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    ),
    Column("ts", Float, nullable=False),
    Column("service", String(64), nullable=False),
    Column("request_id", String(36), nullable=False),
    Column("caller", String(128), nullable=True),
    Column("row_index", Integer, nullable=True),
    Column("field", String(128), nullable=True),
    Column("rule", String(32), nullable=False),
    Column("value", Text, nullable=True),
    Column("expected", Text, nullable=True),
)
Index("ix_rejections_service_ts", rejections.c.service, rejections.c.ts)

shadow_decisions = Table(
    "shadow_decisions",
    metadata,
    Column(
        "seq", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    ),
    Column("decision_id", String(36), nullable=False),
    Column("ts", Float, nullable=False),
    Column("service", String(64), nullable=False),
    Column("model_version", Integer, nullable=False),
    Column("output", Text, nullable=True),
    Column("confidence", Float, nullable=True),
    Column("latency_ms", Float, nullable=True),
    Column("error", Text, nullable=True),
    Column("cost", Float, nullable=True),
)
Index("ix_shadow_decisions_decision_id", shadow_decisions.c.decision_id)
Index(
    "ix_shadow_decisions_service_version",
    shadow_decisions.c.service,
    shadow_decisions.c.model_version,
)

rollout_state = Table(
    "rollout_state",
    metadata,
    Column("service", String(64), primary_key=True),
    Column("champion", Integer, nullable=False),
    Column("previous_champion", Integer, nullable=True),
    Column("canary", Integer, nullable=True),
    Column("canary_percent", Float, nullable=False, default=0.0),
    Column("canary_key", String(128), nullable=True),
    Column("canary_step", Integer, nullable=True),
    Column("canary_since", Float, nullable=True),
    Column("shadows", JSON, nullable=False),
    Column("generation", Integer, nullable=False),
    Column("updated_at", Float, nullable=False),
    Column("updated_by", String(128), nullable=False),
    Column("stopped", Boolean, nullable=False, default=False),
    Column("stop_reason", Text, nullable=True),
)

rollout_events = Table(
    "rollout_events",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("service", String(64), nullable=False),
    Column("ts", Float, nullable=False),
    Column("actor", String(128), nullable=False),
    Column("action", String(32), nullable=False),
    Column("reason", Text, nullable=False),
    Column("before", JSON, nullable=False),
    Column("after", JSON, nullable=False),
)

api_keys = Table(
    "api_keys",
    metadata,
    Column("id", String(16), primary_key=True),
    Column("name", String(128), nullable=False),
    Column("role", String(32), nullable=False),
    Column("secret_sha256", String(64), nullable=False),
    Column("created_at", Float, nullable=False),
    Column("created_by", String(128), nullable=False),
    Column("expires_at", Float, nullable=True),
    Column("revoked_at", Float, nullable=True),
    Column("revoked_by", String(128), nullable=True),
)

audit_events = Table(
    "audit_events",
    metadata,
    Column(
        "seq", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=False
    ),
    Column("ts", Float, nullable=False),
    Column("service", String(64), nullable=True),
    Column("actor", String(128), nullable=False),
    Column("action", String(64), nullable=False),
    Column("target", Text, nullable=False),
    Column("before", Text, nullable=False),
    Column("after", Text, nullable=False),
    Column("reason", Text, nullable=False),
    Column("prev_hash", String(64), nullable=False),
    Column("hash", String(64), nullable=False),
)

audit_head = Table(
    "audit_head",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("seq", BigInteger, nullable=False),
    Column("hash", String(64), nullable=False),
)

feedback = Table(
    "feedback",
    metadata,
    Column(
        "seq", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    ),
    Column("decision_id", String(36), nullable=False),
    Column("service", String(64), nullable=False),
    Column("label", Text, nullable=False),
    Column("revision", Integer, nullable=False),
    Column("ts", Float, nullable=False),
    Column("actor", String(128), nullable=False),
    Column("source", String(32), nullable=False),
    Column("rank", Integer, nullable=False, server_default="1"),
    Column("role", String(32), nullable=True),
)
Index("ix_feedback_decision", feedback.c.decision_id, feedback.c.revision, unique=True)

monitor_results = Table(
    "monitor_results",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("service", String(64), nullable=False),
    Column("ts", Float, nullable=False),
    Column("window_start", Float, nullable=True),
    Column("window_end", Float, nullable=True),
    Column("rows", Integer, nullable=False),
    Column("result", Text, nullable=False),
)
Index("ix_monitor_results_service_ts", monitor_results.c.service, monitor_results.c.ts)

alert_state = Table(
    "alert_state",
    metadata,
    Column("service", String(64), primary_key=True),
    Column("rule", String(128), primary_key=True),
    Column("consecutive", Integer, nullable=False),
    Column("firing", Boolean, nullable=False),
    Column("since", Float, nullable=True),
    Column("window_end", Float, nullable=True),
)

alert_events = Table(
    "alert_events",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("service", String(64), nullable=False),
    Column("rule", String(128), nullable=False),
    Column("status", String(16), nullable=False),
    Column("ts", Float, nullable=False),
    Column("detail", Text, nullable=False),
)

review_items = Table(
    "review_items",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("decision_id", String(36), nullable=False),
    Column("service", String(64), nullable=False),
    Column("policy", String(64), nullable=False),
    Column("queue", String(64), nullable=False),
    Column("mode", String(32), nullable=False),
    Column("priority", Integer, nullable=False),
    Column("required", Integer, nullable=False),
    Column("status", String(16), nullable=False),
    Column("created_at", Float, nullable=False),
    Column("due_at", Float, nullable=True),
    Column("claimed_by", String(128), nullable=True),
    Column("claim_expires", Float, nullable=True),
    Column("sla_breached", Boolean, nullable=False, default=False),
    Column("final_output", Text, nullable=True),
    Column("decided_at", Float, nullable=True),
)
Index(
    "ix_review_items_queue", review_items.c.service, review_items.c.status, review_items.c.priority
)
Index("ix_review_items_decision", review_items.c.decision_id)

review_outcomes = Table(
    "review_outcomes",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("item_id", String(36), nullable=False),
    Column("service", String(64), nullable=False),
    Column("model_version", Integer, nullable=True),
    Column("reviewer", String(128), nullable=False),
    Column("action", String(16), nullable=False),
    Column("output", Text, nullable=True),
    Column("reason", Text, nullable=False),
    Column("ts", Float, nullable=False),
)
Index("ix_review_outcomes_item", review_outcomes.c.item_id)

outbox = Table(
    "outbox",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("service", String(64), nullable=False),
    Column("topic", String(64), nullable=False),
    Column("url", Text, nullable=False),
    Column("headers", Text, nullable=False),
    Column("payload", Text, nullable=False),
    Column("created_at", Float, nullable=False),
    Column("status", String(16), nullable=False),
    Column("attempts", Integer, nullable=False),
    Column("max_attempts", Integer, nullable=False),
    Column("timeout_s", Float, nullable=False),
    Column("next_at", Float, nullable=False),
    Column("lease_until", Float, nullable=True),
    Column("last_error", Text, nullable=True),
    Column("delivered_at", Float, nullable=True),
)
Index("ix_outbox_due", outbox.c.service, outbox.c.status, outbox.c.next_at)

outbox_attempts = Table(
    "outbox_attempts",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("message_id", Integer, nullable=False),
    Column("ts", Float, nullable=False),
    Column("attempt", Integer, nullable=False),
    Column("outcome", String(128), nullable=False),
    Column("ok", Boolean, nullable=False),
    Column("duration_ms", Float, nullable=False),
)
Index("ix_outbox_attempts_message", outbox_attempts.c.message_id)

job_runs = Table(
    "job_runs",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("service", String(64), nullable=False),
    Column("task", String(64), nullable=False),
    Column("slot", BigInteger, nullable=False),
    Column("started_at", Float, nullable=False),
    Column("finished_at", Float, nullable=True),
    Column("status", String(16), nullable=False),
    Column("error", Text, nullable=True),
    Column("runner", String(128), nullable=False),
    UniqueConstraint("service", "task", "slot", name="uq_job_runs_slot"),
)

#: Runs of data sources (owned by ``data/``): one row per run, with its counts and outcome.
source_runs = Table(
    "source_runs",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("service", String(64), nullable=False),
    Column("source", String(64), nullable=False),
    Column("started_at", Float, nullable=False),
    Column("finished_at", Float, nullable=True),
    Column("status", String(16), nullable=False),  # running, ok, warn, failed
    Column("files", Integer, nullable=False, default=0),
    Column("rows_in", Integer, nullable=False, default=0),
    Column("rows_good", Integer, nullable=False, default=0),
    Column("rows_bad", Integer, nullable=False, default=0),
    Column("error", Text, nullable=True),
    Column("actor", String(128), nullable=False),
    # host:pid of the process running it, and when it last said it was alive: a run whose
    # process is gone leaves its claims to the next run, which takes them up
    Column("owner", String(160), nullable=True),
    Column("beat_at", Float, nullable=True),
)
Index(
    "ix_source_runs_service_source",
    source_runs.c.service,
    source_runs.c.source,
    source_runs.c.started_at,
)

#: Files a source has taken (its ledger): a file is taken once per content, whatever became of
#: it (scored, held for too many bad rows, failed to read).
source_files = Table(
    "source_files",
    metadata,
    Column(
        "seq", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    ),
    Column("service", String(64), nullable=False),
    Column("source", String(64), nullable=False),
    Column("path", Text, nullable=False),
    Column("sha256", String(64), nullable=False),
    Column("size", BigInteger, nullable=False),
    Column("run_id", String(36), nullable=False),
    Column("ts", Float, nullable=False),
    Column("status", String(16), nullable=False),  # taking, scored, held, failed
    Column("rows_in", Integer, nullable=False, default=0),
    Column("rows_good", Integer, nullable=False, default=0),
    Column("rows_bad", Integer, nullable=False, default=0),
    Column("sink", Text, nullable=True),
    Column("error", Text, nullable=True),
    # when it was claimed (the time part of its rows' decision ids, so a resumed run makes
    # the same ids), the snapshot of a batch that is not a file (SQL rows, a pushed body),
    # the SQL cursor range it covers (JSON), and how its columns differed from the contract
    Column("claimed_at", Float, nullable=True),
    Column("staged", Text, nullable=True),
    Column("cursor_from", Text, nullable=True),
    Column("cursor_to", Text, nullable=True),
    Column("schema_diff", Text, nullable=True),
)
Index(
    "ux_source_files_content",
    source_files.c.service,
    source_files.c.source,
    source_files.c.sha256,
    unique=True,
)

#: Rows a source could not use, each with every rule it broke; values of personal fields are
#: kept as the decision log keeps them.
quarantine = Table(
    "quarantine",
    metadata,
    Column(
        "seq", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    ),
    Column("service", String(64), nullable=False),
    Column("source", String(64), nullable=False),
    Column("run_id", String(36), nullable=False),
    Column("file", Text, nullable=True),
    Column("row_index", Integer, nullable=False),
    Column("ts", Float, nullable=False),
    Column("row", Text, nullable=False),
    Column("violations", Text, nullable=False),
    Column("status", String(16), nullable=False),  # held, replayed
    Column("replayed_at", Float, nullable=True),
    Column("replay_run", String(36), nullable=True),
)
Index("ix_quarantine_service_source", quarantine.c.service, quarantine.c.source, quarantine.c.ts)

#: Where a SQL source has read up to: the cursor value (JSON) and the keys already taken at
#: that value (rows sharing it may still arrive). Moved in the transaction that claims a batch.
source_cursors = Table(
    "source_cursors",
    metadata,
    Column("service", String(64), primary_key=True),
    Column("source", String(64), primary_key=True),
    Column("cursor", Text, nullable=True),
    Column("boundary", Text, nullable=False),
    Column("updated_at", Float, nullable=False),
)

#: Retraining jobs. ``running`` is set while a job runs and cleared when it ends: unique per
#: service, so two retrains of one service never overlap, on any replica.
training_jobs = Table(
    "training_jobs",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("service", String(64), nullable=False),
    Column("trigger", String(64), nullable=False),
    Column("actor", String(128), nullable=False),
    Column("status", String(16), nullable=False),  # running, ok, refused, failed
    Column("running", String(8), nullable=True),
    Column("started_at", Float, nullable=False),
    Column("finished_at", Float, nullable=True),
    Column("owner", String(160), nullable=True),
    Column("progress", Text, nullable=True),
    Column("rows", Integer, nullable=True),
    Column("labels", Integer, nullable=True),
    Column("candidate", Integer, nullable=True),
    Column("gate", Text, nullable=True),
    Column("lineage", Text, nullable=True),
    Column("error", Text, nullable=True),
    Column("log", Text, nullable=False),
    UniqueConstraint("service", "running", name="uq_training_jobs_running"),
)
Index("ix_training_jobs_service", training_jobs.c.service, training_jobs.c.started_at)

#: Immutable dataset versions (``use: train`` batches): a Parquet file named by its content.
datasets = Table(
    "datasets",
    metadata,
    Column("service", String(64), primary_key=True),
    Column("source", String(64), primary_key=True),
    Column("version", Integer, primary_key=True),
    Column("sha256", String(64), nullable=False),
    Column("rows", BigInteger, nullable=False),
    Column("columns", Text, nullable=False),
    Column("contract_hash", String(64), nullable=False),
    Column("cursor_from", Text, nullable=True),
    Column("cursor_to", Text, nullable=True),
    Column("created_at", Float, nullable=False),
    Column("parent", Integer, nullable=True),
    Column("path", Text, nullable=False),
    Column("run_id", String(36), nullable=False),
)
Index("ux_datasets_content", datasets.c.service, datasets.c.source, datasets.c.sha256, unique=True)


__all__ = [
    "alert_events",
    "alert_state",
    "api_keys",
    "artifacts",
    "audit_events",
    "audit_head",
    "datasets",
    "decisions",
    "feedback",
    "job_runs",
    "metadata",
    "model_versions",
    "monitor_results",
    "outbox",
    "outbox_attempts",
    "quarantine",
    "rejections",
    "review_items",
    "review_outcomes",
    "rollout_events",
    "rollout_state",
    "shadow_decisions",
    "source_cursors",
    "source_files",
    "source_runs",
    "training_jobs",
]
