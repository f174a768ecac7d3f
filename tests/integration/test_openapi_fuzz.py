"""The OpenAPI document of served models, checked by a validator and fuzzed against the live session server.

Schemathesis generates bodies from the document, valid ones and (negative mode) invalid ones, for every operation,
derandomised and bounded, and checks each answer: never a 5xx, a documented status and content type, and a body
that matches the documented schema.
"""

from __future__ import annotations

import hypothesis
import pytest
import schemathesis
from openapi_spec_validator import validate
from schemathesis.checks import not_a_server_error
from schemathesis.generation.modes import GenerationMode
from schemathesis.specs.openapi.checks import content_type_conformance, response_schema_conformance, status_code_conformance

from aiaas_torch.client import Client
from aiaas_torch.openapi import describe_target

pytestmark = pytest.mark.serving

CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
EXAMPLES = 12  # per operation and mode: 3 operations × 2 modes × 2 models × 12 ≈ 150 requests


@pytest.fixture(scope="module", params=["y2x", "classes"])
def served_document(request, served) -> dict:
    """The document `aiaas openapi NAME` writes for a model of the session server, validated."""
    doc = describe_target(request.param, served.home)
    validate(doc)  # raises on an invalid OpenAPI 3.1 document
    return doc


def test_served_document_points_at_the_server_and_describes_the_card(served, served_document):
    schemas = served_document["components"]["schemas"]
    assert served_document["servers"] == [{"url": served.info.inference_url}]
    assert served_document["security"] == [{"bearerToken": []}]
    if "/predictions/classes" in served_document["paths"]:
        assert schemas["Prediction"]["properties"]["classes"] == {"const": ["setosa", "versicolor", "virginica"]}
        assert [t["title"] for t in schemas["Row"]["prefixItems"]] == ["a", "b", "c", "d"]
    else:
        assert set(served_document["paths"]) == {"/predictions/y2x", "/v1/models/y2x:predict", "/v2/models/y2x/infer"}
        assert served_document["info"]["version"] == "1.0"  # the default version's card
        assert [t["title"] for t in schemas["Row"]["prefixItems"]] == ["x"]


def test_live_server_answers_as_documented(served, served_document):
    schema = schemathesis.openapi.from_dict(served_document)
    schema.config.update(base_url=served.info.inference_url)
    with Client(home=served.home) as c:
        auth = {"Authorization": f"Bearer {c.token}"}
    sent = []
    for result in schema.get_all_operations():
        operation = result.ok()
        for mode in GenerationMode:

            @hypothesis.settings(max_examples=EXAMPLES, derandomize=True, deadline=None, database=None,
                                 suppress_health_check=list(hypothesis.HealthCheck),
                                 phases=[hypothesis.Phase.explicit, hypothesis.Phase.generate])
            @hypothesis.given(case=operation.as_strategy(generation_mode=mode))
            def fuzz(case):
                response = case.call_and_validate(headers=auth, checks=CHECKS, timeout=30)
                sent.append((operation.label, mode, response.status_code))

            fuzz()
    labels = {label for label, _, _ in sent}
    assert len(labels) == 3 and len(sent) >= 3 * 2 * 5, sent  # every operation was really called, in both modes
    assert any(s == 200 for _, m, s in sent if m == GenerationMode.POSITIVE)
    assert any(400 <= s < 500 for _, m, s in sent if m == GenerationMode.NEGATIVE)
