"""Reading upstream's YAML configs without executing them.

`cosyvoice.yaml` is hyperpyyaml: `!new:pkg.Class` tags would import and construct
upstream classes. We parse it with PyYAML, turning every `!tag` mapping into a plain
dict with the tag kept under `"__tag__"` (e.g. `"new:stepvocoder.cosyvoice2.flow.decoder_dit.DiT"`),
so sizes can be read and nothing is executed. `!ref`/`!apply` scalars are kept as
strings tagged the same way; we only read literal values.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from ..errors import CheckpointError
from .state_dict import require_file

TAG_KEY = "__tag__"


class _TagTolerantLoader(yaml.SafeLoader):
    """SafeLoader that maps unknown `!tags` to data instead of failing."""


def _construct_tagged(loader: yaml.SafeLoader, suffix: str, node: yaml.Node) -> Any:
    if isinstance(node, yaml.MappingNode):
        data = loader.construct_mapping(node, deep=True)
        return {TAG_KEY: suffix, **data}
    if isinstance(node, yaml.SequenceNode):
        return {TAG_KEY: suffix, "args": loader.construct_sequence(node, deep=True)}
    return {TAG_KEY: suffix, "value": loader.construct_scalar(node)}


_TagTolerantLoader.add_multi_constructor("!", _construct_tagged)


def read_yaml(path: str | Path, what: str) -> dict[str, Any]:
    """Parse a YAML file whose `!tags` become dicts (see module doc)."""
    p = require_file(path, what)
    try:
        data = yaml.load(p.read_text(encoding="utf-8"), Loader=_TagTolerantLoader)
    except yaml.YAMLError as exc:
        raise CheckpointError(f"cannot parse {what} {p}: {exc}") from exc
    if not isinstance(data, dict):
        raise CheckpointError(f"{what} {p}: expected a mapping at the top level")
    return data


def node(cfg: dict[str, Any], *path: str, what: str) -> dict[str, Any]:
    """Walk `cfg[path[0]][path[1]]...`, naming the missing key if absent."""
    cur: Any = cfg
    for i, key in enumerate(path):
        if not isinstance(cur, dict) or key not in cur:
            raise CheckpointError(f"{what}: missing key {'.'.join(path[: i + 1])}")
        cur = cur[key]
    return cur
