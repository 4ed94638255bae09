import API
import CMasq

/// How long a flow lives without packets, by protocol and state, like netfilter's conntrack
/// (Cilium's defaults where they differ). The one definition of flow lifetimes: the
/// `conntrack-*-timeout` config keys set it, the GC (`ConntrackGC`) expires flows by it, and
/// `/v1/conntrack` reports the time to expiry with it.
///
/// A flow's state comes from the `MASQ_SEEN_*` bits of both its entries (the datapath sets them
/// per packet, and restarts them when a handshake reuses a closed tuple); its idle time from the
/// later `last_seen` of the two.
public struct FlowLifetimes: Sendable, Equatable {
    /// TCP after the SYN, before the SYN-ACK (netfilter SYN_SENT: 120 s; Cilium: 60 s). Seconds.
    public var tcpSynSent: Double = 60
    /// TCP once the handshake completed, or picked up mid-stream (netfilter: 5 days;
    /// Cilium: 6 hours). Seconds.
    public var tcpEstablished: Double = 21_600
    /// TCP after a FIN or RST (netfilter FIN_WAIT/CLOSE: 10-120 s; Cilium: 10 s). Seconds.
    public var tcpClosing: Double = 10
    /// UDP before any reply (netfilter: 30 s). Seconds.
    public var udpUnreplied: Double = 30
    /// UDP once replies were seen (netfilter's "stream" timeout: 120 s). Seconds.
    public var udpReplied: Double = 120
    /// ICMP echo (netfilter: 30 s). Seconds.
    public var icmp: Double = 30

    public init() {}

    public static let `default` = FlowLifetimes()

    /// A flow's state name from the TCP flags and replies seen (MASQ_SEEN_*, either direction).
    /// TCP: "closing" once a FIN or RST was seen; "established" once the SYN-ACK was seen, or
    /// when no SYN was ever seen (a flow picked up mid-stream, after a table loss: netfilter's
    /// loose pickup); "syn-sent" otherwise. UDP and ICMP: "replied" or "unreplied".
    public static func state(proto: L4Protocol, seen: UInt8) -> String {
        let syn = UInt8(MASQ_SEEN_SYN), synack = UInt8(MASQ_SEEN_SYNACK), fin = UInt8(MASQ_SEEN_FIN),
            rst = UInt8(MASQ_SEEN_RST), reply = UInt8(MASQ_SEEN_REPLY)
        switch proto {
        case .tcp:
            if seen & (fin | rst) != 0 { return "closing" }
            if seen & synack != 0 || seen & syn == 0 { return "established" }
            return "syn-sent"
        default:
            return seen & reply != 0 ? "replied" : "unreplied"
        }
    }

    /// Seconds a flow in `state` lives after its last packet.
    public func lifetime(proto: L4Protocol, state: String) -> Double {
        switch (proto, state) {
        case (.tcp, "closing"): return tcpClosing
        case (.tcp, "established"): return tcpEstablished
        case (.tcp, _): return tcpSynSent
        case (.udp, "replied"): return udpReplied
        case (.udp, _): return udpUnreplied
        default: return icmp
        }
    }

    /// Seconds a flow with these seen bits lives after its last packet.
    public func lifetime(proto: L4Protocol, seen: UInt8) -> Double {
        lifetime(proto: proto, state: Self.state(proto: proto, seen: seen))
    }

    /// Nanoseconds (CLOCK_BOOTTIME) a flow with these seen bits lives after its last packet.
    func lifetimeNanoseconds(proto: UInt8, seen: UInt8) -> UInt64 {
        UInt64(lifetime(proto: L4Protocol(number: proto), seen: seen) * 1e9)
    }

    /// Whether a flow last seen at `lastSeen` has outlived its lifetime at `now` (both
    /// CLOCK_BOOTTIME ns).
    func isExpired(proto: UInt8, seen: UInt8, lastSeen: UInt64, now: UInt64) -> Bool {
        now > lastSeen && now - lastSeen > lifetimeNanoseconds(proto: proto, seen: seen)
    }
}
