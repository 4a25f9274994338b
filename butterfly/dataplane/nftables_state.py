"""Butterfly's nftables tables as the data plane last wrote them, and the changes to them.

Owns :class:`NftablesState`: the in-memory mirror of the tables (so a
request sends only the difference for the objects it touches), the ids it
allocates (a profile's and a limit class's id, a VNI's conntrack zone), the bootstrap of
the objects nft's JSON cannot declare, the rebuild of an older layout, and
the counters of dropped connections the graph shows. What the objects are
is :mod:`butterfly.dataplane.ruleset`'s; this module decides which of them
change and records how to undo it. It touches no link, and talks to nft
only through :class:`~butterfly.dataplane.nft.NftablesApi` (unit tests give
it an in-memory one).
"""

import logging
from collections.abc import Iterable, Mapping
from typing import TypeVar

from butterfly.dataplane.forked import in_child
from butterfly.dataplane.journal import Journal, step
from butterfly.dataplane.naming import (
    TABLE,
    bridge_name,
    limit_names,
    member_set,
    profile_chains,
    tap_name,
    vni_of,
    vxlan_name,
)
from butterfly.dataplane.nft import Nftables, NftablesApi
from butterfly.dataplane.ruleset import (
    BOOTSTRAP,
    BRIDGE,
    DROPS,
    INET,
    MAX_ID,
    ConnLimits,
    Decl,
    Key,
    Layout,
    Listing,
    Obj,
    Structural,
    diff,
    parse_listing,
    profile_elements,
    tables,
)
from butterfly.dataplane.settings import KernelSettings
from butterfly.errors import DataplaneError
from butterfly.model import SecurityGroup, StateView, Vnic
from butterfly.model.firewall import has_outbound, referenced_groups, sg_filter, vnic_filter

__all__ = ["NftablesState", "allocate", "set_allocation"]

log = logging.getLogger(__name__)

K = TypeVar("K", str, int)


class NftablesState:
    """The tables of the namespace ``nft`` talks to, and their mirror."""

    def __init__(self, nft: NftablesApi, settings: KernelSettings) -> None:
        self._nft = nft
        self._settings = settings
        underlay = settings.underlay
        self._layout = Layout(
            underlay_ifname=underlay.ifname,
            underlay_ip=underlay.address,
            vxlan_port=settings.vxlan_port,
        )
        self._infrastructure = {
            checks_ips: self._layout.infrastructure(checks_ips) for checks_ips in (False, True)
        }
        self._mirror: dict[Key, Obj] | None = None
        self._profile_ids: dict[str, int] = {}
        """A profile's inbound chain -> its id in the per-vnic maps."""
        self._class_ids: dict[str, int] = {}
        """A limit class's chain -> its id in ``limits``."""
        self.zones: dict[int, int] = {}
        """VNI -> its conntrack zone; replaced or changed a key at a time,
        never left half-made (the metrics' thread copies it)."""

    def load(self) -> None:
        """Read butterfly's tables into the mirror, once."""
        if self._mirror is None:
            listing = self._listing()
            self._mirror = listing.objects
            self._profile_ids = listing.classes("in_profiles")
            self._class_ids = listing.classes("limit_classes")
            self.zones = {vni_of(br): z for br, z in listing.allocations("zones").items()}

    def forget(self) -> None:
        """The tables are gone (cleanup): read them again when next needed."""
        self._mirror = None
        self._profile_ids.clear()
        self._class_ids.clear()
        self.zones.clear()

    def _listing(self) -> Listing:
        """butterfly's tables; from the kernel, read and parsed in a child
        process on a context of its own (see :mod:`.forked`)."""
        if isinstance(self._nft, Nftables):
            return in_child(_read_listing, "nftables: reading butterfly's tables")
        return _parsed_listing(self._nft)

    def _bootstrap(self, j: Journal | None, present: dict[Key, Obj]) -> None:
        """Make the objects nft's JSON cannot declare if missing, and add them to
        ``present`` (the undo takes them out of both)."""
        missing: dict[Key, Obj] = {
            key: obj
            for key, obj in self._infrastructure[False].items()
            if _bootstrapped(obj) and key not in present
        }
        if not missing:
            return
        made_tables = {key.family for key in missing if key.kind == "table"}
        commands = [
            {"delete": {"table": {"family": key.family, "name": TABLE}}}
            if key.kind == "table"
            else {"delete": {key.kind: {"family": key.family, "table": TABLE, "name": key.name}}}
            for key in missing
            if key.kind == "table" or key.family not in made_tables
        ]

        def make() -> None:
            self._nft.run_text(BOOTSTRAP)
            present.update(missing)

        def undo() -> None:
            self._nft.apply(commands)
            for key in missing:
                present.pop(key, None)

        step(j, "nftables bootstrap", make, undo)

    def reconcile(self, state: StateView, vnics: list[Vnic]) -> None:
        """Read the tables back and make them what ``vnics`` (those with a port) want."""
        listing = self._listing()
        vnis = {vnic.vni for vnic in vnics}
        # Tables another program removed get back the ids they had (known here).
        zones = listing.allocations("zones") or {bridge_name(v): z for v, z in self.zones.items()}
        profile_ids = listing.classes("in_profiles") or self._profile_ids
        class_ids = listing.classes("limit_classes") or self._class_ids
        self.zones = {
            vni: zone for bridge, zone in zones.items() if (vni := vni_of(bridge)) in vnis
        }
        wanted = dict(self._infrastructure[state.checks_ips()])
        for vni in sorted(vnis):
            wanted.update(self._vni_objects(None, vni, state))
        profiles = set()
        classes = {limit_names(*self._settings.vnic_limits(vnic))[0] for vnic in vnics}
        for vnic in vnics:
            if self._settings.filtered(vnic):
                profiles.add(vnic.security_groups)
        chains = {profile_chains(profile)[0] for profile in profiles}
        self._profile_ids = {c: i for c, i in profile_ids.items() if c in chains}
        self._class_ids = {c: i for c, i in class_ids.items() if c in classes}
        for vnic in vnics:
            wanted.update(self._vnic_objects(None, vnic.id, state))
            if self._settings.filtered(vnic):
                wanted.update(self._limit_objects(None, vnic))
        for profile in sorted(profiles):
            wanted.update(self._profile_objects(None, profile, state))
        known = {sg.id for sg in state.sgs()} | referenced_groups(state.sgs())
        for vnic in vnics:
            known.update(vnic.security_groups)
        for sg_id in sorted(known):
            sg = state.sg(sg_id)
            wanted.update(self._layout.sg(sg_filter(sg_id, sg), _members(sg)))
        present = dict(listing.objects)
        try:
            for key, obj in self._infrastructure[False].items():
                if _bootstrapped(obj) and key in present and present[key] != obj:
                    raise Structural(f"{key.kind} {key.family} {key.name} changed declaration")
            self._bootstrap(None, present)
            commands = diff(present, wanted)
        except Structural as exc:
            # An older layout: rebuilt in three transactions (the bootstrap
            # speaks nft's syntax, the rest JSON); conntrack entries and so
            # established flows survive, filtering pauses for the rebuild.
            log.warning("rebuilding butterfly's nftables tables: %s", exc)
            self._nft.apply(
                [
                    {"delete": {"table": {"family": key.family, "name": TABLE}}}
                    for key in tables()
                    if key in listing.objects
                ]
            )
            self._nft.run_text(BOOTSTRAP)
            commands = diff({k: v for k, v in wanted.items() if _bootstrapped(v)}, wanted)
        if commands:
            log.info("reconcile: %d nftables changes", len(commands))
            self._nft.apply(commands)
        self._mirror = wanted

    def commit(
        self,
        j: Journal,
        state: StateView,
        *,
        vnics: Iterable[tuple[Vnic | None, str]] = (),
        vnis: Iterable[int] = (),
        sgs: Mapping[str, SecurityGroup | None] | None = None,
        profiles: Iterable[tuple[str, ...]] = (),
    ) -> None:
        """One nftables transaction bringing these groups of objects to ``state``.

        ``vnics`` pairs each vnic's id with its previous version (None when it
        is new), ``sgs`` each group's id with its previous version: the
        objects those had are the ones that may have to go.
        """
        assert self._mirror is not None
        mirror = self._mirror
        settings = self._settings
        new: dict[Key, Obj] = dict(self._infrastructure[state.checks_ips()])
        keys: set[Key] = set(new)
        touched = set(profiles)
        for before, vnic_id in vnics:
            port = tap_name(vnic_id)
            if before is not None and settings.has_port(before):
                keys |= self._layout.vnic(
                    port,
                    bridge_name(before.vni),
                    vnic_filter(before, state),
                    settings.vnic_limits(before),
                ).keys()
                if settings.filtered(before):
                    touched.add(before.security_groups)
            objects = self._vnic_objects(j, vnic_id, state)
            keys |= objects.keys()
            new.update(objects)
            after = state.vnic(vnic_id)
            if after is not None and settings.filtered(after):
                touched.add(after.security_groups)
                # A class no vnic uses any more stays until the next reconcile:
                # finding its last user would mean scanning every vnic.
                objects = self._limit_objects(j, after)
                keys |= objects.keys()
                new.update(objects)
        for vni in vnis:
            keys |= self._layout.vni(bridge_name(vni), vxlan_name(vni), 0, quiet=True).keys()
            objects = self._vni_objects(j, vni, state)
            keys |= objects.keys()
            new.update(objects)
        for profile in touched:
            profile_in, profile_out = profile_chains(profile)
            keys |= {Key("chain", INET, profile_in), Key("chain", INET, profile_out)}
            if (profile_id := self._profile_ids.get(profile_in)) is not None:
                keys |= profile_elements(profile_in, profile_out, profile_id).keys()
            objects = self._profile_objects(j, profile, state)
            keys |= objects.keys()
            new.update(objects)
        referenced: set[str] | None = None
        for sg_id, before_sg in (sgs or {}).items():
            sg = state.sg(sg_id)
            laid_out = True
            if sg is None and not state.vnics_using(sg_id):
                if referenced is None:
                    referenced = referenced_groups(state.sgs())
                laid_out = sg_id in referenced
            # A member in the group before and after keeps its element (when
            # the group is in the tables already): leaving it out of both sides
            # makes a member change cost its own element, not the group's thousands.
            before_members = _members(before_sg)
            after_members = _members(sg) if laid_out else ()
            kept: set[str] = set()
            if Key("set", INET, member_set(sg_id, 4)) in mirror:
                kept = set(before_members).intersection(after_members)
            before_only = [m for m in before_members if m not in kept]
            keys |= self._layout.sg(sg_filter(sg_id, None), before_only).keys()
            if not laid_out:
                continue
            after_only = [m for m in after_members if m not in kept]
            objects = self._layout.sg(sg_filter(sg_id, sg), after_only)
            keys |= objects.keys()
            new.update(objects)
        self._bootstrap(j, mirror)
        old = {key: mirror[key] for key in keys if key in mirror}
        try:
            commands = diff(old, new)
        except Structural as exc:
            raise DataplaneError(f"nftables: {exc}; a reconcile will rebuild the tables") from exc
        if not commands:
            return

        def replace(objects: Mapping[Key, Obj]) -> None:
            for key in keys:
                if key in objects:
                    mirror[key] = objects[key]
                else:
                    mirror.pop(key, None)

        def apply() -> None:
            self._nft.apply(commands)
            replace(new)

        def undo() -> None:
            self._nft.apply(diff(new, old))
            replace(old)

        j.step("nftables", apply, undo)

    def _profile_objects(
        self, j: Journal | None, profile: tuple[str, ...], state: StateView
    ) -> dict[Key, Obj]:
        """A profile's chains and id, while a filtered vnic uses exactly these
        groups (its id freed after)."""
        chain = profile_chains(profile)[0]
        if profile and not state.any_with_groups(profile, self._settings.filtered):
            set_allocation(j, self._profile_ids, chain, None)
            return {}
        restrict = any(has_outbound(state.sg(sg_id)) for sg_id in profile)
        return self._layout.profile(profile, restrict, self._profile_id(j, profile))

    def _profile_id(self, j: Journal | None, profile: tuple[str, ...]) -> int:
        chain = profile_chains(profile)[0]
        profile_id = self._profile_ids.get(chain) or allocate(
            self._profile_ids.values(), "security group profile"
        )
        set_allocation(j, self._profile_ids, chain, profile_id)
        return profile_id

    def _vnic_objects(self, j: Journal | None, vnic_id: str, state: StateView) -> dict[Key, Obj]:
        """The vnic's objects, allocating its profile's and caps' ids as needed."""
        port = tap_name(vnic_id)
        vnic = state.vnic(vnic_id)
        if vnic is None or not self._settings.has_port(vnic):
            return {}
        filtering = vnic_filter(vnic, state)
        if filtering is None:
            return self._layout.vnic(port, bridge_name(vnic.vni), None)
        limits = self._settings.vnic_limits(vnic)
        return self._layout.vnic(
            port,
            bridge_name(vnic.vni),
            filtering,
            limits,
            profile_id=self._profile_id(j, filtering.security_groups),
            class_id=self._class_id(j, limits) if any(limits) else 0,
        )

    def _limit_objects(self, j: Journal | None, vnic: Vnic) -> dict[Key, Obj]:
        limits = self._settings.vnic_limits(vnic)
        return self._layout.limit_class(limits, self._class_id(j, limits)) if any(limits) else {}

    def _class_id(self, j: Journal | None, limits: ConnLimits) -> int:
        chain = limit_names(*limits)[0]
        class_id = self._class_ids.get(chain) or allocate(self._class_ids.values(), "limit class")
        set_allocation(j, self._class_ids, chain, class_id)
        return class_id

    def _vni_objects(self, j: Journal | None, vni: int, state: StateView) -> dict[Key, Obj]:
        if not state.any_in(vni, self._settings.has_port):
            set_allocation(j, self.zones, vni, None)
            return {}
        zone = self.zones.get(vni) or allocate(self.zones.values(), "conntrack zone")
        set_allocation(j, self.zones, vni, zone)
        quiet = not state.any_in(vni, self._settings.filtered)
        return self._layout.vni(bridge_name(vni), vxlan_name(vni), zone, quiet)

    def limit_drops(self) -> dict[tuple[str, str], int]:
        """New connections dropped by the caps, by sender (bridge, MAC), since the
        sender first met one (the kernel's counters in dyn_drops)."""
        listing = self._nft.list({"set": {"family": INET, "table": TABLE, "name": DROPS}})
        drops: dict[tuple[str, str], int] = {}
        for obj in listing or []:
            for element in obj.get("set", {}).get("elem", []):
                entry = element.get("elem", {}) if isinstance(element, dict) else {}
                bridge, mac = entry.get("val", {}).get("concat", ("", ""))
                drops[(bridge, str(mac).lower())] = int(entry.get("counter", {}).get("packets", 0))
        return drops


def allocate(used: Iterable[int], what: str) -> int:
    """The smallest id from 1 to MAX_ID not in ``used``."""
    taken = set(used)
    for candidate in range(1, MAX_ID + 1):
        if candidate not in taken:
            return candidate
    raise DataplaneError(f"no {what} id left (at most {MAX_ID} per host)")


def set_allocation(j: Journal | None, table: dict[K, int], key: K, value: int | None) -> None:
    """``table[key] = value`` (None: no entry), given back if ``j`` rolls back."""
    previous = table.get(key)
    if previous == value:
        return
    if value is None:
        del table[key]
    else:
        table[key] = value
    if j is not None:

        def restore() -> None:
            if previous is None:
                table.pop(key, None)
            else:
                table[key] = previous

        j.on_rollback(f"allocation of {key}", restore)


def _bootstrapped(obj: Obj) -> bool:
    return isinstance(obj, Decl) and obj.bootstrapped


def _members(sg: SecurityGroup | None) -> tuple[str, ...]:
    return sg.members if sg is not None else ()


def _parsed_listing(nft: NftablesApi) -> Listing:
    listing = Listing()
    for family in (BRIDGE, INET):
        objects = nft.list({"table": {"family": family, "name": TABLE}})
        if objects is not None:
            listing.objects.update(parse_listing(family, objects).objects)
    return listing


def _read_listing() -> Listing:
    nft = Nftables()
    try:
        return _parsed_listing(nft)
    finally:
        nft.close()
