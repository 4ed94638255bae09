// The conntrack GC's pass (ConntrackSweeper) on a loaded datapath's own NAT table: expiry by
// state, both halves together, lone halves removed, ports freed, batches; and its interval.

import Blocking
import CMasq
import NetworkTypes
@testable import Daemon
@testable import Datapath
import Testing

@Suite("Conntrack GC")
struct ConntrackGCTests {
    private func sweeper(_ dp: TestDatapath, _ lifetimes: FlowLifetimes = .default) -> ConntrackSweeper {
        ConntrackSweeper(nat: dp.nat, lifetimes: lifetimes)
    }

    /// CLOCK_BOOTTIME `seconds` from now, in ns.
    private func later(_ seconds: Double) -> UInt64 {
        NATEntries.bootTimeNow() + UInt64(seconds * 1e9)
    }

    private func tcp(_ dp: TestDatapath, sport: UInt16, _ flags: UInt8, reply: UInt8? = nil) throws {
        let out = try dp.run(.egress, ipv4Frame(src: Net.pod1, dst: Net.server, .tcp(sport: sport, dport: 443, flags: flags)))
        if let reply {
            _ = try dp.run(.ingress, ipv4Frame(src: Net.server, dst: Net.snat, .tcp(sport: 443, dport: out.parsed.sport, flags: reply)))
        }
    }

    /// A completed handshake of pod1:sport -> server:443.
    private func established(_ dp: TestDatapath, sport: UInt16) throws {
        try tcp(dp, sport: sport, TCPFlag.syn, reply: TCPFlag.syn | TCPFlag.ack)
        try tcp(dp, sport: sport, TCPFlag.ack)
    }

    @Test("a closed TCP flow expires after the closing lifetime, both halves at once; an established one stays")
    func closedFlowExpires() throws {
        let dp = try TestDatapath.standard()
        try established(dp, sport: 40000)
        try established(dp, sport: 40001)
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

    @Test("a pass that expires more flows than a subscriber's buffer holds tells a reading subscriber of every one")
    func expiryBurstReachesSubscriber() async throws {
        let dp = try TestDatapath.standard()
        let flows = 2000 // about four buffers of 512, in a table of 4096 entries
        for port in 0..<flows {
            _ = try dp.run(.egress, ipv4Frame(src: Net.pod1, dst: Net.server, .udp(sport: UInt16(20000 + port), dport: 53)))
        }
        let hub = EventHub()
        let subscription = hub.subscribe(capacity: 512) { _ in true }
        let reader = Task {
            var expired = 0, lost = 0
            for await batch in subscription.batches {
                for item in batch {
                    switch item {
                    case .event(let event): if case .expired = event.kind { expired += 1 }
                    case .lost(let n): lost += n
                    case .heartbeat: break
                    }
                }
            }
            return (expired, lost)
        }
        var sweeper = ConntrackSweeper(nat: dp.nat, lifetimes: .default, events: hub)
        // Patient enough for a reader starved by the tests running beside this one: in a full
        // run this process's cooperative threads are taken by synchronous tests for tens of
        // seconds at a time.
        sweeper.eventPacing = EventHub.Pacing(patience: .seconds(600), budget: .seconds(600))
        let pass = sweeper
        let report = try await BlockingPool.shared.run { try pass.sweep(now: later(600)) }
        subscription.cancel()
        #expect(report.expiredFlows == flows)
        let (expired, lost) = await reader.value
        #expect(expired == flows && lost == 0, "\(expired) expired events, \(lost) lost")
    }

    @Test("each state expires after its own lifetime", arguments: [
        ("syn", 60.0), ("syn-ack only", 60.0), ("established", 21_600.0), ("one FIN", 120.0),
        ("FIN answered", 60.0), ("both FINs", 10.0), ("RST", 10.0),
    ])
    func tcpLifetimes(_ story: String, _ lifetime: Double) throws {
        let dp = try TestDatapath.standard()
        switch story {
        case "syn": try tcp(dp, sport: 40000, TCPFlag.syn)
        case "syn-ack only": try tcp(dp, sport: 40000, TCPFlag.syn, reply: TCPFlag.syn | TCPFlag.ack)
        case "established": try established(dp, sport: 40000)
        case "one FIN":
            try established(dp, sport: 40000)
            try tcp(dp, sport: 40000, TCPFlag.fin | TCPFlag.ack)
        case "FIN answered":
            try established(dp, sport: 40000)
            try tcp(dp, sport: 40000, TCPFlag.fin | TCPFlag.ack, reply: TCPFlag.ack)
        case "both FINs":
            try established(dp, sport: 40000)
            try tcp(dp, sport: 40000, TCPFlag.fin | TCPFlag.ack, reply: TCPFlag.fin | TCPFlag.ack)
        default:
            try established(dp, sport: 40000)
            try tcp(dp, sport: 40000, TCPFlag.ack, reply: TCPFlag.rst)
        }
        #expect(try sweeper(dp).sweep(now: later(lifetime - 2)).deletedEntries == 0)
        #expect(try sweeper(dp).sweep(now: later(lifetime + 1)).deletedEntries == 2)
    }

    @Test("a half-closed flow outlives 15 s of silence with a GC pass every second, and its data still flows")
    func halfClosedSurvives() throws {
        let dp = try TestDatapath.standard()
        try established(dp, sport: 40000)
        try tcp(dp, sport: 40000, TCPFlag.fin | TCPFlag.ack)
        for second in 1...20 {
            #expect(try sweeper(dp).sweep(now: later(Double(second))).deletedEntries == 0)
        }
        let answer = try dp.run(.ingress, ipv4Frame(src: Net.server, dst: Net.snat, .tcp(sport: 443, dport: 40000, flags: TCPFlag.ack | TCPFlag.fin)))
        #expect(answer.verdict == TC.pass)
        #expect(answer.parsed.dst == Net.pod1 && answer.parsed.dport == 40000)
        let last = try dp.run(.egress, ipv4Frame(src: Net.pod1, dst: Net.server, .tcp(sport: 40000, dport: 443, flags: TCPFlag.ack)))
        #expect(last.parsed.src == Net.snat && last.parsed.sport == 40000)
    }

    @Test("UDP lives 30 s unreplied and 120 s replied; configured lifetimes replace the defaults")
    func udpLifetimes() throws {
        let dp = try TestDatapath.standard()
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

    @Test("a lone half is removed once idle, and left alone while its flow lives")
    func loneHalves() throws {
        let dp = try TestDatapath.standard()
        try established(dp, sport: 40000)
        let rkey = natKey(Net.server, Net.snat, sport: 443, dport: 40000, proto: Proto.tcp, dir: MASQ_DIR_INGRESS)
        try dp.nat.delete(rkey)

        let live = try sweeper(dp).sweep(now: later(1))
        #expect(live.removedHalves == 0 && live.deletedEntries == 0)
        let idle = try sweeper(dp).sweep(now: later(21_601))
        #expect(idle.removedHalves == 1 && idle.expiredFlows == 1)
        #expect(try dp.entries().isEmpty)
    }

    @Test("the lone half of an expired flow is removed")
    func expiredHalfRemoved() throws {
        let dp = try TestDatapath.standard()
        _ = try dp.run(.egress, ipv4Frame(src: Net.pod1, dst: Net.server, .udp(sport: 40000, dport: 53)))
        try dp.nat.delete(natKey(Net.pod1, Net.server, sport: 40000, dport: 53, proto: Proto.udp, dir: MASQ_DIR_EGRESS))

        let report = try sweeper(dp).sweep(now: later(31))
        #expect(report.removedHalves == 1)
        #expect(try dp.entries().isEmpty)
    }

    @Test("expiring flows frees their ports for new flows")
    func expiryFreesPorts() throws {
        let dp = try TestDatapath.standard(portMin: 50000, portMax: 50001)
        for i in 0..<2 {
            _ = try dp.run(.egress, ipv4Frame(src: Net.pod1, dst: Net.server, .udp(sport: UInt16(1000 + i), dport: 53)))
        }
        #expect(try dp.run(.egress, ipv4Frame(src: Net.pod2, dst: Net.server, .udp(sport: 2000, dport: 53))).verdict == TC.shot)

        #expect(try sweeper(dp).sweep(now: later(31)).deletedEntries == 4)
        #expect(try dp.run(.egress, ipv4Frame(src: Net.pod2, dst: Net.server, .udp(sport: 2000, dport: 53))).verdict == TC.pass)
    }

    @Test("an inbound flow's single entry expires by its own state")
    func inboundExpires() throws {
        let dp = try TestDatapath.standard()
        _ = try dp.run(.ingress, ipv4Frame(src: Net.server, dst: Net.pod1, .tcp(sport: 5555, dport: 80)))
        #expect(try dp.entries().count == 1)
        #expect(try sweeper(dp).sweep(now: later(61)).deletedEntries == 1)
    }

    @Test("the pass reports the ports each (SNAT address, remote, remote port, protocol) holds")
    func saturationReport() throws {
        let dp = try TestDatapath.standard()
        for i in 0..<3 {
            _ = try dp.run(.egress, ipv4Frame(src: Net.pod1, dst: Net.server, .udp(sport: UInt16(40000 + i), dport: 53)))
        }
        _ = try dp.run(.egress, ipv4Frame(src: Net.pod1, dst: Net.server2, .udp(sport: 40000, dport: 53)))
        let top = try sweeper(dp).sweep(now: later(1)).saturation

        #expect(top.map(\.ports) == [3, 1])
        #expect(top[0].remote == .v4(IPv4Address(networkOrder: Net.server.raw)) && top[0].remotePort == 53)
        #expect(top[0].snat == .v4(IPv4Address(networkOrder: Net.snat.raw)))
    }

    @Test("a pass in small batches keeps only a batch at hand and still expires pairs whole")
    func smallBatches() throws {
        let dp = try TestDatapath.standard()
        for i in 0..<60 {
            _ = try dp.run(.egress, ipv4Frame(src: Net.pod1, dst: Net.server, .udp(sport: UInt16(40000 + i), dport: 53)))
            if i % 2 == 0 {
                _ = try dp.run(.ingress, ipv4Frame(src: Net.server, dst: Net.snat, .udp(sport: 53, dport: UInt16(40000 + i))))
            }
        }
        var gc = sweeper(dp)
        gc.batchSize = 7
        let report = try gc.sweep(now: later(31))

        #expect(report.entries == 120)
        #expect(report.expiredFlows == 30 && report.deletedEntries == 60 && report.removedHalves == 0)
        let left = try dp.entries()
        #expect(left.count == 60)
        #expect(Set(left.map { host16($0.0.dir == UInt8(MASQ_DIR_EGRESS) ? $0.0.sport : $0.0.dport) % 2 }) == [0],
                "the replied flows stay, both entries")
        #expect(report.saturation.first?.ports == 30)
    }

    @Test("the pass's summary counts what it leaves in the table: entries, and flows by protocol and kind")
    func summary() throws {
        let dp = try TestDatapath.standard()
        // 6 UDP flows, half replied (the others expire at 31 s); 2 TCP flows; 1 inbound TCP flow.
        for i in 0..<6 {
            _ = try dp.run(.egress, ipv4Frame(src: Net.pod1, dst: Net.server, .udp(sport: UInt16(40000 + i), dport: 53)))
            if i % 2 == 0 {
                _ = try dp.run(.ingress, ipv4Frame(src: Net.server, dst: Net.snat, .udp(sport: 53, dport: UInt16(40000 + i))))
            }
        }
        for i in 0..<2 {
            _ = try dp.run(.egress, ipv4Frame(src: Net.pod1, dst: Net.server, .tcp(sport: UInt16(41000 + i), dport: 443)))
        }
        _ = try dp.run(.ingress, ipv4Frame(src: Net.server, dst: Net.pod1, .tcp(sport: 5555, dport: 80)))
        var gc = sweeper(dp)
        gc.batchSize = 5
        let summary = try gc.sweep(now: later(31)).summaries[0]

        #expect(summary.family == .ipv4 && summary.map == MASQ_MAP_NAT_V4)
        #expect(summary.entries == (try dp.entries().count))
        #expect(summary.entries == 3 * 2 + 2 * 2 + 1)
        #expect(summary.flows == [.init(proto: Proto.udp, kind: .masquerade): 3, .init(proto: Proto.tcp, kind: .masquerade): 2,
                                  .init(proto: Proto.tcp, kind: .inbound): 1])
    }

    @Test("masq_nat_v6 is swept the same way: an idle UDP pair goes whole, a live one stays and is counted as IPv6")
    func ipv6Table() throws {
        let dp = try TestDatapath.standard()
        let nat6 = try dp.object.map(MASQ_MAP_NAT_V6)
        let pod = masq_addr_v6(IPv6Address("fd00:10:244:1::2")!), server = masq_addr_v6(IPv6Address("2001:db8::53")!)
        let snat = masq_addr_v6(IPv6Address("fd00:50::1")!)
        let now = NATEntries.bootTimeNow()
        // Two UDP flows pod:40000+i -> server:53 leaving as snat:50000+i; the second was used
        // 100 s later than the first.
        for i in 0..<2 {
            var ct = masq_nat_entry_v4()
            ct.last_seen = now + UInt64(i) * 100_000_000_000
            ct.created = now
            ct.to_port = be16(50000 + UInt16(i))
            let egress = masq_nat_key_v6(saddr: pod, daddr: server, sport: be16(40000 + UInt16(i)), dport: be16(53),
                                         proto: Proto.udp, dir: UInt8(MASQ_DIR_EGRESS), pad: 0)
            try nat6.update(egress, masq_nat_entry_v6(to_addr: snat, ct: ct))
            let ingress = try #require(NATEntries.partner(egress, masq_nat_entry_v6(to_addr: snat, ct: ct)))
            ct.to_port = be16(40000 + UInt16(i))
            try nat6.update(ingress, masq_nat_entry_v6(to_addr: pod, ct: ct))
        }
        // 31 s after the first flow's last packet: past the unreplied UDP lifetime (30 s).
        let report = try ConntrackSweeper(nat: nat6, lifetimes: .default).sweep(now: now + 31_000_000_000)
        #expect(report.entries == 4 && report.expiredFlows == 1 && report.deletedEntries == 2 && report.removedHalves == 0)
        #expect(try nat6.keys(as: masq_nat_key_v6.self).map { host16($0.dir == UInt8(MASQ_DIR_EGRESS) ? $0.sport : $0.dport) }.sorted()
                == [40001, 50001], "the second flow stays, both entries")
        #expect(report.summaries.map(\.family) == [.ipv6] && report.summaries[0].entries == 2)
        #expect(report.saturation == [TupleUse(snat: .v6(IPv6Address("fd00:50::1")!), remote: .v6(IPv6Address("2001:db8::53")!),
                                               remotePort: 53, proto: Proto.udp, ports: 1)])
    }

    @Test("the port tally is exact below its capacity and keeps the heavy tuples above it")
    func portTally() {
        func key(_ port: UInt16) -> masq_sat_key_v4 {
            masq_sat_key_v4(snat: Net.snat.raw, remote: Net.server.raw, remote_port: be16(port), proto: Proto.tcp, pad: 0)
        }
        var exact = PortUseTally<masq_sat_key_v4>(capacity: 8)
        for port in UInt16(1)...5 { for _ in 0..<Int(port) { exact.add(key(port)) } }
        #expect(exact.top(3).map(\.count) == [5, 4, 3])

        var bounded = PortUseTally<masq_sat_key_v4>(capacity: 4)
        for i in 0..<1000 {
            bounded.add(key(443))
            bounded.add(key(UInt16(1000 + i)))
        }
        let top = bounded.top(1)
        #expect(top.first.map { host16($0.key.remote_port) } == 443)
        #expect((top.first?.count ?? 0) >= 1000 - 2000 / 5, "Misra-Gries undercounts by at most n / (capacity + 1)")
    }

    @Test("a batch delete skips keys that are already gone")
    func deleteBatchSkipsMissing() throws {
        let dp = try TestDatapath.standard()
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

    @Test("allocation pressure rises with exhaustive scans, failures and a full table")
    func pressure() throws {
        let dp = try TestDatapath.standard(portMin: 50000, portMax: 50000)
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

        let small = try TestDatapath(natEntries: 2)
        try small.setConfig()
        try small.addDevice(snat: Net.snat)
        try small.addPodCIDR(Net.podCIDR.0, Net.podCIDR.1)
        var full = AllocationPressure(stats: small.stats)
        _ = full.risen()
        _ = try small.run(.egress, ipv4Frame(src: Net.pod1, dst: Net.server, .udp(sport: 40000, dport: 53)))
        let fits = full.risen()
        _ = try small.run(.egress, ipv4Frame(src: Net.pod1, dst: Net.server, .udp(sport: 40001, dport: 53)))
        let refused = full.risen()
        #expect(!fits)
        #expect(refused, "a new flow the full table refused wakes the GC")
    }
}
