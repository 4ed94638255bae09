import Datapath
import Netlink
import NetworkTypes

extension DesiredState {
    /// The desired state of `inputs`: a pure function, so it is computed and compared without
    /// touching the kernel. `previous`: the state in force before, whose default-route devices
    /// ride out a link flap and whose SNAT addresses stay while usable (see `selectDevices`);
    /// without one, `pinned`: the devices' SNAT addresses the pinned maps hold from the last
    /// run, so that a restart does not move the flows.
    public init(_ inputs: ReconcileInputs, previous: DesiredState? = nil, pinned: [UInt32: DatapathView.Device] = [:]) {
        let config = inputs.config
        // Exclusion 2 applies only with the agent on; off, its map is emptied.
        let nonMasquerade = config.enableIPMasqAgent ? inputs.nonMasquerade?.cidrs : []
        var nodeIPsV4 = Set<IPv4Address>()
        var nodeIPsV6 = Set<IPv6Address>()
        for ip in config.clusterNodeIPs {
            switch ip {
            case .v4(let a): nodeIPsV4.insert(a)
            case .v6(let a): nodeIPsV6.insert(a)
            }
        }
        let inForce = previous.map { state in
            Dictionary(state.devices.map { ($0.ifindex, DatapathView.Device(snatV4: $0.snatV4, snatV6: $0.snatV6)) },
                       uniquingKeysWith: { first, _ in first })
        } ?? pinned
        let (devices, skippedDevices) = Self.selectDevices(config: config, network: inputs.network,
                                                           keeping: Set(previous?.devices.map(\.ifindex) ?? []),
                                                           inForce: inForce)
        self.init(
            ipv4Enabled: config.enableIPv4Masquerade, ipv6Enabled: config.enableIPv6Masquerade,
            nonMasqueradeEnabled: config.enableIPMasqAgent,
            nativeRoutingV4: config.ipv4NativeRoutingCIDR, nativeRoutingV6: config.ipv6NativeRoutingCIDR,
            portRange: config.snatPortRange, devices: devices, skippedDevices: skippedDevices,
            podCIDRsV4: Set(config.podCIDRs.filter(\.isIPv4)), podCIDRsV6: Set(config.podCIDRs.filter { !$0.isIPv4 }),
            nonMasqueradeV4: nonMasquerade.map { Set($0.filter(\.isIPv4)) },
            nonMasqueradeV6: nonMasquerade.map { Set($0.filter { !$0.isIPv4 }) },
            nodeIPsV4: nodeIPsV4, nodeIPsV6: nodeIPsV6)
    }

    /// The devices in force: those `devices` names (exact or `prefix+`), or, when it is empty,
    /// those that carry a default route. Each gets one SNAT address per enabled family, never a
    /// stale one: the default route's source through it (`routeSourceV4`/`V6`), else the one in
    /// force (`inForce`, by ifindex) while the device keeps it usable (for IPv6, and no global
    /// unicast address is usable where it is a ULA), else the first of its usable addresses.
    /// Every flow leaves with its device's address, so a change moves them all (a TCP
    /// connection does not survive it): an address added beside the one in force does not take
    /// over. A device stays in force while it exists, also when it is down or has
    /// no usable address (its programs stay attached through a link flap, and pod packets it
    /// cannot masquerade are dropped, not leaked); only a link type whose L2 header masq does
    /// not know is skipped, with the reason.
    ///
    /// The kernel flushes the routes of a link that goes down, and brings back only the
    /// connected ones when it comes up; the default route follows later (DHCP, networkd), if
    /// at all. So a default-route device in force before (`keeping`, by ifindex) stays in force
    /// while it is down, and while no device carries a default route: dropping it would let
    /// pod traffic leave untranslated through its connected routes after the flap. It goes
    /// when it is deleted, or is up while another device carries the default route.
    static func selectDevices(config: DaemonConfig, network: NetworkSnapshot, keeping: Set<UInt32> = [],
                              inForce: [UInt32: DatapathView.Device] = [:]) -> ([Device], [String: String]) {
        var chosen: [NetworkSnapshot.Link]
        var skipped: [String: String] = [:]
        if config.devices.isEmpty {
            let noDefaultRoute = network.defaultRouteDevices.isEmpty
            chosen = network.links.filter { link in
                !link.isLoopback && (network.defaultRouteDevices.contains(link.name)
                    || (keeping.contains(link.index) && (!link.isUp || noDefaultRoute)))
            }
        } else {
            chosen = network.links.filter { link in
                !link.isLoopback && config.devices.contains { $0.matches(link.name) }
            }
            for selector in config.devices where !selector.isPrefix && !chosen.contains(where: { $0.name == selector.name }) {
                let loopback = network.links.contains { $0.name == selector.name && $0.isLoopback }
                skipped[selector.name] = loopback ? "the loopback device is never a masquerading device" : "no such device"
            }
        }
        var devices: [Device] = []
        for link in chosen.sorted(by: { $0.name < $1.name }) {
            guard let l2HeaderLength = link.linkLayer.l2HeaderLength else {
                skipped[link.name] = "link type \(link.linkLayer.kind) is not supported (neither Ethernet nor an L3 device)"
                continue
            }
            let kept = inForce[link.index]
            devices.append(Device(
                name: link.name, ifindex: link.index, linkLayer: link.linkLayer, l2HeaderLength: l2HeaderLength,
                snatV4: config.enableIPv4Masquerade
                    ? Self.snatAddress(route: link.routeSourceV4, inForce: kept?.snatV4, usable: link.ipv4) { _ in true } : nil,
                snatV6: config.enableIPv6Masquerade
                    ? Self.snatAddress(route: link.routeSourceV6, inForce: kept?.snatV6, usable: link.ipv6) { $0.isGlobalUnicast == link.ipv6.first?.isGlobalUnicast } : nil))
        }
        return (devices, skipped)
    }

    /// `usable` is in order of preference; the one in force stays while it is usable and of
    /// the best class there is (`bestClass`): a ULA chosen while no global address was usable
    /// gives way once one is (at boot, SLAAC's address comes a second after a static ULA).
    private static func snatAddress<Address: Equatable>(route: Address?, inForce: Address?, usable: [Address],
                                                        bestClass: (Address) -> Bool) -> Address? {
        route ?? inForce.flatMap { usable.contains($0) && bestClass($0) ? $0 : nil } ?? usable.first
    }
}
