@preconcurrency import Glibc
import API

/// Which device the kernel routes a destination through: one RTM_GETROUTE request on a
/// NETLINK_ROUTE socket, in the daemon's network namespace. Used by `/v1/explain` when the
/// caller names no device.
enum RouteLookup {
    // From linux/netlink.h and linux/rtnetlink.h (stable kernel ABI).
    private static let netlinkRoute: Int32 = 0
    private static let sockRaw: Int32 = 3
    private static let sockCloexec: Int32 = 0o2000000
    private static let rtmGetRoute: UInt16 = 26
    private static let nlmFRequest: UInt16 = 1
    private static let nlmsgError: UInt16 = 2
    private static let rtaDst: UInt16 = 1
    private static let rtaOif: UInt16 = 4
    private static let nlmsghdrSize = 16
    private static let rtmsgSize = 12

    /// The ifindex of the output device for `destination`, or nil when there is no route.
    static func outputInterface(for destination: IPAddress) -> UInt32? {
        let fd = socket(AF_NETLINK, sockRaw | sockCloexec, netlinkRoute)
        guard fd >= 0 else { return nil }
        defer { close(fd) }
        var timeout = timeval(tv_sec: 1, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))

        let (family, addressBytes): (UInt8, [UInt8]) = switch destination {
        case .v4(let a): (UInt8(AF_INET), [a.bytes.0, a.bytes.1, a.bytes.2, a.bytes.3])
        case .v6(let a): (UInt8(AF_INET6), a.bytes)
        }
        let attributeLength = 4 + addressBytes.count
        let total = nlmsghdrSize + rtmsgSize + attributeLength
        var message = [UInt8](repeating: 0, count: total)
        func put16(_ value: UInt16, at offset: Int) {
            withUnsafeBytes(of: value.littleEndian) { message.replaceSubrange(offset..<offset + 2, with: $0) }
        }
        func put32(_ value: UInt32, at offset: Int) {
            withUnsafeBytes(of: value.littleEndian) { message.replaceSubrange(offset..<offset + 4, with: $0) }
        }
        // nlmsghdr: len, type, flags, seq, pid (host order; this is an x86/arm little-endian host).
        put32(UInt32(total), at: 0)
        put16(rtmGetRoute, at: 4)
        put16(nlmFRequest, at: 6)
        put32(1, at: 8)
        // rtmsg: family, dst_len, src_len, tos, table, protocol, scope, type, flags.
        message[nlmsghdrSize] = family
        message[nlmsghdrSize + 1] = UInt8(addressBytes.count * 8)
        // rtattr RTA_DST.
        let attr = nlmsghdrSize + rtmsgSize
        put16(UInt16(attributeLength), at: attr)
        put16(rtaDst, at: attr + 2)
        message.replaceSubrange(attr + 4..<attr + 4 + addressBytes.count, with: addressBytes)

        guard send(fd, message, message.count, 0) == message.count else { return nil }
        var reply = [UInt8](repeating: 0, count: 8192)
        let n = recv(fd, &reply, reply.count, 0)
        guard n >= nlmsghdrSize + rtmsgSize else { return nil }
        func get16(_ offset: Int) -> UInt16 { UInt16(reply[offset]) | UInt16(reply[offset + 1]) << 8 }
        func get32(_ offset: Int) -> UInt32 {
            UInt32(reply[offset]) | UInt32(reply[offset + 1]) << 8 | UInt32(reply[offset + 2]) << 16 | UInt32(reply[offset + 3]) << 24
        }
        guard get16(4) != nlmsgError else { return nil }
        let messageLength = min(Int(get32(0)), n)
        var offset = nlmsghdrSize + rtmsgSize
        while offset + 4 <= messageLength {
            let length = Int(get16(offset))
            guard length >= 4 else { break }
            if get16(offset + 2) == rtaOif, length >= 8 { return get32(offset + 4) }
            offset += (length + 3) & ~3
        }
        return nil
    }

    /// The name of `ifindex` in this namespace.
    static func name(of ifindex: UInt32) -> String? {
        var buffer = [CChar](repeating: 0, count: Int(IF_NAMESIZE) + 1)
        guard if_indextoname(ifindex, &buffer) != nil else { return nil }
        return String(decoding: buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }
}
