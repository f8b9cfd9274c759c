"""Registered model versions and aliases that point to pushed runs, re-created on the target:
what ``nbtrack push --register`` adds to :mod:`nbtrack.store.publish`.

A version's copy is a version of the same registered model on the target whose source is the
target's copy of the logged model (or, for a version made from a run's artifacts, the same path
in the run's copy), tagged with its origin (:data:`ORIGIN_VERSION`) so a second push finds it
instead of making another. Version numbers are the target's own: a team server may hold
versions already. An alias is set on the target when it is missing there; one that points to
another version on the target (the team's ``@champion``, say) is moved only when asked
(``move_aliases``), else it is left and reported.
"""

from __future__ import annotations

from dataclasses import dataclass

from nbtrack.store.kernel_state import fluent_tracking_uri
from nbtrack.store.publish import ORIGIN_MODEL, Outcome, Pusher

ORIGIN_VERSION = "nbtrack.origin.model_version"  # "<store>#<name>/<version>"
REGISTERED, ALREADY, FAILED = "registered", "already there", "failed"
ALIAS_SET, ALIAS_MOVED, ALIAS_LEFT, ALIAS_SAME = "set", "moved", "left", "already"


@dataclass(frozen=True)
class VersionOutcome:
    """One source version: ``state`` registered / already there / failed; ``aliases`` maps each
    of its source aliases to what happened on the target (set, moved, left, already).
    """

    name: str
    version: str
    state: str
    target_version: str | None = None
    aliases: tuple[tuple[str, str], ...] = ()
    left_at: tuple[tuple[str, str], ...] = ()  # alias -> the target version it still names
    detail: str = ""


def push_registrations(pusher: Pusher, outcomes: list[Outcome], move_aliases: bool = False
                       ) -> list[VersionOutcome]:
    """Re-create on the target every registered version of the runs in ``outcomes`` (those
    copied whole, this time or before), with their aliases; never raises for one version.
    """
    results = []
    for outcome in outcomes:
        if outcome.target_run_id is None or outcome.state == "failed":
            continue
        versions = pusher.source.search_model_versions(f"run_id = '{outcome.run_id}'")
        for version in sorted(versions, key=lambda v: (v.name, int(v.version))):
            try:
                results.append(_push_version(pusher, version, outcome.target_run_id,
                                             move_aliases))
            except Exception as error:  # this version failed; the others still go
                from nbtrack.display import short_error

                results.append(VersionOutcome(version.name, version.version, FAILED,
                                              detail=short_error(error)))
    return results


def _push_version(pusher: Pusher, version, target_run_id: str, move_aliases: bool
                  ) -> VersionOutcome:
    source, target = pusher.source, pusher.target
    origin = f"{pusher.origin}#{version.name}/{version.version}"
    _ensure_registered_model(pusher, version.name)
    copy = next((v for v in target.search_model_versions(
        f"name = '{_quoted(version.name)}' and run_id = '{target_run_id}'")
        if v.tags.get(ORIGIN_VERSION) == origin), None)
    state = ALREADY
    if copy is None:
        model_id = _copied_model_id(pusher, version, target_run_id)
        source_uri = f"models:/{model_id}" if model_id else \
            version.source.replace(version.run_id or "\0", target_run_id)
        # MLflow resolves models:/<id> with the fluent API's store, whatever the client's is.
        with fluent_tracking_uri(pusher.target_uri):
            copy = target.create_model_version(
                version.name, source_uri, run_id=target_run_id,
                tags={**version.tags, ORIGIN_VERSION: origin}, description=version.description,
                model_id=model_id)
        state = REGISTERED
    aliases, left = [], []
    held = target.get_registered_model(version.name).aliases
    for alias, number in source.get_registered_model(version.name).aliases.items():
        if str(number) != str(version.version):
            continue
        current = held.get(alias)
        if current is not None and str(current) == str(copy.version):
            aliases.append((alias, ALIAS_SAME))
        elif current is None or move_aliases:
            target.set_registered_model_alias(version.name, alias, copy.version)
            aliases.append((alias, ALIAS_SET if current is None else ALIAS_MOVED))
        else:
            aliases.append((alias, ALIAS_LEFT))
            left.append((alias, str(current)))
    return VersionOutcome(version.name, version.version, state, str(copy.version),
                          tuple(aliases), tuple(left))


def _ensure_registered_model(pusher: Pusher, name: str) -> None:
    from mlflow.exceptions import MlflowException

    try:
        pusher.target.get_registered_model(name)
        return
    except MlflowException:
        pass
    model = pusher.source.get_registered_model(name)
    try:
        pusher.target.create_registered_model(name, tags=model.tags,
                                              description=model.description)
    except MlflowException as error:  # made meanwhile by another push
        if error.error_code != "RESOURCE_ALREADY_EXISTS":
            raise


def _copied_model_id(pusher: Pusher, version, target_run_id: str) -> str | None:
    """The target's copy of the logged model ``version`` was made from, if it has one."""
    model_id = getattr(version, "model_id", None)
    if not model_id and (version.source or "").startswith("models:/m-"):
        model_id = version.source[len("models:/"):]  # the SQL store keeps it only in the source
    if not model_id:
        return None
    experiment_id = pusher.target.get_run(target_run_id).info.experiment_id
    for model in pusher.target.search_logged_models(
            experiment_ids=[experiment_id], filter_string=f"source_run_id = '{target_run_id}'"):
        if model.tags.get(ORIGIN_MODEL) == model_id:
            return model.model_id
    raise LookupError(f"the run's copy has no copy of logged model {model_id}; push the run "
                      "again to finish it")


def _quoted(text: str) -> str:
    return text.replace("'", "\\'")
