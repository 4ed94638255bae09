@preconcurrency import Glibc
import CLibbpf
import CMasq
import NetworkTypes

/// Something that happened to a flow: reported by the datapath (masq_events: created, allocation
/// failed, dropped) or by masqd itself (expired or repaired by the GC, deleted through the API).
public struct NATEvent: Sendable, Equatable {
    public enum Kind: Sendable, Equatable {
        /// A flow was created, keeping its source port or not, after trying `candidates` ports.
        case created(keptPort: Bool, candidates: Int)
        /// A new flow got no mapping.
        case allocationFailed(DropReason, candidates: Int)
        /// A packet was dropped, leaving (`egress`) or arriving.
        case dropped(DropReason, egress: Bool)
        /// The GC expired the flow, idle in `state` for its lifetime.
        case expired(FlowState)
        /// The GC removed a lone half (its partner gone, or another flow's).
        case repaired
        /// Deleted through the API (`DELETE /v1/conntrack`).
        case deleted
    }

    /// Which flows a flow is, as the entry flags say.
    public enum FlowKind: Sendable, Equatable {
        case masquerade, host, inbound
    }

    public var kind: Kind
    /// CLOCK_BOOTTIME ns (`NATEntries.bootTimeNow`).
    public var time: UInt64
    public var proto: L4Protocol
    public var flow: FlowKind
    /// The original tuple (as the pod sent it); for drops, the packet's own.
    public var src: IPAddress
    public var sport: UInt16
    public var dst: IPAddress
    public var dport: UInt16
    /// The source the flow leaves with; nil when unknown or not translated (inbound, drops).
    public var translatedSrc: IPAddress?
    public var translatedSport: UInt16
    public var ifindex: UInt32
}

extension NATEvent {
    /// The datapath's record; nil for a type or reason this build does not know.
    public init?(_ ev: masq_event) {
        let reason = DropReason.all.first { $0.code == UInt32(ev.reason) }
        switch Int32(ev.type) {
        case MASQ_EV_FLOW_NEW:
            kind = .created(keptPort: ev.flags & UInt8(MASQ_EV_F_KEPT_PORT) != 0, candidates: Int(ev.tries))
        case MASQ_EV_ALLOC_FAIL:
            guard let reason else { return nil }
            kind = .allocationFailed(reason, candidates: Int(ev.tries))
        case MASQ_EV_DROP:
            guard let reason else { return nil }
            kind = .dropped(reason, egress: ev.flags & UInt8(MASQ_EV_F_EGRESS) != 0)
        default:
            return nil
        }
        guard let src = Self.address(ev.saddr, family: ev.family), let dst = Self.address(ev.daddr, family: ev.family)
        else { return nil }
        time = ev.time
        proto = L4Protocol(number: ev.proto)
        flow = ev.flags & UInt8(MASQ_EV_F_INBOUND) != 0 ? .inbound
            : ev.flags & UInt8(MASQ_EV_F_HOST) != 0 ? .host : .masquerade
        self.src = src
        self.dst = dst
        sport = UInt16(bigEndian: ev.sport)
        dport = UInt16(bigEndian: ev.dport)
        translatedSrc = Int32(ev.type) == MASQ_EV_FLOW_NEW && flow != .inbound ? Self.address(ev.to_addr, family: ev.family) : nil
        translatedSport = UInt16(bigEndian: ev.to_port)
        ifindex = ev.ifindex
    }

    /// A flow masqd saw happen, from one of its NAT entries (either direction, either family).
    public init<Key: NATKey>(_ kind: Kind, key: Key, value: Key.Value, time: UInt64) {
        let t = NATEntries.tuples(key, value)
        let ct = value.ct
        self.kind = kind
        self.time = time
        proto = L4Protocol(number: key.proto)
        flow = ct.flags & UInt8(MASQ_NAT_F_INBOUND) != 0 ? .inbound
            : ct.flags & UInt8(MASQ_NAT_F_HOST) != 0 ? .host : .masquerade
        src = Key.ipAddress(t.src)
        sport = t.sport
        dst = Key.ipAddress(t.dst)
        dport = t.dport
        translatedSrc = flow == .inbound ? nil : Key.ipAddress(t.toAddr)
        translatedSport = t.toPort
        ifindex = ct.ifindex
    }

    private static func address(_ bytes: (UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8,
                                          UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8),
                                family: UInt8) -> IPAddress? {
        withUnsafeBytes(of: bytes) { raw in
            switch Int32(family) {
            case AF_INET: return .v4(IPv4Address(networkOrder: raw.loadUnaligned(as: UInt32.self)))
            case AF_INET6: return .v6(IPv6Address(bytes: Array(raw)))
            default: return nil
            }
        }
    }
}

/// Reads masq_events. Not Sendable: one thread owns it (libbpf's ring_buffer handle); the map
/// fd must stay open while it lives (the `Datapath`'s object owns it).
public final class NATEventReader {
    private let ring: OpaquePointer
    private let received: Received

    /// The records one poll consumed (the callback's context).
    private final class Received {
        var events: [NATEvent] = []
        var unknown = 0
    }

    public init(map: BPFMap) throws {
        let received = Received()
        let ctx = Unmanaged.passUnretained(received).toOpaque()
        guard let ring = ring_buffer__new(map.fd, { ctx, data, size in
            guard let ctx, let data, size >= MemoryLayout<masq_event>.size else { return 0 }
            let received = Unmanaged<Received>.fromOpaque(ctx).takeUnretainedValue()
            if let event = NATEvent(data.loadUnaligned(as: masq_event.self)) {
                received.events.append(event)
            } else {
                received.unknown += 1
            }
            return 0
        }, ctx, nil) else {
            throw BPFError("open ring buffer", "map \(map.name)", errno: errno)
        }
        self.ring = ring
        self.received = received
    }

    deinit {
        ring_buffer__free(ring)
    }

    /// Waits up to `timeoutMilliseconds` for the datapath to wake the reader (it does only when
    /// the ring fills up), then takes every record there is. Returns the events and how many
    /// records this build could not read.
    public func poll(timeoutMilliseconds: Int32) throws -> (events: [NATEvent], unknown: Int) {
        let polled = ring_buffer__poll(ring, timeoutMilliseconds)
        if polled < 0 && polled != -EINTR { throw BPFError("poll", "ring buffer \(MASQ_MAP_EVENTS)", errno: -polled) }
        let consumed = ring_buffer__consume(ring)
        if consumed < 0 { throw BPFError("consume", "ring buffer \(MASQ_MAP_EVENTS)", errno: -consumed) }
        defer {
            received.events.removeAll(keepingCapacity: true)
            received.unknown = 0
        }
        return (received.events, received.unknown)
    }
}

extension Datapath {
    /// Reports events to masq_events (MASQ_CFG_EVENTS) or stops: set while someone listens.
    /// The switch is no exclusion input: flipping it leaves the config generation as it is.
    public func setEventsEnabled(_ enabled: Bool) throws {
        eventsEnabled = enabled
        try writeEventsSwitch()
    }
}
