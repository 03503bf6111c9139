"""``python -m harness.pipeline_child ARGS...``: ``python -m pipeline ARGS...`` run in this process,
then one result line with the run's Beam distribution metrics (namespace ``aisthetics``), which the
command line does not print: what one element of a keyed step held, for instance."""

from __future__ import annotations

import sys

from harness.process import emit


def main() -> None:
    from apache_beam.metrics.metric import MetricsFilter

    import pipeline

    outcome = pipeline.run(sys.argv[1:])
    found = outcome.result.metrics().query(MetricsFilter().with_namespace("aisthetics"))["distributions"]
    emit(
        {
            "distributions": {
                d.key.metric.name: {"max": d.committed.max, "count": d.committed.count, "sum": d.committed.sum}
                for d in found
                if d.committed is not None
            }
        }
    )


if __name__ == "__main__":
    main()
