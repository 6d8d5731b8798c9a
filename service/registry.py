"""The model registry: named models whose versions pin one checkpoint each, aliases, and resolving
"name@alias" / "name:version" / "name" to the (job, checkpoint) that /predict, export and warm start load.

A version is immutable: it names a checkpoint id, never "best" or "latest". Retention never removes a
registered checkpoint, and a job with registered versions cannot be deleted (service.jobs asks here).
"""

from __future__ import annotations

import logging
import re
import threading
import time
from dataclasses import dataclass

from sqlalchemy import delete, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from service.checkpoints import resolve_checkpoint_id
from service.errors import NotFound, SpecError, StateConflict
from service.models import ModelAlias, ModelVersion, RegisteredModel
from service.pagination import newest_first_page
from service.schemas import (
    ALIAS_PATTERN,
    MODEL_NAME_PATTERN,
    ModelAliasRead,
    ModelPage,
    ModelRead,
    ModelSummary,
    ModelVersionRead,
    PredictRequest,
    Signature,
)

log = logging.getLogger(__name__)

_NAME = re.compile(MODEL_NAME_PATTERN)
_ALIAS = re.compile(ALIAS_PATTERN)


class ModelNotFound(NotFound):
    def __init__(self, what: str):
        super().__init__(f"model {what} not found")


@dataclass(frozen=True)
class ModelRef:
    name: str
    alias: str | None = None
    version: int | None = None  # neither: the latest version


def check_name(name: str, *, loc: str = "name") -> str:
    if not _NAME.match(name):
        raise SpecError(f"invalid model name {name!r}", [{"loc": loc, "msg": (
            "1-100 characters: lower-case letters, digits, '_', '.', '-', starting with a letter or digit")}])
    return name


def check_alias(alias: str, *, loc: str = "alias") -> str:
    if not _ALIAS.match(alias):
        raise SpecError(f"invalid alias {alias!r}", [{"loc": loc, "msg": (
            "1-64 characters: lower-case letters, digits, '_', '.', '-', starting with a letter")}])
    return alias


def parse_model_ref(ref: str, *, loc: str = "model") -> ModelRef:
    """ "name@alias" | "name:version" | "name" -> a ModelRef; a malformed one is a 422 at `loc`."""
    if "@" in ref:
        name, alias = ref.split("@", 1)
        return ModelRef(check_name(name, loc=loc), alias=check_alias(alias, loc=loc))
    if ":" in ref:
        name, version = ref.split(":", 1)
        if not version.isdigit() or int(version) < 1:
            raise SpecError(f"invalid model version in {ref!r}", [{"loc": loc, "msg": (
                f"{version!r} is not a version number; write name:VERSION, name@ALIAS or name")}])
        return ModelRef(check_name(name, loc=loc), version=int(version))
    return ModelRef(check_name(ref, loc=loc))


# --- reads ---------------------------------------------------------------------------------------------


def get_model_or_raise(session: Session, *, tenant: str, name: str) -> RegisteredModel:
    model = session.scalar(select(RegisteredModel).where(RegisteredModel.tenant == tenant,
                                                         RegisteredModel.name == name))
    if model is None:
        raise ModelNotFound(name)
    return model


def get_version_or_raise(session: Session, *, tenant: str, name: str, version: int) -> ModelVersion:
    model = get_model_or_raise(session, tenant=tenant, name=name)
    found = session.scalar(select(ModelVersion).where(ModelVersion.model_id == model.id,
                                                      ModelVersion.version == version))
    if found is None:
        raise ModelNotFound(f"{name}:{version}")
    return found


def resolve_model(session: Session, *, tenant: str, ref: ModelRef) -> ModelVersion:
    """The version a reference names: an alias's, a number's, or the latest."""
    model = get_model_or_raise(session, tenant=tenant, name=ref.name)
    version = ref.version
    if ref.alias is not None:
        version = session.scalar(select(ModelAlias.version).where(ModelAlias.model_id == model.id,
                                                                  ModelAlias.alias == ref.alias))
        if version is None:
            raise ModelNotFound(f"{ref.name}@{ref.alias}")
    query = select(ModelVersion).where(ModelVersion.model_id == model.id)
    query = query.where(ModelVersion.version == version) if version is not None else \
        query.order_by(ModelVersion.version.desc()).limit(1)
    found = session.scalar(query)
    if found is None:
        raise ModelNotFound(f"{ref.name}" + (f":{version}" if version is not None else " (it has no version)"))
    return found


def _aliases(session: Session, model_id: str) -> dict[str, int]:
    rows = session.execute(select(ModelAlias.alias, ModelAlias.version).where(ModelAlias.model_id == model_id)
                           .order_by(ModelAlias.alias)).all()
    return {row.alias: row.version for row in rows}


def version_read(name: str, row: ModelVersion, aliases: dict[str, int]) -> ModelVersionRead:
    return ModelVersionRead(model=name, version=row.version, job_id=row.job_id, checkpoint_id=row.checkpoint_id,
                            created_at=row.created_at, aliases=[a for a, v in aliases.items() if v == row.version],
                            signature=Signature.model_validate(row.signature))


def model_read(session: Session, *, tenant: str, name: str) -> ModelRead:
    model = get_model_or_raise(session, tenant=tenant, name=name)
    aliases = _aliases(session, model.id)
    versions = list(session.scalars(select(ModelVersion).where(ModelVersion.model_id == model.id)
                                    .order_by(ModelVersion.version.desc())))
    return ModelRead(name=model.name, created_at=model.created_at,
                     latest_version=versions[0].version if versions else None, aliases=aliases,
                     versions=[version_read(model.name, v, aliases) for v in versions])


def get_version_read(session: Session, *, tenant: str, name: str, version: int) -> ModelVersionRead:
    row = get_version_or_raise(session, tenant=tenant, name=name, version=version)
    return version_read(name, row, _aliases(session, row.model_id))


def list_models(session: Session, *, tenant: str, limit: int, cursor: str | None) -> ModelPage:
    """Newest first, cursor-paged like GET /jobs."""
    query = select(RegisteredModel).where(RegisteredModel.tenant == tenant)
    page, next_cursor = newest_first_page(session, query, RegisteredModel, limit=limit, cursor=cursor)
    latest = dict(session.execute(
        select(ModelVersion.model_id, func.max(ModelVersion.version))
        .where(ModelVersion.model_id.in_([m.id for m in page])).group_by(ModelVersion.model_id)).all())
    return ModelPage(items=[ModelSummary(name=m.name, created_at=m.created_at, latest_version=latest.get(m.id),
                                         aliases=_aliases(session, m.id)) for m in page], next_cursor=next_cursor)


# --- writes --------------------------------------------------------------------------------------------


def register_version(session: Session, *, tenant: str, name: str, job_id: str, checkpoint: str) -> ModelVersionRead:
    """POST /models: version N+1 of `name` (created on first use), pinning the checkpoint `checkpoint` names now."""
    from service.jobs import get_job_or_raise  # service.jobs asks this module before deleting a job
    from service.signature import build_signature, checkpoint_meta

    check_name(name)
    job = get_job_or_raise(session, tenant=tenant, job_id=job_id)
    checkpoint_id = resolve_checkpoint_id(job, checkpoint)
    signature = build_signature(session, job=job, checkpoint_meta=checkpoint_meta(session, job=job,
                                                                                  checkpoint_id=checkpoint_id))
    model = session.scalar(select(RegisteredModel).where(RegisteredModel.tenant == tenant,
                                                         RegisteredModel.name == name))
    if model is None:
        model = RegisteredModel(tenant=tenant, name=name)
        session.add(model)
        session.flush()
    latest = session.scalar(select(func.max(ModelVersion.version)).where(ModelVersion.model_id == model.id)) or 0
    row = ModelVersion(model_id=model.id, version=latest + 1, job_id=job.id, checkpoint_id=checkpoint_id,
                       signature=signature.model_dump(mode="json"))
    session.add(row)
    try:
        session.flush()
    except IntegrityError as exc:  # two registrations of the same name raced; the client may simply retry
        raise StateConflict(f"model {name} was registered concurrently; retry") from exc
    log.info("model.registered model=%s version=%d job_id=%s checkpoint_id=%s", name, row.version, job.id,
             checkpoint_id)
    return version_read(name, row, _aliases(session, model.id))


def set_alias(session: Session, *, tenant: str, name: str, alias: str, version: int) -> ModelAliasRead:
    """PUT /models/{name}/aliases/{alias}: point the alias at `version` (moving it if it existed)."""
    check_alias(alias)
    target = get_version_or_raise(session, tenant=tenant, name=name, version=version)
    row = session.get(ModelAlias, (target.model_id, alias))
    if row is None:
        session.add(ModelAlias(model_id=target.model_id, alias=alias, version=version))
    else:
        row.version = version
    session.flush()
    log.info("model.alias_set model=%s alias=%s version=%d", name, alias, version)
    return ModelAliasRead(alias=alias, version=version)


def delete_alias(session: Session, *, tenant: str, name: str, alias: str) -> None:
    model = get_model_or_raise(session, tenant=tenant, name=name)
    result = session.execute(delete(ModelAlias).where(ModelAlias.model_id == model.id, ModelAlias.alias == alias))
    if result.rowcount == 0:  # type: ignore[attr-defined]
        raise ModelNotFound(f"{name}@{alias}")
    log.info("model.alias_deleted model=%s alias=%s", name, alias)


# --- what other use cases ask ---------------------------------------------------------------------------


def registered_checkpoint_ids(session: Session, *, job_id: str) -> set[str]:
    """Checkpoints of this job that a model version pins: retention keeps them."""
    return set(session.scalars(select(ModelVersion.checkpoint_id).where(ModelVersion.job_id == job_id)))


def versions_of_job(session: Session, *, job_id: str) -> list[str]:
    """"name:version" of every version pinning one of this job's checkpoints."""
    rows = session.execute(
        select(RegisteredModel.name, ModelVersion.version).join(RegisteredModel,
                                                                RegisteredModel.id == ModelVersion.model_id)
        .where(ModelVersion.job_id == job_id).order_by(RegisteredModel.name, ModelVersion.version)).all()
    return [f"{row.name}:{row.version}" for row in rows]


class ModelRefCache:
    """(tenant, "name@alias") -> (job id, checkpoint id), trusted for `ttl` seconds: moving an alias reaches
    /predict within TRAINSERVE_PREDICT_CACHE_SECONDS, while a hot model needs no database round trip."""

    def __init__(self, max_items: int = 10_000) -> None:
        self._items: dict[tuple[str, str], tuple[str, str, float]] = {}
        self._lock = threading.Lock()
        self.max_items = max_items

    def get(self, tenant: str, ref: str) -> tuple[str, str] | None:
        with self._lock:
            found = self._items.get((tenant, ref))
        if found is None or found[2] <= time.monotonic():
            return None
        return found[0], found[1]

    def put(self, tenant: str, ref: str, *, job_id: str, checkpoint_id: str, ttl: float) -> None:
        if ttl <= 0:
            return
        with self._lock:
            if len(self._items) >= self.max_items:
                now = time.monotonic()
                self._items = {k: v for k, v in self._items.items() if v[2] > now}
            self._items[(tenant, ref)] = (job_id, checkpoint_id, time.monotonic() + ttl)


def resolve_for_predict(session: Session, *, tenant: str, ref: str) -> tuple[str, str]:
    """/predict's "model": the (job id, checkpoint id) it names now."""
    version = resolve_model(session, tenant=tenant, ref=parse_model_ref(ref))
    return version.job_id, version.checkpoint_id


# --- /predict by model, and by records -----------------------------------------------------------------

MODEL_REFS = ModelRefCache()
# A job's feature names never change (its spec is immutable): remembered per (tenant, job) without expiry.
_FEATURES: dict[tuple[str, str], list[str] | None] = {}


def _lookup_for_predict(tenant: str, request: PredictRequest, ttl: float) -> tuple[str, str | None]:
    """(job id, pinned checkpoint id or None) and the job's feature names where records need them (a thread)."""
    from service.db import session_scope
    from service.jobs import get_job_or_raise
    from service.signature import job_features

    with session_scope(read_only=True) as session:
        job_id, checkpoint_id = request.job_id, None
        if request.model is not None:
            job_id, checkpoint_id = resolve_for_predict(session, tenant=tenant, ref=request.model)
            MODEL_REFS.put(tenant, request.model, job_id=job_id, checkpoint_id=checkpoint_id, ttl=ttl)
        assert job_id is not None
        if request.records is not None and (tenant, job_id) not in _FEATURES:
            features = job_features(session, get_job_or_raise(session, tenant=tenant, job_id=job_id))
            if len(_FEATURES) > 10_000:
                _FEATURES.clear()
            _FEATURES[(tenant, job_id)] = features
        return job_id, checkpoint_id


async def resolve_predict_request(request: PredictRequest, *, tenant: str, ttl: float) -> PredictRequest:
    """A /predict body naming a model, or sending records, as the plain (job_id, checkpoint, inputs) body it
    means. A hot reference answers from memory; the database is asked in a worker thread."""
    import anyio

    from service.signature import records_to_rows

    if (request.job_id is None) == (request.model is None):
        raise SpecError("give job_id or model", [{"loc": "model" if request.model else "job_id",
                                                  "msg": "give exactly one of job_id and model"}])
    if (request.inputs is None) == (request.records is None):
        raise SpecError("give inputs or records", [{"loc": "records" if request.records is not None else "inputs",
                                                    "msg": "give exactly one of inputs and records"}])
    if request.model is not None and "checkpoint" in request.model_fields_set:
        raise SpecError("a model reference names its checkpoint", [{"loc": "checkpoint", "msg": (
            "leave checkpoint out with model: the version pins it")}])
    job_id, checkpoint_id = request.job_id, None
    if request.model is not None:
        found = MODEL_REFS.get(tenant, request.model)
        if found is not None:
            job_id, checkpoint_id = found
    if job_id is None or (request.records is not None and (tenant, job_id) not in _FEATURES):
        job_id, checkpoint_id = await anyio.to_thread.run_sync(lambda: _lookup_for_predict(tenant, request, ttl))
    update: dict[str, object] = {"job_id": job_id, "model": None}
    if checkpoint_id is not None:
        update["checkpoint"] = checkpoint_id
    if request.records is not None:
        update["inputs"] = records_to_rows(request.records, _FEATURES.get((tenant, str(job_id))))
        update["records"] = None
    return request.model_copy(update=update)
