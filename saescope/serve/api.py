"""The JSON API of the dashboard (documented at /openapi.json; the pages read only this).

    GET  /api/runs                          the served runs and what each can do
    GET  /api/runs/{run}                    one run: model, SAE, metrics, plots, pages missing
    GET  /api/runs/{run}/features           the feature browser: search, filters, sort, pages
    GET  /api/runs/{run}/features/{f}       a feature page: stats, histogram, examples,
                                            names, scores, logit lens, families, neighbours
    GET  /api/runs/{run}/families           the run's families (for the browser's filter)
    POST /api/runs/{run}/inspect            the features of a pasted text
    POST /api/runs/{run}/search             steered semantic search (sentence runs + index)
    POST /api/runs/{run}/generate           steered generation (LM runs)
    GET  /api/saes                          every SAE of the runs, for comparisons
    GET  /api/compare?a=RUN:SAE&b=RUN:SAE   a's features matched to b's by decoder cosine

Request bodies and parameters are validated (sizes and counts capped by
`saescope.serve.limits`); the answers are JSON objects.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Path, Query, Request
from pydantic import BaseModel, ConfigDict, Field, StrictInt, field_validator

from saescope.serve.app import SafeJSON, Served
from saescope.serve.limits import (
    MAX_COMPARE_PAGE,
    MAX_EDITS,
    MAX_INSPECT_FEATURES,
    MAX_K,
    MAX_PAGE,
    MAX_QUERY_CHARS,
    MAX_TEXT_CHARS,
)
from saescope.serve.models import FeatureEdit

router = APIRouter(prefix="/api", default_response_class=SafeJSON)

RunId = Annotated[str, Path(description="a run id from /api/runs", max_length=200)]
FeatureId = Annotated[int, Path(description="feature id", ge=-(2**31), le=2**31)]


def served(request: Request) -> Served:
    return request.app.state.served  # type: ignore[no-any-return]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class EditBody(Strict):
    """One feature edit: the feature by id, or by a word of its name."""

    feature: StrictInt | Annotated[str, Field(min_length=1, max_length=100)]  # true is no id
    op: str = Field("boost", max_length=20, description="search: boost, suppress, clamp, zero; "
                    "generation: add, clamp, ablate")  # fmt: skip
    strength: float | None = Field(
        None, ge=-1000, le=1000, allow_inf_nan=False,
        description="in units of the feature's largest activation (unit typical) or absolute; "
        "none: the server's default",
    )  # fmt: skip

    @field_validator("feature")
    @classmethod
    def _id_if_number(cls, v: int | str) -> int | str:
        if isinstance(v, str) and re.fullmatch(r"\s*#?-?\d+\s*", v):
            return int(v.strip().lstrip("#"))
        return v.strip() if isinstance(v, str) else v

    def to_edit(self) -> FeatureEdit:
        return FeatureEdit(self.feature, self.op, self.strength)


class InspectBody(Strict):
    text: str = Field(..., min_length=1, max_length=MAX_TEXT_CHARS)
    n: int = Field(10, ge=1, le=MAX_INSPECT_FEATURES, description="features to list")


class SearchBody(Strict):
    query: str = Field(..., min_length=1, max_length=MAX_TEXT_CHARS)
    edits: list[EditBody] = Field(default_factory=list, max_length=MAX_EDITS)
    k: int = Field(10, ge=1, le=MAX_K)
    strength: float | None = Field(None, ge=0, le=1000, allow_inf_nan=False)
    unit: Literal["typical", "absolute"] = "typical"


class GenerateBody(Strict):
    prompt: str = Field(..., min_length=1, max_length=MAX_TEXT_CHARS)
    edits: list[EditBody] = Field(default_factory=list, max_length=MAX_EDITS)
    max_new_tokens: int | None = Field(
        None, ge=1, le=4096, description="at most the server's limit (default: 24, or the limit)"
    )
    positions: str = Field("all", max_length=20, description="all, prompt, generated or from:P")
    unit: Literal["typical", "absolute"] = "typical"


@router.get("/runs", summary="the served runs")
def list_runs(request: Request) -> Any:
    s = served(request)
    return SafeJSON({"runs": [r.summary() for r in s.runs.values()], "startup_seconds": s.seconds})


@router.get("/runs/{run}", summary="one run: model, SAE, metrics, plots, what is missing")
def run_summary(request: Request, run: RunId) -> Any:
    return SafeJSON(served(request).run(run).summary())


@router.get("/runs/{run}/features", summary="search, filter, sort and page the features")
def features(
    request: Request,
    run: RunId,
    q: Annotated[
        str,
        Query(
            max_length=MAX_QUERY_CHARS,
            description="#id, or words of names, explanations, top texts, logit-lens tokens",
        ),
    ] = "",
    sort: Annotated[
        str,
        Query(
            max_length=100,
            description="density, max_act, count, mean_active_act, id or score:SCORER",
        ),
    ] = "density",
    order: Literal["desc", "asc"] = "desc",
    dead: Literal["alive", "dead", "all"] = "alive",
    scorer: Annotated[str | None, Query(max_length=100)] = None,
    score_min: Annotated[float | None, Query(allow_inf_nan=False)] = None,
    score_max: Annotated[float | None, Query(allow_inf_nan=False)] = None,
    family: Annotated[int | None, Query(ge=0)] = None,
    offset: Annotated[int, Query(ge=0, le=10**9)] = 0,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 50,
) -> Any:
    page = served(request).run(run).page(
        q=q, sort=sort, descending=order == "desc", dead=dead, scorer=scorer,
        score_min=score_min, score_max=score_max, family=family, offset=offset, limit=limit,
    )  # fmt: skip
    return SafeJSON(page)


@router.get("/runs/{run}/features/{feature}", summary="everything about one feature")
def feature(request: Request, run: RunId, feature: FeatureId) -> Any:
    return SafeJSON(served(request).run(run).feature(feature))


@router.get("/runs/{run}/families", summary="the run's feature families")
def families(request: Request, run: RunId) -> Any:
    return SafeJSON({"families": served(request).run(run).families_list()})


@router.post("/runs/{run}/inspect", summary="the features a text activates")
def inspect(request: Request, run: RunId, body: InspectBody) -> Any:
    return SafeJSON(served(request).run(run).models.inspect(body.text, body.n))


@router.post("/runs/{run}/search", summary="semantic search before and after feature edits")
def search(request: Request, run: RunId, body: SearchBody) -> Any:
    r = served(request).run(run)
    edits = [e.to_edit() for e in body.edits]
    return SafeJSON(r.models.search(body.query, edits, body.k, body.strength, body.unit))


@router.post("/runs/{run}/generate", summary="unsteered and steered generations of a prompt")
def generate(request: Request, run: RunId, body: GenerateBody) -> Any:
    r = served(request).run(run)
    edits = [e.to_edit() for e in body.edits]
    return SafeJSON(
        r.models.generate(body.prompt, edits, body.max_new_tokens, body.positions, body.unit)
    )


@router.get("/saes", summary="every SAE of the served runs (RUN:FOLDER)")
def saes(request: Request) -> Any:
    return SafeJSON({"saes": served(request).catalog.list()})


@router.get("/compare", summary="features of SAE a matched to SAE b by decoder cosine")
def compare(
    request: Request,
    a: Annotated[str, Query(max_length=300, description="RUN:FOLDER from /api/saes")],
    b: Annotated[str, Query(max_length=300)],
    sort: Literal["cosine", "id"] = "cosine",
    order: Literal["desc", "asc"] = "desc",
    offset: Annotated[int, Query(ge=0, le=10**9)] = 0,
    limit: Annotated[int, Query(ge=1, le=MAX_COMPARE_PAGE)] = 50,
) -> Any:
    cat = served(request).catalog
    return SafeJSON(cat.compare(a, b, sort, order == "desc", offset, limit))
