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
        /// Usable IPv4 addresses, the primary ones first (see `from(links:addresses:routes:)`).
        public var ipv4: [IPv4Address]
        /// Usable global IPv6 addresses, global unicast (2000::/3) before the others, oldest
        /// first (link-local, tentative, deprecated and temporary ones are never a SNAT address).
        public var ipv6: [IPv6Address]
        /// The source the kernel gives traffic of a main-table default route through this link,
        /// when the route says: its `src`, or (IPv4) the primary address in its gateway's subnet.
        public var routeSourceV4: IPv4Address?
        public var routeSourceV6: IPv6Address?

        public init(name: String, index: UInt32, isUp: Bool = true, isLoopback: Bool = false,
                    linkLayer: LinkLayer = .ethernet, ipv4: [IPv4Address] = [], ipv6: [IPv6Address] = [],
                    routeSourceV4: IPv4Address? = nil, routeSourceV6: IPv6Address? = nil) {
            self.name = name
            self.index = index
            self.isUp = isUp
            self.isLoopback = isLoopback
            self.linkLayer = linkLayer
            self.ipv4 = ipv4
            self.ipv6 = ipv6
            self.routeSourceV4 = routeSourceV4
            self.routeSourceV6 = routeSourceV6
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
    /// `AddressMessage.isUsableSNATAddress`), in the order a SNAT address is chosen from:
    /// - IPv4: the addresses without IFA_F_SECONDARY, in the kernel's order (a new primary is
    ///   added last), then the secondary ones.
    /// - IPv6: global unicast (2000::/3) before the others (a ULA is a worse source toward the
    ///   Internet), each oldest first: the kernel lists the newest first, and an address added
    ///   later (a VIP, another prefix) must not take over from the node's own.
    /// A main-table default route through the link gives its source too (`routeSourceV4`,
    /// `routeSourceV6`) when it names one with `src`, or for IPv4 when one of the link's
    /// primary addresses is in the gateway's subnet: what the kernel picks for the node's own
    /// default-routed traffic (`inet_select_addr` with the gateway).
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
        let usableV6 = usable.filter { !$0.isIPv4 }.reversed()
        for message in usable.filter({ $0.isIPv4 && !$0.isSecondary }) + usable.filter({ $0.isIPv4 && $0.isSecondary })
            + usableV6.filter(\.isGlobalUnicast) + usableV6.filter({ !$0.isGlobalUnicast }) {
            switch message.address {
            case .v4(let a): byIndex[message.index]?.ipv4.append(a)
            case .v6(let a): byIndex[message.index]?.ipv6.append(a)
            }
        }
        var defaultRouteDevices = Set<String>()
        // Every default route's `src` and gateways through each link, whatever their order.
        var sources: [UInt32: [IPAddress]] = [:]
        var gateways: [UInt32: [IPAddress]] = [:]
        for route in routes where route.isMainDefault {
            for index in route.outputInterfaces {
                guard let link = byIndex[index], !link.isLoopback else { continue }
                defaultRouteDevices.insert(link.name)
                if let source = route.preferredSource { sources[index, default: []].append(source) }
                gateways[index, default: []] += route.gateways[index] ?? []
            }
        }
        for (index, var link) in byIndex {
            let named = sources[index] ?? []
            link.routeSourceV4 = link.ipv4.first { named.contains(.v4($0)) }
            link.routeSourceV6 = link.ipv6.first { named.contains(.v6($0)) }
            if link.routeSourceV4 == nil, let gateways = gateways[index] {
                // The first primary address in a gateway's subnet (IPv6 gateways are link-local:
                // only IPv4 picks by subnet).
                let primary = usable.first { address in
                    address.index == index && !address.isSecondary && address.isIPv4
                        && gateways.contains { IPPrefix(unchecked: address.address, length: Int(address.prefixLength)).contains($0) }
                }
                if case .v4(let a)? = primary?.address { link.routeSourceV4 = a }
            }
            byIndex[index] = link
        }
        return NetworkSnapshot(
            links: byIndex.values.sorted { $0.index < $1.index },
            defaultRouteDevices: defaultRouteDevices)
    }
}
