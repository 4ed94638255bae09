/// An address family.
public enum IPFamily: String, OpenStringEnum, CaseIterable {
    case ipv4, ipv6
    case unknown
}

extension IPAddress {
    /// The family of an address.
    public var family: IPFamily {
        if case .v4 = self { return .ipv4 }
        return .ipv6
    }
}

/// One direction's addresses and ports. For ICMP echo the id is `sport` and `dport` is 0.
public struct FlowTuple: Codable, Sendable, Equatable {
    public var src: IPAddress
    public var sport: UInt16
    public var dst: IPAddress
    public var dport: UInt16

    public init(src: IPAddress, sport: UInt16, dst: IPAddress, dport: UInt16) {
        self.src = src
        self.sport = sport
        self.dst = dst
        self.dport = dport
    }
}

/// Packet and byte counts of one direction.
public struct FlowCounters: Codable, Sendable, Equatable {
    public var packets: UInt64
    public var bytes: UInt64

    public init(packets: UInt64, bytes: UInt64) {
        self.packets = packets
        self.bytes = bytes
    }
}

/// One tracked flow of the NAT table (`GET /v1/conntrack`).
public struct ConntrackEntry: Codable, Sendable, Equatable {
    /// What the datapath does with the flow.
    public enum Kind: String, OpenStringEnum {
        /// A pod's flow, leaving with the node's address.
        case masquerade
        /// The node's own flow, tracked so that no pod flow takes its tuple.
        case host
        /// A flow that came in to a pod: its replies leave untranslated (exclusion 4).
        case inbound
        case unknown
    }

    public var family: IPFamily
    public var proto: L4Protocol
    public var kind: Kind
    /// The tuple as the pod (or host) sent it.
    public var original: FlowTuple
    /// The tuple as it leaves the device.
    public var translated: FlowTuple
    public var state: FlowState
    public var ageSeconds: Double
    /// Seconds until the flow expires if no packet comes; 0 when already due for collection.
    public var expiresInSeconds: Double
    /// Counters of the original direction and of the replies.
    public var originalCounters: FlowCounters
    public var replyCounters: FlowCounters?
    /// The masquerading device of the flow (its name in the daemon's namespace, if it still exists).
    public var device: String?
    public var ifindex: UInt32

    private enum CodingKeys: String, CodingKey {
        case family, proto = "protocol", kind, original, translated, state, ageSeconds, expiresInSeconds
        case originalCounters, replyCounters, device, ifindex
    }

    public init(family: IPFamily, proto: L4Protocol, kind: Kind, original: FlowTuple, translated: FlowTuple,
                state: FlowState, ageSeconds: Double, expiresInSeconds: Double, originalCounters: FlowCounters,
                replyCounters: FlowCounters?, device: String?, ifindex: UInt32) {
        self.family = family
        self.proto = proto
        self.kind = kind
        self.original = original
        self.translated = translated
        self.state = state
        self.ageSeconds = ageSeconds
        self.expiresInSeconds = expiresInSeconds
        self.originalCounters = originalCounters
        self.replyCounters = replyCounters
        self.device = device
        self.ifindex = ifindex
    }
}

/// `GET /v1/conntrack` as JSON: one page of entries and where the next page starts.
public struct ConntrackPage: Codable, Sendable, Equatable {
    public var entries: [ConntrackEntry]
    /// Pass as `cursor` to get the next page; nil on the last page.
    public var nextCursor: String?

    public init(entries: [ConntrackEntry], nextCursor: String?) {
        self.entries = entries
        self.nextCursor = nextCursor
    }
}

/// `DELETE /v1/conntrack`.
public struct ConntrackDeleteResponse: Codable, Sendable, Equatable {
    /// The number of flows removed (a flow's pair of NAT entries counts once).
    public var deleted: Int

    public init(deleted: Int) {
        self.deleted = deleted
    }
}

/// The conntrack filters, shared by `GET` and `DELETE /v1/conntrack`. Every filter given must
/// match; none given matches every flow. Filters apply to the original tuple (as the pod sent it).
public struct ConntrackFilter: Sendable, Equatable {
    public var family: IPFamily?
    public var proto: L4Protocol?
    /// An address is a /32 (/128) prefix.
    public var src: IPPrefix?
    public var dst: IPPrefix?
    public var sport: UInt16?
    public var dport: UInt16?

    public init(family: IPFamily? = nil, proto: L4Protocol? = nil, src: IPPrefix? = nil, dst: IPPrefix? = nil,
                sport: UInt16? = nil, dport: UInt16? = nil) {
        self.family = family
        self.proto = proto
        self.src = src
        self.dst = dst
        self.sport = sport
        self.dport = dport
    }

    public static let parameterNames = ["family", "proto", "src", "dst", "sport", "dport"]

    public var isEmpty: Bool { self == ConntrackFilter() }

    /// Whether a flow with this original tuple passes every filter given.
    public func matches(family: IPFamily, proto: L4Protocol, original: FlowTuple) -> Bool {
        if let f = self.family, f != family { return false }
        if let p = self.proto, p != proto { return false }
        if let s = src, !s.contains(original.src) { return false }
        if let d = dst, !d.contains(original.dst) { return false }
        if let p = sport, p != original.sport { return false }
        if let p = dport, p != original.dport { return false }
        return true
    }

    /// Reads the filters from query parameters; a bad value is a 400 naming the parameter.
    public init(query: QueryParameters) throws(APIError) {
        family = try query.value("family", expecting: "ipv4 or ipv6") {
            IPFamily(rawValue: $0.lowercased()).flatMap { $0 == .unknown ? nil : $0 }
        }
        proto = try query.value("proto", expecting: "tcp, udp, icmp or icmpv6") {
            L4Protocol(rawValue: $0.lowercased()).flatMap { $0 == .unknown ? nil : $0 }
        }
        src = try query.prefix("src")
        dst = try query.prefix("dst")
        sport = try query.port("sport")
        dport = try query.port("dport")
    }

    /// The query parameters these filters are sent as.
    public var queryItems: [(String, String)] {
        var items: [(String, String)] = []
        if let family { items.append(("family", family.rawValue)) }
        if let proto { items.append(("proto", proto.rawValue)) }
        if let src { items.append(("src", src.description)) }
        if let dst { items.append(("dst", dst.description)) }
        if let sport { items.append(("sport", String(sport))) }
        if let dport { items.append(("dport", String(dport))) }
        return items
    }
}

/// Paging of `GET /v1/conntrack`.
public struct ConntrackPaging: Sendable, Equatable {
    /// At most this many entries (JSON: one page; NDJSON: the stream stops after them).
    public var limit: Int?
    /// Where to continue: the `nextCursor` of the previous page.
    public var cursor: String?

    public static let parameterNames = ["limit", "cursor"]
    /// JSON pages hold at most this many entries; NDJSON streams are unbounded.
    public static let maxPageSize = 10_000
    public static let defaultPageSize = 1_000

    public init(limit: Int? = nil, cursor: String? = nil) {
        self.limit = limit
        self.cursor = cursor
    }

    public init(query: QueryParameters) throws(APIError) {
        limit = try query.integer("limit", in: 1...Int.max, expecting: "a positive integer")
        cursor = query["cursor"]
        if let cursor, cursor.isEmpty { throw .badRequest("cursor: must not be empty (omit it for the first page)") }
    }
}
