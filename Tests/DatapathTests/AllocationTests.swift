// Port allocation is exact: a new flow gets a port whenever one is free for its (SNAT address,
// remote, remote port, protocol), fails only when none is, and is counted (histogram,
// saturation). Also measures the fill curve and the allocation path's cost.

import CMasq
@testable import Daemon
@testable import Datapath
import Testing

@Suite("Port allocation is exact")
struct AllocationTests {
    /// The default snat-port-range: 32768 ports.
    private static let range = UInt16(32768)...UInt16(65535)

    @Test("with the full default range 99% held for one tuple a new flow still gets a free port")
    func ninetyNinePercentSucceeds() throws {
        let dp = try TestDatapath(natEntries: 131_072)
        try dp.setConfig()
        try dp.addDevice(snat: Net.snat)
        try dp.addPodCIDR(Net.podCIDR.0, Net.podCIDR.1)
        var rng = SystemRandomNumberGenerator()
        let ports = Array(Self.range).shuffled(using: &rng)
        let heldCount = Self.range.count * 99 / 100
        try dp.holdPorts(ports.prefix(heldCount), remote: Net.server, remotePort: 443, proto: Proto.tcp)
        let free = Set(ports.dropFirst(heldCount))

        let out = try dp.run(.egress, ipv4Frame(src: Net.pod1, dst: Net.server, .tcp(sport: 1000, dport: 443)))

        #expect(out.verdict == TC.pass)
        #expect(free.contains(out.parsed.sport))
        #expect(out.parsed.checksumsOK)
        #expect(try dp.stat(MASQ_STAT_ALLOC_OK) == 1)
    }

    @Test("with one port left of the full default range it is found; with none the flow is dropped and counted")
    func lastPortThenExhausted() throws {
        let dp = try TestDatapath(natEntries: 131_072)
        try dp.setConfig()
        try dp.addDevice(snat: Net.snat)
        try dp.addPodCIDR(Net.podCIDR.0, Net.podCIDR.1)
        try dp.holdPorts(Self.range.filter { $0 != 61_234 }, remote: Net.server, remotePort: 443, proto: Proto.tcp)

        let last = try dp.run(.egress, ipv4Frame(src: Net.pod1, dst: Net.server, .tcp(sport: 1000, dport: 443)))
        #expect(last.verdict == TC.pass)
        #expect(last.parsed.sport == 61_234)

        let full = try dp.run(.egress, ipv4Frame(src: Net.pod1, dst: Net.server, .tcp(sport: 1001, dport: 443)))
        #expect(full.verdict == TC.shot)
        #expect(try dp.dropped(DROP_NAT_PORTS_EXHAUSTED) == 1)
        #expect(try dp.stat(MASQ_STAT_ALLOC_FAIL) == 1)
        // Another remote port of the same server is another tuple, with all its ports free.
        #expect(try dp.run(.egress, ipv4Frame(src: Net.pod1, dst: Net.server, .tcp(sport: 1001, dport: 8443))).verdict == TC.pass)
    }

    @Test("a range of N ports gives exactly N flows to one server, and the next is dropped")
    func exactlyNFlows() throws {
        let dp = try TestDatapath.standard(portMin: 40000, portMax: 40255)
        var ports = Set<UInt16>()
        for i in 0..<256 {
            let out = try dp.run(.egress, ipv4Frame(src: Net.pod1, dst: Net.server, .udp(sport: UInt16(1000 + i), dport: 53)))
            #expect(out.verdict == TC.pass)
            ports.insert(out.parsed.sport)
        }
        #expect(ports == Set(40000...40255))
        #expect(try dp.run(.egress, ipv4Frame(src: Net.pod1, dst: Net.server, .udp(sport: 999, dport: 53))).verdict == TC.shot)
        #expect(try dp.dropped(DROP_NAT_PORTS_EXHAUSTED) == 1)
        #expect(try dp.stat(MASQ_STAT_ALLOC_OK) == 256)
    }

    @Test("a tuple just found full is not scanned again; a GC pass that frees its ports lifts the mark")
    func fullHint() throws {
        let dp = try TestDatapath.standard(portMin: 50000, portMax: 50999)
        try dp.holdPorts(50000...50998, remote: Net.server, remotePort: 443, proto: Proto.tcp)
        _ = try dp.run(.egress, ipv4Frame(src: Net.pod1, dst: Net.server, .tcp(sport: 1000, dport: 443)))
        let full = try dp.run(.egress, ipv4Frame(src: Net.pod1, dst: Net.server, .tcp(sport: 1001, dport: 443)))
        #expect(full.verdict == TC.shot)
        #expect(try dp.stat(MASQ_STAT_ALLOC_SCANS) >= 1)
        let scans = try dp.stat(MASQ_STAT_ALLOC_SCANS)

        let again = try dp.run(.egress, ipv4Frame(src: Net.pod1, dst: Net.server, .tcp(sport: 1002, dport: 443)))
        #expect(again.verdict == TC.shot)
        #expect(try dp.stat(MASQ_STAT_ALLOC_SCANS) == scans, "no second scan")
        #expect(try dp.stat(MASQ_STAT_ALLOC_FULL_HINT) == 1)

        // The pass expires the pod flow (a SYN 61 s ago): its port is free and the mark gone.
        let sweeper = ConntrackSweeper(nat: dp.nat, lifetimes: .default, fullMarks: try dp.object.map(MASQ_MAP_FULL_V4))
        #expect(try sweeper.sweep(now: NATEntries.bootTimeNow() + 61_000_000_000).expiredFlows >= 1)
        let after = try dp.run(.egress, ipv4Frame(src: Net.pod1, dst: Net.server, .tcp(sport: 1003, dport: 443)))
        #expect(after.verdict == TC.pass)
    }

    @Test("allocations are counted in the retry histogram by candidates tried")
    func histogram() throws {
        let dp = try TestDatapath.standard(portMin: 50000, portMax: 50999)
        // Kept port: one candidate (bucket 0).
        _ = try dp.run(.egress, ipv4Frame(src: Net.pod1, dst: Net.server, .tcp(sport: 50500, dport: 443)))
        // All but one port held: the random probes fail and the scan runs (> 32 candidates).
        try dp.holdPorts((50000...50999).filter { $0 != 50777 && $0 != 50500 }, remote: Net.server, remotePort: 443, proto: Proto.tcp)
        _ = try dp.run(.egress, ipv4Frame(src: Net.pod2, dst: Net.server, .tcp(sport: 1234, dport: 443)))

        let hist = try dp.allocHistogram()
        #expect(hist.count == Int(MASQ_ALLOC_HIST_BUCKETS))
        #expect(hist[0] == 1)
        #expect(hist.reduce(0, +) == 2)
        // Usually the 32 random probes miss the one free port and the scan finds it; now and
        // then (32 in 1000) a probe hits it first. Either way the bucket must match.
        if try dp.stat(MASQ_STAT_ALLOC_SCANS) > 0 {
            #expect(hist[6...].reduce(0, +) == 1, "the scanning allocation tried more than 32 candidates")
        } else {
            #expect(hist[1..<6].reduce(0, +) == 1, "a random probe found the port within 32 candidates")
        }
    }

    @Test("a tuple whose flows cannot keep their port gets a saturation figure from its random probes")
    func saturationFigure() throws {
        let dp = try TestDatapath.standard(portMin: 50000, portMax: 50099)
        try dp.holdPorts(50000...50089, remote: Net.server, remotePort: 53, proto: Proto.udp)
        for i in 0..<5 {
            _ = try dp.run(.egress, ipv4Frame(src: Net.pod1, dst: Net.server, .udp(sport: UInt16(1000 + i), dport: 53)))
        }
        let sat = try #require(try dp.saturation(remote: Net.server, port: 53, proto: Proto.udp))

        #expect(sat.allocs == 5)
        #expect(sat.fails == 0)
        #expect(sat.probes >= 5)
        #expect(sat.taken > 0 && sat.taken < sat.probes)
        #expect(sat.max_tries >= sat.last_tries)
        // A tuple that keeps its ports has no figure.
        _ = try dp.run(.egress, ipv4Frame(src: Net.pod1, dst: Net.server2, .udp(sport: 50050, dport: 53)))
        #expect(try dp.saturation(remote: Net.server2, port: 53, proto: Proto.udp) == nil)
    }

    /// The fill curve: at each occupancy of the default range for one tuple, the share of new
    /// flows that get a port, the candidates they need and the allocation packet's kernel time.
    @Test("the fill curve: every allocation succeeds below 100% occupancy, none at 100%")
    func fillCurve() throws {
        let dp = try TestDatapath(natEntries: 131_072)
        try dp.setConfig()
        try dp.addDevice(snat: Net.snat)
        try dp.addPodCIDR(Net.podCIDR.0, Net.podCIDR.1)
        var rng = SystemRandomNumberGenerator()
        let ports = Array(Self.range).shuffled(using: &rng)
        let trials = 200
        var held = 0
        var lines: [String] = []
        for occupancy in [0.5, 0.7, 0.9, 0.99, 1.0] {
            let target = Int(Double(Self.range.count) * occupancy)
            try dp.holdPorts(ports[held..<target], remote: Net.server, remotePort: 443, proto: Proto.tcp)
            held = target
            let scansBefore = try dp.stat(MASQ_STAT_ALLOC_SCANS)
            let retriesBefore = try dp.stat(MASQ_STAT_ALLOC_RETRIES)
            var ok = 0
            var ns: [UInt32] = []
            for i in 0..<trials {
                // A source port below the range: never kept, so the allocator always searches.
                let sport = UInt16(1000 + i)
                let frame = ipv4Frame(src: Net.pod1, dst: Net.server, .tcp(sport: sport, dport: 443))
                let started = ContinuousClock.now
                let (out, _) = try dp.runTimed(.egress, frame)
                // Wall clock around the BPF_PROG_TEST_RUN syscall (about 3 µs of syscall and
                // skb setup on top of the program), comparable across levels.
                let wall = ContinuousClock.now - started
                ns.append(UInt32(wall.components.attoseconds / 1_000_000_000 + wall.components.seconds * 1_000_000_000))
                guard out.verdict == TC.pass else { continue }
                ok += 1
                // Give the port back, so that every trial sees the same occupancy.
                try dp.nat.delete(natKey(Net.pod1, Net.server, sport: sport, dport: 443, proto: Proto.tcp, dir: MASQ_DIR_EGRESS))
                try dp.nat.delete(natKey(Net.server, Net.snat, sport: 443, dport: out.parsed.sport, proto: Proto.tcp, dir: MASQ_DIR_INGRESS))
            }
            let scans = try dp.stat(MASQ_STAT_ALLOC_SCANS) - scansBefore
            let retries = try dp.stat(MASQ_STAT_ALLOC_RETRIES) - retriesBefore
            ns.sort()
            // Candidates per successful allocation (failures try 32, plus the range when they scan).
            let line = String(format: "occupancy %5.1f%%: success %5.1f%%, scans %5.1f%%, candidates/alloc %6.1f, ns/packet (syscall, wall) median %7ld p99 %7ld max %8ld",
                              occupancy * 100, Double(ok) * 100 / Double(trials), Double(scans) * 100 / Double(trials),
                              ok == 0 ? Double(0) : 1 + Double(retries) / Double(ok),
                              Int(ns[ns.count / 2]), Int(ns[ns.count * 99 / 100]), Int(ns[ns.count - 1]))
            lines.append(line)
            if occupancy < 1 {
                #expect(ok == trials, "\(line)")
            } else {
                #expect(ok == 0, "\(line)")
            }
        }
        print("allocation fill curve (range 32768-65535, one tuple, \(trials) new flows each):\n" + lines.joined(separator: "\n"))
    }

    @Test("the allocation path costs microseconds, not milliseconds, below 100% occupancy")
    func allocationCost() throws {
        let dp = try TestDatapath.standard()
        let runs = 2000
        func median(_ make: (Int) -> [UInt8]) throws -> UInt32 {
            var ns: [UInt32] = []
            for i in 0..<runs { ns.append(try dp.runTimed(.egress, make(i)).ns) }
            ns.sort()
            return ns[ns.count / 2]
        }
        // New flows that keep their port (one claim), that need random probes (port outside
        // the range), and an established flow's packet for comparison.
        let kept = try median { ipv4Frame(src: Net.pod1, dst: Net.server, .tcp(sport: UInt16(40000 + $0), dport: 443)) }
        let probed = try median { ipv4Frame(src: Net.pod2, dst: Net.server, .tcp(sport: UInt16(1000 + $0), dport: 443)) }
        let est = ipv4Frame(src: Net.pod1, dst: Net.server, .tcp(sport: 40000, dport: 443, flags: TCPFlag.ack))
        let established = try median { _ in est }
        print("allocation path cost (kernel-timed, median of \(runs)): new flow keeping its port \(kept) ns, "
              + "new flow with a random port \(probed) ns, established flow \(established) ns")
        #expect(kept < 20_000 && probed < 20_000)
    }
}
