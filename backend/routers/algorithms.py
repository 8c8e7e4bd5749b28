"""The registered algorithms (klq.algorithms, plugins of KLQ_PLUGINS included): what the dashboard's
forms, filters and experiment grids offer."""

from __future__ import annotations

from fastapi import APIRouter

from klq import algorithms as registry

from ..deps import CanRead
from ..schemas import AlgorithmOut

router = APIRouter(tags=["algorithms"])


@router.get(
    "/algorithms",
    response_model=list[AlgorithmOut],
    dependencies=[CanRead],
    summary="The registered algorithms",
)
def list_algorithms() -> list[AlgorithmOut]:
    return [
        AlgorithmOut(
            name=name,
            label=cls.label,
            description=(cls.__doc__ or "").strip().splitlines()[0] if (cls.__doc__ or "").strip() else "",
            params=None if cls.params is None else cls.params.model_json_schema(),
            uses_value_model=cls.uses_value_model,
            min_generations=cls.min_generations,
        )
        for name, cls in registry.ALGORITHMS.items()
    ]
