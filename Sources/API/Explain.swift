/// `GET /v1/explain`: the packet asked about.
public struct ExplainQuery: Sendable, Equatable {
    public var src: IPAddress
    public var dst: IPAddress
    public var proto: L4Protocol
    /// Source port (ICMP echo: the id); 0 when not given.
    public var sport: UInt16
    public var dport: UInt16
    /// The device the packet leaves through; nil: the daemon's route lookup decides.
    public var device: String?

    public static let parameterNames = ["src", "dst", "proto", "sport", "dport", "device"]

    public init(src: IPAddress, dst: IPAddress, proto: L4Protocol = .tcp, sport: UInt16 = 0, dport: UInt16 = 0,
                device: String? = nil) {
        self.src = src
        self.dst = dst
        self.proto = proto
        self.sport = sport
        self.dport = dport
        self.device = device
    }

    public init(query: QueryParameters) throws(APIError) {
        guard let src = try query.address("src") else { throw .badRequest("src: required (the packet's source address)") }
        guard let dst = try query.address("dst") else { throw .badRequest("dst: required (the packet's destination address)") }
        guard src.bitWidth == dst.bitWidth else { throw .badRequest("dst: '\(dst)' is not of the same family as src '\(src)'") }
        self.src = src
        self.dst = dst
        proto = try query.value("proto", expecting: "tcp, udp, icmp or icmpv6") {
            L4Protocol(rawValue: $0.lowercased()).flatMap { $0 == .unknown ? nil : $0 }
        } ?? .tcp
        sport = try query.port("sport") ?? 0
        dport = try query.port("dport") ?? 0
        device = query["device"]
        if let device, device.isEmpty { throw .badRequest("device: must not be empty (omit it to use the route lookup)") }
    }

    public var queryItems: [(String, String)] {
        var items = [("src", src.description), ("dst", dst.description), ("proto", proto.rawValue),
                     ("sport", String(sport)), ("dport", String(dport))]
        if let device { items.append(("device", device)) }
        return items
    }
}

/// `GET /v1/explain`: what the datapath does with such a packet, and the rule that decides it.
public struct ExplainResponse: Codable, Sendable, Equatable {
    /// The rules, in the order the datapath applies them; the first that applies decides.
    public enum Rule: String, OpenStringEnum, CaseIterable {
        /// The packet leaves through a device that does not run masq's programs.
        case notMasqueradingDevice = "not-masquerading-device"
        /// The device has no SNAT address of the packet's family.
        case noSNATAddress = "no-snat-address"
        /// The packet's family is not masqueraded (enable-ipv4/ipv6-masquerade is off).
        case familyDisabled = "family-disabled"
        /// IPv6: the source or destination is link-local or multicast (neighbour discovery,
        /// router and multicast listener messages): never translated.
        case linkScoped = "link-scoped"
        /// The source is the device's own SNAT address: the node's flow is tracked (so no pod
        /// flow takes its tuple) and keeps its source unless a pod mapping already holds it.
        case hostFlow = "host-flow"
        /// The source is not inside any pod CIDR.
        case podCIDRMiss = "pod-cidr-miss"
        /// Exclusion 1: the destination is inside the native-routing CIDR.
        case nativeRoutingCIDR = "native-routing-cidr"
        /// Exclusion 1 without a native-routing CIDR: the destination is inside the pod CIDRs.
        case podCIDRDestination = "pod-cidr-destination"
        /// Exclusion 2: the destination is in the non-masquerade list.
        case nonMasqueradeCIDR = "non-masquerade-cidr"
        /// Exclusion 3: the destination is a cluster node.
        case clusterNode = "cluster-node"
        /// The protocol is not translated (passes untouched).
        case protocolNotTranslated = "protocol-not-translated"
        /// Exclusion 4: the packet is a reply of a connection that came in to the pod.
        case inboundReply = "inbound-reply"
        /// Masqueraded: leaves with the device's address.
        case masquerade = "masquerade"
        case unknown = "unknown"
    }

    public var masquerade: Bool
    public var rule: Rule
    /// The CIDR that decided (pod-cidr, native-routing or non-masquerade rules).
    public var cidr: IPPrefix?
    /// The device the packet leaves through.
    public var device: String?
    /// The address the packet leaves with when masqueraded.
    public var snatAddress: IPAddress?
    /// The translated source port of an existing flow with this tuple (nil: no such flow yet;
    /// a new flow keeps its port when free inside snat-port-range).
    public var snatPort: UInt16?
    /// One sentence saying why.
    public var reason: String

    public init(masquerade: Bool, rule: Rule, cidr: IPPrefix? = nil, device: String? = nil,
                snatAddress: IPAddress? = nil, snatPort: UInt16? = nil, reason: String) {
        self.masquerade = masquerade
        self.rule = rule
        self.cidr = cidr
        self.device = device
        self.snatAddress = snatAddress
        self.snatPort = snatPort
        self.reason = reason
    }
}
