@preconcurrency import Glibc
import NetworkTypes
@testable import Daemon
@testable import Datapath
import Logging
@testable import MasqdCLI
@testable import Netlink
import Testing

/// Device selection, the choice of the SNAT (primary) address, and the rtnetlink messages the
/// device watcher reads. Pure: nothing here touches a device (the one live read only dumps).
@Suite("Devices and addresses")
struct DeviceTests {
    // MARK: device matching

    @Test("an exact name matches only that device; a prefix written 'eth+' matches every device it begins")
    func selectorMatching() {
        let exact = DeviceSelector("eth0")
        #expect(!exact.isPrefix && exact.description == "eth0")
        #expect(exact.matches("eth0"))
        #expect(!exact.matches("eth01") && !exact.matches("eth") && !exact.matches("veth0"))

        let prefix = DeviceSelector("ext+")
        #expect(prefix.isPrefix && prefix.name == "ext" && prefix.description == "ext+")
        #expect(prefix.matches("ext0") && prefix.matches("ext1") && prefix.matches("ext"))
        #expect(!prefix.matches("next0") && !prefix.matches("ex"))
    }

    private func config(_ flags: [String]) throws -> DaemonConfig {
        let run = try MasqdCommand.Run.parse(["--pod-cidrs", "10.244.1.0/24"] + flags)
        return try DaemonConfig(file: [:], flags: run.flagSettings())
    }

    private func select(_ flags: [String], _ network: NetworkSnapshot) throws -> ([DesiredState.Device], [String: String]) {
        DesiredState.selectDevices(config: try config(flags), network: network)
    }

    private let ext0 = NetworkSnapshot.Link(name: "ext0", index: 2, ipv4: [IPv4Address(100, 0, 0, 1)])
    private let ext1 = NetworkSnapshot.Link(name: "ext1", index: 7, ipv4: [IPv4Address(100, 1, 0, 1)])

    @Test("a second uplink matching the prefix is in force as soon as the network shows it")
    func prefixPicksUpNewDevice() throws {
        let before = NetworkSnapshot(links: [ext0], defaultRouteDevices: [])
        let after = NetworkSnapshot(links: [ext0, ext1], defaultRouteDevices: [])
        #expect(try select(["--devices", "ext+"], before).0.map(\.name) == ["ext0"])
        let (devices, skipped) = try select(["--devices", "ext+"], after)
        #expect(devices == [.init(name: "ext0", ifindex: 2, snatV4: IPv4Address(100, 0, 0, 1)),
                            .init(name: "ext1", ifindex: 7, snatV4: IPv4Address(100, 1, 0, 1))])
        #expect(skipped.isEmpty)
    }

    @Test("a prefix never selects the loopback device, and a deleted exact device is reported as missing")
    func loopbackAndMissing() throws {
        let lo = NetworkSnapshot.Link(name: "lo", index: 1, isLoopback: true, ipv4: [IPv4Address(127, 0, 0, 1)])
        let network = NetworkSnapshot(links: [lo, ext0], defaultRouteDevices: [])
        #expect(try select(["--devices", "l+,ext+"], network).0.map(\.name) == ["ext0"])
        let (devices, skipped) = try select(["--devices", "ext0,ext1,lo"], network)
        #expect(devices.map(\.name) == ["ext0"])
        #expect(skipped == ["ext1": "no such device", "lo": "the loopback device is never a masquerading device"])
    }

    @Test("a device that is down stays in force with its address, so its programs stay attached through a link flap")
    func downDevice() throws {
        var down = ext1
        down.isUp = false
        let (devices, skipped) = try select(["--devices", "ext+"], NetworkSnapshot(links: [ext0, down], defaultRouteDevices: []))
        #expect(devices.map(\.name) == ["ext0", "ext1"])
        #expect(devices.last?.snatV4 == IPv4Address(100, 1, 0, 1))
        #expect(skipped.isEmpty)
    }

    @Test("a device that lost its address stays in force without one (its pod traffic is dropped), never given its old address")
    func addresslessDevice() throws {
        var bare = ext0
        bare.ipv4 = []
        let (devices, skipped) = try select(["--devices", "ext0"], NetworkSnapshot(links: [bare], defaultRouteDevices: []))
        #expect(devices == [.init(name: "ext0", ifindex: 2, snatV4: nil, snatV6: nil)])
        #expect(skipped.isEmpty)
    }

    @Test("an L3 device is in force with an L2 header length of 0; a link type masq does not know is skipped with the reason")
    func linkTypes() throws {
        let tun = NetworkSnapshot.Link(name: "tun0", index: 9, linkLayer: LinkLayer(type: 0xfffe, driver: "tun"),
                                       ipv4: [IPv4Address(172, 16, 0, 1)])
        let wg = NetworkSnapshot.Link(name: "wg0", index: 10, linkLayer: LinkLayer(type: 0xfffe, driver: "wireguard"),
                                      ipv4: [IPv4Address(172, 17, 0, 1)])
        let ib = NetworkSnapshot.Link(name: "ib0", index: 11, linkLayer: LinkLayer(type: 32), ipv4: [IPv4Address(172, 18, 0, 1)])
        let (devices, skipped) = try select(["--devices", "ext0,tun0,wg0,ib0"],
                                            NetworkSnapshot(links: [ext0, tun, wg, ib], defaultRouteDevices: []))
        #expect(devices.map(\.name) == ["ext0", "tun0", "wg0"])
        #expect(devices.map(\.l2HeaderLength) == [14, 0, 0])
        #expect(devices.map(\.linkLayer.kind) == ["ether", "none(tun)", "none(wireguard)"])
        #expect(skipped == ["ib0": "link type arphrd-32 is not supported (neither Ethernet nor an L3 device)"])
        #expect(LinkLayer(type: 1, driver: "veth").kind == "ether(veth)")
        #expect(LinkLayer(type: 768, driver: "ipip").l2HeaderLength == 0)
    }

    @Test("with no devices configured, a default-route device in force rides out a link flap that takes its default route")
    func defaultRouteDeviceKeptThroughFlap() throws {
        let config = try config([])
        var down = ext0
        down.isUp = false
        let before = try #require(DesiredState.selectDevices(config: config, network: NetworkSnapshot(links: [ext0, ext1], defaultRouteDevices: ["ext0"])).0.first)
        // Down, its routes flushed: kept.
        let whileDown = DesiredState.selectDevices(config: config, network: NetworkSnapshot(links: [down, ext1], defaultRouteDevices: []),
                                                   keeping: [before.ifindex])
        #expect(whileDown.0.map(\.name) == ["ext0"])
        // Up again before the default route is back: kept.
        let upNoRoute = DesiredState.selectDevices(config: config, network: NetworkSnapshot(links: [ext0, ext1], defaultRouteDevices: []),
                                                   keeping: [before.ifindex])
        #expect(upNoRoute.0.map(\.name) == ["ext0"])
        // Up while another device carries the default route: the route moved, so it goes.
        let moved = DesiredState.selectDevices(config: config, network: NetworkSnapshot(links: [ext0, ext1], defaultRouteDevices: ["ext1"]),
                                               keeping: [before.ifindex])
        #expect(moved.0.map(\.name) == ["ext1"])
        // Never in force before: a down device without a default route is not picked up.
        #expect(DesiredState.selectDevices(config: config, network: NetworkSnapshot(links: [down, ext1], defaultRouteDevices: [])).0.isEmpty)
    }

    @Test("with no devices configured, masquerading follows the default route to another device")
    func defaultRouteMoves() throws {
        let before = NetworkSnapshot(links: [ext0, ext1], defaultRouteDevices: ["ext0"])
        let after = NetworkSnapshot(links: [ext0, ext1], defaultRouteDevices: ["ext1"])
        #expect(try select([], before).0.map(\.name) == ["ext0"])
        #expect(try select(["--devices", ""], after).0.map(\.name) == ["ext1"])
        #expect(try select([], NetworkSnapshot(links: [ext0, ext1], defaultRouteDevices: [])).0.isEmpty)
    }

    // MARK: primary address

    private func v4(_ text: String) -> IPAddress { .v4(IPv4Address(text)!) }
    private func v6(_ text: String) -> IPAddress { .v6(IPv6Address(text)!) }

    private func snapshot(_ addresses: [AddressMessage], routes: [RouteMessage] = []) -> NetworkSnapshot {
        NetworkSnapshot.from(
            links: [LinkMessage(index: 1, name: "lo", flags: UInt32(IFF_UP | IFF_LOOPBACK)),
                    LinkMessage(index: 2, name: "ext0", flags: UInt32(IFF_UP)),
                    LinkMessage(index: 3, name: "ext1", flags: 0)],
            addresses: addresses, routes: routes)
    }

    private func link(_ s: NetworkSnapshot, _ name: String) -> NetworkSnapshot.Link? {
        s.links.first { $0.name == name }
    }

    @Test("the IPv4 SNAT address is the first primary address, even when a secondary one is listed first")
    func ipv4Primary() {
        let s = snapshot([
            AddressMessage(index: 2, address: v4("100.0.0.9"), prefixLength: 24, flags: RTNL.flagSecondary),
            AddressMessage(index: 2, address: v4("100.0.0.5"), prefixLength: 24),
            AddressMessage(index: 2, address: v4("192.0.2.1"), prefixLength: 24),
        ])
        #expect(link(s, "ext0")?.ipv4.map(\.description) == ["100.0.0.5", "192.0.2.1", "100.0.0.9"])
    }

    @Test("host and link scope, and deprecated IPv4 addresses, are never a SNAT address")
    func ipv4Unusable() {
        let s = snapshot([
            AddressMessage(index: 1, address: v4("127.0.0.1"), prefixLength: 8, scope: RTNL.scopeHost),
            AddressMessage(index: 2, address: v4("169.254.0.1"), prefixLength: 16, scope: RTNL.scopeLink),
            AddressMessage(index: 2, address: v4("100.0.0.1"), prefixLength: 24, flags: RTNL.flagDeprecated),
            AddressMessage(index: 2, address: v4("100.0.0.2"), prefixLength: 24),
        ])
        #expect(link(s, "lo")?.ipv4 == [])
        #expect(link(s, "ext0")?.ipv4.map(\.description) == ["100.0.0.2"])
    }

    @Test("IPv6 takes the oldest global address (the kernel lists the newest first), skipping link-local, tentative, failed, deprecated and temporary ones")
    func ipv6Choice() {
        let s = snapshot([
            AddressMessage(index: 2, address: v6("fd00::30"), prefixLength: 64, flags: RTNL.flagTentative),
            AddressMessage(index: 2, address: v6("fd00::31"), prefixLength: 64, flags: RTNL.flagDADFailed),
            AddressMessage(index: 2, address: v6("fd00::32"), prefixLength: 64, flags: RTNL.flagDeprecated),
            AddressMessage(index: 2, address: v6("fd00::33"), prefixLength: 64, flags: RTNL.flagSecondary),
            AddressMessage(index: 2, address: v6("fd00::2"), prefixLength: 64),
            AddressMessage(index: 2, address: v6("fd00::1"), prefixLength: 64),
            AddressMessage(index: 2, address: v6("fe80::1"), prefixLength: 64, scope: RTNL.scopeLink),
            AddressMessage(index: 2, address: v6("fe80::2"), prefixLength: 64),
        ])
        #expect(link(s, "ext0")?.ipv6.map(\.description) == ["fd00::1", "fd00::2"])
    }

    @Test("IPv6 global unicast (2000::/3) comes before a ULA, whatever their age")
    func ipv6GlobalUnicastFirst() {
        let s = snapshot([
            AddressMessage(index: 2, address: v6("2001:db8::9"), prefixLength: 128),
            AddressMessage(index: 2, address: v6("fd99::1"), prefixLength: 64),
            AddressMessage(index: 2, address: v6("2001:db8::5"), prefixLength: 64),
        ])
        #expect(link(s, "ext0")?.ipv6.map(\.description) == ["2001:db8::5", "2001:db8::9", "fd99::1"])
    }

    @Test("the default route's source through a link: its src when it names one of the link's addresses, else (IPv4) the primary address in its gateway's subnet")
    func routeSource() {
        let addresses = [
            AddressMessage(index: 2, address: v4("192.0.2.10"), prefixLength: 24),
            AddressMessage(index: 2, address: v4("100.5.0.1"), prefixLength: 24),
            AddressMessage(index: 2, address: v6("2001:db8::5"), prefixLength: 64),
            AddressMessage(index: 2, address: v6("2001:db8::9"), prefixLength: 64),
        ]
        let byGateway = snapshot(addresses, routes: [
            RouteMessage(destinationLength: 0, outputInterfaces: [2], gateways: [2: [v4("100.5.0.254")]])])
        #expect(link(byGateway, "ext0")?.routeSourceV4 == IPv4Address("100.5.0.1"))
        #expect(link(byGateway, "ext0")?.routeSourceV6 == nil)

        let bySrc = snapshot(addresses, routes: [
            RouteMessage(destinationLength: 0, outputInterfaces: [2], gateways: [2: [v4("100.5.0.254")]], preferredSource: v4("192.0.2.10")),
            RouteMessage(destinationLength: 0, outputInterfaces: [2], gateways: [2: [v6("fe80::1")]], preferredSource: v6("2001:db8::9"))])
        #expect(link(bySrc, "ext0")?.routeSourceV4 == IPv4Address("192.0.2.10"))
        #expect(link(bySrc, "ext0")?.routeSourceV6 == IPv6Address("2001:db8::9"))

        // A gateway outside every subnet of the link's, a src the link does not have, another
        // table's default route: none says.
        let none = snapshot(addresses, routes: [
            RouteMessage(destinationLength: 0, outputInterfaces: [2], gateways: [2: [v4("203.0.113.1")]], preferredSource: v4("198.51.100.1")),
            RouteMessage(destinationLength: 0, table: 100, outputInterfaces: [2], gateways: [2: [v4("100.5.0.254")]])])
        #expect(link(none, "ext0")?.routeSourceV4 == nil && link(none, "ext0")?.routeSourceV6 == nil)

        // Two nexthops through the link, in either order: the first primary in one of their
        // subnets, so reordering them does not move the address.
        for hops in [[v4("192.0.2.254"), v4("100.5.0.254")], [v4("100.5.0.254"), v4("192.0.2.254")]] {
            let multipath = snapshot(addresses, routes: [RouteMessage(destinationLength: 0, outputInterfaces: [2, 2], gateways: [2: hops])])
            #expect(link(multipath, "ext0")?.routeSourceV4 == IPv4Address("192.0.2.10"), "\(hops)")
        }
    }

    @Test("a device's SNAT address: the default route's source, else the one in force while the device keeps it, else the first usable one")
    func snatAddressStays() throws {
        let config = try config(["--devices", "ext0"])
        let old = try #require(IPv6Address("2001:db8::5"))
        let vip = try #require(IPv6Address("2001:db8::9"))
        // A VIP added beside the address in force (listed first, as the oldest might not be).
        var ext0 = NetworkSnapshot.Link(name: "ext0", index: 2, ipv4: [IPv4Address(100, 0, 0, 9), IPv4Address(100, 0, 0, 1)],
                                        ipv6: [vip, old])
        let inForce: [UInt32: DatapathView.Device] = [2: .init(snatV4: IPv4Address(100, 0, 0, 1), snatV6: old)]
        var network = NetworkSnapshot(links: [ext0], defaultRouteDevices: [])
        let kept = try #require(DesiredState.selectDevices(config: config, network: network, inForce: inForce).0.first)
        #expect(kept.snatV4 == IPv4Address(100, 0, 0, 1) && kept.snatV6 == old)
        // Without one in force, the first usable.
        let fresh = try #require(DesiredState.selectDevices(config: config, network: network).0.first)
        #expect(fresh.snatV4 == IPv4Address(100, 0, 0, 9) && fresh.snatV6 == vip)
        // The address in force gone: the first usable.
        ext0.ipv6 = [vip]
        network.links = [ext0]
        #expect(DesiredState.selectDevices(config: config, network: network, inForce: inForce).0.first?.snatV6 == vip)
        // The default route's source wins over the one in force.
        ext0.ipv6 = [vip, old]
        ext0.routeSourceV4 = IPv4Address(100, 0, 0, 9)
        network.links = [ext0]
        #expect(DesiredState.selectDevices(config: config, network: network, inForce: inForce).0.first?.snatV4 == IPv4Address(100, 0, 0, 9))

        // A ULA in force gives way to a global unicast address once one is usable; another
        // global address does not take over from a global one.
        let ula = try #require(IPv6Address("fd99::1"))
        ext0.routeSourceV4 = nil
        ext0.ipv6 = [old, ula]
        network.links = [ext0]
        #expect(DesiredState.selectDevices(config: config, network: network, inForce: [2: .init(snatV4: nil, snatV6: ula)]).0.first?.snatV6 == old)
        ext0.ipv6 = [ula]
        network.links = [ext0]
        #expect(DesiredState.selectDevices(config: config, network: network, inForce: [2: .init(snatV4: nil, snatV6: ula)]).0.first?.snatV6 == ula)
        ext0.ipv6 = [old, vip]
        network.links = [ext0]
        #expect(DesiredState.selectDevices(config: config, network: network, inForce: [2: .init(snatV4: nil, snatV6: vip)]).0.first?.snatV6 == vip)

        // Through DesiredState: the previous state's addresses, or at start the pinned ones.
        let inputs = ReconcileInputs(config: config, network: NetworkSnapshot(links: [NetworkSnapshot.Link(
            name: "ext0", index: 2, ipv6: [vip, old])], defaultRouteDevices: []))
        #expect(DesiredState(inputs).devices.first?.snatV6 == vip)
        #expect(DesiredState(inputs, pinned: inForce).devices.first?.snatV6 == old)
        var previous = DesiredState(inputs)
        previous.devices[0].snatV6 = old
        #expect(DesiredState(inputs, previous: previous, pinned: [:]).devices.first?.snatV6 == old)
    }

    @Test("link flags give up and loopback; addresses of unknown links are dropped")
    func linkFlags() {
        let s = snapshot([AddressMessage(index: 99, address: v4("100.9.9.9"), prefixLength: 24)])
        #expect(s.links.map(\.name) == ["lo", "ext0", "ext1"])
        #expect(link(s, "lo")?.isLoopback == true)
        #expect(link(s, "ext0")?.isUp == true && link(s, "ext1")?.isUp == false)
        #expect(s.links.allSatisfy { $0.ipv4.isEmpty })
    }

    @Test("default-route devices are those of unicast default routes of the main table, multipath included")
    func defaultRoutes() {
        let s = snapshot([], routes: [
            RouteMessage(destinationLength: 0, outputInterfaces: [2]),
            RouteMessage(destinationLength: 24, outputInterfaces: [3]),
            RouteMessage(destinationLength: 0, table: 100, outputInterfaces: [3]),
            RouteMessage(destinationLength: 0, type: 7, outputInterfaces: [3]), // RTN_UNREACHABLE
            RouteMessage(destinationLength: 0, outputInterfaces: [1]),
        ])
        #expect(s.defaultRouteDevices == ["ext0"])
        let multipath = snapshot([], routes: [RouteMessage(destinationLength: 0, outputInterfaces: [2, 3])])
        #expect(multipath.defaultRouteDevices == ["ext0", "ext1"])
    }

    // MARK: netlink messages

    @Test("a link message gives the ifindex, name and flags")
    func parseLink() throws {
        let datagram = nlmsg(RTNL.newLink, ifinfomsg(index: 7, flags: UInt32(IFF_UP))
            + rta(1, [2, 0, 0, 0, 0, 1]) + rta(RTNL.linkName, Array("ext1".utf8) + [0]))
        let messages = try NetlinkMessage.parse(datagram[...])
        #expect(messages.count == 1 && messages[0].type == RTNL.newLink)
        #expect(try LinkMessage(messages[0]) == LinkMessage(index: 7, name: "ext1", flags: UInt32(IFF_UP)))
    }

    @Test("a link message gives the link type (ifi_type) and the driver from IFLA_LINKINFO's IFLA_INFO_KIND")
    func parseLinkType() throws {
        var header = ifinfomsg(index: 9, flags: UInt32(IFF_UP))
        header.replaceSubrange(2..<4, with: le16(0xfffe)) // ARPHRD_NONE
        let info = rta(RTNL.linkInfoKind, Array("tun".utf8) + [0])
        let datagram = nlmsg(RTNL.newLink, header + rta(RTNL.linkName, Array("tun0".utf8) + [0])
            + rta(RTNL.linkInfo | 0x8000, info)) // NLA_F_NESTED, as the kernel sets it
        let link = try LinkMessage(try NetlinkMessage.parse(datagram[...])[0])
        #expect(link.linkLayer == LinkLayer(type: 0xfffe, driver: "tun"))
        #expect(link.linkLayer.kind == "none(tun)")
        #expect(link.linkLayer.l2HeaderLength == 0)
    }

    @Test("an address message prefers IFA_LOCAL over the peer address, and IFA_FLAGS over the 8-bit flags")
    func parseAddress() throws {
        let pointToPoint = nlmsg(RTNL.newAddress, ifaddrmsg(family: AF_INET, prefix: 32, flags: 0, scope: 0, index: 4)
            + rta(RTNL.addressAddress, [100, 64, 0, 2]) + rta(RTNL.addressLocal, [100, 64, 0, 1])
            + rta(RTNL.addressFlags, le32(RTNL.flagSecondary | 0x80)))
        let a = try #require(try AddressMessage(try NetlinkMessage.parse(pointToPoint[...])[0]))
        #expect(a == AddressMessage(index: 4, address: v4("100.64.0.1"), prefixLength: 32, flags: 0x81))
        #expect(a.isSecondary)

        let v6bytes = IPv6Address("fd00::5")!.bytes
        let six = nlmsg(RTNL.newAddress, ifaddrmsg(family: AF_INET6, prefix: 64, flags: UInt8(RTNL.flagTentative), scope: 0, index: 2)
            + rta(RTNL.addressAddress, v6bytes))
        let b = try #require(try AddressMessage(try NetlinkMessage.parse(six[...])[0]))
        #expect(b.address == v6("fd00::5") && b.flags == RTNL.flagTentative && !b.isUsableSNATAddress)

        let otherFamily = nlmsg(RTNL.newAddress, ifaddrmsg(family: 17, prefix: 0, flags: 0, scope: 0, index: 2) + rta(1, [1, 2]))
        #expect(try AddressMessage(try NetlinkMessage.parse(otherFamily[...])[0]) == nil)
    }

    @Test("a route message gives its table (RTA_TABLE over the 8-bit field), type and every nexthop's device")
    func parseRoute() throws {
        let single = nlmsg(RTNL.newRoute, rtmsg(dstLen: 0, table: 252, type: RTNL.typeUnicast)
            + rta(RTNL.routeTable, le32(RTNL.tableMain)) + rta(RTNL.routeOutputInterface, le32(2)))
        let r = try RouteMessage(try NetlinkMessage.parse(single[...])[0])
        #expect(r == RouteMessage(destinationLength: 0, outputInterfaces: [2]) && r.isMainDefault)

        // Two struct rtnexthop entries, the first with a gateway attribute after it.
        let hop1: [UInt8] = le16(16) + [0, 0] + le32(3) + rta(5, [100, 1, 0, 2])
        let hop2: [UInt8] = le16(8) + [0, 0] + le32(5)
        let multi = nlmsg(RTNL.newRoute, rtmsg(dstLen: 0, table: UInt8(RTNL.tableMain), type: RTNL.typeUnicast)
            + rta(RTNL.routeMultipath, hop1 + hop2))
        #expect(try RouteMessage(try NetlinkMessage.parse(multi[...])[0]).outputInterfaces == [3, 5])

        let other = nlmsg(RTNL.newRoute, rtmsg(dstLen: 24, table: 100, type: RTNL.typeUnicast))
        #expect(try !RouteMessage(try NetlinkMessage.parse(other[...])[0]).isMainDefault)
    }

    @Test("a route message gives its gateway (the route's or each nexthop's) and its preferred source")
    func parseRouteSource() throws {
        let single = nlmsg(RTNL.newRoute, rtmsg(dstLen: 0, table: UInt8(RTNL.tableMain), type: RTNL.typeUnicast)
            + rta(RTNL.routeOutputInterface, le32(2)) + rta(RTNL.routeGateway, [100, 5, 0, 254])
            + rta(RTNL.routePreferredSource, [100, 5, 0, 1]))
        let r = try RouteMessage(try NetlinkMessage.parse(single[...])[0])
        #expect(r.gateways == [2: [v4("100.5.0.254")]] && r.preferredSource == v4("100.5.0.1"))

        let hop1: [UInt8] = le16(16) + [0, 0] + le32(3) + rta(RTNL.routeGateway, [100, 1, 0, 2])
        let hop2: [UInt8] = le16(8) + [0, 0] + le32(5)
        let multi = nlmsg(RTNL.newRoute, rtmsg(dstLen: 0, table: UInt8(RTNL.tableMain), type: RTNL.typeUnicast)
            + rta(RTNL.routeMultipath, hop1 + hop2))
        let m = try RouteMessage(try NetlinkMessage.parse(multi[...])[0])
        #expect(m.gateways == [3: [v4("100.1.0.2")]] && m.preferredSource == nil)
    }

    @Test("one datagram holds several padded messages; the end of a dump and errors carry the errno")
    func parseDatagram() throws {
        let link = nlmsg(RTNL.newLink, ifinfomsg(index: 1, flags: 0) + rta(RTNL.linkName, Array("lo".utf8) + [0]), seq: 9)
        let done = nlmsg(RTNL.messageDone, le32(0), seq: 9)
        let error = nlmsg(RTNL.messageError, le32(UInt32(bitPattern: -ENODEV)) + [UInt8](repeating: 0, count: 16), seq: 9)
        let messages = try NetlinkMessage.parse((link + done + error)[...])
        #expect(messages.map(\.type) == [RTNL.newLink, RTNL.messageDone, RTNL.messageError])
        #expect(messages.allSatisfy { $0.sequence == 9 })
        #expect(messages[1].errorCode == 0 && messages[2].errorCode == ENODEV)
    }

    @Test("lengths that run past the datagram are malformed, not read")
    func malformed() {
        var truncated = nlmsg(RTNL.newLink, ifinfomsg(index: 1, flags: 0))
        truncated[0] = 200
        #expect(throws: NetlinkError.self) { try NetlinkMessage.parse(truncated[...]) }
        let badAttribute = nlmsg(RTNL.newLink, ifinfomsg(index: 1, flags: 0) + [40, 0, 3, 0, 0x6c, 0x6f, 0, 0])
        #expect(throws: NetlinkError.self) { try LinkMessage(try NetlinkMessage.parse(badAttribute[...])[0]) }
        let short = nlmsg(RTNL.newAddress, [2, 24])
        #expect(throws: NetlinkError.self) { try AddressMessage(try NetlinkMessage.parse(short[...])[0]) }
    }

    @Test("a dump request is a header with NLM_F_REQUEST|NLM_F_DUMP and the zeroed family header")
    func dumpRequest() throws {
        let bytes = NetlinkMessage.request(type: RTNL.getAddress, flags: RTNL.flagRequest | RTNL.flagDump,
                                           sequence: 3, body: [0, 0, 0, 0, 0, 0, 0, 0])
        #expect(bytes.count == 24)
        let parsed = try NetlinkMessage.parse(bytes[...])
        #expect(parsed == [NetlinkMessage(type: RTNL.getAddress, flags: 0x301, sequence: 3, payload: bytes[16...])])
    }

    @Test("links, addresses and default routes wake the watcher; other routes do not")
    func relevantNotifications() throws {
        let podRoute = nlmsg(RTNL.newRoute, rtmsg(dstLen: 32, table: UInt8(RTNL.tableMain), type: RTNL.typeUnicast))
        let defaultRoute = nlmsg(RTNL.delRoute, rtmsg(dstLen: 0, table: UInt8(RTNL.tableMain), type: RTNL.typeUnicast))
        let address = nlmsg(RTNL.delAddress, ifaddrmsg(family: AF_INET, prefix: 24, flags: 0, scope: 0, index: 2))
        #expect(try !NetlinkMonitor.isRelevant(NetlinkMessage.parse(podRoute[...])))
        #expect(try NetlinkMonitor.isRelevant(NetlinkMessage.parse((podRoute + defaultRoute)[...])))
        #expect(try NetlinkMonitor.isRelevant(NetlinkMessage.parse(address[...])))
    }

    @Test("reading this namespace by netlink dumps finds the loopback device")
    func liveRead() throws {
        let s = try NetworkSnapshot.read()
        let lo = try #require(s.links.first { $0.isLoopback })
        #expect(lo.name == "lo" && lo.index == 1)
        #expect(s.links.count == Set(s.links.map(\.index)).count)
    }

    // MARK: the watcher

    /// Runs a watcher whose reads return `read` until `until` holds or `timeout` passes, and returns
    /// what it passed on. The watcher subscribes to this namespace's rtnetlink groups (a
    /// passive listener: it changes nothing); whatever changes here is read as `read` again.
    private func watch(from initial: NetworkSnapshot, status: DaemonStatus, read: @escaping @Sendable () throws -> NetworkSnapshot,
                       until: @escaping @Sendable (DaemonStatus) -> Bool,
                       timeout: Duration = .seconds(2)) async throws -> [NetworkSnapshot] {
        let (stream, sink) = AsyncStream.makeStream(of: ReconcileInputs.Change.self)
        let watcher = DeviceWatcher(initial: initial, changes: sink, status: status,
                                    logger: Logger(label: "test"), read: read)
        let task = Task { try await watcher.run() }
        let deadline = ContinuousClock.now + timeout
        while !until(status), ContinuousClock.now < deadline {
            try await Task.sleep(for: .milliseconds(10))
        }
        // Give a wrongly repeated report the time to show.
        try await Task.sleep(for: .milliseconds(100))
        task.cancel()
        try await task.value
        sink.finish()
        var passed: [NetworkSnapshot] = []
        for await change in stream {
            if case .network(let n) = change { passed.append(n) }
        }
        return passed
    }

    @Test("the watcher passes on a network that differs from the one the reconciler started from, once")
    func watcherPassesOnChange() async throws {
        let initial = NetworkSnapshot(links: [ext0], defaultRouteDevices: [])
        let changed = NetworkSnapshot(links: [ext0, ext1], defaultRouteDevices: [])
        let passed = try await watch(from: initial, status: DaemonStatus(), read: { changed },
                                     until: { $0.snapshot.networkChangedAt != nil })
        #expect(passed == [changed])
    }

    @Test("the watcher passes nothing on while the network is unchanged")
    func watcherQuietWithoutChange() async throws {
        let initial = NetworkSnapshot(links: [ext0], defaultRouteDevices: [])
        let passed = try await watch(from: initial, status: DaemonStatus(), read: { initial },
                                     until: { _ in false }, timeout: .milliseconds(300))
        #expect(passed.isEmpty)
    }

    @Test("a failed read keeps the last view and is shown in status")
    func watcherReadFailure() async throws {
        let initial = NetworkSnapshot(links: [ext0], defaultRouteDevices: [])
        let status = DaemonStatus()
        let passed = try await watch(from: initial, status: status,
                                     read: { throw NetlinkError.kernel(request: "dump links", errno: EBUSY) },
                                     until: { $0.snapshot.lastNetworkError != nil })
        #expect(passed.isEmpty)
        #expect(status.snapshot.lastNetworkError?.contains("dump links") == true)
    }

    // MARK: logged changes

    @Test("the logged device changes name new, gone and re-addressed devices, with the reason a device left")
    func deviceChanges() throws {
        let network = NetworkSnapshot(links: [ext0, ext1], defaultRouteDevices: [])
        let old = DesiredState(ReconcileInputs(config: try config(["--devices", "ext+"]), network: network))
        var moved = ext0
        moved.ipv4 = [IPv4Address(100, 0, 0, 5)]
        let lo = NetworkSnapshot.Link(name: "lo", index: 1, isLoopback: true)
        let newInputs = ReconcileInputs(config: try config(["--devices", "ext0,ext1"]),
                                        network: NetworkSnapshot(links: [lo, moved], defaultRouteDevices: []))
        let new = DesiredState(newInputs)
        let changes = DeviceChange.between(old, new, inputs: newInputs)
        #expect(changes == [
            .notInForce(old.devices[1], reason: "the link was deleted"),
            .addressChanged(from: old.devices[0], to: new.devices[0]),
        ])
        let oldInputs = ReconcileInputs(config: try config(["--devices", "ext+"]), network: network)
        let noIPv6 = try #require(old.missingSNATAddress(old.devices[0]).ipv6)
        #expect(DeviceChange.between(nil, old, inputs: oldInputs)
            == old.devices.flatMap { [.inForce($0), .missingAddress($0, ipv6: true, reason: noIPv6)] })
        #expect(DeviceChange.between(old, old, inputs: oldInputs).isEmpty)
    }

    @Test("a device that leaves is logged with why: taken out of devices, renamed, the default route moved")
    func departureReasons() throws {
        let network = NetworkSnapshot(links: [ext0, ext1], defaultRouteDevices: [])
        let both = DesiredState(ReconcileInputs(config: try config(["--devices", "ext+"]), network: network))
        func reason(_ inputs: ReconcileInputs, from old: DesiredState) -> String? {
            DeviceChange.between(old, DesiredState(inputs, previous: old), inputs: inputs).compactMap {
                if case .notInForce(_, let reason) = $0 { return reason } else { return nil }
            }.first
        }
        #expect(reason(ReconcileInputs(config: try config(["--devices", "ext0"]), network: network), from: both)
            == "devices (ext0) no longer selects it")
        var renamed = ext1
        renamed.name = "wan1"
        #expect(reason(ReconcileInputs(config: try config(["--devices", "ext+"]),
                                       network: NetworkSnapshot(links: [ext0, renamed], defaultRouteDevices: [])), from: both)
            == "renamed to wan1, which devices (ext+) does not select")

        let auto = try config([])
        let onExt0 = DesiredState(ReconcileInputs(config: auto, network: NetworkSnapshot(links: [ext0, ext1], defaultRouteDevices: ["ext0"])))
        #expect(onExt0.devices.map(\.name) == ["ext0"])
        #expect(reason(ReconcileInputs(config: auto, network: NetworkSnapshot(links: [ext0, ext1], defaultRouteDevices: ["ext1"])), from: onExt0)
            == "the default route is on ext1, not on this device")
    }
}

// MARK: message builders (host byte order, as the kernel writes them)

private func le16(_ v: UInt16) -> [UInt8] { [UInt8(v & 0xff), UInt8(v >> 8)] }
private func le32(_ v: UInt32) -> [UInt8] { (0..<4).map { UInt8((v >> (8 * $0)) & 0xff) } }

private func padded(_ bytes: [UInt8]) -> [UInt8] {
    bytes + [UInt8](repeating: 0, count: (4 - bytes.count % 4) % 4)
}

/// struct nlmsghdr + payload.
private func nlmsg(_ type: UInt16, _ payload: [UInt8], flags: UInt16 = 0, seq: UInt32 = 1) -> [UInt8] {
    padded(le32(UInt32(16 + payload.count)) + le16(type) + le16(flags) + le32(seq) + le32(UInt32(0)) + payload)
}

/// struct rtattr + value, padded.
private func rta(_ type: UInt16, _ value: [UInt8]) -> [UInt8] {
    padded(le16(UInt16(4 + value.count)) + le16(type) + value)
}

/// struct ifinfomsg.
private func ifinfomsg(index: Int32, flags: UInt32) -> [UInt8] {
    [UInt8(AF_UNSPEC), 0] + le16(1) + le32(UInt32(bitPattern: index)) + le32(flags) + le32(UInt32(0))
}

/// struct ifaddrmsg.
private func ifaddrmsg(family: Int32, prefix: UInt8, flags: UInt8, scope: UInt8, index: UInt32) -> [UInt8] {
    [UInt8(family), prefix, flags, scope] + le32(index)
}

/// struct rtmsg.
private func rtmsg(dstLen: UInt8, table: UInt8, type: UInt8) -> [UInt8] {
    [UInt8(AF_INET), dstLen, 0, 0, table, 3, 0, type] + le32(UInt32(0))
}
