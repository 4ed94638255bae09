/// A transport protocol the datapath translates.
public enum L4Protocol: String, OpenStringEnum, CaseIterable {
    case tcp, udp, icmp, icmpv6
    case unknown

    /// The IP protocol number.
    public var number: UInt8? {
        switch self {
        case .tcp: return 6
        case .udp: return 17
        case .icmp: return 1
        case .icmpv6: return 58
        case .unknown: return nil
        }
    }

    public init(number: UInt8) {
        self = Self.allCases.first { $0.number == number } ?? .unknown
    }
}
