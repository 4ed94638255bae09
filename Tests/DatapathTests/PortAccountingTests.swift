// Port accounting (GET /v1/ports, the GC's busiest source) on flows the datapath created
// through BPF_PROG_TEST_RUN: which source holds how many ports towards which remote port.

import CMasq
import NetworkTypes
@testable import Daemon
@testable import Datapath
import Testing

@Suite("Port accounting")
struct PortAccountingTests {
    private func address(_ ip: PacketIPv4) -> IPAddress { .v4(IPv4Address(networkOrder: ip.raw)) }
    private func address(_ ip: PacketIPv6) -> IPAddress { .v6(IPv6Address(bytes: ip.bytes)) }

    /// pod1: 3 UDP flows to server:53 and 1 TCP flow to server:443; pod2: 2 UDP flows to
    /// server:53; pod1 over IPv6: 2 UDP flows to the v6 server:53; an inbound flow to pod1
    /// (it holds no port).
    private func loaded() throws -> TestDatapath {
        let dp = try TestDatapath.dualStack()
        for i in 0..<3 {
            _ = try dp.run(.egress, ipv4Frame(src: Net.pod1, dst: Net.server, .udp(sport: UInt16(40000 + i), dport: 53)))
        }
        _ = try dp.run(.egress, ipv4Frame(src: Net.pod1, dst: Net.server, .tcp(sport: 41000, dport: 443)))
        for i in 0..<2 {
            _ = try dp.run(.egress, ipv4Frame(src: Net.pod2, dst: Net.server, .udp(sport: UInt16(40000 + i), dport: 53)))
            _ = try dp.run(.egress, ipv6Frame(src: Net6.pod1, dst: Net6.server, .udp(sport: UInt16(40000 + i), dport: 53)))
        }
        _ = try dp.run(.ingress, ipv4Frame(src: Net.server, dst: Net.pod1, .tcp(sport: 5555, dport: 80)))
        return dp
    }

    private func reader(_ dp: TestDatapath) throws -> PortAccountReader {
        PortAccountReader(natV4: dp.nat, natV6: try dp.object.map(MASQ_MAP_NAT_V6))
    }

    @Test("each source's ports towards each remote port, busiest first, both families; inbound flows hold none")
    func holders() throws {
        let dp = try loaded()
        let accounting = try reader(dp).account(top: 10)
        #expect(accounting.flows == 8 && accounting.exact)
        let expected = [
            PortHolder(proto: Proto.udp, src: address(Net.pod1), dst: address(Net.server), dport: 53, ports: 3),
            PortHolder(proto: Proto.udp, src: address(Net.pod2), dst: address(Net.server), dport: 53, ports: 2),
            PortHolder(proto: Proto.udp, src: address(Net6.pod1), dst: address(Net6.server), dport: 53, ports: 2),
            PortHolder(proto: Proto.tcp, src: address(Net.pod1), dst: address(Net.server), dport: 443, ports: 1),
        ]
        #expect(accounting.holders.count == expected.count)
        #expect(accounting.holders.first == expected[0])
        #expect(Set(accounting.holders.dropFirst().map { "\($0)" }) == Set(expected.dropFirst().map { "\($0)" }))
        #expect(try reader(dp).account(top: 1).holders == [expected[0]])
    }

    @Test("a filter on the original tuple narrows what is counted")
    func filtered() throws {
        let dp = try loaded()
        let pod2 = address(Net.pod2)
        let onlyPod2 = try reader(dp).account(top: 10) { _, src, _, _, _ in src == pod2 }
        #expect(onlyPod2.flows == 2)
        #expect(onlyPod2.holders == [PortHolder(proto: Proto.udp, src: pod2, dst: address(Net.server), dport: 53, ports: 2)])
        let tcp = try reader(dp).account(top: 10) { proto, _, _, _, dport in proto == Proto.tcp && dport == 443 }
        #expect(tcp.flows == 1 && tcp.holders.map(\.ports) == [1])
    }

    @Test("past its capacity the tally says it is not exact and keeps the heavy holder")
    func boundedTally() throws {
        let dp = try TestDatapath.standard()
        // pod1 holds 20 ports towards server:53; 20 other sources one port each to server:1000+i.
        for i in 0..<20 {
            _ = try dp.run(.egress, ipv4Frame(src: Net.pod1, dst: Net.server, .udp(sport: UInt16(40000 + i), dport: 53)))
            _ = try dp.run(.egress, ipv4Frame(src: Net.pod2, dst: Net.server, .udp(sport: 40000, dport: UInt16(1000 + i))))
        }
        var small = PortAccountReader(natV4: dp.nat, natV6: try dp.object.map(MASQ_MAP_NAT_V6))
        small.capacity = 4
        let accounting = try small.account(top: 1)
        #expect(!accounting.exact && accounting.flows == 40)
        #expect(accounting.holders.first?.dport == 53)
        #expect((accounting.holders.first?.ports ?? 0) >= 20 - 40 / 5, "Misra-Gries undercounts by at most n / (capacity + 1)")
    }

    @Test("a GC pass reports the busiest source, over both tables")
    func gcBusiestHolder() throws {
        let dp = try loaded()
        var report = try ConntrackSweeper(nat: dp.nat, lifetimes: .default).sweep(now: NATEntries.bootTimeNow())
        report.add(try ConntrackSweeper(nat: try dp.object.map(MASQ_MAP_NAT_V6), lifetimes: .default)
            .sweep(now: NATEntries.bootTimeNow()))
        #expect(report.busiestHolder == PortHolder(proto: Proto.udp, src: address(Net.pod1), dst: address(Net.server), dport: 53, ports: 3))
    }
}
