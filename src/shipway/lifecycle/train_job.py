"""The process a retrain job runs in: ``python -m shipway.lifecycle.train_job JOB MANIFEST``.

Started by ``shipway retrain``, ``POST /v1/retrain``, an alert's ``retrain`` action or the
schedule; it opens the service's parts (no model is served here), runs the job and records
how it ended. Anything that goes wrong is the job's error, in its record; the champion is only
ever changed by a finished job whose candidate passed its gate.
"""

from __future__ import annotations

import contextlib
import os
import sys

from shipway.errors import InputError, ShipwayError


def main(argv: list[str]) -> int:
    from shipway.lifecycle import training
    from shipway.parts import ServiceParts

    job_id, manifest = argv
    with contextlib.suppress(OSError):
        os.nice(10)  # a fit yields the CPU to the server answering requests beside it
    parts = ServiceParts.open(manifest)
    engine = parts.store.engine
    hooks = parts.manifest.monitor.webhooks  # a job that does not pass is a notification
    try:
        outcome = training.run_job(parts, job_id)
        return 0 if outcome.status == "ok" else 3
    except ShipwayError as exc:
        training.note(engine, job_id, f"stopped: {exc.message}")
        status = "refused" if isinstance(exc, InputError) else "failed"
        training.finish(engine, job_id, status, hooks, error=exc.message)
        return 3
    except Exception as exc:
        why = f"{type(exc).__name__}: {exc}"
        training.note(engine, job_id, f"failed: {why}")
        training.finish(
            engine, job_id, "failed", hooks, error=f"{why}; the champion was not touched"
        )
        return 1
    finally:
        parts.close()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
