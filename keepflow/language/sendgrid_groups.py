"""`validate`'s check of `rules.sendgrid_unsubscribe_groups`: every name it maps must be the
unsubscribe group of a marketing sequence, or its SendGrid group is never used."""

from __future__ import annotations

from collections.abc import Iterator

from ruamel.yaml.comments import CommentedMap

from keepflow.language.dsl import SequencesFile
from keepflow.language.schema_errors import did_you_mean
from keepflow.language.yaml_source import key_pos


def problems(file: SequencesFile, tree: CommentedMap) -> Iterator[tuple[tuple[int, int], str]]:
    mapping = file.rules.sendgrid_unsubscribe_groups
    if not mapping:
        return
    rules = tree.get("rules")
    node = rules.get("sendgrid_unsubscribe_groups") if isinstance(rules, CommentedMap) else None
    marketing = sorted({s.unsubscribe_group for s in file.sequences if s.category == "marketing"})
    transactional = {s.unsubscribe_group for s in file.sequences if s.category != "marketing"}
    for name in mapping:
        if name in marketing:
            continue
        pos = key_pos(node, name) if isinstance(node, CommentedMap) else key_pos(rules, "sendgrid_unsubscribe_groups")
        if name in transactional:
            yield pos, (f"sendgrid_unsubscribe_groups: {name!r} is the group of transactional sequences only, and "
                        "transactional email goes in no unsubscribe group; map a marketing sequence's group")
            continue
        guess = did_you_mean(name, marketing)
        hint = f"did you mean {guess!r}?" if guess else "the groups are: " + (", ".join(marketing) or "none")
        yield pos, (f"sendgrid_unsubscribe_groups: no marketing sequence has the unsubscribe group {name!r} "
                    f"(its `group:`, else its id), so this SendGrid group is never used; {hint}")
