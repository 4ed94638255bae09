// The conntrack GC's pass (ConntrackSweeper) on a loaded datapath's own NAT table: expiry by
// state, both halves together, half pairs repaired or removed, ports freed; and its interval.

import CMasq
import Testing
@testable import Daemon

@Suite("Conntrack GC")
struct ConntrackGCTests {
    private func sweeper(_ dp: Datapath, _ lifetimes: FlowLifetimes = .default) -> ConntrackSweeper {
        ConntrackSweeper(nat: dp.nat, lifetimes: lifetimes)
    }

    /// CLOCK_BOOTTIME `seconds` from now, in ns.
    private func later(_ seconds: Double) -> UInt64 {
        ConntrackSweeper.bootTimeNow() + UInt64(seconds * 1e9)
    }

    private func tcp(_ dp: Datapath, sport: UInt16, _ flags: UInt8, reply: UInt8? = nil) throws {
        let out = try dp.run(.egress, ipv4Frame(src: Net.pod1, dst: Net.server, .tcp(sport: sport, dport: 443, flags: flags)))
        if let reply {
            _ = try dp.run(.ingress, ipv4Frame(src: Net.server, dst: Net.snat, .tcp(sport: 443, dport: out.parsed.sport, flags: reply)))
        }
    }

    @Test("a closed TCP flow expires after the closing lifetime, both halves at once; an established one stays")
    func closedFlowExpires() throws {
        let dp = try Datapath.standard()
        try tcp(dp, sport: 40000, TCPFlag.syn, reply: TCPFlag.syn | TCPFlag.ack)
        try tcp(dp, sport: 40001, TCPFlag.syn, reply: TCPFlag.syn | TCPFlag.ack)
        try tcp(dp, sport: 40001, TCPFlag.fin | TCPFlag.ack, reply: TCPFlag.fin | TCPFlag.ack)

        #expect(try sweeper(dp).sweep(now: later(5)).deletedEntries == 0)
        let report = try sweeper(dp).sweep(now: later(11))

        #expect(report.entries == 4)
        #expect(report.expiredFlows == 1)
        #expect(report.deletedEntries == 2)
        #expect(report.deletedFraction == 0.5)
        let left = try dp.entries().map { $0.0 }
        #expect(left.count == 2)
        #expect(left.allSatisfy { $0.sport == be16(40000) || $0.dport == be16(40000) })
    }

    @Test("each state expires after its own lifetime", arguments: [
        (TCPFlag.syn, nil as UInt8?, 60.0), (TCPFlag.syn, TCPFlag.syn | TCPFlag.ack, 21_600.0),
        (TCPFlag.syn, TCPFlag.rst, 10.0),
    ])
    func tcpLifetimes(_ out: UInt8, _ back: UInt8?, _ lifetime: Double) throws {
        let dp = try Datapath.standard()
        try tcp(dp, sport: 40000, out, reply: back)
        #expect(try sweeper(dp).sweep(now: later(lifetime - 2)).deletedEntries == 0)
        #expect(try sweeper(dp).sweep(now: later(lifetime + 1)).deletedEntries == 2)
    }

    @Test("UDP lives 30 s unreplied and 120 s replied; configured lifetimes replace the defaults")
    func udpLifetimes() throws {
        let dp = try Datapath.standard()
        _ = try dp.run(.egress, ipv4Frame(src: Net.pod1, dst: Net.server, .udp(sport: 40000, dport: 53)))
        _ = try dp.run(.egress, ipv4Frame(src: Net.pod1, dst: Net.server, .udp(sport: 40001, dport: 53)))
        _ = try dp.run(.ingress, ipv4Frame(src: Net.server, dst: Net.snat, .udp(sport: 53, dport: 40001)))

        #expect(try sweeper(dp).sweep(now: later(31)).expiredFlows == 1)
        #expect(try dp.entries().count == 2)
        var short = FlowLifetimes()
        short.udpReplied = 5
        #expect(try sweeper(dp, short).sweep(now: later(6)).expiredFlows == 1)
        #expect(try dp.entries().isEmpty)
    }

    @Test("a live flow whose INGRESS half was evicted gets it back")
    func lostIngressRepaired() throws {
        let dp = try Datapath.standard()
        try tcp(dp, sport: 40000, TCPFlag.syn, reply: TCPFlag.syn | TCPFlag.ack)
        let rkey = natKey(Net.server, Net.snat, sport: 443, dport: 40000, proto: Proto.tcp, dir: MASQ_DIR_INGRESS)
        try dp.nat.delete(rkey)

        let report = try sweeper(dp).sweep(now: later(1))

        #expect(report.repairedHalves == 1)
        let rev = try #require(try dp.entry(rkey))
        #expect(IPv4Address(raw: rev.to_addr) == Net.pod1 && host16(rev.to_port) == 40000)
        let back = try dp.run(.ingress, ipv4Frame(src: Net.server, dst: Net.snat, .tcp(sport: 443, dport: 40000, flags: TCPFlag.ack)))
        #expect(back.parsed.dst == Net.pod1)
    }

    @Test("a live flow whose EGRESS half was evicted gets it back and keeps its port")
    func lostEgressRepaired() throws {
        let dp = try Datapath.standard(portMin: 50000, portMax: 59999)
        let first = try dp.run(.egress, ipv4Frame(src: Net.pod1, dst: Net.server, .tcp(sport: 1234, dport: 443))).parsed.sport
        try dp.nat.delete(natKey(Net.pod1, Net.server, sport: 1234, dport: 443, proto: Proto.tcp, dir: MASQ_DIR_EGRESS))

        #expect(try sweeper(dp).sweep(now: later(1)).repairedHalves == 1)
        let again = try dp.run(.egress, ipv4Frame(src: Net.pod1, dst: Net.server, .tcp(sport: 1234, dport: 443, flags: TCPFlag.ack))).parsed.sport
        #expect(again == first)
        #expect(try dp.stat(MASQ_STAT_ALLOC_OK) == 1, "no new mapping was made")
    }

    @Test("the lone half of an expired flow is removed")
    func expiredHalfRemoved() throws {
        let dp = try Datapath.standard()
        _ = try dp.run(.egress, ipv4Frame(src: Net.pod1, dst: Net.server, .udp(sport: 40000, dport: 53)))
        try dp.nat.delete(natKey(Net.pod1, Net.server, sport: 40000, dport: 53, proto: Proto.udp, dir: MASQ_DIR_EGRESS))

        let report = try sweeper(dp).sweep(now: later(31))
        #expect(report.removedHalves == 1)
        #expect(try dp.entries().isEmpty)
    }

    @Test("expiring flows frees their ports for new flows")
    func expiryFreesPorts() throws {
        let dp = try Datapath.standard(portMin: 50000, portMax: 50001)
        for i in 0..<2 {
            _ = try dp.run(.egress, ipv4Frame(src: Net.pod1, dst: Net.server, .udp(sport: UInt16(1000 + i), dport: 53)))
        }
        #expect(try dp.run(.egress, ipv4Frame(src: Net.pod2, dst: Net.server, .udp(sport: 2000, dport: 53))).verdict == TC.shot)

        #expect(try sweeper(dp).sweep(now: later(31)).deletedEntries == 4)
        #expect(try dp.run(.egress, ipv4Frame(src: Net.pod2, dst: Net.server, .udp(sport: 2000, dport: 53))).verdict == TC.pass)
    }

    @Test("an inbound flow's single entry expires by its own state")
    func inboundExpires() throws {
        let dp = try Datapath.standard()
        _ = try dp.run(.ingress, ipv4Frame(src: Net.server, dst: Net.pod1, .tcp(sport: 5555, dport: 80)))
        #expect(try dp.entries().count == 1)
        #expect(try sweeper(dp).sweep(now: later(61)).deletedEntries == 1)
    }

    @Test("the pass reports the ports each (SNAT address, remote, remote port, protocol) holds")
    func saturationReport() throws {
        let dp = try Datapath.standard()
        for i in 0..<3 {
            _ = try dp.run(.egress, ipv4Frame(src: Net.pod1, dst: Net.server, .udp(sport: UInt16(40000 + i), dport: 53)))
        }
        _ = try dp.run(.egress, ipv4Frame(src: Net.pod1, dst: Net.server2, .udp(sport: 40000, dport: 53)))
        let top = try sweeper(dp).sweep(now: later(1)).saturation

        #expect(top.map(\.ports) == [3, 1])
        #expect(IPv4Address(raw: top[0].key.remote) == Net.server && host16(top[0].key.remote_port) == 53)
        #expect(IPv4Address(raw: top[0].key.snat) == Net.snat)
    }

    @Test("a full table evicts old flows so new ones keep working, and the GC counts the halves evicted")
    func fullTableEvicts() throws {
        let dp = try Datapath(natEntries: 1024)
        try dp.setConfig()
        try dp.addDevice(snat: Net.snat)
        try dp.addPodCIDR(Net.podCIDR.0, Net.podCIDR.1)
        var verdicts: [UInt32] = []
        for i in 0..<1500 {
            verdicts.append(try dp.run(.egress, ipv4Frame(src: Net.pod1, dst: Net.server, .udp(sport: UInt16(10000 + i), dport: 53))).verdict)
        }

        #expect(verdicts.allSatisfy { $0 == TC.pass })
        #expect(try dp.droppedTotal() == 0)
        #expect(try dp.entries().count <= 1024)
        // 1500 pairs were written into 1024 entries: the LRU evicted entries one at a time, so
        // some flows lost a half. The pass finds them (and repairs the live ones).
        let report = try sweeper(dp).sweep(now: later(1))
        #expect(report.repairedHalves + report.removedHalves > 0)
    }

    @Test("a batch delete skips keys that are already gone")
    func deleteBatchSkipsMissing() throws {
        let dp = try Datapath.standard()
        for i in 0..<3 {
            _ = try dp.run(.egress, ipv4Frame(src: Net.pod1, dst: Net.server, .udp(sport: UInt16(40000 + i), dport: 53)))
        }
        let keys = (0..<3).map { natKey(Net.pod1, Net.server, sport: UInt16(40000 + $0), dport: 53, proto: Proto.udp, dir: MASQ_DIR_EGRESS) }
        try dp.nat.delete(keys[1])
        #expect(try dp.nat.deleteBatch(keys) == 2)
        #expect(try dp.entries().allSatisfy { $0.0.dir == UInt8(MASQ_DIR_INGRESS) })
    }

    @Test("the interval halves when a quarter is deleted, grows by half below 5%, within bounds")
    func interval() {
        let max = Duration.seconds(60)
        #expect(GCInterval.next(current: .seconds(10), deletedFraction: 0.5, max: max) == .seconds(5))
        #expect(GCInterval.next(current: .seconds(10), deletedFraction: 0.1, max: max) == .seconds(10))
        #expect(GCInterval.next(current: .seconds(10), deletedFraction: 0.01, max: max) == .seconds(15))
        #expect(GCInterval.next(current: .seconds(50), deletedFraction: 0, max: max) == .seconds(60))
        #expect(GCInterval.next(current: .seconds(1), deletedFraction: 0.9, max: max) == .seconds(1))
    }

    @Test("allocation pressure rises with exhaustive scans and failures")
    func pressure() throws {
        let dp = try Datapath.standard(portMin: 50000, portMax: 50000)
        var pressure = AllocationPressure(stats: dp.stats)
        let first = pressure.risen()
        _ = try dp.run(.egress, ipv4Frame(src: Net.pod1, dst: Net.server, .udp(sport: 50000, dport: 53)))
        let kept = pressure.risen()
        _ = try dp.run(.egress, ipv4Frame(src: Net.pod2, dst: Net.server, .udp(sport: 50000, dport: 53)))
        let failed = pressure.risen()
        let quiet = pressure.risen()
        #expect(!first)
        #expect(!kept, "a kept port is no pressure")
        #expect(failed)
        #expect(!quiet)
    }
}
