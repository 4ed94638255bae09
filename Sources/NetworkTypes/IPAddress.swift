#if canImport(Glibc)
@preconcurrency import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// An IPv4 address; `bytes` in network order.
public struct IPv4Address: Hashable, Sendable, Comparable, CustomStringConvertible {
    public var bytes: (UInt8, UInt8, UInt8, UInt8)

    public init(_ b0: UInt8, _ b1: UInt8, _ b2: UInt8, _ b3: UInt8) {
        bytes = (b0, b1, b2, b3)
    }

    /// From the 32-bit value in host order (10.0.0.1 is 0x0a000001).
    public init(hostOrder value: UInt32) {
        bytes = (UInt8(value >> 24), UInt8((value >> 16) & 0xff), UInt8((value >> 8) & 0xff), UInt8(value & 0xff))
    }

    /// From the 32-bit value as it sits in a network-order field read on this host.
    public init(networkOrder value: UInt32) {
        self.init(hostOrder: UInt32(bigEndian: value))
    }

    /// Dotted-quad only; nil for anything else.
    public init?(_ text: String) {
        var addr = in_addr()
        // inet_pton reads a C string: it would stop at a NUL and accept what came before.
        guard !text.utf8.contains(0), inet_pton(AF_INET, text, &addr) == 1 else { return nil }
        self.init(networkOrder: addr.s_addr)
    }

    public var hostOrder: UInt32 {
        UInt32(bytes.0) << 24 | UInt32(bytes.1) << 16 | UInt32(bytes.2) << 8 | UInt32(bytes.3)
    }

    /// The value to store in a network-order (`__be32`) field.
    public var networkOrder: UInt32 { hostOrder.bigEndian }

    public var description: String { "\(bytes.0).\(bytes.1).\(bytes.2).\(bytes.3)" }

    public static func == (a: Self, b: Self) -> Bool { a.hostOrder == b.hostOrder }
    public static func < (a: Self, b: Self) -> Bool { a.hostOrder < b.hostOrder }
    public func hash(into hasher: inout Hasher) { hasher.combine(hostOrder) }
}

/// An IPv6 address; 16 bytes in network order.
public struct IPv6Address: Hashable, Sendable, Comparable, CustomStringConvertible {
    public var bytes: [UInt8]

    public init(bytes: [UInt8]) {
        precondition(bytes.count == 16, "an IPv6 address has 16 bytes")
        self.bytes = bytes
    }

    public init?(_ text: String) {
        var addr = in6_addr()
        guard !text.utf8.contains(0), inet_pton(AF_INET6, text, &addr) == 1 else { return nil }
        bytes = withUnsafeBytes(of: &addr) { Array($0) }
    }

    public var description: String {
        var addr = in6_addr()
        withUnsafeMutableBytes(of: &addr) { $0.copyBytes(from: bytes) }
        var buf = [CChar](repeating: 0, count: Int(INET6_ADDRSTRLEN))
        guard inet_ntop(AF_INET6, &addr, &buf, socklen_t(buf.count)) != nil else { return "::" }
        return String(decoding: buf.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }

    public static func < (a: Self, b: Self) -> Bool { a.bytes.lexicographicallyPrecedes(b.bytes) }

    /// Global unicast (2000::/3), as opposed to a ULA (fc00::/7) or other global-scope space.
    public var isGlobalUnicast: Bool { bytes[0] & 0xe0 == 0x20 }
}

/// An IPv4 or IPv6 address.
public enum IPAddress: Hashable, Sendable, Comparable, CustomStringConvertible {
    case v4(IPv4Address)
    case v6(IPv6Address)

    public init?(_ text: String) {
        if let a = IPv4Address(text) {
            self = .v4(a)
        } else if let a = IPv6Address(text) {
            self = .v6(a)
        } else {
            return nil
        }
    }

    public var description: String {
        switch self {
        case .v4(let a): return a.description
        case .v6(let a): return a.description
        }
    }
}

/// Why a CIDR did not parse.
public enum PrefixError: Error, Equatable, CustomStringConvertible {
    case malformed(String)
    case hostBitsSet(String, canonical: String)

    public var description: String {
        switch self {
        case .malformed(let text):
            return "'\(text)' is not a CIDR (expected ADDRESS/LENGTH, e.g. 10.0.0.0/8 or fd00::/64)"
        case .hostBitsSet(let text, let canonical):
            return "'\(text)' has host bits set (did you mean \(canonical)?)"
        }
    }
}

/// A CIDR prefix of either family, always canonical (no host bits set).
public struct IPPrefix: Hashable, Sendable, Comparable, CustomStringConvertible {
    public let address: IPAddress
    public let length: Int

    /// Parses "ADDRESS/LENGTH". A bare address is a host prefix (/32, /128). Host bits set is
    /// an error (as in ip-masq-agent).
    public init(_ text: String) throws(PrefixError) {
        let parts = text.split(separator: "/", omittingEmptySubsequences: false)
        guard parts.count <= 2, let address = IPAddress(String(parts[0])) else {
            throw .malformed(text)
        }
        let maxLength = address.bitWidth
        var length = maxLength
        if parts.count == 2 {
            // Decimal digits only: Int alone would take "+8" and "-0".
            guard parts[1].utf8.allSatisfy({ (0x30...0x39).contains($0) }), let l = Int(parts[1]), (0...maxLength).contains(l) else {
                throw .malformed(text)
            }
            length = l
        }
        let canonical = IPPrefix(unchecked: address, length: length)
        if canonical.address != address {
            throw .hostBitsSet(text, canonical: canonical.description)
        }
        self = canonical
    }

    /// Masks `address` to `length` bits.
    public init(unchecked address: IPAddress, length: Int) {
        self.length = length
        switch address {
        case .v4(let a):
            let mask: UInt32 = length == 0 ? 0 : ~UInt32(0) << (32 - length)
            self.address = .v4(IPv4Address(hostOrder: a.hostOrder & mask))
        case .v6(let a):
            var bytes = a.bytes
            for i in 0..<16 {
                let bits = max(0, min(8, length - i * 8))
                bytes[i] &= bits == 0 ? 0 : UInt8(truncatingIfNeeded: 0xff << (8 - bits))
            }
            self.address = .v6(IPv6Address(bytes: bytes))
        }
    }

    public var isIPv4: Bool {
        if case .v4 = address { return true }
        return false
    }

    /// Whether `other` lies inside this prefix.
    public func contains(_ other: IPAddress) -> Bool {
        guard other.bitWidth == address.bitWidth else { return false }
        return IPPrefix(unchecked: other, length: length).address == address
    }

    public var description: String { "\(address)/\(length)" }

    public static func < (a: Self, b: Self) -> Bool {
        (a.address, a.length) < (b.address, b.length)
    }
}

extension IPAddress {
    /// 32 or 128.
    public var bitWidth: Int {
        switch self {
        case .v4: return 32
        case .v6: return 128
        }
    }
}
