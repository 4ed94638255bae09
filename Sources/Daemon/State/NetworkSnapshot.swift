@preconcurrency import Glibc
import API
import Foundation

/// What the node's network namespace looks like at one moment: its links with their addresses
/// and the devices that carry a default route. Read from the kernel; the desired state is a
/// pure function of this and the config.
public struct NetworkSnapshot: Equatable, Sendable {
    public struct Link: Equatable, Sendable {
        public var name: String
        public var index: UInt32
        public var isUp: Bool
        public var isLoopback: Bool
        /// IPv4 addresses in the kernel's order: the primary address first.
        public var ipv4: [IPv4Address]
        /// Global-scope IPv6 addresses (link-local ones are never a SNAT address).
        public var ipv6: [IPv6Address]

        public init(name: String, index: UInt32, isUp: Bool = true, isLoopback: Bool = false,
                    ipv4: [IPv4Address] = [], ipv6: [IPv6Address] = []) {
            self.name = name
            self.index = index
            self.isUp = isUp
            self.isLoopback = isLoopback
            self.ipv4 = ipv4
            self.ipv6 = ipv6
        }
    }

    public var links: [Link]
    /// Names of the devices that carry a default route, either family.
    public var defaultRouteDevices: Set<String>

    public init(links: [Link], defaultRouteDevices: Set<String>) {
        self.links = links
        self.defaultRouteDevices = defaultRouteDevices
    }

    /// Reads the links, addresses and default routes of the calling thread's network namespace.
    public static func read() throws -> NetworkSnapshot {
        var head: UnsafeMutablePointer<ifaddrs>?
        guard getifaddrs(&head) == 0 else {
            throw BPFError("read addresses", "getifaddrs", errno: errno)
        }
        defer { freeifaddrs(head) }

        var links: [String: Link] = [:]
        var order: [String] = []
        var cursor = head
        while let entry = cursor?.pointee {
            defer { cursor = entry.ifa_next }
            let name = String(cString: entry.ifa_name)
            if links[name] == nil {
                let index = if_nametoindex(entry.ifa_name)
                guard index != 0 else { continue }
                let flags = Int32(bitPattern: entry.ifa_flags)
                links[name] = Link(name: name, index: index,
                                   isUp: flags & Int32(IFF_UP) != 0,
                                   isLoopback: flags & Int32(IFF_LOOPBACK) != 0)
                order.append(name)
            }
            guard let sa = entry.ifa_addr else { continue }
            switch Int32(sa.pointee.sa_family) {
            case AF_INET:
                let sin = UnsafeRawPointer(sa).load(as: sockaddr_in.self)
                links[name]?.ipv4.append(IPv4Address(networkOrder: sin.sin_addr.s_addr))
            case AF_INET6:
                let sin6 = UnsafeRawPointer(sa).load(as: sockaddr_in6.self)
                let bytes = withUnsafeBytes(of: sin6.sin6_addr) { Array($0) }
                // fe80::/10 is link-local; only global addresses can be SNAT addresses.
                if !(bytes[0] == 0xfe && bytes[1] & 0xc0 == 0x80) {
                    links[name]?.ipv6.append(IPv6Address(bytes: bytes))
                }
            default:
                break
            }
        }
        return NetworkSnapshot(
            links: order.compactMap { links[$0] },
            defaultRouteDevices: defaultRouteDevices(
                ipv4Routes: (try? String(contentsOfFile: "/proc/net/route", encoding: .utf8)) ?? "",
                ipv6Routes: (try? String(contentsOfFile: "/proc/net/ipv6_route", encoding: .utf8)) ?? ""))
    }

    /// The devices of the default routes in /proc/net/route and /proc/net/ipv6_route text.
    static func defaultRouteDevices(ipv4Routes: String, ipv6Routes: String) -> Set<String> {
        var result = Set<String>()
        // Iface Destination Gateway Flags RefCnt Use Metric Mask ...
        for line in ipv4Routes.split(separator: "\n").dropFirst() {
            let f = line.split(whereSeparator: { $0 == " " || $0 == "\t" })
            if f.count >= 8, f[1] == "00000000", f[7] == "00000000" { result.insert(String(f[0])) }
        }
        // dest destlen src srclen nexthop metric refcnt use flags device
        for line in ipv6Routes.split(separator: "\n") {
            let f = line.split(separator: " ", omittingEmptySubsequences: true)
            if f.count >= 10, f[0] == String(repeating: "0", count: 32), f[1] == "00", f[9] != "lo" {
                result.insert(String(f[9]))
            }
        }
        return result
    }
}
