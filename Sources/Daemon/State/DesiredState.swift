import API

/// What the datapath should hold: the one input of the reconciler. A pure function of the
/// reconcile inputs, so it is computed and compared without touching the kernel.
public struct DesiredState: Equatable, Sendable {
    /// A masquerading device with the addresses its flows leave with.
    /// A masquerading device with the addresses its flows leave with. A device without an
    /// address of an enabled family stays in force: the datapath drops the pod packets it
    /// would have to masquerade (fail closed), it never forwards them with the pod's address.
    public struct Device: Equatable, Sendable {
        public var name: String
        public var ifindex: UInt32
        public var linkLayer: LinkLayer = .ethernet
        /// The link layer's L2 header length (`LinkLayer.l2HeaderLength`, known for every
        /// device in force).
        public var l2HeaderLength: UInt16 = 14
        public var snatV4: IPv4Address?
        public var snatV6: IPv6Address?
    }

    public var ipv4Enabled: Bool
    public var ipv6Enabled: Bool
    /// Whether the non-masquerade list applies (exclusion 2).
    public var nonMasqueradeEnabled: Bool
    public var nativeRoutingV4: IPPrefix?
    public var nativeRoutingV6: IPPrefix?
    public var portRange: ClosedRange<UInt16>
    /// Devices that run the programs, ordered by name.
    public var devices: [Device]
    /// Devices the config asks for that are not in force, with the reason.
    public var skippedDevices: [String: String]
    public var podCIDRsV4: Set<IPPrefix>
    public var podCIDRsV6: Set<IPPrefix>
    /// nil: the ip-masq-agent list is not known (its file was invalid from the start), so the
    /// map keeps what it holds.
    public var nonMasqueradeV4: Set<IPPrefix>?
    public var nonMasqueradeV6: Set<IPPrefix>?
    public var nodeIPsV4: Set<IPv4Address>
    public var nodeIPsV6: Set<IPv6Address>

    /// `previous`: the state in force before, whose default-route devices ride out a link flap
    /// (see `selectDevices`).
    public init(_ inputs: ReconcileInputs, previous: DesiredState? = nil) {
        let config = inputs.config
        // Exclusion 2 applies only with the agent on; off, its map is emptied.
        let nonMasquerade = config.enableIPMasqAgent ? inputs.nonMasquerade?.cidrs : []
        ipv4Enabled = config.enableIPv4Masquerade
        ipv6Enabled = config.enableIPv6Masquerade
        nativeRoutingV4 = config.ipv4NativeRoutingCIDR
        nativeRoutingV6 = config.ipv6NativeRoutingCIDR
        portRange = config.snatPortRange
        podCIDRsV4 = Set(config.podCIDRs.filter(\.isIPv4))
        podCIDRsV6 = Set(config.podCIDRs.filter { !$0.isIPv4 })
        nonMasqueradeV4 = nonMasquerade.map { Set($0.filter(\.isIPv4)) }
        nonMasqueradeV6 = nonMasquerade.map { Set($0.filter { !$0.isIPv4 }) }
        nonMasqueradeEnabled = config.enableIPMasqAgent
        nodeIPsV4 = []
        nodeIPsV6 = []
        for ip in config.clusterNodeIPs {
            switch ip {
            case .v4(let a): nodeIPsV4.insert(a)
            case .v6(let a): nodeIPsV6.insert(a)
            }
        }
        (devices, skippedDevices) = Self.selectDevices(config: config, network: inputs.network,
                                                       keeping: Set(previous?.devices.map(\.ifindex) ?? []))
    }

    /// The devices in force: those `devices` names (exact or `prefix+`), or, when it is empty,
    /// those that carry a default route. Each gets its primary address per enabled family,
    /// never a stale one. A device stays in force while it exists, also when it is down or has
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
    static func selectDevices(config: DaemonConfig, network: NetworkSnapshot,
                              keeping: Set<UInt32> = []) -> ([Device], [String: String]) {
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
                skipped[selector.name] = "no such device"
            }
        }
        var devices: [Device] = []
        for link in chosen.sorted(by: { $0.name < $1.name }) {
            guard let l2HeaderLength = link.linkLayer.l2HeaderLength else {
                skipped[link.name] = "link type \(link.linkLayer.kind) is not supported (neither Ethernet nor an L3 device)"
                continue
            }
            devices.append(Device(
                name: link.name, ifindex: link.index, linkLayer: link.linkLayer, l2HeaderLength: l2HeaderLength,
                snatV4: config.enableIPv4Masquerade ? link.ipv4.first : nil,
                snatV6: config.enableIPv6Masquerade ? link.ipv6.first : nil))
        }
        return (devices, skipped)
    }
}

/// What a set-valued map must gain and lose to reach the desired set. Additions are applied
/// before removals, so an element in both old and new sets is never absent.
public struct SetDiff<Element: Hashable>: Equatable {
    public var add: [Element]
    public var remove: [Element]

    public init(current: Set<Element>, desired: Set<Element>) {
        add = Array(desired.subtracting(current))
        remove = Array(current.subtracting(desired))
    }

    public var isEmpty: Bool { add.isEmpty && remove.isEmpty }
}
