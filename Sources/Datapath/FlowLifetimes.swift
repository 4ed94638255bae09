import NetworkTypes
import CMasq

/// How long a flow lives without packets, by protocol and state, like netfilter's conntrack
/// (Cilium's defaults where they differ). The one definition of flow lifetimes: the
/// `conntrack-*-timeout` config keys set it, the GC (`ConntrackGC`) expires flows by it, and
/// `/v1/conntrack` reports the time to expiry with it.
///
/// A TCP flow's state is the datapath's (`tcp_state`, moved per segment by `ct_tcp_next4`); a
/// UDP or ICMP flow's comes from whether a reply was seen (`MASQ_SEEN_REPLY`). Its idle time
/// is from the later `last_seen` of its two entries.
public struct FlowLifetimes: Sendable, Equatable {
    /// TCP until the handshake completes: SYN sent, or SYN-ACK seen without the last ACK
    /// (netfilter SYN_SENT: 120 s, SYN_RECV: 60 s; Cilium: 60 s). Seconds.
    public var tcpSynSent: Double = 60
    /// TCP once the handshake completed, or picked up mid-stream (netfilter: 5 days;
    /// Cilium: 6 hours). Seconds.
    public var tcpEstablished: Double = 21_600
    /// TCP after one side's FIN, before the other side answered (netfilter FIN_WAIT: 120 s).
    /// Seconds.
    public var tcpFinWait: Double = 120
    /// TCP after one side's FIN was answered while the other side may still send
    /// (netfilter CLOSE_WAIT: 60 s). Seconds.
    public var tcpCloseWait: Double = 60
    /// TCP once both sides sent a FIN, or after an in-window RST (Cilium: 10 s). Seconds.
    public var tcpClosing: Double = 10
    /// UDP before any reply (netfilter: 30 s). Seconds.
    public var udpUnreplied: Double = 30
    /// UDP once replies were seen (netfilter's "stream" timeout: 120 s). Seconds.
    public var udpReplied: Double = 120
    /// ICMP echo (netfilter: 30 s). Seconds.
    public var icmp: Double = 30

    public init() {}

    public static let `default` = FlowLifetimes()

    /// A flow's state from its datapath TCP state (`MASQ_TCP_*`, TCP only) and the seen bits
    /// of both its entries (`MASQ_SEEN_*`). A TCP flow without a state (carried over from a
    /// table without one, or picked up) counts as established, netfilter's loose pickup.
    public static func state(proto: L4Protocol, tcpState: UInt8, seen: UInt8) -> FlowState {
        switch proto {
        case .tcp:
            switch Int32(tcpState) {
            case MASQ_TCP_SYN_SENT: return .synSent
            case MASQ_TCP_SYN_RECV: return .synRecv
            case MASQ_TCP_FIN_WAIT: return .finWait
            case MASQ_TCP_CLOSE_WAIT: return .closeWait
            case MASQ_TCP_CLOSING: return .closing
            default: return .established
            }
        default:
            return seen & UInt8(MASQ_SEEN_REPLY) != 0 ? .replied : .unreplied
        }
    }

    /// Seconds a flow in `state` lives after its last packet.
    public func lifetime(proto: L4Protocol, state: FlowState) -> Double {
        switch (proto, state) {
        case (.tcp, .synSent), (.tcp, .synRecv): return tcpSynSent
        case (.tcp, .finWait): return tcpFinWait
        case (.tcp, .closeWait): return tcpCloseWait
        case (.tcp, .closing): return tcpClosing
        case (.tcp, _): return tcpEstablished
        case (.udp, .replied): return udpReplied
        case (.udp, _): return udpUnreplied
        default: return icmp
        }
    }

    /// Nanoseconds (CLOCK_BOOTTIME) a flow lives after its last packet.
    public func lifetimeNanoseconds(proto: UInt8, tcpState: UInt8, seen: UInt8) -> UInt64 {
        let l4 = L4Protocol(number: proto)
        return UInt64(lifetime(proto: l4, state: Self.state(proto: l4, tcpState: tcpState, seen: seen)) * 1e9)
    }

    /// Nanoseconds the shortest-lived flow of this protocol and TCP state lives, whatever its
    /// seen bits: what one entry alone can tell of its flow's lifetime when the other entry
    /// (which may hold the reply bit) is not at hand.
    public func shortestLifetimeNanoseconds(proto: UInt8, tcpState: UInt8) -> UInt64 {
        min(lifetimeNanoseconds(proto: proto, tcpState: tcpState, seen: 0),
            lifetimeNanoseconds(proto: proto, tcpState: tcpState, seen: UInt8(MASQ_SEEN_REPLY)))
    }

    /// Whether a flow last seen at `lastSeen` has outlived its lifetime at `now` (both
    /// CLOCK_BOOTTIME ns).
    public func isExpired(proto: UInt8, tcpState: UInt8, seen: UInt8, lastSeen: UInt64, now: UInt64) -> Bool {
        now > lastSeen && now - lastSeen > lifetimeNanoseconds(proto: proto, tcpState: tcpState, seen: seen)
    }
}
