"""Checks across parties: what no single [[party]] entry can get wrong on its own.

Pure functions over parsed parties; the loader adds their problems to the per-field ones.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from gateway.registry.model import Area, Category, Party, PartyKind, Registry
from gateway.registry.problems import Problem


def check_structure(entries: Sequence[tuple[int, Party]], areas: Mapping[str, Area]) -> list[Problem]:
    """Duplicate HER-ids, unknown or impossible parents, cycles, and the inherited settings every
    reachable party needs. `entries` are (position in the file, party)."""
    problems: list[Problem] = []
    parties: dict[int, tuple[int, Party]] = {}
    for index, party in entries:
        if party.her_id in parties:
            first_index, first = parties[party.her_id]
            problems.append(
                Problem(
                    party.her_id,
                    "her_id",
                    f"duplicate HER-id: party[{index}] {party.name!r} and party[{first_index}] {first.name!r}",
                )
            )
            continue
        parties[party.her_id] = (index, party)
    by_id = {her_id: party for her_id, (_, party) in parties.items()}

    for party in by_id.values():
        problems += _check_parent(party, by_id)
    cyclic = _cycles(by_id)
    for cycle in cyclic:
        chain = " -> ".join(str(h) for h in (*cycle, cycle[0]))
        problems.append(Problem(cycle[0], "parent", f"parent chain forms a cycle: {chain}"))
    # Inherited lookups walk parent chains, so they run only for parties whose chain reaches a
    # level-1 party; the others already have a problem reported above.
    registry = Registry(by_id.values(), areas)
    for party in by_id.values():
        if _sound_chain(party.her_id, by_id):
            problems += _check_references(party, registry)
            problems += _check_inherited(party, registry)
    return problems


def _sound_chain(her_id: int, by_id: Mapping[int, Party]) -> bool:
    seen: set[int] = set()
    current: int | None = her_id
    while current is not None:
        if current in seen or current not in by_id:
            return False
        seen.add(current)
        current = by_id[current].parent
    return True


def _check_parent(party: Party, by_id: Mapping[int, Party]) -> list[Problem]:
    if party.parent is None:
        if party.kind is not PartyKind.ORGANISATION:
            return [Problem(party.her_id, "parent", f"a {party.kind} needs a parent organisation")]
        if party.org_no is None:
            # Level-1 parties own the enterprise certificates, which are issued to an org number.
            return [Problem(party.her_id, "org_no", "a level-1 organisation needs an organisation number")]
        return []
    if party.parent == party.her_id:
        return []  # reported as a cycle
    parent = by_id.get(party.parent)
    if parent is None:
        return [Problem(party.her_id, "parent", f"unknown parent HER-id {party.parent}")]
    if parent.kind is PartyKind.PERSON:
        return [
            Problem(party.her_id, "parent", f"parent {parent.her_id} is a person, which cannot have children")
        ]
    return []


def _cycles(by_id: Mapping[int, Party]) -> list[tuple[int, ...]]:
    """Each parent cycle once, as the HER-ids along it starting from the smallest."""
    state: dict[int, str] = {}
    found: list[tuple[int, ...]] = []
    for start in sorted(by_id):
        path: list[int] = []
        her_id: int | None = start
        while her_id is not None and her_id in by_id and her_id not in state:
            state[her_id] = "visiting"
            path.append(her_id)
            her_id = by_id[her_id].parent
        if her_id is not None and state.get(her_id) == "visiting":
            cycle = path[path.index(her_id) :]
            smallest = cycle.index(min(cycle))
            found.append(tuple(cycle[smallest:] + cycle[:smallest]))
        for visited in path:
            state[visited] = "done"
    return found


def _check_references(party: Party, registry: Registry) -> list[Problem]:
    problems = []
    if party.municipality is not None:
        target = registry.find(party.municipality)
        if target is None or target.category is not Category.MUNICIPALITY:
            problems.append(
                Problem(
                    party.her_id,
                    "municipality",
                    f"{party.municipality} is not a municipality in the registry",
                )
            )
        elif party.area is not None and target.area is not None and party.area != target.area:
            problems.append(
                Problem(
                    party.her_id,
                    "area",
                    f"area {party.area!r} differs from its municipality's ({target.name}: {target.area!r})",
                )
            )
    return problems


def _check_inherited(party: Party, registry: Registry) -> list[Problem]:
    """A party messages are delivered to must also be able to decrypt and must say which ciphers
    it takes; catching that here beats a failure at the first message. Checked where the
    endpoint is set, so one omission is reported once, not again for every service under it."""
    if party.endpoint is None:
        return []
    problems = []
    if registry.certificate_holder(party.her_id) is None:
        problems.append(
            Problem(party.her_id, "certificates", "has an endpoint but no certificates on it or any ancestor")
        )
    if registry.protection(party.her_id) is None:
        problems.append(
            Problem(
                party.her_id, "protection", "has an endpoint but no protection policy on it or any ancestor"
            )
        )
    return problems
