import API
import CMasq

/// How long a flow lives without packets, by protocol and state: netfilter's and Cilium's
/// defaults. `/v1/conntrack` reports the time to expiry with these; the GC expires by them.
public struct FlowLifetimes: Sendable, Equatable {
    /// TCP after the SYN, before the SYN-ACK. Seconds.
    public var tcpSynSent: Double = 60
    /// TCP once the handshake completed (Cilium: 6 hours). Seconds.
    public var tcpEstablished: Double = 21_600
    /// TCP after a FIN or RST. Seconds.
    public var tcpClosing: Double = 10
    /// UDP before any reply. Seconds.
    public var udpUnreplied: Double = 30
    /// UDP once replies were seen. Seconds.
    public var udpReplied: Double = 120
    /// ICMP echo. Seconds.
    public var icmp: Double = 30

    public init() {}

    public static let `default` = FlowLifetimes()

    /// A flow's state name from the TCP flags and replies seen (MASQ_SEEN_*, either direction).
    public static func state(proto: L4Protocol, seen: UInt8) -> String {
        let synack = UInt8(MASQ_SEEN_SYNACK), fin = UInt8(MASQ_SEEN_FIN), rst = UInt8(MASQ_SEEN_RST),
            reply = UInt8(MASQ_SEEN_REPLY)
        switch proto {
        case .tcp:
            if seen & (fin | rst) != 0 { return "closing" }
            if seen & synack != 0 { return "established" }
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
}
