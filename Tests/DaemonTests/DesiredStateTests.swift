import NetworkTypes
@testable import Daemon
@testable import Datapath
@testable import MasqdCLI
@testable import Netlink
import Testing

@Suite("Desired state")
struct DesiredStateTests {
    let network = NetworkSnapshot(
        links: [
            .init(name: "lo", index: 1, isLoopback: true, ipv4: [IPv4Address(127, 0, 0, 1)]),
            .init(name: "eth0", index: 2, ipv4: [IPv4Address(192, 0, 2, 10), IPv4Address(192, 0, 2, 11)]),
            .init(name: "eth1", index: 3, ipv4: [IPv4Address(198, 51, 100, 1)]),
            .init(name: "cni0", index: 4, ipv4: [IPv4Address(10, 244, 1, 1)]),
            .init(name: "eth2", index: 5),
        ],
        defaultRouteDevices: ["eth0"])

    private func state(_ flags: [String], network: NetworkSnapshot? = nil, nonMasquerade: NonMasqueradeList? = nil) throws -> DesiredState {
        let run = try MasqdCommand.Run.parse(["--pod-cidrs", "10.244.1.0/24"] + flags)
        let config = try DaemonConfig(file: [:], flags: run.flagSettings())
        return DesiredState(ReconcileInputs(config: config, network: network ?? self.network, nonMasquerade: nonMasquerade))
    }

    @Test("with no devices configured, the default-route device masquerades with its primary address")
    func defaultRouteDevice() throws {
        let s = try state([])
        #expect(s.devices == [.init(name: "eth0", ifindex: 2, snatV4: IPv4Address(192, 0, 2, 10), snatV6: nil)])
        #expect(s.skippedDevices.isEmpty)
    }

    @Test("configured names and prefixes select devices; missing ones are reported, addressless ones stay in force without an address")
    func selection() throws {
        let s = try state(["--devices", "eth+,cni0,wg0"])
        #expect(s.devices.map(\.name) == ["cni0", "eth0", "eth1", "eth2"])
        #expect(s.devices.last?.snatV4 == nil)
        #expect(s.skippedDevices == ["wg0": "no such device"])
    }

    @Test("with IPv4 masquerading off a device gets no IPv4 SNAT address")
    func familySwitch() throws {
        let s = try state(["--devices", "eth1", "--enable-ipv4-masquerade=false"])
        #expect(s.devices == [.init(name: "eth1", ifindex: 3, snatV4: nil, snatV6: nil)])
        #expect(!s.ipv4Enabled)
    }

    @Test("a device's IPv6 SNAT address is its first usable global one; without one it masquerades IPv4 only, and says why")
    func ipv6Address() throws {
        let dualStack = NetworkSnapshot(links: [
            .init(name: "eth0", index: 2, ipv4: [IPv4Address(192, 0, 2, 10)], ipv6: [IPv6Address("fd00:50::2")!, IPv6Address("fd00:50::3")!]),
            .init(name: "eth1", index: 3, ipv4: [IPv4Address(198, 51, 100, 1)]),
            .init(name: "eth2", index: 4, ipv6: [IPv6Address("2001:db8::1")!]),
        ], defaultRouteDevices: ["eth0", "eth1", "eth2"])
        let s = try state([], network: dualStack)
        #expect(s.devices.map { $0.snatV6?.description ?? "-" } == ["fd00:50::2", "-", "2001:db8::1"])
        let missing = s.devices.map(s.missingSNATAddress)
        #expect(missing[0].ipv4 == nil && missing[0].ipv6 == nil)
        #expect(missing[1].ipv4 == nil && missing[1].ipv6?.hasPrefix("no usable global IPv6 address") == true)
        #expect(missing[2].ipv4?.hasPrefix("no usable IPv4 address") == true && missing[2].ipv6 == nil)
        #expect(missing[1].ipv6?.hasSuffix("(no_snat_address)") == true)

        // A family that is off has no address and nothing missing.
        let v4Only = try state(["--enable-ipv6-masquerade=false"], network: dualStack)
        #expect(v4Only.devices.allSatisfy { $0.snatV6 == nil && v4Only.missingSNATAddress($0).ipv6 == nil })
        let v6Only = try state(["--enable-ipv4-masquerade=false"], network: dualStack)
        #expect(v6Only.devices.map { $0.snatV6?.description ?? "-" } == ["fd00:50::2", "-", "2001:db8::1"])
        #expect(v6Only.devices.allSatisfy { $0.snatV4 == nil && v6Only.missingSNATAddress($0).ipv4 == nil })
    }

    @Test("CIDRs, node IPs and the native-routing CIDR are split by family")
    func families() throws {
        let s = try state([
            "--pod-cidrs", "10.244.1.0/24,fd00:244::/64", "--cluster-node-ips", "192.0.2.20,fd00::20",
            "--enable-ip-masq-agent=true", "--ipv4-native-routing-cidr", "10.0.0.0/8",
        ], nonMasquerade: NonMasqueradeList(cidrs: [try IPPrefix("100.64.0.0/10"), try IPPrefix("fd00:1::/48")]))
        #expect(s.podCIDRsV4 == [try IPPrefix("10.244.1.0/24")])
        #expect(s.podCIDRsV6 == [try IPPrefix("fd00:244::/64")])
        #expect(s.nodeIPsV4 == [IPv4Address(192, 0, 2, 20)])
        #expect(s.nodeIPsV6.map(\.description) == ["fd00::20"])
        #expect(s.nonMasqueradeV4 == [try IPPrefix("100.64.0.0/10")])
        #expect(s.nonMasqueradeEnabled)
        #expect(s.nativeRoutingV4 == (try IPPrefix("10.0.0.0/8")))
    }

    @Test("with the agent on, the loaded ip-masq-agent list is the non-masquerade list")
    func nonMasqueradeSource() throws {
        let list = NonMasqueradeList(cidrs: [try IPPrefix("203.0.113.0/24"), try IPPrefix("fd00:1::/48")])
        let on = try state(["--enable-ip-masq-agent=true"], nonMasquerade: list)
        #expect(on.nonMasqueradeEnabled)
        #expect(on.nonMasqueradeV4 == [try IPPrefix("203.0.113.0/24")])
        #expect(on.nonMasqueradeV6 == [try IPPrefix("fd00:1::/48")])
    }

    @Test("with the agent on but no valid list yet, the map is left as it is")
    func nonMasqueradeUnknown() throws {
        let s = try state(["--enable-ip-masq-agent=true"], nonMasquerade: nil)
        #expect(s.nonMasqueradeEnabled && s.nonMasqueradeV4 == nil)
    }

    @Test("with the agent off, the non-masquerade map is emptied and exclusion 2 is off")
    func nonMasqueradeOff() throws {
        let s = try state([], nonMasquerade: NonMasqueradeList(cidrs: [try IPPrefix("10.0.0.0/8")]))
        #expect(!s.nonMasqueradeEnabled && s.nonMasqueradeV4 == [])
    }

    @Test("set differences add what is new and remove what is gone, leaving the rest")
    func setDiff() {
        let d = SetDiff(current: [1, 2, 3], desired: [2, 3, 4])
        #expect(d.add == [4] && d.remove == [1])
        #expect(SetDiff(current: [1], desired: [1]).isEmpty)
    }
}

@Suite("IP prefixes")
struct PrefixTests {
    @Test("prefixes are canonical and contain their addresses")
    func contains() throws {
        let p = try IPPrefix("10.244.0.0/16")
        #expect(p.contains(.v4(IPv4Address(10, 244, 9, 9))))
        #expect(!p.contains(.v4(IPv4Address(10, 245, 0, 1))))
        #expect(!p.contains(try #require(IPAddress("fd00::1"))))
        #expect(IPPrefix(unchecked: .v4(IPv4Address(10, 1, 2, 3)), length: 8).description == "10.0.0.0/8")
        #expect(try IPPrefix("0.0.0.0/0").contains(.v4(IPv4Address(1, 2, 3, 4))))
        #expect(try IPPrefix("fe80::/10").contains(try #require(IPAddress("fe80::1"))))
    }

    @Test("malformed prefixes are rejected")
    func malformed() {
        for text in ["", "10.0.0.0/", "10.0.0/8", "10.0.0.0/-1", "10.0.0.0/+8", "10.0.0.0/8/8", "x/8", "fd00::/129"] {
            #expect(throws: PrefixError.self, "\(text)") { try IPPrefix(text) }
        }
    }
}
