@preconcurrency import Glibc
import Foundation
import NetworkTypes

/// What the node's network namespace looks like at one moment: its links with their addresses
/// and the devices that carry a default route. Read from the kernel; the desired state is a
/// pure function of this and the config.
public struct NetworkSnapshot: Equatable, Sendable {
    public struct Link: Equatable, Sendable {
        public var name: String
        public var index: UInt32
        public var isUp: Bool
        public var isLoopback: Bool
        /// Ethernet, or an L3 device (tun, WireGuard, ipip) whose packets have no L2 header.
        public var linkLayer: LinkLayer
        /// Usable IPv4 addresses, the primary address first (see `from(links:addresses:routes:)`).
        public var ipv4: [IPv4Address]
        /// Usable global IPv6 addresses, in the kernel's order (link-local, tentative,
        /// deprecated and temporary ones are never a SNAT address).
        public var ipv6: [IPv6Address]

        public init(name: String, index: UInt32, isUp: Bool = true, isLoopback: Bool = false,
                    linkLayer: LinkLayer = .ethernet, ipv4: [IPv4Address] = [], ipv6: [IPv6Address] = []) {
            self.name = name
            self.index = index
            self.isUp = isUp
            self.isLoopback = isLoopback
            self.linkLayer = linkLayer
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

    /// Reads the links, addresses and default routes of the calling thread's network namespace
    /// through rtnetlink dumps. A dump that races a change is read again (a few times; then
    /// the error is thrown and the caller tries with the next change).
    public static func read() throws -> NetworkSnapshot {
        let socket = try NetlinkSocket()
        var attempt = 0
        while true {
            do {
                let links = try socket.dump(RTNL.getLink, header: RTNL.ifinfomsgSize, name: "dump links")
                    .map(LinkMessage.init)
                let addresses = try socket.dump(RTNL.getAddress, header: RTNL.ifaddrmsgSize, name: "dump addresses")
                    .compactMap(AddressMessage.init)
                let routes = try socket.dump(RTNL.getRoute, header: RTNL.rtmsgSize, name: "dump routes")
                    .map(RouteMessage.init)
                return from(links: links, addresses: addresses, routes: routes)
            } catch NetlinkError.dumpInterrupted where attempt < 4 {
                attempt += 1
            }
        }
    }

    /// The snapshot that rtnetlink link, address and route messages describe.
    ///
    /// Each link keeps only the addresses new flows may leave with (see
    /// `AddressMessage.isUsableSNATAddress`), primary address first:
    /// - IPv4: the addresses without IFA_F_SECONDARY, in the kernel's order, then the
    ///   secondary ones. The first primary is the one the kernel itself picks as the source of
    ///   the host's own connections through the device.
    /// - IPv6: in the kernel's order, which puts the newest global address first; that is also
    ///   the kernel's own source choice among otherwise equal candidates.
    static func from(links: [LinkMessage], addresses: [AddressMessage], routes: [RouteMessage]) -> NetworkSnapshot {
        var byIndex: [UInt32: Link] = [:]
        for message in links {
            byIndex[message.index] = Link(
                name: message.name, index: message.index,
                isUp: message.flags & UInt32(IFF_UP) != 0,
                isLoopback: message.flags & UInt32(IFF_LOOPBACK) != 0,
                linkLayer: message.linkLayer)
        }
        let usable = addresses.filter { $0.isUsableSNATAddress }
        for message in usable.filter({ !$0.isSecondary }) + usable.filter({ $0.isSecondary }) {
            switch message.address {
            case .v4(let a): byIndex[message.index]?.ipv4.append(a)
            case .v6(let a): byIndex[message.index]?.ipv6.append(a)
            }
        }
        var defaultRouteDevices = Set<String>()
        for route in routes where route.isMainDefault {
            for index in route.outputInterfaces {
                if let link = byIndex[index], !link.isLoopback { defaultRouteDevices.insert(link.name) }
            }
        }
        return NetworkSnapshot(
            links: byIndex.values.sorted { $0.index < $1.index },
            defaultRouteDevices: defaultRouteDevices)
    }
}
