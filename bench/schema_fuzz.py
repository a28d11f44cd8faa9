"""Schema fuzzing of the gateway with schemathesis: requests generated from its own OpenAPI document.

`fuzz(app, max_examples)` runs every operation of the schema with positive (schema-valid) and negative
(schema-violating) data through the in-process ASGI app and counts the cases and each check's
failures instead of stopping at the first: no 5xx (`not_a_server_error`), every status and body as
documented (`status_code_conformance`, `response_schema_conformance`, `content_type_conformance`)
and invalid input refused with a 4xx (`negative_data_rejection`).  Used by
`tests/server/test_reliability.py` (`test_schema_fuzz_no_server_error_no_schema_violation`, a bounded
run) and `python -m bench.reliability` (a longer one).
"""

from __future__ import annotations

import contextlib
from collections import Counter
from dataclasses import dataclass, field

CHECK_NAMES = (
    "not_a_server_error",
    "status_code_conformance",
    "response_schema_conformance",
    "content_type_conformance",
    "negative_data_rejection",
)


@dataclass
class FuzzStats:
    cases: int = 0
    statuses: Counter = field(default_factory=Counter)
    failures: Counter = field(default_factory=Counter)  # check name -> failing cases
    examples: list[str] = field(default_factory=list)  # the first few failures, readable

    @property
    def server_errors(self) -> int:
        return sum(n for status, n in self.statuses.items() if status >= 500)

    @property
    def schema_violations(self) -> int:
        return sum(n for name, n in self.failures.items() if name != "not_a_server_error")


def fuzz(app, max_examples: int = 20, seed: int = 0) -> FuzzStats:
    """Fuzz every operation of `app`'s OpenAPI schema; `max_examples` per operation and mode."""
    import hypothesis
    import schemathesis
    from hypothesis import HealthCheck, given
    from schemathesis import GenerationMode, checks

    selected = [getattr(checks, name) for name in CHECK_NAMES]
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    stats = FuzzStats()
    for result in schema.get_all_operations():
        operation = result.ok()
        label = f"{operation.method.upper()} {operation.path}"
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):

            @hypothesis.seed(seed)
            @hypothesis.settings(
                max_examples=max_examples,
                deadline=None,
                database=None,
                derandomize=True,
                suppress_health_check=list(HealthCheck),
                phases=[hypothesis.Phase.generate],
            )
            @given(case=operation.as_strategy(generation_mode=mode))
            def run(case) -> None:
                response = case.call()
                stats.cases += 1
                stats.statuses[response.status_code] += 1
                for check in selected:
                    try:
                        case.validate_response(response, checks=[check])
                    except BaseExceptionGroup as exc:  # a failed check (FailureGroup): count, go on
                        stats.failures[check.__name__] += 1
                        if len(stats.examples) < 10:
                            first = str(exc).strip().splitlines()[:6]
                            where = f"{label} ({mode.value})"  # noqa: B023 (called in this iteration)
                            stats.examples.append(f"{where} -> {response.status_code}: " + " | ".join(first))

            # Nothing to violate (an operation without parameters or body): no negative case.
            with contextlib.suppress(hypothesis.errors.Unsatisfiable):
                run()
    return stats
