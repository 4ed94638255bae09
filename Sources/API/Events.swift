import Foundation

/// One line of `GET /v1/events`: something that happened to a flow, as it happened. Which
/// fields are present depends on `type`; unknown fields are to be ignored.
public struct FlowEvent: Codable, Sendable, Equatable {
    public enum EventType: String, OpenStringEnum, CaseIterable {
        /// A flow was created (the datapath): `original`, `translated`, `keptPort`, `candidates`.
        case new
        /// A new flow got no mapping (the datapath): `reason`, `candidates`.
        case allocationFailed = "allocation_failed"
        /// A packet was dropped for a NAT reason (the datapath): `reason`, `direction`; the
        /// tuple is the packet's own.
        case drop
        /// The GC expired an idle flow: `state` it was idle in.
        case expired
        /// Deleted through the API (`DELETE /v1/conntrack`).
        case deleted
        /// The GC removed a lone half of a flow (its partner gone or another flow's).
        case repaired
        /// This many events were lost here: the subscriber read slower than they came (`count`).
        case lost
        /// Nothing happened for a while; sent so an idle stream stays open. Skip it.
        case heartbeat
        case unknown

        /// The types a `types` filter may name (`lost` and `heartbeat` always come).
        public static let filterable: [EventType] = [.new, .allocationFailed, .drop, .expired, .deleted, .repaired]
    }

    public enum Direction: String, OpenStringEnum {
        case egress, ingress
        case unknown
    }

    public var type: EventType
    public var time: Date?
    public var family: IPFamily?
    public var proto: L4Protocol?
    public var kind: ConntrackEntry.Kind?
    /// The tuple as the pod (or host) sent it; for `drop`, as the packet had it.
    public var original: FlowTuple?
    /// The tuple as it leaves the device (`new`, `expired`, `deleted`, `repaired` of translated flows).
    public var translated: FlowTuple?
    /// The masquerading device (its name in masqd's namespace, if it still exists).
    public var device: String?
    public var ifindex: UInt32?
    /// `new`: whether the flow kept its original source port.
    public var keptPort: Bool?
    /// `new`, `allocation_failed`: port candidates tried.
    public var candidates: Int?
    /// `allocation_failed`, `drop`: the drop reason's label (as in `masq_drops_total`).
    public var reason: String?
    /// `drop`: whether the packet was leaving or arriving.
    public var direction: Direction?
    /// `expired`: the state the flow was idle in.
    public var state: FlowState?
    /// `lost`: how many events were lost.
    public var count: Int?

    private enum CodingKeys: String, CodingKey {
        case type, time, family, proto = "protocol", kind, original, translated, device, ifindex, keptPort
        case candidates, reason, direction, state, count
    }

    public init(type: EventType, time: Date? = nil, family: IPFamily? = nil, proto: L4Protocol? = nil,
                kind: ConntrackEntry.Kind? = nil, original: FlowTuple? = nil, translated: FlowTuple? = nil,
                device: String? = nil, ifindex: UInt32? = nil, keptPort: Bool? = nil, candidates: Int? = nil,
                reason: String? = nil, direction: Direction? = nil, state: FlowState? = nil, count: Int? = nil) {
        self.type = type
        self.time = time
        self.family = family
        self.proto = proto
        self.kind = kind
        self.original = original
        self.translated = translated
        self.device = device
        self.ifindex = ifindex
        self.keptPort = keptPort
        self.candidates = candidates
        self.reason = reason
        self.direction = direction
        self.state = state
        self.count = count
    }
}

/// `GET /v1/events`: the conntrack filters (on the original tuple) and which types to send.
public struct EventsQuery: Sendable, Equatable {
    public var filter: ConntrackFilter
    /// nil: every type.
    public var types: Set<FlowEvent.EventType>?
    /// End the stream after this many seconds (nil: when the client goes).
    public var timeout: Int?

    public static let parameterNames = ConntrackFilter.parameterNames + ["types", "timeout"]
    public static let maxTimeout = 86_400

    public init(filter: ConntrackFilter = ConntrackFilter(), types: Set<FlowEvent.EventType>? = nil, timeout: Int? = nil) {
        self.filter = filter
        self.types = types
        self.timeout = timeout
    }

    public init(query: QueryParameters) throws(APIError) {
        filter = try ConntrackFilter(query: query)
        let names = FlowEvent.EventType.filterable.map(\.rawValue).joined(separator: ", ")
        types = try query.value("types", expecting: "a comma-separated list of \(names)") { text in
            let types = text.split(separator: ",", omittingEmptySubsequences: false).map { FlowEvent.EventType(rawValue: $0.lowercased()) }
            guard !types.isEmpty, types.allSatisfy({ $0.map(FlowEvent.EventType.filterable.contains) ?? false }) else { return nil }
            return Set(types.compactMap { $0 })
        }
        timeout = try query.integer("timeout", in: 1...Self.maxTimeout, expecting: "seconds, 1-\(Self.maxTimeout)")
    }

    /// Whether an event of this type and tuple is sent.
    public func matches(type: FlowEvent.EventType, family: IPFamily, proto: L4Protocol, original: FlowTuple) -> Bool {
        if let types, !types.contains(type) { return false }
        return filter.matches(family: family, proto: proto, original: original)
    }

    public var queryItems: [(String, String)] {
        var items = filter.queryItems
        if let types {
            items.append(("types", FlowEvent.EventType.filterable.filter(types.contains).map(\.rawValue).joined(separator: ",")))
        }
        if let timeout { items.append(("timeout", String(timeout))) }
        return items
    }
}
