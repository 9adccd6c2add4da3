"""What the loop does: one typed section per step, loaded from ``params.yaml``.

``params.yaml`` at the repository root holds these sections (``mine``, ``drift``, ``grow``,
``train``, ``promote``); DVC reads the same file for the training stages' parameters. Every value
has exactly one default, here; a section or key missing from the file takes it. Where the loop
*runs* (URLs, credentials, paths) is :mod:`fleetloop.settings`, not here.
"""

from __future__ import annotations

import contextlib
import itertools
import os
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from fleetloop.dataset.params import GrowParams
from fleetloop.drift.params import DriftParams
from fleetloop.mine.params import MiningParams
from fleetloop.problems import first_problem
from fleetloop.registry.params import PromoteParams
from fleetloop.train.params import TrainParams

PARAMS_FILE = "params.yaml"
M = TypeVar("M", bound=BaseModel)


class ParamsError(ValueError):
    """params.yaml is missing a required piece, is not YAML, or holds an invalid value."""


class LoopParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    mine: MiningParams = Field(default_factory=MiningParams)
    drift: DriftParams = Field(default_factory=DriftParams)
    grow: GrowParams = Field(default_factory=GrowParams)
    train: TrainParams = Field(default_factory=TrainParams)
    promote: PromoteParams = Field(default_factory=PromoteParams)

    @model_validator(mode="before")
    @classmethod
    def _no_nulls(cls, data: Any) -> Any:
        if isinstance(data, dict):  # "drift:" with nothing under it reads as None: take the defaults
            return {k: v for k, v in data.items() if v is not None}
        return data


def find_params_file(start: Path | None = None) -> Path | None:
    """``$FLEETLOOP_PARAMS``, else the nearest ``params.yaml`` from ``start`` (default: the
    working directory) upwards, else the one at the root of this source tree."""
    env = os.environ.get("FLEETLOOP_PARAMS")
    if env:
        return Path(env)
    here = (start or Path.cwd()).resolve()
    for d in (here, *here.parents):
        if (d / PARAMS_FILE).is_file() and (d / "fleetloop").is_dir():
            return d / PARAMS_FILE
    packaged = Path(__file__).resolve().parents[1] / PARAMS_FILE
    return packaged if packaged.is_file() else None


def yaml_problem(path: Path | str, exc: Exception) -> str:
    """One line for a YAML error: the file, the 1-based line and column, and the problem (the
    parser's own message spans several lines, with a picture of the spot)."""
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or getattr(exc, "reason", None) or getattr(exc, "context", None)
    position = getattr(exc, "position", None)  # a reader error: a character YAML does not allow
    where = (f"{path}: line {mark.line + 1}, column {mark.column + 1}" if mark is not None
             else f"{path}: character {position + 1}" if position is not None else str(path))
    if problem is None:
        problem = str(exc)
    else:
        context = getattr(exc, "context", None)
        if context and context != problem:
            problem = f"{problem} ({context})"
    return f"{where}: not valid YAML (or JSON): {' '.join(str(problem).split())}"


def _unique_key_loader():
    """PyYAML's safe loader refusing a key given twice in one mapping (YAML readers keep the last
    one without a word: a second ``mine:`` section would silently replace the first)."""
    import yaml

    class UniqueKeyLoader(yaml.SafeLoader):
        def construct_mapping(self, node, deep=False):
            seen = set()
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *base`: its keys may be overridden
                    continue
                key = self.construct_object(key_node, deep=deep)
                try:
                    duplicate = key in seen
                except TypeError:  # an unhashable key: the safe loader's own error says so
                    continue
                if duplicate:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"key {key!r} is given twice in its mapping (only the last one would be read)",
                        key_node.start_mark)
                seen.add(key)
            return super().construct_mapping(node, deep)

    return UniqueKeyLoader


def _read_yaml(path: Path | str) -> Any:
    import yaml

    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ParamsError(f"cannot read {path}: {exc.strerror or exc}") from exc
    except UnicodeDecodeError as exc:
        raise ParamsError(f"{path}: not valid YAML (or JSON): not UTF-8 text (byte {exc.start}: {exc.reason})") from None
    try:
        return yaml.load(text, Loader=_unique_key_loader())  # a SafeLoader
    except yaml.YAMLError as exc:
        raise ParamsError(yaml_problem(path, exc)) from None


def _validate(model: type[M], data: dict[str, Any], path: Path | str) -> M:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        first, more = first_problem(exc)
        raise ParamsError(f"{path}: {first}" + (f" (and {more} more problem(s))" if more else "")) from exc


def load_params(path: Path | str | None = None) -> LoopParams:
    """The loop's params from ``path`` (default :func:`find_params_file`); defaults without a file."""
    path = Path(path) if path is not None else find_params_file()
    if path is None:
        return LoopParams()
    data = _read_yaml(path) or {}
    if not isinstance(data, dict):
        raise ParamsError(f"{path}: expected sections (mine, drift, grow, train, promote), got {type(data).__name__}")
    return _validate(LoopParams, data, path)


def mining_params(path: Path | str | None = None) -> MiningParams:
    """Mining params for ``fleetloop mine``: without ``path``, the ``mine:`` section of
    params.yaml (:func:`load_params`), as the mine flow and the weekly cycle read it; with it, a
    file (YAML or JSON) holding either a params file (any of the sections ``mine``, ``drift``,
    ``grow``, ``train``, ``promote``: read and validated as :func:`load_params` reads it, so its
    ``mine:`` section, or the defaults without one) or mining params alone."""
    if path is None:
        return load_params().mine
    data = _read_yaml(path) or {}
    if not isinstance(data, dict):
        raise ParamsError(f"{path}: expected mining params (or a params file with a mine: section), got {type(data).__name__}")
    if set(data) & set(LoopParams.model_fields):
        return _validate(LoopParams, data, path).mine
    return _validate(MiningParams, data, path)


def dump_params(params: LoopParams) -> str:
    """``params.yaml`` text for these params (every value spelled out)."""
    import yaml

    return yaml.safe_dump(params.model_dump(mode="json"), sort_keys=False, default_flow_style=False, width=110)


def write_params(path: Path | str, params: LoopParams) -> bool:
    """Write ``params`` to ``path`` atomically: a temporary file beside it, renamed over it, so a
    kill or a full disk leaves the old file whole; a link is written through to its target.

    An existing file is edited, not replaced (ruamel.yaml's round trip): only the values that
    change are rewritten, and its other lines, comments and layout stay as the user wrote them.
    When the edited text would not read back as exactly ``params`` (a layout the round trip
    cannot keep), or the file is not a YAML mapping, the whole file is written instead
    (:func:`dump_params`, every value spelled out) keeping the comment lines that open it.
    Its byte-order mark and CRLF line ends, if any, are kept. Returns True when the whole file was
    written. :class:`ParamsError` naming the file when it cannot be written."""
    from fleetloop.store.atomic import write_atomic

    path = Path(path)
    if path.is_symlink():
        path = path.resolve()
    mode, text = 0o644, None
    if path.is_file():
        mode = path.stat().st_mode & 0o777
        with contextlib.suppress(OSError, UnicodeDecodeError):
            text = path.read_bytes().decode("utf-8")
    bom = "\ufeff" if text and text.startswith("\ufeff") else ""  # the file's BOM and line ends are kept
    crlf = text is not None and "\r\n" in text
    if text is not None:
        text = text.removeprefix("\ufeff").replace("\r\n", "\n")
    edited = _edited(text, params) if text is not None else None
    whole = edited is None
    if edited is None:
        header = "".join(itertools.takewhile(lambda ln: ln.startswith("#"), (text or "").splitlines(keepends=True)))
        edited = header + dump_params(params)
    edited = bom + (edited.replace("\n", "\r\n") if crlf else edited)
    try:
        write_atomic(path, edited.encode("utf-8"), mode=mode)
    except OSError as exc:
        raise ParamsError(f"{path}: cannot write: {exc}") from None
    return whole


def _edited(text: str, params: LoopParams) -> str | None:
    """``text`` (a params file) with only the values that differ from ``params`` replaced, by
    ruamel.yaml's round trip (comments and layout kept); None when that cannot be done exactly."""
    import io

    import yaml
    from ruamel.yaml import YAML
    from ruamel.yaml.error import YAMLError

    rt = YAML()  # round trip
    rt.preserve_quotes = True
    rt.width = 110
    rt.representer.add_representer(type(None), lambda r, _: r.represent_scalar("tag:yaml.org,2002:null", "null"))
    try:
        doc = rt.load(text)
        old = LoopParams.model_validate(yaml.safe_load(text) or {}).model_dump(mode="json")
    except (YAMLError, yaml.YAMLError, ValueError):
        return None
    if not isinstance(doc, dict):
        return None
    new = params.model_dump(mode="json")
    _merge(doc, old, new)
    out = io.StringIO()
    try:
        rt.dump(doc, out)
        edited = out.getvalue()
        if LoopParams.model_validate(yaml.safe_load(edited) or {}) != params:  # read back exactly, or not at all
            return None
    except (YAMLError, yaml.YAMLError, ValueError):
        return None
    return edited


def _merge(doc: Any, old: dict[str, Any], new: dict[str, Any]) -> None:
    """Set in ``doc`` (the file's round-trip mapping) what differs between ``old`` (the values it
    gives) and ``new``, descending into mappings the file spells out so their comments stay."""
    from ruamel.yaml.comments import CommentedMap

    for key in list(doc):
        if key in old and key not in new:  # e.g. a class_severities entry the new fit drops
            del doc[key]
    for key, value in new.items():
        if old.get(key) == value:
            continue
        if isinstance(value, dict) and isinstance(old.get(key), dict):
            if doc.get(key) is None:  # a section the file leaves at its defaults: only what differs
                doc[key] = CommentedMap()
            if isinstance(doc[key], dict):
                _merge(doc[key], old[key], value)
                continue
        doc[key] = value
