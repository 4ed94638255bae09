/// `GET /v1/ports`: who holds the SNAT ports. Each translated flow holds one port of its
/// destination's (SNAT address, remote, remote port, protocol) tuple, whose ports are the
/// snat-port-range; a holder is one source (a pod, or the node for its own flows) towards one
/// remote port.
public struct PortsResponse: Codable, Sendable, Equatable {
    /// snat-port-range: the ports each tuple has.
    public struct PortRange: Codable, Sendable, Equatable {
        public var min: UInt16
        public var max: UInt16
        public var size: Int

        public init(min: UInt16, max: UInt16) {
            self.min = min
            self.max = max
            size = Int(max) - Int(min) + 1
        }
    }

    /// One source's ports towards one remote port.
    public struct Holder: Codable, Sendable, Equatable {
        public var family: IPFamily
        public var proto: L4Protocol
        /// The source as it sent the flows (a pod, or the node).
        public var src: IPAddress
        /// The remote and its port (ICMP echo: 0).
        public var dst: IPAddress
        public var dport: UInt16
        /// Ports held: its translated flows there.
        public var ports: Int
        /// ports / the range's size: how much of the tuple's port space this source takes (a
        /// node flow may keep a port outside the range, and counts too).
        public var rangeShare: Double

        private enum CodingKeys: String, CodingKey {
            case family, proto = "protocol", src, dst, dport, ports, rangeShare
        }

        public init(family: IPFamily, proto: L4Protocol, src: IPAddress, dst: IPAddress, dport: UInt16, ports: Int,
                    rangeShare: Double) {
            self.family = family
            self.proto = proto
            self.src = src
            self.dst = dst
            self.dport = dport
            self.ports = ports
            self.rangeShare = rangeShare
        }
    }

    public var portRange: PortRange
    /// Translated flows the filters took (each holds a port).
    public var flows: Int
    /// False when the table held more holders than masqd counts exactly: counts may fall short
    /// a little, and a small holder may be missing; the large ones are always there.
    public var exact: Bool
    /// The holders with the most ports, most first (at most `top`).
    public var holders: [Holder]

    public init(portRange: PortRange, flows: Int, exact: Bool, holders: [Holder]) {
        self.portRange = portRange
        self.flows = flows
        self.exact = exact
        self.holders = holders
    }
}

/// `GET /v1/ports`: the conntrack filters (on the original tuple) and how many holders to list.
public struct PortsQuery: Sendable, Equatable {
    public var filter: ConntrackFilter
    public var top: Int

    public static let parameterNames = ConntrackFilter.parameterNames + ["top"]
    public static let defaultTop = 20
    public static let maxTop = 10_000

    public init(filter: ConntrackFilter = ConntrackFilter(), top: Int = defaultTop) {
        self.filter = filter
        self.top = top
    }

    public init(query: QueryParameters) throws(APIError) {
        filter = try ConntrackFilter(query: query)
        top = try query.integer("top", in: 1...Self.maxTop, expecting: "a number of holders, 1-\(Self.maxTop)") ?? Self.defaultTop
    }

    public var queryItems: [(String, String)] {
        filter.queryItems + (top == Self.defaultTop ? [] : [("top", String(top))])
    }
}
