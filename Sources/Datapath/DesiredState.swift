import CMasq
import NetworkTypes

/// What the datapath should hold: the one input of `Datapath.apply`. The daemon computes it as a
/// pure function of its reconcile inputs, so it is computed and compared without touching the
/// kernel.
public struct DesiredState: Equatable, Sendable {
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

        public init(name: String, ifindex: UInt32, linkLayer: LinkLayer = .ethernet, l2HeaderLength: UInt16 = 14,
                    snatV4: IPv4Address? = nil, snatV6: IPv6Address? = nil) {
            self.name = name
            self.ifindex = ifindex
            self.linkLayer = linkLayer
            self.l2HeaderLength = l2HeaderLength
            self.snatV4 = snatV4
            self.snatV6 = snatV6
        }
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
    /// Those of `skippedDevices` that another masqd (another bpffs-root) runs on
    /// (`Datapath.withoutTakenDevices`): two masqds meant for one device, which health warns of.
    public var takenDevices: Set<String> = []
    public var podCIDRsV4: Set<IPPrefix>
    public var podCIDRsV6: Set<IPPrefix>
    /// nil: the ip-masq-agent list is not known, so the map keeps what it holds.
    public var nonMasqueradeV4: Set<IPPrefix>?
    public var nonMasqueradeV6: Set<IPPrefix>?
    public var nodeIPsV4: Set<IPv4Address>
    public var nodeIPsV6: Set<IPv6Address>

    public init(ipv4Enabled: Bool, ipv6Enabled: Bool, nonMasqueradeEnabled: Bool,
                nativeRoutingV4: IPPrefix?, nativeRoutingV6: IPPrefix?, portRange: ClosedRange<UInt16>,
                devices: [Device], skippedDevices: [String: String],
                podCIDRsV4: Set<IPPrefix>, podCIDRsV6: Set<IPPrefix>,
                nonMasqueradeV4: Set<IPPrefix>?, nonMasqueradeV6: Set<IPPrefix>?,
                nodeIPsV4: Set<IPv4Address>, nodeIPsV6: Set<IPv6Address>) {
        self.ipv4Enabled = ipv4Enabled
        self.ipv6Enabled = ipv6Enabled
        self.nonMasqueradeEnabled = nonMasqueradeEnabled
        self.nativeRoutingV4 = nativeRoutingV4
        self.nativeRoutingV6 = nativeRoutingV6
        self.portRange = portRange
        self.devices = devices
        self.skippedDevices = skippedDevices
        self.podCIDRsV4 = podCIDRsV4
        self.podCIDRsV6 = podCIDRsV6
        self.nonMasqueradeV4 = nonMasqueradeV4
        self.nonMasqueradeV6 = nonMasqueradeV6
        self.nodeIPsV4 = nodeIPsV4
        self.nodeIPsV6 = nodeIPsV6
    }
}

extension DesiredState {
    /// Why `device` has no SNAT address of a family that is on, for status and the log: nil for
    /// a family it has an address of, or that is off. Such a device still masquerades its other
    /// family; pod packets of this one that would need masquerading are dropped, never sent
    /// with the pod's address.
    public func missingSNATAddress(_ device: Device) -> (ipv4: String?, ipv6: String?) {
        let dropped = "pod packets that need masquerading are dropped (\(DropReason(DROP_NO_SNAT_ADDRESS).label))"
        return (ipv4Enabled && device.snatV4 == nil ? "no usable IPv4 address: \(dropped)" : nil,
                ipv6Enabled && device.snatV6 == nil
                    ? "no usable global IPv6 address: \(dropped)"
                    : nil)
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
